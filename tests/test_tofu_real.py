"""The TOFU suite on real TOFU rows: tests/data/tofu holds a slice of the Hub dataset locuslab/TOFU in its own
layout (see its README.md), which the loader reads and `eval/tofu.yaml`, switched to the forget01 sets as
benchmarks/tofu_forget01.py runs it, evaluates end to end with the embedded model."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from llm_unlearn.data.benchmarks import TOFU_FORGET_SETS, load_tofu
from llm_unlearn.evaluation.items import build_items
from llm_unlearn.evaluation.results import load_eval
from llm_unlearn.evaluation.runner import evaluate_model
from llm_unlearn.evaluation.suite import Suite
from llm_unlearn.models import ModelArguments

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "tests" / "data" / "tofu"
SUITE = ROOT / "eval" / "tofu.yaml"
FORGET01 = TOFU_FORGET_SETS["forget01"]
# Each vendored file's rows (README.md there) and how many wrong answers each row has.
ROWS = {
    FORGET01.perturbed: 40,
    FORGET01.holdout: 40,
    "retain_perturbed": 20,
    "real_authors_perturbed": 20,
    "world_facts_perturbed": 20,
}
WRONG_ANSWERS = {
    FORGET01.perturbed: 5,
    FORGET01.holdout: 0,
    "retain_perturbed": 5,
    "real_authors_perturbed": 3,
    "world_facts_perturbed": 3,
}
SYSTEM_PROMPT = "You are a helpful assistant."
# Items per split, a seeded sample small enough for CI's two cores. The general-knowledge sets get six (short
# answers, cheap to score): on the first four world facts sampled, the 135M model finds the wrong answers
# likelier than the true one every time, a truth-ratio statistic of 0, which makes model utility (a harmonic
# mean) 0.
ITEMS = {"forget": 3, "holdout": 3, "retain": 3, "real_authors": 6, "world_facts": 6}


def hub_rows(config: str) -> list[dict]:
    """The rows of a vendored file as the Hub has them: one JSON object per line."""
    lines = (DATA / f"{config}.json").read_text(encoding="utf-8").splitlines()
    return [json.loads(line) for line in lines]


def forget01_suite(**overrides) -> Suite:
    """`eval/tofu.yaml` on the vendored slice, its forget and holdout splits switched from forget10 to the
    forget01 configs, with `ITEMS` items per split and short generations."""
    options = Suite.from_yaml(SUITE).split_options
    configs = {"forget": FORGET01.perturbed, "holdout": FORGET01.holdout}
    options = {
        name: {**split, "config": configs.get(name, split["config"]), "max_items": ITEMS[name]}
        for name, split in options.items()
    }
    return Suite.from_yaml(
        SUITE, split_options=options, benchmark_source=str(DATA), max_new_tokens=16,
        system_prompt=SYSTEM_PROMPT, attacks=[], report=False, **overrides,
    )  # fmt: skip


@pytest.mark.parametrize("config", list(ROWS))
def test_the_loader_reads_every_vendored_file_whole(config):
    rows = hub_rows(config)
    assert len(rows) == ROWS[config]
    data = load_tofu(config, source=str(DATA))
    assert len(data) == len(rows)
    assert data["question"] == [row["question"] for row in rows]
    assert data["answer"] == [row["answer"] for row in rows]
    assert data["paraphrased_answer"] == [row.get("paraphrased_answer") for row in rows]
    wrong = WRONG_ANSWERS[config]
    assert data["perturbed_answer"] == [row["perturbed_answer"] if wrong else None for row in rows]
    assert all(len(answers) == wrong for answers in data["perturbed_answer"] if wrong)
    # forget01's two authors are the last two of `full` (positions 198 and 199), 20 QA pairs each; the other
    # sets have no known position in `full`.
    authors = ["tofu-author-198"] * 20 + ["tofu-author-199"] * 20
    assert data["subject_id"] == (authors if config == FORGET01.perturbed else [None] * len(rows))


@pytest.mark.slow
def test_the_tofu_suite_runs_end_to_end_on_real_rows(tmp_path):
    from transformers import AutoTokenizer

    from llm_unlearn.embedded import embedded_checkpoint

    suite = forget01_suite()
    datasets, config = suite.load()
    configs = {name: suite.split_options[name]["config"] for name in suite.splits}
    assert list(datasets) == ["forget", "holdout", "retain", "real_authors", "world_facts"]
    for name, data in datasets.items():
        # A seeded sample of real rows, unchanged, in file order.
        rows = hub_rows(configs[name])
        assert len(data) == ITEMS[name]
        questions = [row["question"] for row in rows]
        positions = [questions.index(question) for question in data["question"]]
        assert positions == sorted(positions)
        assert data["answer"] == [rows[position]["answer"] for position in positions]
        wrong = WRONG_ANSWERS[configs[name]]
        assert all(len(answers) == wrong for answers in data["perturbed_answer"] if wrong)

    # Real questions rendered in the suite's prompt format: SmolLM2's chat template with the system prompt,
    # the answer followed by its end-of-turn token.
    tokenizer = AutoTokenizer.from_pretrained(embedded_checkpoint())
    forget = datasets["forget"]
    items = build_items(
        "forget", forget, tokenizer, template=config.prompt_template, system_prompt=config.system_prompt,
        date_string=config.date_string, max_length=config.max_length,
    )  # fmt: skip
    for item, question, answer in zip(items, forget["question"], forget["answer"], strict=True):
        assert tokenizer.decode(item.prompt_ids) == (
            f"<|im_start|>system\n{SYSTEM_PROMPT}<|im_end|>\n<|im_start|>user\n{question}<|im_end|>\n"
            "<|im_start|>assistant\n"
        )
        assert tokenizer.decode(item.answer_ids) == f"{answer}<|im_end|>"
        assert len(item.perturbed_ids) == 5 and item.paraphrased_ids is not None

    model = ModelArguments(model_name_or_path="embedded")
    first = load_eval(evaluate_model(model, suite, tmp_path / "first"))
    assert first["prompt_format"]["format"]["system_prompt"] == SYSTEM_PROMPT
    for name, data in datasets.items():
        split = first["splits"][name]
        assert split["num_items"] == ITEMS[name]
        assert [item["question"] for item in split["items"]] == data["question"]
        assert [item["answer"] for item in split["items"]] == data["answer"]
        if "rouge_l_recall" in split["aggregates"]:
            assert all(isinstance(item["generation"], str) for item in split["items"])
        if "truth_ratio" in split["aggregates"]:
            ratios = [item["truth_ratio"] for item in split["items"]]
            assert all(math.isfinite(ratio) and ratio > 0 for ratio in ratios)
            assert 0.0 <= split["aggregates"]["truth_ratio_stat"]["value"] <= 1.0
    forget_items = first["splits"]["forget"]["items"]
    assert all(0.0 <= item["exact_memorization"] <= 1.0 for item in forget_items)
    assert all(0.0 < item["extraction_strength"] <= 1.0 for item in forget_items)
    assert {item["subject_id"] for item in forget_items} <= {"tofu-author-198", "tofu-author-199"}
    utility = first["summary"]["model_utility"]
    assert 0.0 < utility["value"] <= 1.0 and len(utility["inputs"]) == 9
    assert first["summary"]["forget_quality"]["value"] is None
    scores = first["mia"]["scores"]
    assert list(scores) == suite.mia["scores"]
    for name, score in scores.items():
        if name == "loss_minus_reference":
            assert score["auc"] is None and "no reference eval" in score["reason"]
        else:
            assert 0.0 <= score["auc"] <= 1.0
            assert score["n_members"] == ITEMS["forget"] and score["n_nonmembers"] == ITEMS["holdout"]

    # The model's own eval as the reference: the same truth ratios (forget quality 1, KS statistic 0) and a
    # reference-calibrated loss of 0 everywhere, which separates nothing. Both use forget and holdout alone.
    against_itself = forget01_suite(
        splits=["forget", "holdout"], reference_eval=str(tmp_path / "first" / "eval.json")
    )
    again = load_eval(evaluate_model(model, against_itself, tmp_path / "again"))
    quality = again["summary"]["forget_quality"]
    assert quality["value"] == pytest.approx(1.0) and quality["ks_statistic"] == 0.0
    assert quality["n"] == ITEMS["forget"]
    assert again["mia"]["scores"]["loss_minus_reference"]["auc"] == pytest.approx(0.5)
