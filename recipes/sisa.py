"""`accelerate launch recipes/sisa.py --config configs/builtin/sisa.yaml`

The `llm-unlearn sisa` command (llm_unlearn/commands/sisa.py) as a file, for `accelerate launch`."""

import sys

from llm_unlearn.cli import main

if __name__ == "__main__":
    sys.exit(main(["sisa", *sys.argv[1:]]))
