"""Gate CI on an eval.json: `llm-unlearn gate EVAL_JSON --check 'forget_quality>=0.05' --check
'model_utility>=0.9*target' --target target/eval.json`, or `--config gate.yaml`. Prints a table of the checks and
exits 0 when every check passes, 1 when one fails and 2 for bad input; `--json PATH` also writes the results.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field

from trl import TrlParser

from llm_unlearn.commands.arguments import OptionalPositional
from llm_unlearn.evaluation.gate import GRAMMAR, GateInputError, GateResult, run_gate
from llm_unlearn.files import write_json_atomic

EXIT_PASS, EXIT_FAIL = 0, 1


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
    """Run the gate: print the table, write --json, return 0 (pass) or 1 (fail); bad input raises GateInputError,
    which the command line reports with exit code 2."""
    result = gate(args)
    print(result.table())
    if args.output_json:
        try:
            write_json_atomic(result.to_json(), args.output_json)
        except OSError as error:
            raise GateInputError(f"cannot write --json {args.output_json!r}: {error}.") from error
    return EXIT_PASS if result.passed else EXIT_FAIL


def make_parser(prog: str | None = None) -> TrlParser:
    """The gate parser: EVAL_JSON positional (or --eval_json), repeatable --check, and `--config file.yaml`."""
    parser = TrlParser([GateArguments], prog=prog, description=f"{__doc__}\n{GRAMMAR}")
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
