"""`accelerate launch recipes/unlearn.py --config configs/....yaml`: see llm_unlearn/commands/unlearn.py."""

from llm_unlearn.commands.unlearn import main, make_parser

if __name__ == "__main__":
    main(*make_parser().parse_args_and_config())
