"""Gate on an eval.json: checks such as `forget_quality>=0.05` or `model_utility>=0.9*target`, evaluated into a
table and a JSON record (`llm-unlearn gate` is the command).

A check is `NAME OP RHS`. NAME is a number of the eval result as `EvalResult.measure` names it: a key of the
top-level `summary` (`forget_quality`, `privleak`), or `split/metric`, the mean of that split's aggregate
(`forget/probability`), or `mia/score`, a membership AUC (`mia/min_k`), or `attack/name/split/metric`, a mean
after a robustness attack (`attack/quantize_4bit/forget/probability`), or `harness/task/metric`, an
lm-evaluation-harness score (`harness/mmlu/acc`); a summary key wins if a name exists twice.
OP is one of `>=`, `<=`, `>`, `<`, `==`. RHS is a number, or `REF`, `k*REF`, `REF+c`, `REF-c` (or `k*REF+c`)
where REF is `target` or `retain`: the same NAME in the target's or the retain model's eval.json. Values within a
relative 1e-9 of the threshold count as equal, so `0.9*target` is not missed by floating-point rounding. A value
that was not computed (null, with the reason eval.json records, or NaN) never passes.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from llm_unlearn.evaluation.results import EvalFileError, EvalResult, Measurement, load_eval

REFERENCES = ("target", "retain")
GRAMMAR = (
    "A check is 'NAME OP RHS': NAME is a summary key (forget_quality), split/metric (forget/probability), "
    "mia/score (mia/min_k), attack/name/split/metric (attack/relearn/forget_rest/probability) or "
    "harness/task/metric (harness/mmlu/acc); "
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
    """Bad input to the gate: a missing or malformed file, check or name."""


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
class CheckResult:
    """The outcome of one check: the measured value, the threshold it met or missed, and why a value that was not
    computed failed."""

    check: Check
    measurement: Measurement
    threshold: float
    reference_value: float | None
    passed: bool
    reason: str | None = None


@dataclass(frozen=True)
class GateInput:
    """One eval.json the checks read, and its role in messages (`eval.json`, `--target`, `--retain`)."""

    role: str
    result: EvalResult

    @property
    def path(self) -> str:
        """Where the eval result was read from."""
        return self.result.source

    def measure(self, name: str) -> Measurement:
        """The number called `name`; an unknown name is bad input that lists the available ones."""
        names = self.result.names()
        if name not in names:
            available = ", ".join(sorted(names)) or "none (the file has no summary and no aggregates)"
            raise GateInputError(f"unknown name {name!r} in {self.role} {self.path!r}; available: {available}.")
        return self.result.measure(name)

    def missing(self, measurement: Measurement) -> str:
        """Why `measurement`, which has no value, has none: the reason eval.json records, else that it is NaN."""
        if measurement.reason is not None:
            return f"not computed in {self.path}: {measurement.reason}"
        counted = f" (n={measurement.n})" if measurement.n is not None else ""
        return f"NaN in {self.path}{counted}"


def read_gate_input(path: str | os.PathLike, role: str) -> GateInput:
    """Read the eval.json at `path` for the gate; a missing or malformed file is bad input that names it."""
    try:
        return GateInput(role, load_eval(path))
    except (OSError, EvalFileError) as error:
        raise GateInputError(f"{role}: {error}") from error


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
    checks: Sequence[Check], values: GateInput, references: Mapping[str, GateInput]
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
            reference = source.measure(check.name)
            reference_value = reference.value
            threshold = check.scale * reference_value + check.offset
            if not reference.computed:
                reason = f"{check.reference} value of {check.name} is {source.missing(reference)}"
        if not measurement.computed:
            reason = f"value is {values.missing(measurement)}"
        passed = reason is None and compare(measurement.value, check.op, threshold)
        results.append(CheckResult(check, measurement, threshold, reference_value, passed, reason))
    return results


def _fmt(number: float) -> str:
    """A compact number for the table."""
    return f"{number:.6g}"


def _finite(number: float | None) -> float | None:
    """NaN and infinities as null: JSON has no such numbers and strict readers (jq, browsers) reject them."""
    return number if number is not None and math.isfinite(number) else None


@dataclass(frozen=True)
class GateResult:
    """The gate's outcome: which eval.json files it read and the result of every check."""

    eval_json: str
    target: str | None
    retain: str | None
    checks: list[CheckResult]

    @property
    def num_failed(self) -> int:
        """How many checks failed."""
        return sum(not result.passed for result in self.checks)

    @property
    def passed(self) -> bool:
        """Whether every check passed."""
        return self.num_failed == 0

    def table(self) -> str:
        """A fixed-width table (check, value with CI, threshold, result) and a final line with the counts."""
        rows = [("CHECK", "VALUE", "THRESHOLD", "RESULT")]
        for result in self.checks:
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
        total, failed = len(self.checks), self.num_failed
        verdict = "PASS" if self.passed else "FAIL"
        lines.append(f"{verdict}: {total - failed} of {total} checks passed, {failed} failed")
        return "\n".join(lines)

    def to_json(self) -> dict[str, Any]:
        """The outcome as a strict-JSON record for a CI artifact (and the unlearning report's tests)."""
        return {
            "passed": self.passed,
            "num_checks": len(self.checks),
            "num_failed": self.num_failed,
            "eval_json": self.eval_json,
            "target": self.target,
            "retain": self.retain,
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
                for r in self.checks
            ],
        }


def run_gate(
    eval_json: str | os.PathLike,
    checks: Sequence[str],
    *,
    target: str | os.PathLike | None = None,
    retain: str | os.PathLike | None = None,
) -> GateResult:
    """Parse `checks`, read `eval_json` and the `target` and `retain` eval.json files they compare with, and run
    every check; GateInputError for bad input (a check, a file or a name)."""
    if not checks:
        raise GateInputError(f"no checks given; a gate needs at least one. {GRAMMAR}")
    parsed = [parse_check(text) for text in checks]
    values = read_gate_input(eval_json, "the eval.json to gate")
    paths = {"target": target, "retain": retain}
    references = {name: read_gate_input(path, f"--{name}") for name, path in paths.items() if path}
    return GateResult(
        eval_json=str(eval_json),
        target=None if target is None else str(target),
        retain=None if retain is None else str(retain),
        checks=run_checks(parsed, values, references),
    )
