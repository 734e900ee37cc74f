"""`accelerate launch recipes/finetune.py --config configs/builtin/finetune.yaml`

The `llm-unlearn finetune` command (llm_unlearn/commands/finetune.py) as a file, for `accelerate launch`."""

import sys

from llm_unlearn.cli import main

if __name__ == "__main__":
    sys.exit(main(["finetune", *sys.argv[1:]]))
