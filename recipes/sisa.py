"""`accelerate launch recipes/sisa.py --config configs/builtin/sisa.yaml`: see llm_unlearn/commands/sisa.py."""

from llm_unlearn.commands.sisa import main, make_parser

if __name__ == "__main__":
    main(*make_parser().parse_args_and_config())
