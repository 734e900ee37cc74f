"""The unlearning report of a deletion request: `unlearning_report.json` (the signed record) and
`unlearning_report.md` (the same content for a privacy officer, read top to bottom).

The report says what was removed (subject ids, example counts and example fingerprints, never the text),
which model versions contained the data and which replaces them, the method and its hyperparameters, how
the result compares with retraining, each test with its value, threshold and outcome, the change in utility,
the time taken against a stated target, and what the method does and does not guarantee. It is signed by the
sha256 of its canonical JSON, so a later change to any value is detectable.
"""

from __future__ import annotations

import contextlib
import copy
import datetime
import hashlib
import json
import math
import os
import re
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from llm_unlearn.data.schema import PERTURBED_FIELD, QA_OPTIONAL_STRINGS, QA_REQUIRED, TEXT_FIELD
from llm_unlearn.evaluation.report import Block, Bullets, Code, Heading, Paragraph, Table, render_markdown
from llm_unlearn.manifest import read_record
from llm_unlearn.sisa.record import EXACT_GUARANTEE

REPORT_JSON = "unlearning_report.json"
REPORT_MD = "unlearning_report.md"
REPORT_FORMAT = "llm-unlearn/unlearning-report"
REPORT_VERSION = 1
SIGNATURE_ALGORITHM = "sha256"
REQUEST_STATUSES = ("received", "running", "verified", "failed")
METHOD_KINDS = ("approximate", "exact")
# Fields that hold training text; a report must never carry them (DESIGN.md: hashes and counts instead).
TEXT_FIELDS = frozenset((*QA_REQUIRED, *QA_OPTIONAL_STRINGS, PERTURBED_FIELD, TEXT_FIELD))
_SHA256_HEX = re.compile(r"[0-9a-f]{64}")

DEFAULT_TARGET_S = 30 * 24 * 3600.0
DEFAULT_TARGET = "30 days (GDPR Art. 12(3): an answer to a request within one month of receipt)"

APPROXIMATE_GUARANTEE = (
    "None beyond the tests in this report. Approximate unlearning changes the model's weights so that it "
    "behaves, on the tests run, less like a model that learned the removed examples; it does not reconstruct "
    "the model that would have been trained without them."
)
APPROXIMATE_LIMITATIONS = (
    "Approximate unlearning does not prove removal. The tests bound what common attacks recover on these "
    "items (the probability the model gives the removed answers, membership inference, and the robustness "
    "attacks listed) at the time of testing; an attack not tested, or a stronger version of one that was, "
    "may still recover information about the removed examples.",
    "Passing a test means the measured value met its threshold on the evaluated items; the thresholds are "
    "choices made for this request, not a legal or statistical standard of erasure.",
    "Information about a subject that is also present in examples kept for training (other subjects' "
    "examples, or public text the base model was trained on) is not removed by removing the subject's "
    "examples.",
    "Earlier model versions listed as having contained the data still contain it until they are deleted.",
)
EXACT_LIMITATIONS = (
    "The guarantee covers the examples identified by the fingerprints above, in the training data recorded "
    "in the lineage; copies of the same information in other examples or in the base model's own "
    "pre-training data are not removed.",
    "The shared base model is frozen and was not trained on this data by this pipeline; if the base model "
    "itself was trained on the subject's data, that influence remains.",
    "Earlier model versions listed as having contained the data, and the shard checkpoints taken after the "
    "removed examples' slice, still contain it until they are deleted.",
    "The shard plan (which subject went to which shard and slice) was made while the subjects were in the "
    "data; it is kept after the deletion, so it still reflects that the subjects were there.",
)
SIGNATURE_NOTE = (
    "The signature is the sha256 of the canonical JSON of unlearning_report.json without its signature "
    "field: recomputing it detects any later change to a value. It is not a secret-key signature: whoever "
    "edits the report can also recompute the hash, so a deliberate change is detectable only against a copy "
    "of the hash kept apart from the report (for example in the request ledger)."
)


class ReportError(ValueError):
    """Bad input to the unlearning report: the message names the section, the field and what is accepted."""


def standard_statements(kind: str) -> tuple[str, tuple[str, ...]]:
    """Return the standard (guarantee, limitations) texts of an `approximate` or `exact` method."""
    if kind not in METHOD_KINDS:
        raise ReportError(f"method kind {kind!r} is not known; use one of {METHOD_KINDS}.")
    if kind == "exact":
        return EXACT_GUARANTEE, EXACT_LIMITATIONS
    return APPROXIMATE_GUARANTEE, APPROXIMATE_LIMITATIONS


def model_artifact(name_or_path: str | os.PathLike, role: str) -> dict[str, Any]:
    """Describe a model for the report's artifacts section: its role, path or Hub id, kind, revision and
    model version (the content id of `llm_unlearn.manifest.model_version`) without the per-file list."""
    record = read_record(name_or_path)
    record.pop("files", None)
    return {"role": role, **record}


def _refuse_text(value: Any, where: str) -> None:
    """Raise ReportError when any mapping inside `value` has a field that holds training text."""
    if isinstance(value, Mapping):
        for key, item in value.items():
            if key in TEXT_FIELDS:
                raise ReportError(
                    f"{where}[{key!r}]: field {key!r} holds training text, which an unlearning report must not "
                    "contain; give counts and example fingerprints (llm_unlearn.data.loading.example_fingerprint) "
                    "instead."
                )
            _refuse_text(item, f"{where}[{key!r}]")
    elif isinstance(value, list | tuple):
        for index, item in enumerate(value):
            _refuse_text(item, f"{where}[{index}]")


def _plain(value: Any) -> Any:
    """A JSON-safe copy: mappings with string keys, lists, finite numbers (NaN and infinities as null)."""
    if isinstance(value, Mapping):
        return {str(key): _plain(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(item) for item in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, datetime.datetime):
        return value.isoformat()
    if value is None or isinstance(value, bool | int | float | str):
        return value
    return str(value)


def _required(section: str, mapping: Mapping, *keys: str) -> None:
    missing = [key for key in keys if key not in mapping]
    if missing:
        raise ReportError(f"{section}: missing {missing}; it needs {list(keys)} (it has {sorted(mapping)}).")


def _timestamp(section: str, key: str, value: Any) -> datetime.datetime | None:
    if value is None:
        return None
    try:
        return datetime.datetime.fromisoformat(str(value))
    except ValueError:
        raise ReportError(
            f"{section}[{key!r}] = {value!r} is not an ISO 8601 time such as 2025-01-31T12:00:00+00:00."
        ) from None


def _request_section(request: Mapping) -> dict[str, Any]:
    _required("request", request, "request_id", "subject_ids", "status", "received_at")
    if request["status"] not in REQUEST_STATUSES:
        raise ReportError(
            f"request status {request['status']!r} is not known; use one of {REQUEST_STATUSES}."
        )
    subjects = request["subject_ids"]
    if isinstance(subjects, str) or not subjects:
        raise ReportError(f"request subject_ids must be a non-empty list of subject ids; got {subjects!r}.")
    _timestamp("request", "received_at", request["received_at"])
    _timestamp("request", "finished_at", request.get("finished_at"))
    return {**request, "subject_ids": list(subjects), "finished_at": request.get("finished_at")}


def _removed_section(removed: Mapping, subject_ids: Sequence[str]) -> dict[str, Any]:
    if set(removed) != set(subject_ids):
        raise ReportError(
            f"removed lists subjects {sorted(removed)} but the request is for {sorted(subject_ids)}; give the "
            "example fingerprints of exactly the request's subjects."
        )
    subjects = []
    for subject in subject_ids:
        fingerprints = removed[subject]
        if isinstance(fingerprints, str) or not isinstance(fingerprints, Sequence):
            raise ReportError(
                f"removed[{subject!r}] must be a list of example fingerprints; got {type(fingerprints).__name__}."
            )
        for index, fingerprint in enumerate(fingerprints):
            if not isinstance(fingerprint, str) or not _SHA256_HEX.fullmatch(fingerprint):
                shown = (
                    fingerprint if isinstance(fingerprint, str) and len(fingerprint) <= 16 else "(not shown)"
                )
                raise ReportError(
                    f"removed[{subject!r}][{index}] = {shown} is not an example fingerprint (64 lowercase hex "
                    "digits of sha256, from llm_unlearn.data.loading.example_fingerprint)."
                )
        subjects.append(
            {"subject_id": subject, "num_examples": len(fingerprints), "fingerprints": list(fingerprints)}
        )
    return {"num_examples": sum(entry["num_examples"] for entry in subjects), "subjects": subjects}


def _artifacts_section(artifacts: Mapping) -> dict[str, Any]:
    _required("artifacts", artifacts, "base_model", "contained_data", "new_model")
    for key in ("base_model", "new_model"):
        if not isinstance(artifacts[key], Mapping) or "path" not in artifacts[key]:
            raise ReportError(f"artifacts[{key!r}] must be a mapping with 'path' (see model_artifact()).")
    for index, entry in enumerate(artifacts["contained_data"]):
        if not isinstance(entry, Mapping) or "path" not in entry:
            raise ReportError(f"artifacts['contained_data'][{index}] must be a mapping with 'path'.")
    return dict(artifacts)


def _method_section(method: Mapping) -> dict[str, Any]:
    _required("method", method, "name", "kind", "hyperparameters")
    if method["kind"] not in METHOD_KINDS:
        raise ReportError(f"method kind {method['kind']!r} is not known; use one of {METHOD_KINDS}.")
    return dict(method)


def _comparison_section(comparison: Mapping | None) -> dict[str, Any]:
    if comparison is None:
        return {"kind": "none", "description": None, "reference": None, "values": {}}
    _required("comparison", comparison, "kind", "description")
    if comparison["kind"] not in METHOD_KINDS:
        raise ReportError(
            f"comparison kind {comparison['kind']!r} is not known; use 'exact' (a retrained shard or model) or "
            "'approximate' (evaluated against a retain model), or comparison=None when not compared."
        )
    return {"reference": None, "values": {}, **comparison}


def _test_entry(index: int, test: Mapping) -> dict[str, Any]:
    _required(f"tests[{index}]", test, "name", "op", "threshold", "value", "passed")
    ci = test.get("ci")
    if ci is None and test.get("ci_low") is not None and test.get("ci_high") is not None:
        ci = [test["ci_low"], test["ci_high"]]
    entry = {
        "check": test.get("check", f"{test['name']}{test['op']}{test['threshold']}"),
        "name": test["name"],
        "op": test["op"],
        "threshold": test["threshold"],
        "value": test["value"],
        "ci": list(ci) if ci is not None else None,
        "passed": bool(test["passed"]),
    }
    for optional in ("reference", "reference_value", "reason", "n"):
        if test.get(optional) is not None:
            entry[optional] = test[optional]
    return entry


def _utility_section(utility: Mapping) -> dict[str, Any]:
    section = {}
    for name, entry in utility.items():
        if not isinstance(entry, Mapping):
            raise ReportError(
                f"utility[{name!r}] must be a mapping with 'before' and 'after'; got {entry!r}."
            )
        _required(f"utility[{name!r}]", entry, "before", "after")
        before, after = entry["before"], entry["after"]
        numbers = all(isinstance(v, int | float) and math.isfinite(v) for v in (before, after))
        section[name] = {"before": before, "after": after, "delta": after - before if numbers else None}
    return section


def _timing_section(timing: Mapping, request: Mapping) -> dict[str, Any]:
    elapsed = timing.get("elapsed_s")
    if elapsed is None:
        received = _timestamp("request", "received_at", request["received_at"])
        finished = _timestamp("request", "finished_at", request.get("finished_at"))
        if finished is None:
            raise ReportError(
                "timing: give elapsed_s, or request finished_at so that the time from receipt can be computed."
            )
        elapsed = (finished - received).total_seconds()
    target_s = float(timing.get("target_s", DEFAULT_TARGET_S))
    return {
        "elapsed_s": float(elapsed),
        "compute_s": timing.get("compute_s"),
        "target_s": target_s,
        "target": timing.get("target", DEFAULT_TARGET),
        "within_target": float(elapsed) <= target_s,
    }


def build_unlearning_report(
    *,
    request: Mapping,
    removed: Mapping,
    artifacts: Mapping,
    method: Mapping,
    comparison: Mapping | None,
    tests: Sequence[Mapping],
    utility: Mapping,
    timing: Mapping,
    guarantee: str,
    limitations: Sequence[str],
    generated_at: str | None = None,
) -> dict[str, Any]:
    """Assemble and check an (unsigned) unlearning report; refuses input that carries training text.

    - request: `request_id`, `subject_ids`, `status` (received, running, verified, failed), `received_at`,
      `finished_at` (ISO 8601); other keys are kept.
    - removed: subject id -> list of example fingerprints (sha256 hex), for exactly the request's subjects.
    - artifacts: `base_model`, `new_model` and `contained_data` (a list): mappings with `path` and, for local
      models, `model_version` (`model_artifact()` builds them).
    - method: `name`, `kind` ('approximate' or 'exact'), `hyperparameters`; other keys (mode, recipe) kept.
    - comparison: None (not compared with retraining), or `kind` ('exact': a retrained shard or model;
      'approximate': measured against a retain model), `description`, and optional `reference`, `values`.
    - tests: the gate's checks (`GateResult.to_json()["checks"]`): `name`, `op`, `threshold`, `value`,
      `passed`, and `ci` or `ci_low`/`ci_high`.
    - utility: metric -> {`before`, `after`}; the change is computed.
    - timing: `elapsed_s` (else from the request's timestamps), `compute_s`, `target_s`, `target` (text).
    - guarantee, limitations: what the method guarantees and does not (`standard_statements(kind)`).
    """
    inputs = {
        "request": request, "removed": removed, "artifacts": artifacts, "method": method,
        "comparison": comparison, "tests": list(tests), "utility": utility, "timing": timing,
    }  # fmt: skip
    for section, value in inputs.items():
        _refuse_text(value, section)
    if not str(guarantee).strip() or not limitations or not all(str(text).strip() for text in limitations):
        raise ReportError(
            "guarantee and limitations must be non-empty plain statements; standard_statements('approximate') "
            "or standard_statements('exact') gives the standard texts."
        )
    request_section = _request_section(request)
    method_section = _method_section(method)
    if method_section["kind"] == "approximate" and guarantee == EXACT_GUARANTEE:
        raise ReportError(
            "an approximate method cannot state the exact-unlearning guarantee; use APPROXIMATE_GUARANTEE."
        )
    test_entries = [_test_entry(index, test) for index, test in enumerate(tests)]
    failed = [entry["check"] for entry in test_entries if not entry["passed"]]
    if request_section["status"] == "verified" and (failed or not test_entries):
        raise ReportError(
            f"request status 'verified' needs every test to pass and at least one test; failed: {failed}, "
            f"tests run: {len(test_entries)}. Record the request as 'failed' instead."
        )
    report = {
        "format": REPORT_FORMAT,
        "version": REPORT_VERSION,
        "generated_at": generated_at or datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "request": request_section,
        "removed": _removed_section(removed, request_section["subject_ids"]),
        "artifacts": _artifacts_section(artifacts),
        "method": method_section,
        "comparison": _comparison_section(comparison),
        "tests": test_entries,
        "tests_passed": not failed if test_entries else None,
        "utility": _utility_section(utility),
        "timing": _timing_section(timing, request_section),
        "guarantee": str(guarantee),
        "limitations": [str(text) for text in limitations],
    }
    return _plain(report)


def canonical_json(report: Mapping) -> str:
    """The report's canonical JSON without its signature: sorted keys, no spaces, ASCII, no NaN."""
    content = {key: value for key, value in report.items() if key != "signature"}
    return json.dumps(content, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False)


def content_hash(report: Mapping) -> str:
    """Return the sha256 hex of the report's canonical JSON (everything but the signature)."""
    return hashlib.sha256(canonical_json(report).encode("ascii")).hexdigest()


def sign(report: Mapping) -> dict[str, Any]:
    """Return a copy of the report with `signature`: the algorithm and the content hash of everything else."""
    signed = {key: copy.deepcopy(value) for key, value in report.items() if key != "signature"}
    signed["signature"] = {"algorithm": SIGNATURE_ALGORITHM, "content_hash": content_hash(signed)}
    return signed


def verification_problem(path: str | os.PathLike) -> str | None:
    """Return None when the report at `path` matches its signature, else a message saying what is wrong."""
    path = Path(path)
    try:
        report = json.loads(path.read_text(encoding="utf-8"))
    except OSError as error:
        return f"{str(path)!r} cannot be read: {error}."
    except ValueError as error:
        return f"{str(path)!r} is not valid JSON: {error}."
    if not isinstance(report, dict) or not isinstance(report.get("signature"), dict):
        return f"{str(path)!r} has no signature; it is not a signed unlearning report."
    signature = report["signature"]
    if signature.get("algorithm") != SIGNATURE_ALGORITHM:
        return f"{str(path)!r}: signature algorithm {signature.get('algorithm')!r} is not {SIGNATURE_ALGORITHM!r}."
    try:
        computed = content_hash(report)
    except ValueError as error:
        return f"{str(path)!r} holds values that have no canonical JSON: {error}."
    if computed != signature.get("content_hash"):
        return (
            f"{str(path)!r} was changed after signing: its content hash is {computed}, the signature records "
            f"{signature.get('content_hash')}."
        )
    return None


def verify_report(path: str | os.PathLike) -> bool:
    """Whether the report at `path` is unchanged since it was signed (see `verification_problem`)."""
    return verification_problem(path) is None


def _fmt(value: Any) -> str:
    if isinstance(value, bool) or value is None:
        return "n/a" if value is None else str(value).lower()
    if isinstance(value, int | float):
        return f"{value:.4g}"
    return str(value)


def _duration(seconds: float) -> str:
    """A duration in the largest unit that keeps it readable: '42 s', '3.5 min', '2.1 h', '4.2 days'."""
    for unit, size in (("days", 86400.0), ("h", 3600.0), ("min", 60.0)):
        if seconds >= size:
            return f"{seconds / size:.3g} {unit}"
    return f"{seconds:.3g} s"


def _hyperparameter_rows(values: Mapping, prefix: str = "") -> list[list[str]]:
    rows = []
    for key, value in values.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            rows += _hyperparameter_rows(value, f"{name}.")
        else:
            shown = json.dumps(value) if isinstance(value, list | dict) else _fmt(value)
            rows.append([Code(name), shown])
    return rows


def _artifact_row(entry: Mapping, role: str) -> list[str]:
    where = Code(str(entry["path"]))
    if entry.get("revision"):
        where = Code(f"{entry['path']} @ {entry['revision']}")
    version = entry.get("model_version")
    return [entry.get("role", role), where, Code(version) if version else "not recorded"]


def _summary_paragraph(report: Mapping) -> Paragraph:
    removed, method, timing = report["removed"], report["method"], report["timing"]
    tests = report["tests"]
    passed = sum(test["passed"] for test in tests)
    tests_text = f"{passed} of {len(tests)} tests passed" if tests else "No tests were run"
    within = "within" if timing["within_target"] else "NOT within"
    return Paragraph(
        (
            f"Request to remove the training data of {len(removed['subjects'])} subject(s) "
            f"({removed['num_examples']} examples), processed by {method['name']} ({method['kind']} "
            f"unlearning); status: {report['request']['status']}. {tests_text}. Time taken: "
            f"{_duration(timing['elapsed_s'])}, {within} the target of {timing['target']}.",
        )
    )


def report_blocks(report: Mapping) -> list[Block]:
    """The report as Markdown blocks, in reading order: request, removed data, artifacts, method, comparison
    with retraining, tests, utility, time, guarantee and limitations, signature."""
    request, removed, artifacts = report["request"], report["removed"], report["artifacts"]
    method, comparison, timing = report["method"], report["comparison"], report["timing"]
    blocks: list[Block] = [
        Heading(1, f"Unlearning report: request {request['request_id']}"),
        Paragraph((f"Generated {report['generated_at']}.",)),
        _summary_paragraph(report),
        Heading(2, "1. Request"),
        Table(
            ["Field", "Value"],
            [
                ["Request id", Code(str(request["request_id"]))],
                ["Subjects", ", ".join(request["subject_ids"])],
                ["Received", str(request["received_at"])],
                ["Finished", str(request["finished_at"] or "not finished")],
                ["Status", str(request["status"])],
            ],
        ),
        Heading(2, "2. What was removed"),
        Paragraph(
            (
                "The removed text is not in this report. Each removed training example is identified by its "
                "fingerprint, the sha256 of its content (",
                Code("llm_unlearn.data.loading.example_fingerprint"),
                "), which the data holder can recompute to check which examples were meant.",
            )
        ),
        Table(
            ["Subject", "Examples removed"],
            [[entry["subject_id"], str(entry["num_examples"])] for entry in removed["subjects"]]
            + [["Total", str(removed["num_examples"])]],
        ),
    ]
    for entry in removed["subjects"]:
        blocks += [
            Paragraph((f"Example fingerprints of subject {entry['subject_id']}:",)),
            Bullets([(Code(fingerprint),) for fingerprint in entry["fingerprints"]] or [("none",)]),
        ]
    rows = [_artifact_row(artifacts["base_model"], "base model")]
    rows += [_artifact_row(entry, "contained the subject's data") for entry in artifacts["contained_data"]]
    rows.append(_artifact_row(artifacts["new_model"], "new model (after removal)"))
    blocks += [
        Heading(2, "3. Affected artifacts"),
        Paragraph(
            (
                "A model version is the sha256 over the sorted (file, sha256) pairs of its weight files (",
                Code("llm_unlearn.manifest.model_version"),
                "): the same weights give the same id wherever they are stored.",
            )
        ),
        Table(["Role", "Artifact", "Model version"], rows),
        Heading(2, "4. Method"),
        Paragraph(
            (
                f"{method['name']} ({method['kind']} unlearning"
                + (f", {method['mode']}" if method.get("mode") else "")
                + ")"
                + (". Recipe: " if method.get("recipe") else "."),
                *((Code(str(method["recipe"])), ".") if method.get("recipe") else ()),
            )
        ),
    ]
    hyperparameters = _hyperparameter_rows(method["hyperparameters"])
    blocks.append(
        Table(["Hyperparameter", "Value"], hyperparameters)
        if hyperparameters
        else Paragraph(("No hyperparameters recorded.",))
    )
    blocks.append(Heading(2, "5. Comparison with retraining"))
    if comparison["kind"] == "none":
        blocks.append(
            Paragraph(
                (
                    "Not compared. No model retrained without the removed examples was evaluated for this "
                    "request, so how close the result is to such a model is not known.",
                )
            )
        )
    else:
        blocks.append(Paragraph((f"{comparison['kind'].capitalize()}: {comparison['description']}",)))
        if comparison.get("reference"):
            blocks.append(Paragraph(("Reference: ", Code(str(comparison["reference"])))))
        if comparison["values"]:
            blocks.append(
                Table(["Measure", "Value"], [[Code(k), _fmt(v)] for k, v in comparison["values"].items()])
            )
    blocks.append(Heading(2, "6. Tests"))
    if report["tests"]:
        passed = sum(test["passed"] for test in report["tests"])
        test_rows = []
        for test in report["tests"]:
            value = _fmt(test["value"])
            if test["ci"] is not None:
                value += f" [{_fmt(test['ci'][0])}, {_fmt(test['ci'][1])}]"
            threshold = f"{test['op']} {_fmt(test['threshold'])}"
            if test.get("reference") is not None:
                threshold += f" ({test['reference']} = {_fmt(test.get('reference_value'))})"
            threshold = Code(threshold)
            outcome = (
                "pass" if test["passed"] else "FAIL" + (f": {test['reason']}" if test.get("reason") else "")
            )
            test_rows.append([Code(test["check"]), value, threshold, outcome])
        blocks += [
            Table(["Test", "Value [95% CI]", "Threshold", "Result"], test_rows),
            Paragraph((f"{passed} of {len(report['tests'])} tests passed.",)),
        ]
    else:
        blocks.append(Paragraph(("No tests were run.",)))
    blocks.append(Heading(2, "7. Change in utility"))
    if report["utility"]:
        blocks.append(
            Table(
                ["Measure", "Before", "After", "Change"],
                [
                    [Code(name), _fmt(e["before"]), _fmt(e["after"]), _fmt(e["delta"])]
                    for name, e in report["utility"].items()
                ],
            )
        )
    else:
        blocks.append(Paragraph(("Utility was not measured.",)))
    compute = (
        f" Compute time: {_duration(timing['compute_s'])}." if timing.get("compute_s") is not None else ""
    )
    blocks += [
        Heading(2, "8. Time taken"),
        Paragraph(
            (
                f"From receipt to finish: {_duration(timing['elapsed_s'])}. Target: {timing['target']}. "
                f"{'Within' if timing['within_target'] else 'NOT within'} the target.{compute}",
            )
        ),
        Heading(2, "9. What this guarantees and what it does not"),
        Paragraph((f"Guarantee: {report['guarantee']}",)),
        Paragraph(("Limitations:",)),
        Bullets([(text,) for text in report["limitations"]]),
        Heading(2, "Signature"),
    ]
    signature = report.get("signature")
    if signature:
        blocks.append(
            Paragraph(
                (
                    f"Algorithm {signature['algorithm']}, content hash ",
                    Code(signature["content_hash"]),
                    ". This document is a rendering of ",
                    Code(REPORT_JSON),
                    "; the signature covers that file. Check it with ",
                    Code(f"llm_unlearn.deletion.verify_report('{REPORT_JSON}')"),
                    ".",
                )
            )
        )
    else:
        blocks.append(Paragraph(("Not signed.",)))
    blocks.append(Paragraph((SIGNATURE_NOTE,)))
    return blocks


def render_report_markdown(report: Mapping) -> str:
    """The report as GitHub Markdown, every section in reading order."""
    return render_markdown(report_blocks(report), {})


def write_unlearning_report(
    report: Mapping, directory: str | os.PathLike, overwrite: bool = False
) -> tuple[Path, Path]:
    """Sign the report (or check its signature) and write unlearning_report.json and .md into `directory`;
    both files appear complete or not at all, and existing reports are kept unless `overwrite`."""
    directory = Path(directory)
    if "signature" in report and report["signature"] != sign(report)["signature"]:
        raise ReportError("the report was changed after it was signed; build and sign it again.")
    signed = sign(report)
    paths = (directory / REPORT_JSON, directory / REPORT_MD)
    existing = [str(path) for path in paths if path.exists()]
    if existing and not overwrite:
        raise FileExistsError(f"{existing} already exist; pass overwrite=True to replace them.")
    # Render both texts before touching the disk, so bad content fails with nothing written.
    texts = (json.dumps(signed, indent=2, allow_nan=False) + "\n", render_report_markdown(signed))
    directory.mkdir(parents=True, exist_ok=True)
    temporary: list[str] = []
    placed: list[Path] = []
    try:
        for path, text in zip(paths, texts, strict=True):
            fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=directory)
            temporary.append(tmp)
            with os.fdopen(fd, "w", encoding="utf-8") as handle:
                handle.write(text)
        # Both files are complete on disk before either is renamed into place.
        for tmp, path in zip(temporary, paths, strict=True):
            os.replace(tmp, path)
            placed.append(path)
    except BaseException:
        for tmp in temporary:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
        # A report without its other half is a partial report: take back a new file that did land.
        for path in placed:
            if str(path) not in existing:
                path.unlink()
        raise
    return paths
