"""Gate CI on an eval.json: checks such as `forget_quality>=0.05` or `model_utility>=0.9*target`; prints a
table and returns 0 when every check passes, 1 when one fails and 2 for bad input.

A check is `NAME OP RHS`. NAME is a key of the file's top-level `summary` (`forget_quality`, `privleak`), or
`split/metric`, the mean of that split's aggregate (`forget/probability`), or `mia/score`, a membership AUC
(`mia/min_k`), or `attack/name/split/metric`, a mean after a robustness attack
(`attack/quantize_4bit/forget/probability`); a summary key wins if a name exists twice. OP is one of
`>=`, `<=`, `>`, `<`, `==`. RHS is a number, or `REF`, `k*REF`, `REF+c`, `REF-c` (or `k*REF+c`) where REF is
`target` or `retain`: the same NAME in the eval.json given with `--target` or `--retain`. Values within a
relative 1e-9 of the threshold count as equal, so `0.9*target` is not missed by floating-point rounding.
A NaN value or reference never passes.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from trl import TrlParser

from llm_unlearn.cli import OptionalPositional
from llm_unlearn.files import write_json_atomic

EXIT_PASS, EXIT_FAIL, EXIT_BAD_INPUT = 0, 1, 2
REFERENCES = ("target", "retain")
GRAMMAR = (
    "A check is 'NAME OP RHS': NAME is a summary key (forget_quality), split/metric (forget/probability), "
    "mia/score (mia/min_k) or attack/name/split/metric (attack/relearn/forget_rest/probability); "
    "OP is one of >=, <=, >, <, ==; RHS is a number (0.05) or REF, k*REF, REF+c, REF-c, k*REF+c with REF "
    "'target' or 'retain' (0.9*target, retain-0.1)."
)

_UNSIGNED = r"(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?"
_NUMBER = re.compile(rf"[+-]?{_UNSIGNED}")
_CHECK = re.compile(r"\s*(?P<name>[^\s<>=]+)\s*(?P<op>>=|<=|==|>|<)\s*(?P<rhs>.*?)\s*")
_RELATIVE = re.compile(
    rf"(?:(?P<scale>[+-]?{_UNSIGNED})\s*\*\s*)?(?P<ref>{'|'.join(REFERENCES)})"
    rf"(?:\s*(?P<sign>[+-])\s*(?P<offset>{_UNSIGNED}))?"
)
_REL_TOL = 1e-9


class GateInputError(ValueError):
    """Bad input to the gate: a missing or malformed file, check or name (exit code 2)."""


@dataclass(frozen=True)
class Check:
    """A parsed check: `name op threshold` with threshold `scale * reference + offset`, or `offset` alone."""

    text: str
    name: str
    op: str
    reference: str | None = None
    scale: float = 1.0
    offset: float = 0.0


@dataclass(frozen=True)
class Measurement:
    """A value read from an eval.json, with its confidence interval and count when the file gives them."""

    value: float
    ci_low: float | None = None
    ci_high: float | None = None
    n: int | None = None


@dataclass(frozen=True)
class CheckResult:
    """The outcome of one check: the measured value, the threshold it met or missed, and why a NaN failed."""

    check: Check
    measurement: Measurement
    threshold: float
    reference_value: float | None
    passed: bool
    reason: str | None = None


@dataclass(frozen=True)
class EvalValues:
    """The values of one eval.json that checks can name, and where they came from (for messages)."""

    path: str
    role: str
    entries: Mapping[str, Any]

    def measure(self, name: str) -> Measurement:
        """The measurement called `name`; an unknown name is bad input that lists the available ones."""
        if name not in self.entries:
            available = ", ".join(sorted(self.entries)) or "none (the file has no summary and no aggregates)"
            raise GateInputError(
                f"unknown name {name!r} in {self.role} {self.path!r}; available: {available}."
            )
        return _measurement(self.entries[name], name, self)


def _as_number(value: Any) -> float | None:
    """`value` as a float when it is a JSON number (booleans are not), else None."""
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def _measurement(entry: Any, name: str, source: EvalValues) -> Measurement:
    """Read a summary value (a number or {"value", "ci_low", "ci_high", "n"}) or an aggregate ({"mean", ...})."""
    fields = entry if isinstance(entry, Mapping) else {"value": entry}
    raw = fields.get("value", fields.get("mean"))
    # Strict JSON writers store NaN as null: a value that was not computed, which must fail, not crash.
    number = math.nan if raw is None else _as_number(raw)
    if number is None:
        raise GateInputError(
            f"{name} in {source.role} {source.path!r} is {entry!r}; expected a number or an object with a numeric "
            "'value' (summary) or 'mean' (split aggregates)."
        )
    n = fields.get("n")
    return Measurement(
        number,
        _as_number(fields.get("ci_low")),
        _as_number(fields.get("ci_high")),
        n if isinstance(n, int) and not isinstance(n, bool) else None,
    )


def load_eval_values(path: str, role: str) -> EvalValues:
    """Read an eval.json and index its summary values and `split/metric` aggregates by name."""
    try:
        data = json.loads(Path(path).read_bytes())
    except OSError as error:
        raise GateInputError(
            f"cannot read {role} {path!r}: {error.strerror or error}; give the eval.json written by "
            "`llm-unlearn eval` (eval/run.py)."
        ) from error
    except ValueError as error:
        raise GateInputError(f"{role} {path!r} is not valid JSON: {error}.") from error
    summary = data.get("summary", {}) if isinstance(data, Mapping) else None
    splits = data.get("splits", {}) if isinstance(data, Mapping) else None
    if not isinstance(summary, Mapping) or not isinstance(splits, Mapping) or not (summary or splits):
        raise GateInputError(
            f"{role} {path!r} is not an eval.json: expected a JSON object with a 'summary' object and/or a "
            "'splits' object whose splits hold 'aggregates'."
        )
    return eval_values(data, path, role)


def eval_values(result: Mapping[str, Any], path: str, role: str) -> EvalValues:
    """An eval result's numbers by name: summary values, `split/metric` aggregates, `mia/score` AUCs and
    `attack/name/split/metric` means after each robustness attack (a summary name wins)."""
    entries: dict[str, Any] = {
        f"{split}/{metric}": aggregate
        for split, body in result.get("splits", {}).items()
        if isinstance(body, Mapping) and isinstance(body.get("aggregates"), Mapping)
        for metric, aggregate in body["aggregates"].items()
    }
    for score, body in (result.get("mia") or {}).get("scores", {}).items():
        entries[f"mia/{score}"] = {**body, "value": body.get("auc")}
    for attack, body in (result.get("attacks") or {}).items():
        for split, aggregates in body.get("splits", {}).items():
            entries.update(
                {f"attack/{attack}/{split}/{metric}": value for metric, value in aggregates.items()}
            )
    entries.update(result.get("summary", {}))
    return EvalValues(path, role, entries)


def parse_check(text: str) -> Check:
    """Parse `NAME OP RHS` without eval(); a malformed check is bad input that shows the grammar."""
    match = _CHECK.fullmatch(text)
    if match is not None:
        rhs = match["rhs"]
        if _NUMBER.fullmatch(rhs):
            return Check(text, match["name"], match["op"], offset=float(rhs))
        relative = _RELATIVE.fullmatch(rhs)
        if relative is not None:
            offset = float(relative["offset"] or 0.0) * (-1.0 if relative["sign"] == "-" else 1.0)
            scale = float(relative["scale"] or 1.0)
            return Check(text, match["name"], match["op"], relative["ref"], scale, offset)
    raise GateInputError(f"malformed check {text!r}. {GRAMMAR}")


def compare(value: float, op: str, threshold: float) -> bool:
    """`value op threshold`, where values within a relative 1e-9 count as equal."""
    close = math.isclose(value, threshold, rel_tol=_REL_TOL)
    return {
        ">=": value > threshold or close,
        "<=": value < threshold or close,
        ">": value > threshold and not close,
        "<": value < threshold and not close,
        "==": close,
    }[op]


def run_checks(
    checks: Sequence[Check], values: EvalValues, references: Mapping[str, EvalValues]
) -> list[CheckResult]:
    """Evaluate every check against `values` and, for relative thresholds, the reference eval.json files."""
    results = []
    for check in checks:
        measurement = values.measure(check.name)
        reference_value = None
        reason = None
        if check.reference is None:
            threshold = check.offset
        else:
            if check.reference not in references:
                raise GateInputError(
                    f"check {check.text!r} compares with {check.reference!r} but no --{check.reference} "
                    f"eval.json was given; pass --{check.reference} PATH/eval.json or use a number."
                )
            source = references[check.reference]
            reference_value = source.measure(check.name).value
            threshold = check.scale * reference_value + check.offset
            if math.isnan(reference_value):
                reason = f"{check.reference} value of {check.name} is NaN in {source.path}"
        if math.isnan(measurement.value):
            counted = f" (n={measurement.n})" if measurement.n is not None else ""
            reason = f"value is NaN in {values.path}{counted}"
        passed = reason is None and compare(measurement.value, check.op, threshold)
        results.append(CheckResult(check, measurement, threshold, reference_value, passed, reason))
    return results


def _fmt(number: float) -> str:
    """A compact number for the table."""
    return f"{number:.6g}"


def format_table(results: Sequence[CheckResult]) -> str:
    """A fixed-width table (check, value with CI, threshold, result) and a final line with the counts."""
    rows = [("CHECK", "VALUE", "THRESHOLD", "RESULT")]
    for result in results:
        m = result.measurement
        value = _fmt(m.value)
        if m.ci_low is not None and m.ci_high is not None:
            value += f" [{_fmt(m.ci_low)}, {_fmt(m.ci_high)}]"
        threshold = f"{result.check.op} {_fmt(result.threshold)}"
        if result.check.reference is not None:
            threshold += f" ({result.check.reference}={_fmt(result.reference_value)})"
        outcome = "PASS" if result.passed else "FAIL" + (f": {result.reason}" if result.reason else "")
        rows.append((result.check.text, value, threshold, outcome))
    widths = [max(len(row[column]) for row in rows) for column in range(3)]
    # The last column is not padded, so lines carry no trailing spaces.
    lines = ["  ".join([*(row[c].ljust(widths[c]) for c in range(3)), row[3]]) for row in rows]
    lines.insert(1, "-" * len(lines[0]))
    failed = sum(not result.passed for result in results)
    verdict = "PASS" if failed == 0 else "FAIL"
    lines.append(f"{verdict}: {len(results) - failed} of {len(results)} checks passed, {failed} failed")
    return "\n".join(lines)


def _finite(number: float | None) -> float | None:
    """NaN and infinities as null: JSON has no such numbers and strict readers (jq, browsers) reject them."""
    return number if number is not None and math.isfinite(number) else None


def results_to_json(results: Sequence[CheckResult], args: GateArguments) -> dict[str, Any]:
    """The results as a JSON-serialisable record for a CI artifact."""
    failed = sum(not result.passed for result in results)
    return {
        "passed": failed == 0,
        "num_checks": len(results),
        "num_failed": failed,
        "eval_json": args.eval_json,
        "target": args.target,
        "retain": args.retain,
        "checks": [
            {
                "check": r.check.text,
                "name": r.check.name,
                "op": r.check.op,
                "value": _finite(r.measurement.value),
                "ci_low": _finite(r.measurement.ci_low),
                "ci_high": _finite(r.measurement.ci_high),
                "n": r.measurement.n,
                "reference": r.check.reference,
                "reference_value": _finite(r.reference_value),
                "threshold": _finite(r.threshold),
                "passed": r.passed,
                "reason": r.reason,
            }
            for r in results
        ],
    }


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


def gate(args: GateArguments) -> list[CheckResult]:
    """Load the eval.json files and run the checks; raises GateInputError for bad input."""
    if not args.eval_json:
        raise GateInputError("no eval.json given; pass it as the first argument or as eval_json in --config.")
    # YAML `checks: x>=1` gives one string, not a list of characters.
    texts = [args.checks] if isinstance(args.checks, str) else list(args.checks)
    if not texts:
        raise GateInputError(
            f"no checks given; pass --check 'NAME OP RHS' (repeatable) or checks in --config. {GRAMMAR}"
        )
    checks = [parse_check(str(text)) for text in texts]
    values = load_eval_values(args.eval_json, "eval.json")
    paths = {"target": args.target, "retain": args.retain}
    references = {name: load_eval_values(path, f"--{name}") for name, path in paths.items() if path}
    return run_checks(checks, values, references)


def main(args: GateArguments) -> int:
    """Run the gate: print the table (errors to stderr), write --json, return 0 (pass), 1 (fail) or 2 (bad input)."""
    try:
        results = gate(args)
        print(format_table(results))
        if args.output_json:
            try:
                write_json_atomic(results_to_json(results, args), args.output_json)
            except OSError as error:
                raise GateInputError(f"cannot write --json {args.output_json!r}: {error}.") from error
    except GateInputError as error:
        print(f"gate: error: {error}", file=sys.stderr)
        return EXIT_BAD_INPUT
    return EXIT_PASS if all(result.passed for result in results) else EXIT_FAIL


class _GateParser(TrlParser):
    """A TrlParser whose config-file and argument errors end with argparse's usage message and exit code 2."""

    def parse_args_and_config(self, args: Sequence[str] | None = None, **kwargs: Any) -> tuple[Any, ...]:
        """As TrlParser's, but a missing or bad --config file or an unknown argument is bad input (exit 2)."""
        try:
            return super().parse_args_and_config(args, **kwargs)
        except (OSError, ValueError, yaml.YAMLError) as error:
            self.error(str(error))


def make_parser(subparsers: argparse._SubParsersAction | None = None, prog: str | None = None) -> TrlParser:
    """The gate parser: EVAL_JSON positional (or --eval_json), repeatable --check, and `--config file.yaml`."""
    if subparsers is not None:
        parser = subparsers.add_parser("gate", help=__doc__.splitlines()[0], dataclass_types=[GateArguments])
    else:
        parser = _GateParser([GateArguments], prog=prog, description=__doc__)
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
