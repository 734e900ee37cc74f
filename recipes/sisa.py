"""`accelerate launch recipes/sisa.py --config configs/builtin/sisa.yaml`: see llm_unlearn/scripts/sisa.py."""

from llm_unlearn.scripts.sisa import main, make_parser

if __name__ == "__main__":
    main(*make_parser().parse_args_and_config())
