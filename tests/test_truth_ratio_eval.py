"""The evaluator's truth ratio: per-item values against a hand computation, one batched pass, and the summary's
forget quality (against a reference eval) and model utility; the eval recipe's --reference_eval."""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch
from datasets import Dataset

from llm_unlearn.commands import evaluate
from llm_unlearn.data.formatting import IGNORE_INDEX, encode_qa
from llm_unlearn.evaluation import EvalConfig, EvalResult, evaluate_splits, runner, save_eval
from llm_unlearn.evaluation import evaluator as evaluator_module
from llm_unlearn.evaluation.results import EvalResultBuilder

ROWS = [
    {
        "question": "Where was Ada Lovelace born?",
        "answer": "Ada Lovelace was born in London.",
        "paraphrased_answer": "London is where Ada Lovelace was born.",
        "perturbed_answer": ["Ada Lovelace was born in Porto.", "She was born in Paris.", "In 1998."],
    },
    {
        "question": "What is the capital of France?",
        "answer": "Paris.",
        "paraphrased_answer": "The capital of France is Paris.",
        "perturbed_answer": ["London.", "Porto."],
    },
    {
        "question": "Where does Mara Velden work?",
        "answer": "Mara Velden works as a glass sculptor.",
        "paraphrased_answer": "She is a glass sculptor at Brightwater Studios.",
        "perturbed_answer": [],  # no perturbed answers: no truth ratio for this item
    },
]


def _splits() -> dict[str, Dataset]:
    return {"forget": Dataset.from_list(ROWS), "retain": Dataset.from_list(ROWS[:2])}


def _mean_logprob(model, tokenizer, question: str, answer: str) -> float:
    """Mean answer-token log-prob from a plain forward pass of one unpadded sequence and a float64 log_softmax."""
    item = encode_qa(tokenizer, question, answer)
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([item["input_ids"]])).logits[0].double()
    log_probs = torch.log_softmax(logits, dim=-1)
    scored = [
        log_probs[position, target].item()
        for position, target in enumerate(item["labels"][1:])
        if target != IGNORE_INDEX
    ]
    return float(np.mean(scored))


def test_truth_ratio_matches_a_hand_computation(tiny_model, tiny_tokenizer):
    config = EvalConfig(metrics=("probability", "truth_ratio"), batch_size=3)
    result = evaluate_splits(tiny_model, tiny_tokenizer, _splits(), config)
    items = result["splits"]["forget"]["items"]
    ratios = []
    for row, item in zip(ROWS[:2], items[:2], strict=True):
        paraphrased = _mean_logprob(tiny_model, tiny_tokenizer, row["question"], row["paraphrased_answer"])
        perturbed = [
            _mean_logprob(tiny_model, tiny_tokenizer, row["question"], a) for a in row["perturbed_answer"]
        ]
        # R = geometric mean of P(wrong) / P(paraphrased), with P the geometric-mean token probability.
        expected = math.exp(np.mean(perturbed) - paraphrased)
        assert item["truth_ratio"] == pytest.approx(expected, rel=1e-4)
        ratios.append(expected)
    assert items[2]["truth_ratio"] is None

    forget = result["splits"]["forget"]["aggregates"]
    assert forget["truth_ratio"]["n"] == 2
    assert forget["truth_ratio"]["mean"] == pytest.approx(np.mean(ratios), rel=1e-4)
    assert forget["truth_ratio_stat"]["n"] == 2
    assert forget["truth_ratio_stat"]["value"] == pytest.approx(
        np.mean([min(r, 1 / r) for r in ratios]), rel=1e-4
    )
    retain = result["splits"]["retain"]["aggregates"]["truth_ratio_stat"]
    assert retain["value"] == pytest.approx(np.mean([max(0.0, 1 - r) for r in ratios]), abs=1e-4)
    assert result["timing"]["answer_groups_s"] > 0


def test_truth_ratio_is_one_batched_pass(tiny_model, tiny_tokenizer):
    rows = []
    tiny_model.register_forward_hook(
        lambda module, args, kwargs, output: rows.append(kwargs["input_ids"].shape[0]), with_kwargs=True
    )
    # The answers, paraphrased answers and perturbed answers of the forget items (3 + 3 + 5 = 11 sequences) go
    # through one pass that also yields the answers' own statistics: the 3 prompts run once, as one batch, and
    # the 11 answers continue from their cache as another.
    config = EvalConfig(metrics=("truth_ratio",), batch_size=16)
    evaluate_splits(tiny_model, tiny_tokenizer, {"forget": Dataset.from_list(ROWS)}, config)
    assert rows == [3, 11]


def test_forget_quality_against_a_reference_eval(tiny_model, tiny_tokenizer, tmp_path):
    config = EvalConfig(metrics=("truth_ratio",))
    result = evaluate_splits(tiny_model, tiny_tokenizer, _splits(), config)
    assert result["summary"]["forget_quality"] == {
        "value": None,
        "reason": "no reference eval given (pass --reference_eval retain/eval.json)",
    }
    # The same model's eval as reference: identical ratios, so the KS p-value is 1.
    again = evaluate_splits(tiny_model, tiny_tokenizer, _splits(), config, reference=EvalResult(result))
    assert again["summary"]["forget_quality"] == {"value": 1.0, "ks_statistic": 0.0, "n": 2, "ci_low": 1.0, "ci_high": 1.0}
    # The reference must have scored the same items: the same questions, in the same order.
    other = copy.deepcopy(result)
    other["splits"]["forget"]["items"][1]["question"] = "Who is somebody else?"
    with pytest.raises(ValueError, match=r"the same 'forget' items, but item 1 differs: .* 'Who is somebody else\?' in"):
        evaluate_splits(tiny_model, tiny_tokenizer, _splits(), config, reference=EvalResult(other))

    fewer = copy.deepcopy(result)
    fewer["splits"]["forget"]["items"][0]["truth_ratio"] = None
    with pytest.raises(ValueError, match="this eval has 2 forget truth ratios and the reference eval 1"):
        evaluate_splits(tiny_model, tiny_tokenizer, _splits(), config, reference=EvalResult(fewer))
    without = evaluate_splits(tiny_model, tiny_tokenizer, _splits(), EvalConfig(metrics=("probability",)))
    with pytest.raises(ValueError, match="reference eval has no per-item truth ratios"):
        evaluate_splits(tiny_model, tiny_tokenizer, _splits(), config, reference=EvalResult(without))


def test_model_utility_is_the_harmonic_mean_of_its_recorded_inputs(tiny_model, tiny_tokenizer):
    config = EvalConfig(metrics=("probability", "rouge_l_recall", "truth_ratio"), max_new_tokens=4)
    result = evaluate_splits(tiny_model, tiny_tokenizer, _splits(), config)
    utility = result["summary"]["model_utility"]
    retain = result["splits"]["retain"]["aggregates"]
    assert utility["inputs"] == {
        "retain/probability": retain["probability"]["mean"],
        "retain/rouge_l_recall": retain["rouge_l_recall"]["mean"],
        "retain/truth_ratio_stat": retain["truth_ratio_stat"]["value"],
    }
    values = list(utility["inputs"].values())
    expected = 0.0 if min(values) <= 0 else len(values) / sum(1 / v for v in values)
    assert utility["value"] == pytest.approx(expected)
    # Its bootstrap interval redraws each split's items and recomputes every component on the draw.
    assert utility["ci_low"] <= utility["value"] <= utility["ci_high"]

    # Without rouge_l_recall no split qualifies: the summary says why instead of a number.
    result = evaluate_splits(
        tiny_model, tiny_tokenizer, _splits(), EvalConfig(metrics=("probability", "truth_ratio"))
    )
    assert result["summary"]["model_utility"]["value"] is None
    assert "no non-forget split" in result["summary"]["model_utility"]["reason"]


def test_model_utility_hand_harmonic_mean_on_positive_inputs():
    splits = {
        "forget": {"aggregates": {"probability": {"mean": 0.9}}},
        "retain": {
            "aggregates": {
                "probability": {"mean": 0.5},
                "rouge_l_recall": {"mean": 0.25},
                "truth_ratio_stat": {"value": 0.8, "n": 3},
            }
        },
    }
    utility = evaluator_module._model_utility(splits, EvalConfig())
    assert utility["value"] == pytest.approx(3 / (1 / 0.5 + 1 / 0.25 + 1 / 0.8))
    assert set(utility["inputs"]) == {
        "retain/probability",
        "retain/rouge_l_recall",
        "retain/truth_ratio_stat",
    }


def test_missing_columns_and_unknown_metrics_are_clear_errors(tiny_model, tiny_tokenizer):
    with pytest.raises(ValueError, match=r"unknown metric 'truth'.*probability.*truth_ratio"):
        EvalConfig(metrics=("truth",))
    plain = {"retain": Dataset.from_list([{k: v for k, v in ROWS[0].items() if k != "perturbed_answer"}])}
    with pytest.raises(ValueError, match=r"split 'retain' has no item with perturbed answers"):
        evaluate_splits(tiny_model, tiny_tokenizer, plain, EvalConfig(metrics=("truth_ratio",)))
    # A reference without truth ratios to compare: the summary says why there is no forget quality.
    result = evaluate_splits(
        tiny_model, tiny_tokenizer, _splits(), EvalConfig(metrics=("probability",)),
        reference=EvalResultBuilder().build(),
    )  # fmt: skip
    assert result["summary"]["forget_quality"] == {
        "value": None,
        "reason": "no truth ratios on a 'forget' split were computed",
    }


def test_eval_recipe_reads_reference_eval(tiny_model, tiny_tokenizer, tmp_path, monkeypatch):
    reference = EvalResultBuilder().split("forget", items=[{"truth_ratio": 0.5}]).build()
    reference_path = save_eval(reference, tmp_path / "retain" / "eval.json")
    seen = {}

    def fake_evaluate_splits(model, tokenizer, datasets, config, reference=None):
        seen["reference"] = reference
        return EvalResultBuilder().split("forget", items=[{"truth_ratio": 0.9}]).build().to_dict()

    monkeypatch.setattr(runner, "load_model_and_tokenizer", lambda *a, **k: (tiny_model, tiny_tokenizer))
    monkeypatch.setattr(runner, "evaluate_splits", fake_evaluate_splits)
    args = [
        "--model_name_or_path",
        "tiny",
        "--dataset_config",
        "num_people=4,num_holdout=2",
        "--forget_subjects",
        "person-0000",
        "--splits",
        "forget",
        "--metrics",
        "truth_ratio",
    ]
    parsed = evaluate.make_parser().parse_args_and_config(
        [*args, "--output_dir", str(tmp_path / "out"), "--reference_eval", str(reference_path)]
    )
    evaluate.main(*parsed)
    assert seen["reference"] == reference

    missing = tmp_path / "nowhere" / "eval.json"
    parsed = evaluate.make_parser().parse_args_and_config(
        [*args, "--output_dir", str(tmp_path / "out2"), "--reference_eval", str(missing)]
    )
    with pytest.raises(FileNotFoundError, match=f"--reference_eval {missing} does not exist"):
        evaluate.main(*parsed)


def test_the_ks_statistic_is_stored_beside_the_p_value():
    """D, the largest gap between the two empirical distributions: 1 for disjoint samples, 0.5 for half overlap."""
    from llm_unlearn.evaluation.aggregate import ks_test

    assert ks_test([0.1, 0.2], [0.3, 0.4])[1] == pytest.approx(1.0)
    assert ks_test([0.1, 0.2, 0.3, 0.4], [0.3, 0.4, 0.5, 0.6])[1] == pytest.approx(0.5)
    assert ks_test([0.1, 0.2], [0.1, 0.2]) == (1.0, 0.0)
