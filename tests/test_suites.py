"""The shipped suites (eval/*.yaml): each parses into a valid eval config, and the TOFU and MUSE suites run end to
end on local snapshots written in the Hub's schema, with membership inference, PrivLeak and forget quality
against a reference eval."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from test_benchmark_loaders import (
    FORGET10_PERTURBED,
    HOLDOUT10,
    KNOWMEM_FORGET_QA,
    KNOWMEM_FORGET_QA_ICL,
    PRIVLEAK,
    REAL_AUTHORS_PERTURBED,
    RETAIN_PERTURBED,
    SCAL,
    SUST,
    VERBMEM_FORGET,
    WORLD_FACTS_PERTURBED,
    write_muse,
    write_scal_sust,
    write_tofu,
)

from llm_unlearn.commands import evaluate
from llm_unlearn.evaluation import evaluate_splits, load_eval
from llm_unlearn.evaluation.suite import SELECTION_SPLITS, Suite

SUITES = Path(__file__).resolve().parents[1] / "eval"


def _args(suite: str, model_dir: str, output_dir: Path, *flags: str) -> tuple:
    return evaluate.make_parser().parse_args_and_config(
        ["--config", str(SUITES / f"{suite}.yaml"), "--model_name_or_path", model_dir,
         "--output_dir", str(output_dir), "--report", "false", *flags]
    )  # fmt: skip


@pytest.mark.parametrize("suite", ["builtin", "tofu", "muse"])
def test_every_shipped_suite_parses_into_a_valid_config(suite, tmp_path):
    args = Suite.from_yaml(SUITES / f"{suite}.yaml")
    config = args.eval_config()
    assert args.suite == suite
    assert set(args.splits) <= set(SELECTION_SPLITS) | set(args.split_options)
    assert config.mia is not None and config.mia["members"] in args.splits
    assert config.mia["nonmembers"] in args.splits
    assert config.attacks, "every suite runs at least one robustness attack"
    for split in args.splits:
        config.split_metrics(split)


@pytest.fixture
def tofu_snapshot(tmp_path: Path) -> Path:
    directory = tmp_path / "TOFU"
    directory.mkdir()
    write_tofu(directory, "forget10_perturbed", FORGET10_PERTURBED)
    write_tofu(directory, "holdout10", HOLDOUT10)
    write_tofu(directory, "retain_perturbed", RETAIN_PERTURBED)
    write_tofu(directory, "real_authors_perturbed", REAL_AUTHORS_PERTURBED)
    write_tofu(directory, "world_facts_perturbed", WORLD_FACTS_PERTURBED)
    return directory


def test_tofu_suite_end_to_end_on_a_local_snapshot(tiny_model_dir, tofu_snapshot, tmp_path):
    flags = ["--benchmark_source", str(tofu_snapshot), "--max_new_tokens", "4", "--attacks", "paraphrase"]
    path = evaluate.main(*_args("tofu", tiny_model_dir, tmp_path / "first", *flags))
    result = load_eval(path)
    assert result["suite"] == "tofu"
    # The model version that was measured, by content hash.
    (model,) = result["artifacts"]["read"]
    assert model["kind"] == "directory" and len(model["model_version"]) == 64
    assert list(result["splits"]) == ["forget", "holdout", "retain", "real_authors", "world_facts"]
    forget = result["splits"]["forget"]
    assert forget["num_items"] == len(FORGET10_PERTURBED)
    assert [item["question"] for item in forget["items"]] == [row["question"] for row in FORGET10_PERTURBED]
    # Membership inference added its per-item scores to both of its splits.
    for split in ("forget", "holdout"):
        assert all(math.isfinite(item["min_k_plus_plus"]) for item in result["splits"][split]["items"])
    scores = result["mia"]["scores"]
    assert 0.0 <= scores["loss"]["auc"] <= 1.0
    assert scores["loss"]["n_members"] == 3 and scores["loss"]["n_nonmembers"] == 2
    assert (
        scores["loss_minus_reference"]["auc"] is None
        and "no reference eval" in scores["loss_minus_reference"]["reason"]
    )
    # Real authors and world facts have no paraphrase: the truth ratio compares the answer itself.
    assert all(item["truth_ratio"] is not None for item in result["splits"]["world_facts"]["items"])
    assert set(result["summary"]["model_utility"]["inputs"]) == {
        f"{split}/{name}"
        for split, names in (
            ("retain", ["probability", "rouge_l_recall", "truth_ratio_stat"]),
            ("real_authors", ["probability_mc", "rouge_l_recall", "truth_ratio_stat"]),
            ("world_facts", ["probability_mc", "rouge_l_recall", "truth_ratio_stat"]),
        )
        for name in names
    }
    assert result["summary"]["forget_quality"]["value"] is None
    assert result["summary"]["privleak"]["value"] is None
    assert "paraphrase" in result["attacks"]

    # Against itself as the reference: identical truth ratios (KS p = 1), no leak, and a reference score of 0
    # on every item, which no threshold separates (AUC 0.5).
    again = load_eval(
        evaluate.main(
            *_args("tofu", tiny_model_dir, tmp_path / "again", *flags, "--reference_eval", str(path))
        )
    )
    assert again["summary"]["forget_quality"]["value"] == pytest.approx(1.0)
    assert again["summary"]["privleak"]["value"] == pytest.approx(0.0, abs=1e-9)
    assert again["mia"]["scores"]["loss_minus_reference"]["auc"] == pytest.approx(0.5)


@pytest.fixture
def muse_snapshot(tmp_path: Path) -> Path:
    directory = tmp_path / "MUSE-News"
    write_muse(directory, "verbmem", "forget", VERBMEM_FORGET)
    write_muse(directory, "knowmem", "forget_qa", KNOWMEM_FORGET_QA)
    write_muse(directory, "knowmem", "forget_qa_icl", KNOWMEM_FORGET_QA_ICL)
    write_muse(directory, "knowmem", "retain_qa", {"question": ["Who won the cup?"], "answer": ["The Reds"]})
    write_muse(directory, "knowmem", "retain_qa_icl", KNOWMEM_FORGET_QA_ICL)
    for split, texts in PRIVLEAK.items():
        write_muse(directory, "privleak", split, {"text": texts})
    return directory


def test_muse_suite_end_to_end_on_a_local_snapshot(tiny_model_dir, muse_snapshot, tmp_path):
    flags = ["--benchmark_source", str(muse_snapshot), "--max_new_tokens", "4"]
    path = evaluate.main(*_args("muse", tiny_model_dir, tmp_path / "first", *flags))
    result = load_eval(path)
    verbmem = result["splits"]["verbmem_forget"]
    assert verbmem["format"] == "completion"
    assert [item["answer"] for item in verbmem["items"]] == VERBMEM_FORGET["gt"]
    assert all(isinstance(item["generation"], str) for item in verbmem["items"])
    assert set(verbmem["aggregates"]) == {"rouge_l_f1"}
    knowmem = result["splits"]["knowmem_forget"]
    assert knowmem["format"] == "fewshot_qa" and knowmem["num_items"] == 2
    # The document splits are scored only for membership inference (Min-40% and friends).
    assert set(result["splits"]["privleak_forget"]["aggregates"]) == {
        "loss",
        "zlib",
        "min_k",
        "min_k_plus_plus",
    }
    assert result["mia"]["members"] == "privleak_forget"
    assert result["summary"]["model_utility"]["inputs"] == {
        "knowmem_retain/rouge_l_f1": result["splits"]["knowmem_retain"]["aggregates"]["rouge_l_f1"]["mean"]
    }
    assert "quantize_4bit" in result["attacks"]

    again = load_eval(
        evaluate.main(
            *_args("muse", tiny_model_dir, tmp_path / "again", *flags, "--reference_eval", str(path))
        )
    )
    privleak = again["summary"]["privleak"]
    assert privleak["score"] == "min_k" and privleak["value"] == pytest.approx(0.0, abs=1e-9)
    assert privleak["reference_auc"] == result["mia"]["scores"]["min_k"]["auc"]


def test_muse_scal_and_sust_splits_load_and_evaluate_from_a_snapshot(tiny_model, tiny_tokenizer, tmp_path):
    directory = tmp_path / "MUSE-News"
    write_scal_sust(directory)
    news = {"benchmark": "muse", "data": "muse-bench/MUSE-News", "format": "text", "metrics": ["loss"]}
    suite = Suite(
        splits=["scal_forget_2", "sust_forget_3"],
        split_options={
            "scal_forget_2": {**news, "config": "scal", "split": "forget_2"},
            "sust_forget_3": {**news, "config": "sust", "split": "forget_3"},
        },
        benchmark_source=str(directory),
    )
    datasets, fewshot = suite.load_eval_splits()
    assert datasets["scal_forget_2"]["text"] == SCAL["forget_2"]
    assert datasets["sust_forget_3"]["text"] == SUST["forget_3"]
    assert fewshot == {}
    result = evaluate_splits(tiny_model, tiny_tokenizer, datasets, suite.eval_config())
    for name, dataset in datasets.items():
        split = result["splits"][name]
        assert split["format"] == "text" and split["num_items"] == len(dataset)
        assert set(split["aggregates"]) == {"loss"}


def test_a_split_without_data_and_unknown_options_are_clear_errors(tmp_path):
    with pytest.raises(
        ValueError, match=r"split 'world_facts' is not one of .* split_options must say where"
    ):
        Suite(splits=["world_facts"])
    with pytest.raises(ValueError, match=r"split_options\['forget'\] has unknown keys \['metric'\]"):
        Suite(split_options={"forget": {"metric": ["loss"]}})
    with pytest.raises(ValueError, match=r"attack_args names unknown attacks \['relearning'\]"):
        Suite(attack_args='{"relearning": {"epochs": 1}}')
