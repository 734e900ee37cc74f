"""End to end on the embedded SmolLM2-135M model over a small slice of the built-in data, through the CLI."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from llm_unlearn.evaluation.results import load_eval

pytest.importorskip("gguf")


@pytest.mark.slow
def test_demo_runs_offline_on_embedded_model(tmp_path):
    out = tmp_path / "demo"
    command = [
        sys.executable, "-m", "llm_unlearn.cli", "demo", "--output_dir", str(out),
        "--dataset_config", "num_people=3,num_holdout=1", "--forget_subjects", "person-0000",
        "--finetune_epochs", "1", "--unlearn_epochs", "1", "--max_eval_items", "4",
    ]  # fmt: skip
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "unlearned: forget probability / target" in done.stdout
    summary = json.loads((out / "demo.json").read_text())
    assert set(summary["table"]) == {"target", "retain", "unlearned"}
    for row in summary["table"].values():
        assert 0 < row["forget/probability"] <= 1 and 0 <= row["retain/rouge_l_recall"] <= 1
    assert {"finetune_target", "finetune_retain", "unlearn", "eval_unlearned"} <= set(summary["phases_s"])
    for name in ("target", "retain"):
        assert (out / name / "adapter_model.safetensors").is_file()
        assert json.loads((out / name / "run.json").read_text())["recipe"] == "finetune"
    unlearn_record = json.loads((out / "unlearned" / "run.json").read_text())
    assert unlearn_record["method"] == "graddiff" and unlearn_record["mode"] == "lora"
    assert set(summary["checks"]) == {"unlearned"} and summary["train_seconds"]["unlearned"] > 0
    assert unlearn_record["data"]["forget"]["subject_ids"] == ["person-0000"]
    evaluation = load_eval(out / "unlearned" / "eval.json")
    assert evaluation.num_items("forget") == 4
    # The unlearning must have moved the forget set away from the target, whatever the slice size.
    target, unlearned = summary["table"]["target"], summary["table"]["unlearned"]
    assert unlearned["forget/probability"] < target["forget/probability"]
    # The full suite ran: membership inference against the holdout people, the summary against the retain
    # model, the robustness attacks on the unlearned model, and one report over the three models.
    assert set(evaluation.mia_aucs()) >= {"loss", "min_k", "gradnorm", "loss_minus_reference"}
    assert evaluation.summary_value("privleak") is not None
    assert set(evaluation.attacks()) == {
        "quantize_8bit",
        "quantize_4bit",
        "relearn",
        "paraphrase",
        "leak_at_k",
    }
    report = (out / "report" / "report.html").read_text()
    assert all(name in report for name in ("target", "retain", "unlearned"))
    assert (out / "report" / "report.md").is_file()
