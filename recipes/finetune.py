"""`accelerate launch recipes/finetune.py --config configs/....yaml`: see llm_unlearn/commands/finetune.py."""

from llm_unlearn.commands.finetune import main, make_parser

if __name__ == "__main__":
    main(*make_parser().parse_args_and_config())
