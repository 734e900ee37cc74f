"""`accelerate launch eval/run.py --config eval/builtin.yaml --model_name_or_path DIR --output_dir DIR`

The `llm-unlearn eval` command (llm_unlearn/commands/evaluate.py) as a file, for `accelerate launch`."""

import sys

from llm_unlearn.cli import main

if __name__ == "__main__":
    sys.exit(main(["eval", *sys.argv[1:]]))
