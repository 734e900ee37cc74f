"""`accelerate launch eval/run.py --config ...` or `python eval/run.py --model_name_or_path DIR ...`: see
llm_unlearn/commands/evaluate.py."""

from llm_unlearn.commands.evaluate import main, make_parser

if __name__ == "__main__":
    main(*make_parser().parse_args_and_config())
