"""The commands of the `llm-unlearn` CLI, one module each with `make_parser(prog=None)` and `main(...)`: they
parse arguments (a `--config` YAML and flags), call the library and print. `recipes/*.py` and `eval/*.py` run the
same modules under `accelerate launch`. Nothing outside this package and `llm_unlearn.cli` imports them."""
