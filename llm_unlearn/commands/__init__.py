"""Recipes: each module has `make_parser(subparsers=None, prog=None)` and `main(...)`, and is both a file for
`accelerate launch recipes/<name>.py` and a subcommand of the `llm-unlearn` CLI."""
