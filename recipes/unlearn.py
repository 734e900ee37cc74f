"""`accelerate launch recipes/unlearn.py --config configs/builtin/graddiff_lora.yaml`

The `llm-unlearn unlearn` command (llm_unlearn/commands/unlearn.py) as a file, for `accelerate launch`."""

import sys

from llm_unlearn.cli import main

if __name__ == "__main__":
    sys.exit(main(["unlearn", *sys.argv[1:]]))
