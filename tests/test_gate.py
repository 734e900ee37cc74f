"""The CI gate: check parsing, each operator, summary and split names, relative thresholds against target and
retain, exit codes through the CLI and the script, error messages, the table, --json and --config."""

from __future__ import annotations

import json
import math
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from llm_unlearn import cli
from llm_unlearn.evaluation.gate import GRAMMAR, Check, parse_check, run_gate
from llm_unlearn.evaluation.results import EvalResultBuilder, Measurement, MembershipAuc, save_eval

REPO = Path(__file__).resolve().parents[1]
NO_REFERENCE = "no reference eval given (pass --reference_eval retain/eval.json)"


def write_eval(
    path: Path,
    summary: dict[str, float | dict[str, Any] | None] | None = None,
    aggregates: dict[str, dict[str, float | Measurement]] | None = None,
) -> str:
    """Write an eval.json through the results module: `summary` maps a name to its value (or to the value's fields,
    null values with the reason the evaluator records) and `aggregates` maps split -> metric -> mean over 3
    items."""
    builder = EvalResultBuilder(model="m", wall_time_s=1.0)
    for split, metrics in (aggregates or {}).items():
        builder.split(split, metrics, num_items=3)
    for name, value in (summary or {}).items():
        fields = value if isinstance(value, dict) else {"value": value}
        if fields["value"] is None:
            fields = {"reason": NO_REFERENCE, **fields}
        builder.summary(name, **fields)
    return str(save_eval(builder.build(), path))


@pytest.fixture
def evals(tmp_path: Path) -> dict[str, str]:
    """An unlearned, a target and a retain eval.json with hand-picked values."""
    return {
        "eval": write_eval(
            tmp_path / "unlearned" / "eval.json",
            summary={
                "forget_quality": {"value": 0.12, "ci_low": 0.05, "ci_high": 0.2, "n": 40},
                "model_utility": 0.46,
            },
            aggregates={
                "forget": {"probability": 0.2},
                "retain": {"probability": 0.72, "rouge_l_recall": 0.6},
            },
        ),
        "target": write_eval(
            tmp_path / "target" / "eval.json",
            summary={"model_utility": 0.5},
            aggregates={
                "forget": {"probability": 0.8},
                "retain": {"probability": 0.75, "rouge_l_recall": 0.7},
            },
        ),
        "retain": write_eval(
            tmp_path / "retain" / "eval.json",
            summary={"model_utility": {"value": 0.48}},
            aggregates={
                "forget": {"probability": 0.25},
                "retain": {"probability": 0.7, "rouge_l_recall": 0.65},
            },
        ),
    }


def gate_cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    """`llm-unlearn gate ARGV` in-process: exit code, stdout, stderr."""
    code = cli.main(["gate", *argv])
    out, err = capsys.readouterr()
    return code, out, err


def row(out: str, check: str) -> str:
    """The table line of `check`."""
    (line,) = [line for line in out.splitlines() if line.startswith(check + " ")]
    return line


# Check parsing


def test_parse_check_forms() -> None:
    assert parse_check("forget_quality>=0.05") == Check(
        "forget_quality>=0.05", "forget_quality", ">=", offset=0.05
    )
    assert parse_check(" retain/rouge_l_recall < -1.5e-2 ") == Check(
        " retain/rouge_l_recall < -1.5e-2 ", "retain/rouge_l_recall", "<", offset=-0.015
    )
    assert parse_check("a==target") == Check("a==target", "a", "==", "target", 1.0, 0.0)
    assert parse_check("a>0.9 * target") == Check("a>0.9 * target", "a", ">", "target", 0.9, 0.0)
    assert parse_check("a<=retain+0.1") == Check("a<=retain+0.1", "a", "<=", "retain", 1.0, 0.1)
    assert parse_check("a>=retain - .25") == Check("a>=retain - .25", "a", ">=", "retain", 1.0, -0.25)
    assert parse_check("a>=2*target-1") == Check("a>=2*target-1", "a", ">=", "target", 2.0, -1.0)


@pytest.mark.parametrize(
    "text",
    [
        "a=>1",
        "a=1",
        "a!=1",
        "a>=",
        ">=1",
        "a>=0.9*",
        "a>=target*0.9",
        "a>=nan",
        "a>=model",
        "a>=1 2",
        "a b>=1",
    ],
)
def test_parse_check_rejects_malformed(text: str) -> None:
    with pytest.raises(ValueError, match="malformed check") as error:
        parse_check(text)
    assert repr(text) in str(error.value)


# Operators and names


@pytest.mark.parametrize(
    ("op", "expected"),
    # Exit codes (0 pass, 1 fail) for the values 0.4, 0.5 and 0.6 against the threshold 0.5.
    [(">=", (1, 0, 0)), ("<=", (0, 0, 1)), (">", (1, 1, 0)), ("<", (0, 1, 1)), ("==", (1, 0, 1))],
)
def test_each_operator(tmp_path: Path, capsys: pytest.CaptureFixture[str], op: str, expected: tuple) -> None:
    for value, code in zip((0.4, 0.5, 0.6), expected, strict=True):
        path = write_eval(tmp_path / f"{value}.json", summary={"x": value})
        assert gate_cli(capsys, path, "--check", f"x{op}0.5")[0] == code, (op, value)


def test_comparisons_tolerate_rounding_only_relatively(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write_eval(tmp_path / "e.json", summary={"x": 0.1 * 3, "p": 1e-20})
    assert 0.1 * 3 != 0.3
    assert gate_cli(capsys, path, "--check", "x==0.3", "--check", "x<=0.3")[0] == 0
    assert gate_cli(capsys, path, "--check", "x>0.3")[0] == 1
    # No absolute tolerance: a tiny p-value is still above 0.
    assert gate_cli(capsys, path, "--check", "p>0")[0] == 0
    assert gate_cli(capsys, path, "--check", "p==0")[0] == 1


def test_summary_and_split_names(
    tmp_path: Path, evals: dict[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    results = run_gate(
        evals["eval"],
        ["forget_quality>=0.05", "model_utility<0.5", "forget/probability<=0.2", "retain/rouge_l_recall>0.7"],
    ).checks
    assert [r.measurement.value for r in results] == [0.12, 0.46, 0.2, 0.6]
    assert [r.passed for r in results] == [True, True, True, False]
    assert (results[0].measurement.ci_low, results[0].measurement.ci_high, results[0].measurement.n) == (
        0.05,
        0.2,
        40,
    )
    assert results[2].measurement.n == 3
    # A summary key that looks like split/metric wins over the aggregate.
    path = write_eval(
        tmp_path / "both.json",
        summary={"forget/probability": 0.9},
        aggregates={"forget": {"probability": 0.1}},
    )
    assert run_gate(path, ["forget/probability>0.5"]).checks[0].measurement.value == 0.9


def test_membership_auc_and_attack_names(tmp_path: Path) -> None:
    result = (
        EvalResultBuilder()
        .split("forget", {"probability": 0.2}, num_items=16)
        .mia("forget", "holdout", {"min_k": MembershipAuc(0.55, 0.4, 0.7, n_members=16, n_nonmembers=16)})
        .attack("quantize_4bit", {"forget": {"probability": 0.3}}, {"forget": {"probability": 0.2}}, n=16)
        .build()
    )
    path = save_eval(result, tmp_path / "eval.json")
    results = run_gate(path, ["mia/min_k>=0.45", "attack/quantize_4bit/forget/probability<=0.25"]).checks
    assert [(r.measurement.value, r.passed) for r in results] == [(0.55, True), (0.3, False)]
    assert (results[0].measurement.ci_low, results[0].measurement.ci_high) == (0.4, 0.7)


# Relative thresholds


def test_relative_thresholds(evals: dict[str, str]) -> None:
    checks = [
        "model_utility>=0.9*target",  # 0.46 >= 0.45
        "forget/probability<=target-0.5",  # 0.2 <= 0.3
        "forget/probability<=0.2*target",  # 0.2 <= 0.16: fails
        "retain/probability>=retain+0.05",  # 0.72 >= 0.75: fails
        "retain/rouge_l_recall>2*retain-0.75",  # 0.6 > 0.55
        "model_utility<retain",  # 0.46 < 0.48
    ]
    results = run_gate(evals["eval"], checks, target=evals["target"], retain=evals["retain"]).checks
    assert [r.threshold for r in results] == pytest.approx([0.45, 0.3, 0.16, 0.75, 0.55, 0.48])
    assert [r.reference_value for r in results] == [0.5, 0.8, 0.8, 0.7, 0.65, 0.48]
    assert [r.passed for r in results] == [True, True, False, False, True, True]


# Exit codes


def test_exit_codes_through_cli(evals: dict[str, str], capsys: pytest.CaptureFixture[str]) -> None:
    base = [evals["eval"], "--target", evals["target"], "--check", "forget_quality>=0.05"]
    assert gate_cli(capsys, *base, "--check", "model_utility>=0.9*target")[0] == 0
    assert gate_cli(capsys, *base, "--check", "model_utility>=target")[0] == 1
    assert gate_cli(capsys, *base, "--check", "nope>=1")[0] == 2
    assert cli.main(["--help"]) == 0
    assert "gate: Check eval.json against thresholds" in " ".join(capsys.readouterr().out.split())


def test_exit_codes_through_script(evals: dict[str, str]) -> None:
    commands = {
        0: ["--check", "forget_quality>=0.05"],
        1: ["--check", "forget_quality>=0.5"],
        2: ["--check", "forget_quality>=retain"],
    }
    # Started together: each process spends seconds importing transformers.
    processes = {
        code: subprocess.Popen(
            [sys.executable, "eval/gate.py", evals["eval"], *argv],
            cwd=REPO,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for code, argv in commands.items()
    }
    outputs = {code: process.communicate(timeout=300) for code, process in processes.items()}
    for code, process in processes.items():
        assert process.returncode == code, outputs[code]
    assert "PASS: 1 of 1 checks passed, 0 failed" in outputs[0][0]
    assert "FAIL: 0 of 1 checks passed, 1 failed" in outputs[1][0]
    assert "no --retain eval.json was given" in outputs[2][1]


# Error messages


def test_missing_and_malformed_files(
    tmp_path: Path, evals: dict[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    missing = str(tmp_path / "missing" / "eval.json")
    code, out, err = gate_cli(capsys, missing, "--check", "x>1")
    assert code == 2 and out == ""
    assert f"error: the eval.json to gate: {missing} does not exist; `llm-unlearn eval" in err
    code, _, err = gate_cli(capsys, evals["eval"], "--target", missing, "--check", "model_utility>=target")
    assert code == 2 and f"--target: {missing} does not exist" in err
    broken = tmp_path / "broken.json"
    broken.write_text("{not json")
    code, _, err = gate_cli(capsys, str(broken), "--check", "x>1")
    assert code == 2 and f"{broken} is not valid JSON" in err
    other = tmp_path / "other.json"
    other.write_text(json.dumps({"loss": 1.0}))
    code, _, err = gate_cli(capsys, str(other), "--check", "x>1")
    assert code == 2 and "is not an eval.json" in err and "'summary'" in err and "'splits'" in err


def test_malformed_check_shows_grammar(evals: dict[str, str], capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = gate_cli(
        capsys, evals["eval"], "--check", "forget_quality>=0.05", "--check", "forget_quality=>0.05"
    )
    assert code == 2 and out == ""
    assert "malformed check 'forget_quality=>0.05'" in err and GRAMMAR in err


def test_unknown_name_lists_available(
    evals: dict[str, str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = gate_cli(capsys, evals["eval"], "--check", "forget/rouge>1")
    assert code == 2
    assert (
        f"unknown name 'forget/rouge' in the eval.json to gate {evals['eval']!r}; available: forget/probability, "
        "forget_quality, model_utility, retain/probability, retain/rouge_l_recall." in err
    )
    # The same name must exist in the reference file too.
    target = write_eval(tmp_path / "t.json", summary={"model_utility": 0.5})
    code, _, err = gate_cli(
        capsys, evals["eval"], "--target", target, "--check", "forget/probability<=target"
    )
    assert (
        code == 2
        and f"unknown name 'forget/probability' in --target {target!r}; available: model_utility." in err
    )


@pytest.mark.parametrize("ref", ["target", "retain"])
def test_reference_without_its_file(
    evals: dict[str, str], capsys: pytest.CaptureFixture[str], ref: str
) -> None:
    code, _, err = gate_cli(capsys, evals["eval"], "--check", f"model_utility>=0.9*{ref}")
    assert code == 2
    assert f"compares with {ref!r} but no --{ref} eval.json was given" in err


def test_values_not_computed_fail_and_say_why(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write_eval(
        tmp_path / "e.json",
        summary={"privleak": None, "model_utility": 0.5},
        aggregates={"holdout": {"probability": Measurement(math.nan, n=0)}},
    )
    target = write_eval(tmp_path / "t.json", summary={"model_utility": None, "forget_quality": math.nan})
    # Every comparison with NaN is false, so without the explicit rule `<` and `>` checks would differ.
    for op in (">=", "<"):
        code, out, _ = gate_cli(capsys, path, "--check", f"holdout/probability{op}0.5")
        assert code == 1
        assert row(out, f"holdout/probability{op}0.5").endswith(f"FAIL: value is NaN in {path} (n=0)")
    # A null summary value fails with the reason eval.json records for it.
    code, out, _ = gate_cli(capsys, path, "--check", "privleak<=1")
    assert code == 1
    assert row(out, "privleak<=1").endswith(f"FAIL: value is not computed in {path}: {NO_REFERENCE}")
    code, out, _ = gate_cli(capsys, path, "--target", target, "--check", "model_utility>=0.9*target")
    assert code == 1
    assert row(out, "model_utility>=0.9*target").endswith(
        f"FAIL: target value of model_utility is not computed in {target}: {NO_REFERENCE}"
    )
    code, out, _ = gate_cli(capsys, target, "--check", "forget_quality>=0.05")
    assert code == 1 and row(out, "forget_quality>=0.05").endswith(f"FAIL: value is NaN in {target}")


@pytest.mark.parametrize("value", ["high", True])
def test_non_numeric_value_is_bad_input(tmp_path: Path, capsys: pytest.CaptureFixture[str], value: Any) -> None:
    path = tmp_path / "e.json"
    path.write_text(json.dumps({"splits": {}, "summary": {"x": {"value": value}}}))
    code, _, err = gate_cli(capsys, str(path), "--check", "x>=1")
    assert code == 2 and f"the eval.json to gate: {path}: summary.x is {value!r}; expected a number" in err


def test_no_checks_or_no_eval_json(evals: dict[str, str], capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = gate_cli(capsys, evals["eval"])
    assert code == 2 and "no checks given" in err and GRAMMAR in err
    code, _, err = gate_cli(capsys, "--check", "x>=1")
    assert code == 2 and "no eval.json given" in err


# Table and --json


def test_table(evals: dict[str, str], capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = gate_cli(
        capsys,
        evals["eval"],
        "--target",
        evals["target"],
        "--check",
        "forget_quality>=0.05",
        "--check",
        "model_utility >= 0.95*target",
        "--check",
        "forget/probability<0.25",
    )
    assert code == 1
    assert out.splitlines() == [
        "CHECK                         VALUE             THRESHOLD              RESULT",
        "-----------------------------------------------------------------------------",
        "forget_quality>=0.05          0.12 [0.05, 0.2]  >= 0.05                PASS",
        "model_utility >= 0.95*target  0.46              >= 0.475 (target=0.5)  FAIL",
        "forget/probability<0.25       0.2               < 0.25                 PASS",
        "FAIL: 2 of 3 checks passed, 1 failed",
    ]


def test_json_output(tmp_path: Path, evals: dict[str, str], capsys: pytest.CaptureFixture[str]) -> None:
    output = tmp_path / "artifacts" / "gate.json"
    nan_eval = write_eval(tmp_path / "nan.json", summary={"forget_quality": math.nan})
    checks = ["--check", "forget_quality>=0.05", "--check", "model_utility>=0.9*target"]
    assert (
        gate_cli(capsys, evals["eval"], "--target", evals["target"], *checks, "--json", str(output))[0] == 0
    )
    record = json.loads(output.read_text())
    assert record["passed"] is True and record["num_checks"] == 2 and record["num_failed"] == 0
    assert (record["eval_json"], record["target"], record["retain"]) == (evals["eval"], evals["target"], None)
    assert record["checks"][0] == {
        "check": "forget_quality>=0.05",
        "name": "forget_quality",
        "op": ">=",
        "value": 0.12,
        "ci_low": 0.05,
        "ci_high": 0.2,
        "n": 40,
        "reference": None,
        "reference_value": None,
        "threshold": 0.05,
        "passed": True,
        "reason": None,
    }
    second = record["checks"][1]
    assert (second["reference"], second["reference_value"], second["passed"]) == ("target", 0.5, True)
    assert second["threshold"] == pytest.approx(0.45)
    # A failing gate still writes its record (the CI artifact matters most then), as strict JSON.
    assert gate_cli(capsys, nan_eval, "--check", "forget_quality>=0.05", "--output_json", str(output))[0] == 1
    failed = json.loads(output.read_text(), parse_constant=reject_constant)
    assert failed["passed"] is False and failed["num_failed"] == 1
    assert failed["checks"][0]["value"] is None and "NaN" in failed["checks"][0]["reason"]
    assert sorted(p.name for p in output.parent.iterdir()) == ["gate.json"]


def reject_constant(name: str) -> None:
    """For json.loads: NaN and Infinity are not JSON, and strict readers reject them."""
    raise AssertionError(f"{name} in strict JSON")


# --config and argument handling


def test_config_file(tmp_path: Path, evals: dict[str, str], capsys: pytest.CaptureFixture[str]) -> None:
    output = tmp_path / "gate.json"
    config = tmp_path / "gate.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "eval_json": evals["eval"],
                "target": evals["target"],
                "checks": ["forget_quality>=0.05", "model_utility>=0.9*target"],
                "output_json": str(output),
            }
        )
    )
    code, out, _ = gate_cli(capsys, "--config", str(config))
    assert code == 0 and "PASS: 2 of 2 checks passed, 0 failed" in out
    assert [c["check"] for c in json.loads(output.read_text())["checks"]] == [
        "forget_quality>=0.05",
        "model_utility>=0.9*target",
    ]
    # --check adds to the config's checks; --checks replaces them.
    code, out, _ = gate_cli(capsys, "--config", str(config), "--check", "forget/probability<0.1")
    assert code == 1 and "FAIL: 2 of 3 checks passed, 1 failed" in out
    code, out, _ = gate_cli(capsys, "--config", str(config), "--checks", "forget/probability<0.3")
    assert code == 0 and "PASS: 1 of 1 checks passed, 0 failed" in out


def test_command_line_overrides_config_eval_json(
    tmp_path: Path, evals: dict[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "gate.yaml"
    config.write_text(yaml.safe_dump({"eval_json": evals["eval"], "checks": ["model_utility<0.47"]}))
    other = write_eval(tmp_path / "other.json", summary={"model_utility": 0.9})
    assert gate_cli(capsys, "--config", str(config))[0] == 0
    assert gate_cli(capsys, "--config", str(config), other)[0] == 1
    assert gate_cli(capsys, "--config", str(config), "--eval_json", other)[0] == 1
    assert gate_cli(capsys, "--eval_json", other, "--config", str(config))[0] == 1


def test_check_takes_one_value_so_eval_json_may_follow(
    evals: dict[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    assert gate_cli(capsys, "--check", "forget_quality>=0.05", evals["eval"])[0] == 0


def test_bad_config_file_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    missing = tmp_path / "missing.yaml"
    assert cli.main(["gate", "--config", str(missing)]) == 2
    assert str(missing) in capsys.readouterr().err
    unknown = tmp_path / "unknown.yaml"
    unknown.write_text(yaml.safe_dump({"check": ["x>1"]}))
    assert cli.main(["gate", "--config", str(unknown)]) == 2
    assert "'check' (did you mean 'checks'?)" in capsys.readouterr().err


def test_example_workflow_gate_command(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The example workflow's gate step runs on eval.json files with the metrics `llm-unlearn eval` writes."""
    workflow = yaml.safe_load((REPO / "examples" / "github-actions" / "unlearning-gate.yml").read_text())
    (step,) = [
        step for step in workflow["jobs"]["gate"]["steps"] if step.get("name") == "Gate on the results"
    ]
    argv = shlex.split(step["run"])
    assert argv[:2] == ["llm-unlearn", "gate"]
    monkeypatch.chdir(tmp_path)
    for name, forget in (("unlearned", 0.1), ("target", 0.9)):
        write_eval(
            tmp_path / "evals" / name / "eval.json",
            aggregates={
                "forget": {"probability": forget},
                "retain": {"probability": 0.8, "rouge_l_recall": 0.7},
            },
        )
    code, out, _ = gate_cli(capsys, *argv[2:])
    assert code == 0 and "PASS: 3 of 3 checks passed, 0 failed" in out
    assert json.loads((tmp_path / "evals" / "gate.json").read_text())["passed"] is True
