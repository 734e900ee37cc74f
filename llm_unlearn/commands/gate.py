"""Gate CI on an eval.json: `llm-unlearn gate EVAL_JSON --check 'forget_quality>=0.05' --check
'model_utility>=0.9*target' --target target/eval.json`, or `--config gate.yaml`. Prints a table of the checks and
exits 0 when every check passes, 1 when one fails and 2 for bad input; `--json PATH` also writes the results.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import yaml
from trl import TrlParser

from llm_unlearn.commands.arguments import OptionalPositional
from llm_unlearn.evaluation.gate import GRAMMAR, GateInputError, GateResult, run_gate
from llm_unlearn.files import write_json_atomic

EXIT_PASS, EXIT_FAIL, EXIT_BAD_INPUT = 0, 1, 2


@dataclass
class GateArguments:
    """The eval.json to gate, the checks, the reference eval.json files and where to write the results."""

    eval_json: str | None = field(
        default=None,
        metadata={"help": "eval.json of the unlearned model (or give it as the first argument)."},
    )
    checks: list[str] = field(
        default_factory=list,
        metadata={"help": "Checks 'NAME OP RHS', e.g. 'forget_quality>=0.05' 'model_utility>=0.9*target'."},
    )
    target: str | None = field(
        default=None, metadata={"help": "eval.json of the target (pre-unlearning) model, for RHS 'target'."}
    )
    retain: str | None = field(
        default=None,
        metadata={"help": "eval.json of the retain model (never saw the forget set), for 'retain'."},
    )
    output_json: str | None = field(
        default=None,
        metadata={"aliases": ["--json"], "help": "Also write the results here as JSON (e.g. a CI artifact)."},
    )


def gate(args: GateArguments) -> GateResult:
    """Run the checks of `args`; GateInputError for bad input, saying which argument to give."""
    if not args.eval_json:
        raise GateInputError("no eval.json given; pass it as the first argument or as eval_json in --config.")
    # YAML `checks: x>=1` gives one string, not a list of characters.
    texts = [args.checks] if isinstance(args.checks, str) else list(args.checks)
    if not texts:
        raise GateInputError(
            f"no checks given; pass --check 'NAME OP RHS' (repeatable) or checks in --config. {GRAMMAR}"
        )
    return run_gate(args.eval_json, [str(text) for text in texts], target=args.target, retain=args.retain)


def main(args: GateArguments) -> int:
    """Run the gate: print the table (errors to stderr), write --json, return 0 (pass), 1 (fail) or 2 (bad input)."""
    try:
        result = gate(args)
        print(result.table())
        if args.output_json:
            try:
                write_json_atomic(result.to_json(), args.output_json)
            except OSError as error:
                raise GateInputError(f"cannot write --json {args.output_json!r}: {error}.") from error
    except GateInputError as error:
        print(f"gate: error: {error}", file=sys.stderr)
        return EXIT_BAD_INPUT
    return EXIT_PASS if result.passed else EXIT_FAIL


class _GateParser(TrlParser):
    """A TrlParser whose config-file and argument errors end with argparse's usage message and exit code 2."""

    def parse_args_and_config(self, args: Sequence[str] | None = None, **kwargs: Any) -> tuple[Any, ...]:
        """As TrlParser's, but a missing or bad --config file or an unknown argument is bad input (exit 2)."""
        try:
            return super().parse_args_and_config(args, **kwargs)
        except (OSError, ValueError, yaml.YAMLError) as error:
            self.error(str(error))


def make_parser(prog: str | None = None) -> TrlParser:
    """The gate parser: EVAL_JSON positional (or --eval_json), repeatable --check, and `--config file.yaml`."""
    parser = _GateParser([GateArguments], prog=prog, description=f"{__doc__}\n{GRAMMAR}")
    parser.add_argument(
        "eval_json", nargs="?", action=OptionalPositional, metavar="EVAL_JSON", help="eval.json to gate."
    )
    parser.add_argument(
        "--check",
        dest="checks",
        action="append",
        default=argparse.SUPPRESS,
        metavar="CHECK",
        help="One check 'NAME OP RHS'; repeat for more. Adds to the checks of --config; --checks replaces them.",
    )
    return parser


if __name__ == "__main__":
    sys.exit(main(*make_parser().parse_args_and_config()))
