"""`python eval/gate.py EVAL_JSON --check 'forget_quality>=0.05' --target target/eval.json`

The `llm-unlearn gate` command (llm_unlearn/commands/gate.py) as a file, for CI scripts."""

import sys

from llm_unlearn.cli import main

if __name__ == "__main__":
    sys.exit(main(["gate", *sys.argv[1:]]))
