"""The unlearning report: every section rendered, fingerprints without text, signing and verification, and
an all-or-nothing write."""

from __future__ import annotations

import copy
import hashlib
import json
import os
from pathlib import Path

import pytest

from llm_unlearn.data.loading import example_fingerprint
from llm_unlearn.deletion import (
    APPROXIMATE_GUARANTEE,
    APPROXIMATE_LIMITATIONS,
    EXACT_GUARANTEE,
    REPORT_JSON,
    REPORT_MD,
    ReportError,
    build_unlearning_report,
    model_artifact,
    sign,
    standard_statements,
    verification_problem,
    verify_report,
    write_unlearning_report,
)
from llm_unlearn.deletion.paths import RecipePath
from llm_unlearn.evaluation.results import EvalResultBuilder, save_eval
from llm_unlearn.models import ModelArguments

EXAMPLES = {
    "person-0000": [
        {"question": "Where was Ana Vel born?", "answer": "Ana Vel was born in Portoro."},
        {"question": "What does Ana Vel do?", "answer": "Ana Vel repairs clocks."},
    ],
    "person-0003": [{"question": "What is Bo Lin's pet?", "answer": "Bo Lin keeps a grey heron."}],
}
FINGERPRINTS = {subject: [example_fingerprint(row) for row in rows] for subject, rows in EXAMPLES.items()}
VERSION_A = "a" * 64
VERSION_B = "b" * 64
GATE_CHECKS = [
    {
        "check": "forget/probability<=0.5*target", "name": "forget/probability", "op": "<=",
        "value": 0.12, "ci_low": 0.08, "ci_high": 0.16, "n": 3, "reference": "target",
        "reference_value": 0.9, "threshold": 0.45, "passed": True, "reason": None,
    },
    {"name": "forget_quality", "op": ">=", "threshold": 0.05, "value": 0.31, "ci": [0.2, 0.4], "passed": True},
]  # fmt: skip


def report_inputs(**changes):
    inputs = {
        "request": {
            "request_id": "req-7f3a",
            "subject_ids": ["person-0000", "person-0003"],
            "status": "verified",
            "received_at": "2025-03-01T09:00:00+00:00",
            "finished_at": "2025-03-01T11:30:00+00:00",
        },
        "removed": FINGERPRINTS,
        "artifacts": {
            "base_model": {"path": "embedded", "kind": "embedded", "model_version": "c" * 64},
            "contained_data": [{"role": "target model", "path": "/runs/target", "model_version": VERSION_A}],
            "new_model": {"path": "/runs/req-7f3a/model", "model_version": VERSION_B},
        },
        "method": {
            "name": "grad_diff",
            "kind": "approximate",
            "mode": "lora",
            "recipe": "configs/builtin/graddiff_lora.yaml",
            "hyperparameters": {"learning_rate": 1e-4, "max_steps": 20, "method_args": {"retain_weight": 1.0}},
        },
        "comparison": {
            "kind": "approximate",
            "description": "evaluated against the retain model, which never saw the subjects' examples.",
            "reference": "/runs/retain/eval.json",
            "values": {"forget_quality": 0.31, "privleak": -3.5},
        },
        "tests": GATE_CHECKS,
        "utility": {"model_utility": {"before": 0.5, "after": 0.45}, "retain/probability": {"before": 0.9, "after": 0.8}},
        "timing": {"compute_s": 420.0, "target_s": 30 * 86400.0, "target": "30 days (GDPR Art. 12(3))"},
        "guarantee": APPROXIMATE_GUARANTEE,
        "limitations": APPROXIMATE_LIMITATIONS,
        "generated_at": "2025-03-01T11:31:00+00:00",
    }  # fmt: skip
    inputs.update(changes)
    return inputs


def test_report_holds_counts_fingerprints_and_computed_values():
    report = build_unlearning_report(**report_inputs())
    assert report["removed"]["num_examples"] == 3
    subjects = {entry["subject_id"]: entry for entry in report["removed"]["subjects"]}
    assert subjects["person-0000"]["num_examples"] == 2
    assert subjects["person-0003"]["fingerprints"] == FINGERPRINTS["person-0003"]
    # 2.5 hours from receipt to finish, computed from the request's timestamps.
    assert report["timing"]["elapsed_s"] == 9000.0 and report["timing"]["within_target"] is True
    assert report["utility"]["model_utility"]["delta"] == pytest.approx(-0.05)
    assert report["tests"][0]["ci"] == [0.08, 0.16] and report["tests"][1]["check"] == "forget_quality>=0.05"
    assert report["tests_passed"] is True
    assert "signature" not in report


def test_markdown_renders_every_section_and_no_removed_text(tmp_path):
    json_path, md_path = write_unlearning_report(build_unlearning_report(**report_inputs()), tmp_path)
    md = md_path.read_text()
    headings = [line for line in md.splitlines() if line.startswith("#")]
    assert headings == [
        "# Unlearning report: request req-7f3a", "## 1. Request", "## 2. What was removed",
        "## 3. Affected artifacts", "## 4. Method", "## 5. Comparison with retraining", "## 6. Tests",
        "## 7. Change in utility", "## 8. Time taken", "## 9. What this guarantees and what it does not",
        "## Signature",
    ]  # fmt: skip
    for expected in (
        "person-0000, person-0003",
        "| person-0000 | 2 |",
        "| Total | 3 |",
        f"`{VERSION_A}`",
        f"`{VERSION_B}`",
        "`method_args.retain_weight` | 1 |",
        "| `forget/probability<=0.5*target` | 0.12 [0.08, 0.16] | `<= 0.45 (target = 0.9)` | pass |",
        "| `model_utility` | 0.5 | 0.45 | -0.05 |",
        "2.5 h. Target: 30 days (GDPR Art. 12(3)). Within the target.",
        "Approximate unlearning does not prove removal",
        "status: verified. 2 of 2 tests passed. Time taken: 2.5 h, within the target",
        json.loads(json_path.read_text())["signature"]["content_hash"],
    ):
        assert expected in md, expected
    for fingerprint in FINGERPRINTS["person-0000"]:
        assert fingerprint in md and fingerprint in json_path.read_text()
    for rows in EXAMPLES.values():
        for row in rows:
            for text in row.values():
                assert text not in md and text not in json_path.read_text()


def test_not_compared_and_exact_guarantee_are_stated_plainly(tmp_path):
    guarantee, limitations = standard_statements("exact")
    report = build_unlearning_report(
        **report_inputs(
            comparison=None,
            method={"name": "sisa", "kind": "exact", "hyperparameters": {"num_shards": 4}},
            guarantee=guarantee,
            limitations=limitations,
        )
    )
    md = write_unlearning_report(report, tmp_path)[1].read_text()
    assert report["comparison"]["kind"] == "none"
    assert "Not compared. No model retrained without the removed examples was evaluated" in md
    assert "none of which was trained on the subject" in md and guarantee == EXACT_GUARANTEE


def test_signature_verifies_and_any_change_breaks_it(tmp_path):
    json_path, _ = write_unlearning_report(build_unlearning_report(**report_inputs()), tmp_path)
    assert verify_report(json_path) and verification_problem(json_path) is None
    original = json.loads(json_path.read_text())
    content = {key: value for key, value in original.items() if key != "signature"}
    canonical = json.dumps(content, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    assert original["signature"] == {
        "algorithm": "sha256",
        "content_hash": hashlib.sha256(canonical.encode()).hexdigest(),
    }
    edits = [
        lambda r: r["tests"][0].update(value=0.5),
        lambda r: r["tests"][1].update(passed=False),
        lambda r: r["removed"]["subjects"][0]["fingerprints"].pop(),
        lambda r: r["request"].update(status="failed"),
        lambda r: r["limitations"].append("none"),
        lambda r: r.update(extra=1),
        lambda r: r["signature"].update(content_hash="0" * 64),
    ]
    for edit in edits:
        changed = copy.deepcopy(original)
        edit(changed)
        json_path.write_text(json.dumps(changed, indent=2))
        assert not verify_report(json_path)
    json_path.write_text(json.dumps(original, indent=4))
    assert verify_report(json_path), "whitespace is not content"
    json_path.write_text(json.dumps(changed | {"signature": None}))
    assert "has no signature" in verification_problem(json_path)
    assert "cannot be read" in verification_problem(tmp_path / "missing.json")


def test_sign_is_over_everything_but_the_signature():
    report = build_unlearning_report(**report_inputs())
    signed = sign(report)
    assert sign(signed) == signed and "signature" not in report
    assert sign({**report, "generated_at": "2025-03-02T00:00:00+00:00"})["signature"] != signed["signature"]


@pytest.mark.parametrize(
    ("section", "value", "field"),
    [
        ("removed", {"person-0000": EXAMPLES["person-0000"], "person-0003": FINGERPRINTS["person-0003"]}, "question"),
        ("tests", [{**GATE_CHECKS[0], "text": "Ana Vel"}], "text"),
        ("method", {"name": "x", "kind": "approximate", "hyperparameters": {"answer": "Bo Lin"}}, "answer"),
    ],
)  # fmt: skip
def test_input_with_text_fields_is_refused(section, value, field):
    with pytest.raises(ReportError, match=rf"field '{field}' holds training text.*example fingerprints"):
        build_unlearning_report(**report_inputs(**{section: value}))


def test_bad_input_is_refused_with_what_would_be_accepted():
    text_as_fingerprint = {"person-0000": ["Ana Vel was born in Portoro."], "person-0003": []}
    with pytest.raises(ReportError, match=r"\(not shown\) is not an example fingerprint \(64 lowercase hex"):
        build_unlearning_report(**report_inputs(removed=text_as_fingerprint))
    with pytest.raises(ReportError, match=r"removed lists subjects \['person-0000'\] but the request is for"):
        build_unlearning_report(**report_inputs(removed={"person-0000": FINGERPRINTS["person-0000"]}))
    with pytest.raises(ReportError, match=r"status 'verified' needs every test to pass.*'failed' instead"):
        build_unlearning_report(**report_inputs(tests=[{**GATE_CHECKS[1], "passed": False}]))
    with pytest.raises(ReportError, match=r"approximate method cannot state the exact-unlearning guarantee"):
        build_unlearning_report(**report_inputs(guarantee=EXACT_GUARANTEE))
    with pytest.raises(ReportError, match=r"guarantee and limitations must be non-empty"):
        build_unlearning_report(**report_inputs(limitations=[]))
    with pytest.raises(ReportError, match=r"request status 'done' is not known; use one of"):
        build_unlearning_report(**report_inputs(request={**report_inputs()["request"], "status": "done"}))
    with pytest.raises(ReportError, match=r"received_at'\] = 'yesterday' is not an ISO 8601 time"):
        build_unlearning_report(
            **report_inputs(request={**report_inputs()["request"], "received_at": "yesterday"})
        )


def test_failed_request_report_shows_the_failing_test(tmp_path):
    failing = [{**GATE_CHECKS[1], "value": 0.01, "passed": False}]
    request = {**report_inputs()["request"], "status": "failed"}
    report = build_unlearning_report(**report_inputs(request=request, tests=failing))
    md = write_unlearning_report(report, tmp_path)[1].read_text()
    assert report["tests_passed"] is False
    assert (
        "| `forget_quality>=0.05` | 0.01 [0.2, 0.4] | `>= 0.05` | FAIL |" in md
        and "0 of 1 tests passed" in md
    )


def test_write_is_all_or_nothing_and_never_overwrites_by_default(tmp_path, monkeypatch):
    report = build_unlearning_report(**report_inputs())
    real_replace = os.replace
    calls = []

    def failing_replace(src, dst):
        calls.append(dst)
        if len(calls) == 2:
            raise OSError("disk full")
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", failing_replace)
    with pytest.raises(OSError, match="disk full"):
        write_unlearning_report(report, tmp_path / "out")
    assert list((tmp_path / "out").iterdir()) == []
    monkeypatch.setattr(os, "replace", real_replace)
    with pytest.raises(ReportError, match="changed after it was signed"):
        write_unlearning_report({**sign(report), "tests_passed": False}, tmp_path / "out")
    assert list((tmp_path / "out").iterdir()) == []
    paths = write_unlearning_report(report, tmp_path / "out")
    assert [path.name for path in paths] == [REPORT_JSON, REPORT_MD]
    with pytest.raises(FileExistsError, match="already exist; pass overwrite=True"):
        write_unlearning_report(report, tmp_path / "out")
    write_unlearning_report(report, tmp_path / "out", overwrite=True)
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [REPORT_JSON, REPORT_MD]


def test_model_artifact_names_a_local_model_by_its_version(tiny_model_dir):
    from llm_unlearn.manifest import model_version

    entry = model_artifact(tiny_model_dir, "target model")
    assert entry["role"] == "target model" and entry["kind"] == "directory"
    assert entry["model_version"] == model_version(tiny_model_dir) and "files" not in entry


def test_the_approximate_comparison_divides_the_unlearning_cost_by_the_retain_models(tmp_path):
    def run_dir(name: str, seconds: float, steps: int) -> str:
        directory = tmp_path / name
        directory.mkdir()
        run = {"train_metrics": {"train_runtime": seconds}, "log_history": [{"loss": 1.0, "step": steps - 1},
               {"train_runtime": seconds, "step": steps}]}  # fmt: skip
        (directory / "run.json").write_text(json.dumps(run))
        return str(directory)

    unlearned, retain = run_dir("unlearned", 50.0, 8), run_dir("retain", 200.0, 32)
    reference = save_eval(EvalResultBuilder(model=retain).build(), tmp_path / "retain_eval.json")
    evaluation = (
        EvalResultBuilder().summary("forget_quality", 0.2).summary("privleak", None, reason="no reference").build()
    )
    path = RecipePath(ModelArguments(model_name_or_path=unlearned), "recipe.yaml")
    comparison = path.comparison(Path(unlearned), evaluation, str(reference))
    assert comparison["kind"] == "approximate" and comparison["reference"] == str(reference.resolve())
    assert comparison["values"] == {
        "forget_quality": 0.2, "unlearning_steps": 8, "retraining_steps": 32, "cost_fraction_steps": 0.25,
        "unlearning_train_s": 50.0, "retraining_train_s": 200.0, "cost_fraction_seconds": 0.25,
    }  # fmt: skip
    # A retain model that is not a local run gives no cost, and no reference gives no comparison.
    save_eval(EvalResultBuilder(model="someone/retain-model").build(), reference)
    values = path.comparison(Path(unlearned), evaluation, str(reference))["values"]
    assert values == {"forget_quality": 0.2}
    assert path.comparison(Path(unlearned), evaluation, None) is None
