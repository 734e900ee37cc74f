"""Logs of the reference framework (locuslab/open-unlearning) as the reference eval: forget quality against a
TOFU_EVAL.json and PrivLeak against a MUSE_EVAL.json equal the hand formulas, a file in neither format is refused
naming both, and an eval.json exported in the framework's format reads back to the same numbers."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from scipy import stats

from llm_unlearn import cli
from llm_unlearn.evaluation import EvalConfig, EvalFileError, load_eval
from llm_unlearn.evaluation import evaluator as evaluator_module
from llm_unlearn.evaluation.membership import membership_inference, privleak_summary
from llm_unlearn.evaluation.reference_logs import (
    OPEN_UNLEARNING,
    from_open_unlearning,
    load_reference,
    log_kind,
    to_open_unlearning,
    write_open_unlearning_log,
)
from llm_unlearn.evaluation.results import SOURCE_FORMAT, EvalResultBuilder, MembershipAuc
from llm_unlearn.evaluation.runner import export_path
from llm_unlearn.evaluation.suite import Suite

# The retain model's per-item forget truth ratios as the framework logs them: `score` = P(wrong) / P(para), keyed
# by item index as a string (written out of order: the index, not the position in the file, orders the items).
HAND_RATIOS = {"2": 0.35, "0": 0.91, "1": 1.7, "4": 0.52, "3": 1.12}
IN_ORDER = [0.91, 1.7, 0.35, 1.12, 0.52]
MINE = [0.2, 0.4, 0.45, 0.3, 0.8]


def _tofu_log() -> dict:
    return {
        "forget_Q_A_Prob": {
            "agg_value": 0.5,
            "value_by_index": {key: {"prob": 0.5, "avg_loss": 0.69} for key in HAND_RATIOS},
        },
        "forget_quality": {"agg_value": None},
        # The framework's agg_value is the closer-to-1 statistic; the per-index score is R itself.
        "forget_truth_ratio": {
            "agg_value": sum(min(r, 1 / r) for r in IN_ORDER) / 5,
            "value_by_index": {key: {"score": value} for key, value in HAND_RATIOS.items()},
        },
        "mia_min_k": {
            "agg_value": 0.62,
            "auc": 0.62,
            "forget": {"agg_value": 3.0, "value_by_index": {str(i): {"score": 3.0} for i in range(5)}},
            "holdout": {"agg_value": 3.1, "value_by_index": {str(i): {"score": 3.1} for i in range(4)}},
        },
        "model_utility": {"agg_value": 0.6},
    }


def _write(path: Path, document: dict) -> Path:
    path.write_text(json.dumps(document, indent=4))
    return path


def _forget_splits(ratios: list[float]) -> dict:
    """The evaluated model's forget split as the evaluator records it."""
    items = [{"index": i, "question": f"Q{i}?", "truth_ratio": r} for i, r in enumerate(ratios)]
    return EvalResultBuilder().split("forget", {"truth_ratio": sum(ratios) / len(ratios)}, items=items).build()["splits"]


def test_forget_quality_against_a_tofu_eval_log_is_the_ks_test_on_its_ratios(tmp_path):
    path = _write(tmp_path / "TOFU_EVAL.json", _tofu_log())
    config = EvalConfig(metrics=("truth_ratio",))
    reference = load_reference(path, config)
    assert reference[SOURCE_FORMAT] == OPEN_UNLEARNING
    items = reference.split_items("forget")
    assert [item["index"] for item in items] == [0, 1, 2, 3, 4]
    assert [item["truth_ratio"] for item in items] == IN_ORDER
    assert all(item["question"] is None for item in items)
    assert reference.mia_aucs()["min_k"] == MembershipAuc(0.62, n=None, n_members=5, n_nonmembers=4)

    # Its items have no questions: the check before the model loads passes on questions, and counts are compared.
    evaluator_module.check_reference(config, ["forget"], reference, str(path), [f"Q{i}?" for i in range(5)])
    quality = evaluator_module._forget_quality(_forget_splits(MINE), config, reference)
    expected = stats.ks_2samp(MINE, IN_ORDER)
    assert quality["value"] == pytest.approx(expected.pvalue)
    assert quality["ks_statistic"] == pytest.approx(expected.statistic)
    assert quality["n"] == 5
    assert quality["reference_format"] == OPEN_UNLEARNING
    # The framework's older code tested 1/R: the KS test does not change under a monotone map, so it is the same.
    assert stats.ks_2samp([1 / r for r in MINE], [1 / r for r in IN_ORDER]).pvalue == pytest.approx(expected.pvalue)
    with pytest.raises(ValueError, match="this eval has 4 forget truth ratios and the reference eval 5"):
        evaluator_module._forget_quality(_forget_splits(MINE[:4]), config, reference)


def test_a_summary_or_muse_log_cannot_give_forget_quality(tmp_path):
    config = EvalConfig(metrics=("truth_ratio",))
    summary = _write(tmp_path / "TOFU_SUMMARY.json", {"forget_truth_ratio": 0.7, "mia_min_k": 0.4, "forget_quality": None})
    reference = load_reference(summary, config)
    assert reference.mia_aucs()["min_k"].value == 0.4
    with pytest.raises(ValueError, match="has no per-item forget_truth_ratio values, which forget quality compares"):
        evaluator_module.check_reference(config, ["forget"], reference, str(summary))


def test_privleak_against_a_muse_eval_log_is_the_hand_formula(tmp_path):
    muse = {
        "forget_knowmem_ROUGE": {"agg_value": 0.3, "value_by_index": {"0": {"rougeL_f1": 0.3}}},
        "forget_verbmem_ROUGE": {"agg_value": 0.2, "value_by_index": {"0": {"rougeL_f1": 0.2}}},
        "mia_min_k": {
            "agg_value": 0.47,
            "auc": 0.47,
            "forget": {"agg_value": 2.0, "value_by_index": {str(i): {"score": 2.0} for i in range(3)}},
            "holdout": {"agg_value": 2.0, "value_by_index": {str(i): {"score": 2.0} for i in range(3)}},
        },
        "privleak": {"agg_value": 0.0},
    }
    path = _write(tmp_path / "MUSE_EVAL.json", muse)
    assert log_kind(muse) == "log"
    config = EvalConfig(
        forget_split="knowmem_forget",
        mia={"members": "privleak_forget", "nonmembers": "privleak_holdout", "scores": ["min_k"]},
    )
    reference = load_reference(path, config)
    assert reference.mia_splits == ("privleak_forget", "privleak_holdout")
    assert reference.split_names() == []  # MUSE logs no per-item truth ratios, nor anything forget quality reads
    mia = {"members": "privleak_forget", "nonmembers": "privleak_holdout", "scores": {"min_k": {"auc": 0.8}}}
    summary = privleak_summary(mia, reference, "min_k")
    # Both AUCs are roc_auc(forget, holdout), as the framework stores them; PrivLeak takes MUSE's 1 - AUC.
    assert summary["value"] == pytest.approx(((1 - 0.8) - (1 - 0.47)) / (1 - 0.47) * 100)
    assert summary["reference_auc"] == 0.47
    assert summary["reference_format"] == OPEN_UNLEARNING


def test_the_reference_model_score_says_a_framework_log_cannot_give_it():
    reference = from_open_unlearning(_tofu_log(), "TOFU_EVAL.json")
    result = {
        "splits": {
            "forget": {"items": [{"loss": 1.0 + i / 10, "question": "q"} for i in range(3)]},
            "holdout": {"items": [{"loss": 2.0 + i / 10, "question": "q"} for i in range(3)]},
        }
    }
    section = membership_inference(
        result, members="forget", nonmembers="holdout", scores=["loss", "loss_minus_reference"], reference=reference
    )
    assert section["scores"]["loss"]["auc"] == 1.0
    assert section["scores"]["loss_minus_reference"]["auc"] is None
    assert "is a log of open-unlearning" in section["scores"]["loss_minus_reference"]["reason"]


def _suite(tmp_path: Path) -> Path:
    suite = {
        "suite": "builtin", "dataset": "builtin", "dataset_config": "num_people=4,num_holdout=2",
        "forget_subjects": ["person-0000"], "holdout_data": "builtin", "holdout_data_split": "holdout",
        "max_length": 64, "max_items": 4, "splits": ["forget", "holdout"], "metrics": ["truth_ratio"],
        "split_options": {"holdout": {"metrics": ["probability"]}},
        "mia": {"members": "forget", "nonmembers": "holdout", "scores": ["min_k"]}, "report": False,
    }  # fmt: skip
    path = tmp_path / "suite.yaml"
    path.write_text(yaml.safe_dump(suite))
    return path


def test_a_reference_eval_in_neither_format_is_refused_naming_the_file(tmp_path, capsys):
    bad = _write(tmp_path / "results.json", {"accuracy": 0.9, "runs": 3})
    code = cli.main([
        "eval", "--config", str(_suite(tmp_path)), "--model_name_or_path", "embedded",
        "--output_dir", str(tmp_path / "out"), "--reference_eval", str(bad),
    ])  # fmt: skip
    assert code == 2
    error = capsys.readouterr().err
    assert f"{bad} is not an eval.json" in error
    assert "not a log of locuslab/open-unlearning: TOFU_EVAL.json or MUSE_EVAL.json" in error
    assert "Traceback" not in error
    assert not (tmp_path / "out").exists()
    (tmp_path / "list.json").write_text("[1, 2]")
    with pytest.raises(EvalFileError, match=r"list\.json is not an eval\.json"):
        load_reference(tmp_path / "list.json")
    broken = _write(tmp_path / "TOFU_EVAL.json", {"forget_truth_ratio": {"value_by_index": {"0": {"score": "high"}}}})
    with pytest.raises(EvalFileError, match=r"TOFU_EVAL\.json: forget_truth_ratio\.value_by_index\['0'\]\.score is 'high'"):
        load_reference(broken)


def _evaluated():
    forget = [
        {"index": i, "question": f"Q{i}?", "answer": f"A{i}.", "generation": f"G{i}.", "truth_ratio": r,
         "probability": 0.1 * (i + 1), "rouge_l_recall": 0.2 * i, "min_k": 2.0 + i / 10}
        for i, r in enumerate(IN_ORDER)
    ]  # fmt: skip
    holdout = [{"index": i, "question": f"H{i}?", "min_k": 3.0 + i / 10} for i in range(4)]
    return (
        EvalResultBuilder(suite="tofu", config={"forget_split": "forget", "retain_split": "retain"})
        .split("forget", {"truth_ratio": 0.9, "truth_ratio_stat": 0.7, "probability": 0.3, "rouge_l_recall": 0.4},
               items=forget)
        .split("retain", {"truth_ratio": 0.5, "truth_ratio_stat": 0.5},
               items=[{"index": 0, "question": "R?", "truth_ratio": 0.5}])
        .split("holdout", {"min_k": 3.15}, items=holdout)
        .summary("forget_quality", 0.42, n=5)
        .summary("model_utility", 0.61)
        .summary("privleak", None, reason="no reference eval given")
        .mia("forget", "holdout", {"min_k": 0.25})
        .build()
    )  # fmt: skip


def test_an_exported_eval_reads_back_to_the_same_ratios_and_forget_quality(tmp_path):
    evaluated = _evaluated()
    path = write_open_unlearning_log(evaluated, tmp_path / "TOFU_EVAL.json")
    log = json.loads(path.read_text())
    assert list(log) == sorted(log)
    assert log["forget_truth_ratio"]["agg_value"] == 0.7
    assert log["forget_truth_ratio"]["value_by_index"]["2"] == {"score": IN_ORDER[2]}
    assert log["retain_Truth_Ratio"]["value_by_index"] == {"0": {"score": 0.5}}
    assert log["forget_Q_A_Prob"]["value_by_index"]["0"] == {"prob": 0.1}
    assert log["forget_Q_A_ROUGE"]["value_by_index"]["1"] == {
        "rougeL_recall": 0.2, "input": "Q1?", "ground_truth": "A1.", "generation": "G1.",
    }  # fmt: skip
    assert {key: log[key] for key in ("forget_quality", "model_utility", "privleak")} == {
        "forget_quality": {"agg_value": 0.42}, "model_utility": {"agg_value": 0.61}, "privleak": {"agg_value": None},
    }  # fmt: skip
    assert log["mia_min_k"]["agg_value"] == log["mia_min_k"]["auc"] == 0.25
    assert log["mia_min_k"]["holdout"]["value_by_index"]["3"] == {"score": 3.3}
    assert log == to_open_unlearning(evaluated)

    back = load_reference(path, EvalConfig(metrics=("truth_ratio",)))
    assert [item["truth_ratio"] for item in back.split_items("forget")] == IN_ORDER
    assert [item["rouge_l_recall"] for item in back.split_items("forget")] == [0.2 * i for i in range(5)]
    assert back.mia_aucs()["min_k"].value == 0.25
    config = EvalConfig(metrics=("truth_ratio",))
    ours = evaluator_module._forget_quality(_forget_splits(MINE), config, evaluated)
    theirs = evaluator_module._forget_quality(_forget_splits(MINE), config, back)
    assert theirs["value"] == ours["value"]
    assert theirs["ks_statistic"] == ours["ks_statistic"]
    with pytest.raises(FileExistsError, match=r"TOFU_EVAL\.json exists; pass --overwrite"):
        write_open_unlearning_log(evaluated, path)


def test_eval_exports_and_takes_the_framework_log_as_reference(tmp_path, tiny_model_dir, capsys):
    suite = str(_suite(tmp_path))
    model = ["--model_name_or_path", tiny_model_dir]
    first = tmp_path / "first"
    exporting = ["eval", "--config", suite, *model, "--output_dir", str(first), "--export_reference_format"]
    assert cli.main([*exporting, "open-unlearning"]) == 0
    assert export_path(first, Suite.from_yaml(suite)) == first / "TOFU_EVAL.json"
    log = json.loads((first / "TOFU_EVAL.json").read_text())
    evaluated = load_eval(first / "eval.json")
    ratios = [item["truth_ratio"] for item in evaluated.split_items("forget")]
    assert [log["forget_truth_ratio"]["value_by_index"][str(i)]["score"] for i in range(len(ratios))] == ratios
    assert log["mia_min_k"]["auc"] == evaluated.mia_aucs()["min_k"].value

    # The same model against its own exported log: identical ratios and AUC, so forget quality 1 and PrivLeak 0.
    second = tmp_path / "second"
    args = ["eval", "--config", suite, *model, "--output_dir", str(second), "--reference_eval", str(first / "TOFU_EVAL.json")]
    assert cli.main(args) == 0
    summary = load_eval(second / "eval.json")
    assert summary.summary_fields("forget_quality")["value"] == 1.0
    assert summary.summary_fields("forget_quality")["reference_format"] == OPEN_UNLEARNING
    assert summary.summary_value("privleak") == 0.0

    # An export is never written over an existing file without --overwrite, and that is known before evaluating.
    (first / "eval.json").unlink()
    capsys.readouterr()
    assert cli.main([*exporting, "open-unlearning"]) == 2
    assert "TOFU_EVAL.json exists; pass --overwrite" in capsys.readouterr().err
    assert not (first / "eval.json").exists()
    assert cli.main([*exporting, "lm-eval"]) == 2
    assert "export_reference_format 'lm-eval' is not known" in capsys.readouterr().err
