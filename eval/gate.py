"""`python eval/gate.py EVAL_JSON --check "forget_quality>=0.05" --target target/eval.json ...` or
`python eval/gate.py --config gate.yaml`: see llm_unlearn/commands/gate.py. Exits 0 pass, 1 fail, 2 bad input."""

import sys

from llm_unlearn.commands.gate import main, make_parser

if __name__ == "__main__":
    sys.exit(main(*make_parser().parse_args_and_config()))
