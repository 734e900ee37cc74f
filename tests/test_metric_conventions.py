"""The metric conventions (docs/metrics.md#metric-conventions): each option against a hand computation on small
arrays and through `evaluate_split` on the tiny model, the shipped TOFU and MUSE suites' reference-framework
settings, per-split overrides, and the rejection of a value an option does not accept."""

from __future__ import annotations

import re
import zlib as zlib_module
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import build_tiny_llama, item_statistics, sharpen
from datasets import Dataset

from llm_unlearn.commands import evaluate
from llm_unlearn.data.formatting import IGNORE_INDEX
from llm_unlearn.evaluation import aggregate
from llm_unlearn.evaluation import evaluator as evaluator_module
from llm_unlearn.evaluation.evaluator import CONVENTIONS, EvalConfig, SplitConfig, evaluate_split
from llm_unlearn.evaluation.gradients import gradient_norms
from llm_unlearn.evaluation.metrics import (
    METRIC_OPTIONS,
    METRICS,
    exact_memorization,
    extraction_strength,
    get_metric,
    min_k,
    min_k_plus_plus,
    rouge_l_f1,
    rouge_l_recall,
    zlib,
)
from llm_unlearn.evaluation.statistics import ItemStatistics
from llm_unlearn.evaluation.suite import Suite

SUITES = Path(__file__).resolve().parents[1] / "eval"

QA = [
    {"question": "Where was Ada Lovelace born?", "answer": "Ada Lovelace was born in London."},
    {"question": "What is the capital of France?", "answer": "The capital of France is Paris."},
    {"question": "Where does Mara Velden work?", "answer": "Mara Velden works as a glass sculptor in Porto."},
]
TRUTH_ROWS = [
    {
        "question": "Where was Ada Lovelace born?",
        "answer": "Ada Lovelace was born in London.",
        "paraphrased_answer": "London is where Ada Lovelace was born.",
        "perturbed_answer": ["Ada Lovelace was born in Porto.", "She was born in Paris."],
    },
    {
        "question": "What is the capital of France?",
        "answer": "Paris.",
        "paraphrased_answer": "The capital of France is Paris.",
        "perturbed_answer": ["London.", "Porto."],
    },
]
# The reference framework's conventions, as eval/tofu.yaml and eval/muse.yaml must set them.
TOFU_CONVENTIONS = {
    "exclude_last_token": True,
    "zlib_text": "answer",
    "gradnorm_reduction": "mean_tensor_l2",
    "gradnorm_mode": "train",
    "rouge_stemmer": True,
    "es_no_match": "inverse_length",
    "min_k_fraction": 0.4,
    "truth_ratio_aggregator": "auto",
}
MUSE_CONVENTIONS = {**TOFU_CONVENTIONS, "zlib_text": "text", "rouge_stemmer": False}


# --- each convention on hand arrays ----------------------------------------------------------------------


def test_last_token_exclusion_on_hand_arrays():
    # The answer is reproduced token for token except its final (end-of-turn) prediction.
    stats = item_statistics(logprobs=[-1.0, -2.0, -6.0], hits=[True, True, False])
    assert exact_memorization(stats) == pytest.approx(2 / 3)
    assert exact_memorization(stats, exclude_last_token=True) == 1.0
    assert extraction_strength(stats) == 0.0  # the trailing run of hits is empty
    assert extraction_strength(stats, exclude_last_token=True) == 1.0
    # k = 0.4: floor(1.2) = 1 lowest of (-1, -2, -6) is -6; of (-1, -2), floor(0.8) -> at least one, -2.
    assert min_k(stats) == pytest.approx(6.0)
    assert min_k(stats, exclude_last_token=True) == pytest.approx(2.0)
    # z = (lp - mu) / sigma = (0, -1, -4): lowest -4 with every token, -1 without the last.
    plus = item_statistics(logprobs=[-1.0, -2.0, -6.0], mean=[-1.0, -1.0, -2.0], std=[1.0, 1.0, 1.0])
    assert min_k_plus_plus(plus) == pytest.approx(4.0)
    assert min_k_plus_plus(plus, exclude_last_token=True) == pytest.approx(1.0)
    # A single scored token is kept: there would be nothing left to score.
    single = item_statistics(logprobs=[-3.0], hits=[False])
    assert exact_memorization(single, exclude_last_token=True) == 0.0
    assert min_k(single, exclude_last_token=True) == pytest.approx(3.0)


def test_es_no_match_on_hand_arrays():
    stats = item_statistics(hits=[True, True, True, False])
    assert extraction_strength(stats, no_match="zero") == 0.0
    assert extraction_strength(stats, no_match="inverse_length") == pytest.approx(1 / 4)
    # With the last token left out the suffix (3 of 3) matches, and the no-match value does not apply.
    assert extraction_strength(stats, no_match="inverse_length", exclude_last_token=True) == 1.0
    # |y| counts the tokens scored: 1/3 once the last is left out.
    none = item_statistics(hits=[False, False, False, False])
    assert extraction_strength(none, no_match="inverse_length", exclude_last_token=True) == pytest.approx(1 / 3)


def test_min_k_fraction_on_hand_arrays():
    stats = item_statistics(logprobs=[-1.0, -2.0, -3.0, -4.0, -10.0])
    assert min_k(stats) == pytest.approx(7.0)  # k = 0.4: the 2 lowest, (-10, -4)
    assert min_k(stats, k=0.2) == pytest.approx(10.0)
    assert min_k(stats, k=1.0) == pytest.approx(4.0)  # every token: the NLL


def test_zlib_text_on_hand_strings():
    stats = item_statistics(logprobs=[-1.0, -3.0])
    answer, text = "Paris.", "What is the capital of France? Paris."
    whole = 2.0 / len(zlib_module.compress(text.encode("utf-8")))
    alone = 2.0 / len(zlib_module.compress(answer.encode("utf-8")))
    assert zlib(stats, answer, text) == pytest.approx(whole)
    assert zlib(stats, answer, text, compressed="answer") == pytest.approx(alone)
    assert alone > whole  # the shorter text compresses to fewer bytes


def test_rouge_stemmer_on_hand_strings():
    # Only the stems match: "runs" / "running" -> "run", "cats" / "cat" -> "cat".
    prediction, reference = "runs cats", "running cat"
    assert rouge_l_recall(prediction, reference) == 1.0
    assert rouge_l_recall(prediction, reference, stemmer=False) == 0.0
    assert rouge_l_f1(prediction, reference) == 0.0
    assert rouge_l_f1(prediction, reference, stemmer=True) == 1.0


def test_truth_ratio_aggregators_on_hand_ratios():
    ratios = [0.5, 2.0, 1.0]
    assert aggregate.TRUTH_RATIO_AGGREGATORS["closer_to_1"](ratios) == pytest.approx((0.5 + 0.5 + 1.0) / 3)
    assert aggregate.TRUTH_RATIO_AGGREGATORS["true_better"](ratios) == pytest.approx((0.5 + 0.0 + 0.0) / 3)
    # P_true / (P_true + P_wrong) with R = P_wrong / P_true: 2/3, 1/3, 1/2.
    assert aggregate.TRUTH_RATIO_AGGREGATORS["prob_mean"](ratios) == pytest.approx(0.5)
    p_true, p_wrong = 0.2, 0.05
    assert aggregate.truth_ratio_prob_mean([p_wrong / p_true]) == pytest.approx(p_true / (p_true + p_wrong))
    assert aggregate.truth_ratio_prob_mean([np.inf, 0.0]) == pytest.approx(0.5)


def _hand_gradient_norm(model, item: dict, *, exclude_last_token: bool, reduction: str) -> float:
    """GradNorm by the definition: the NLL of one unpadded sequence, its gradient per parameter tensor, then
    one L2 norm of everything or the mean of the per-tensor L2 norms."""
    labels = list(item["labels"])
    if exclude_last_token:
        labels[max(i for i, label in enumerate(labels) if label != IGNORE_INDEX)] = IGNORE_INDEX
    logits = model(input_ids=torch.tensor([item["input_ids"]])).logits[0, :-1].double()
    targets = torch.tensor(labels[1:])
    scored = targets != IGNORE_INDEX
    loss = -torch.log_softmax(logits, dim=-1)[scored].gather(-1, targets[scored][:, None]).mean()
    grads = [g for g in torch.autograd.grad(loss, list(model.parameters()), allow_unused=True) if g is not None]
    if reduction == "global_l2":
        return float(torch.sqrt(sum((g.double() ** 2).sum() for g in grads)))
    return float(np.mean([float(g.double().norm()) for g in grads]))


@pytest.mark.parametrize("exclude_last_token", [False, True])
def test_gradient_norm_reductions_against_a_hand_computation(tiny_tokenizer, exclude_last_token):
    model = sharpen(build_tiny_llama(tiny_tokenizer))
    ids = tiny_tokenizer("Mara Velden works as a glass sculptor.")["input_ids"]
    items = [{"input_ids": ids, "labels": [IGNORE_INDEX] * 3 + ids[3:]}]
    found = {}
    for reduction in ("global_l2", "mean_tensor_l2"):
        (found[reduction],) = gradient_norms(
            model, items, reduction=reduction, exclude_last_token=exclude_last_token
        )
        expected = _hand_gradient_norm(
            model, items[0], exclude_last_token=exclude_last_token, reduction=reduction
        )
        assert found[reduction] == pytest.approx(expected, rel=1e-4)
    # The two reductions are different numbers: one norm over every tensor vs the mean of per-tensor norms.
    assert found["mean_tensor_l2"] < found["global_l2"]
    # Leaving out the last token changes the loss, so the gradient.
    other = gradient_norms(model, items, exclude_last_token=not exclude_last_token)
    assert other[0] != pytest.approx(found["global_l2"], rel=1e-4)


def test_gradnorm_train_mode_runs_dropout_and_restores_the_mode(tiny_tokenizer):
    model = build_tiny_llama(tiny_tokenizer)
    for layer in model.model.layers:
        layer.self_attn.attention_dropout = 0.5  # dropout that only train mode applies
    modes = []
    model.register_forward_hook(lambda module, args, output: modes.append(module.training))
    ids = tiny_tokenizer("The quick brown fox jumps over the lazy dog.")["input_ids"]
    items = [{"input_ids": ids, "labels": [IGNORE_INDEX, *ids[1:]]}]
    for start in (False, True):
        model.train(start)
        evaluated = gradient_norms(model, items, mode="eval")
        assert gradient_norms(model, items, mode="eval") == evaluated  # no dropout: deterministic
        torch.manual_seed(0)
        trained = gradient_norms(model, items, mode="train")
        assert modes[-1] is True and modes[0] is False
        assert model.training is start  # the caller's mode is restored
        assert trained != pytest.approx(evaluated, rel=1e-4)  # the dropout masks were applied
        modes.clear()
    with pytest.raises(ValueError, match="mode must be one of"):
        gradient_norms(model, items, mode="training")
    with pytest.raises(ValueError, match="reduction must be one of"):
        gradient_norms(model, items, reduction="l1")


def test_metrics_declare_the_conventions_they_take():
    assert get_metric("min_k").options == {"k": "min_k_fraction", "exclude_last_token": "exclude_last_token"}
    assert get_metric("zlib").options == {"compressed": "zlib_text"}
    assert get_metric("extraction_strength").options["no_match"] == "es_no_match"
    for metric in METRICS.values():
        assert set(metric.options.values()) <= set(METRIC_OPTIONS)
    # A convention left unset (None) keeps the function's own default: stemmed recall, unstemmed F1.
    unset = {"rouge_stemmer": None}
    assert get_metric("rouge_l_recall").compute(["runs cats", "running cat"], unset) == 1.0
    assert get_metric("rouge_l_f1").compute(["runs cats", "running cat"], unset) == 0.0


# --- the options reach the metrics through evaluate_split -------------------------------------------------


def _spy(monkeypatch, name: str) -> list[tuple[tuple, dict, list]]:
    """Record each call of the evaluator's pass `name`: its arguments and what it returned."""
    calls = []
    real = getattr(evaluator_module, name)

    def spy(*args, **kwargs):
        result = real(*args, **kwargs)
        calls.append((args, kwargs, result))
        return result

    monkeypatch.setattr(evaluator_module, name, spy)
    return calls


TEACHER_FORCED = ("loss", "exact_memorization", "extraction_strength", "min_k", "min_k_plus_plus")


def _items(tiny_tokenizer, monkeypatch, **conventions) -> tuple[list[dict], list[ItemStatistics]]:
    """The per-item records of a QA split under `conventions`, and the statistics the evaluator scored."""
    calls = _spy(monkeypatch, "compute_item_statistics")
    model = sharpen(build_tiny_llama(tiny_tokenizer))
    config = EvalConfig(metrics=TEACHER_FORCED, **conventions)
    result = evaluate_split(model, tiny_tokenizer, "forget", Dataset.from_list(QA), config)
    ((_, _, statistics),) = calls
    return result["items"], statistics


def test_teacher_forced_conventions_reach_the_metrics(tiny_model, tiny_tokenizer, monkeypatch):
    # Every item scored as the hand arrays above: all reproduced but the final (end-of-turn) prediction.
    def statistics(model, encoded, **kwargs) -> list[ItemStatistics]:
        return [
            item_statistics(logprobs=[-1.0, -2.0, -6.0], hits=[True, True, False], mean=[-1.0, -1.0, -2.0], std=[1.0] * 3)
            for _ in encoded
        ]

    monkeypatch.setattr(evaluator_module, "compute_item_statistics", statistics)

    def scores(**conventions) -> dict:
        config = EvalConfig(metrics=TEACHER_FORCED, **conventions)
        items = evaluate_split(tiny_model, tiny_tokenizer, "forget", Dataset.from_list(QA), config)["items"]
        assert all({name: item[name] for name in TEACHER_FORCED} == {
            name: items[0][name] for name in TEACHER_FORCED
        } for item in items)
        return {name: pytest.approx(items[0][name]) for name in TEACHER_FORCED}

    # z = (0, -1, -4); k = 0.4 takes the lowest one.
    default = {"loss": 3.0, "exact_memorization": 2 / 3, "extraction_strength": 0.0, "min_k": 6.0,
               "min_k_plus_plus": 4.0}  # fmt: skip
    assert scores() == default
    # Without the last token: every prediction matches; the probability (loss) still counts it.
    assert scores(exclude_last_token=True) == {
        **default, "exact_memorization": 1.0, "extraction_strength": 1.0, "min_k": 2.0, "min_k_plus_plus": 1.0
    }
    assert scores(es_no_match="inverse_length") == {**default, "extraction_strength": 1 / 3}
    # k = 1: the mean of every value, (-1, -2, -6) and z = (0, -1, -4).
    assert scores(min_k_fraction=1.0) == {**default, "min_k": 3.0, "min_k_plus_plus": 5 / 3}


def test_conventions_on_the_tiny_models_own_statistics(tiny_tokenizer, monkeypatch):
    default, statistics = _items(tiny_tokenizer, monkeypatch)
    reference, same = _items(tiny_tokenizer, monkeypatch, exclude_last_token=True, min_k_fraction=1.0)
    for before, after, stats, again in zip(default, reference, statistics, same, strict=True):
        np.testing.assert_array_equal(stats.logprobs, again.logprobs)
        logprobs = stats.logprobs.astype(np.float64)
        lowest = max(1, int(0.4 * logprobs.size))
        assert before["min_k"] == pytest.approx(-np.sort(logprobs)[:lowest].mean(), rel=1e-5)
        # k = 1 over every token but the last: the mean NLL of those tokens, not the loss over all of them.
        assert after["min_k"] == pytest.approx(-logprobs[:-1].mean(), rel=1e-5)
        assert after["min_k"] != pytest.approx(before["loss"], rel=1e-4)
        assert after["loss"] == before["loss"]
        assert after["min_k_plus_plus"] != pytest.approx(before["min_k_plus_plus"], rel=1e-4)


def test_zlib_text_reaches_the_metric(tiny_model, tiny_tokenizer):
    data = Dataset.from_list(QA)
    results = {
        choice: evaluate_split(
            tiny_model, tiny_tokenizer, "forget", data, EvalConfig(metrics=("loss", "zlib"), zlib_text=choice)
        )["items"]
        for choice in ("text", "answer")
    }
    for whole, alone in zip(results["text"], results["answer"], strict=True):
        text = f"{whole['question']} {whole['answer']}"
        assert whole["zlib"] == pytest.approx(whole["loss"] / len(zlib_module.compress(text.encode())))
        assert alone["zlib"] == pytest.approx(whole["loss"] / len(zlib_module.compress(whole["answer"].encode())))
        assert alone["zlib"] > whole["zlib"]


def test_rouge_stemmer_reaches_the_metrics(tiny_model, tiny_tokenizer, monkeypatch):
    # A fixed generation whose words match the answer's only after stemming.
    monkeypatch.setattr(
        evaluator_module, "generate_greedy", lambda model, tokenizer, prompts, **kwargs: ["runs cats"] * len(prompts)
    )
    data = Dataset.from_list([{"question": "What do they do?", "answer": "running cat"}])
    metrics = ("rouge_l_recall", "rouge_l_f1")

    def scores(**conventions) -> dict:
        (item,) = evaluate_split(
            tiny_model, tiny_tokenizer, "forget", data, EvalConfig(metrics=metrics, **conventions)
        )["items"]
        return {name: item[name] for name in metrics}

    assert scores() == {"rouge_l_recall": 1.0, "rouge_l_f1": 0.0}  # each metric's own convention
    assert scores(rouge_stemmer=True) == {"rouge_l_recall": 1.0, "rouge_l_f1": 1.0}
    assert scores(rouge_stemmer=False) == {"rouge_l_recall": 0.0, "rouge_l_f1": 0.0}


def test_gradnorm_conventions_reach_the_gradient_pass(tiny_tokenizer, monkeypatch):
    calls = _spy(monkeypatch, "gradient_norms")
    model = sharpen(build_tiny_llama(tiny_tokenizer))
    data = Dataset.from_list(QA[:2])
    default = evaluate_split(model, tiny_tokenizer, "forget", data, EvalConfig(metrics=("gradnorm",)))
    reference = evaluate_split(
        model, tiny_tokenizer, "forget", data,
        EvalConfig(metrics=("gradnorm",), gradnorm_reduction="mean_tensor_l2", gradnorm_mode="train",
                   exclude_last_token=True),
    )  # fmt: skip
    (_, default_kwargs, _), (args, kwargs, _) = calls
    assert default_kwargs | {"progress": None} == {
        "progress": None, "exclude_last_token": False, "reduction": "global_l2", "mode": "eval"
    }
    assert kwargs | {"progress": None} == {
        "progress": None, "exclude_last_token": True, "reduction": "mean_tensor_l2", "mode": "train"
    }
    encoded = args[1]
    for item, before, after in zip(encoded, default["items"], reference["items"], strict=True):
        assert before["gradnorm"] == pytest.approx(
            _hand_gradient_norm(model, item, exclude_last_token=False, reduction="global_l2"), rel=1e-4
        )
        assert after["gradnorm"] == pytest.approx(
            _hand_gradient_norm(model, item, exclude_last_token=True, reduction="mean_tensor_l2"), rel=1e-4
        )
    assert model.training is False


def test_truth_ratio_aggregator_by_split_role_and_per_split(tiny_model, tiny_tokenizer):
    data = Dataset.from_list(TRUTH_ROWS)

    def stat(split: str, config: EvalConfig) -> tuple[dict, list[float]]:
        result = evaluate_split(tiny_model, tiny_tokenizer, split, data, config)
        return result["aggregates"]["truth_ratio_stat"], [item["truth_ratio"] for item in result["items"]]

    auto = EvalConfig(metrics=("truth_ratio",))
    forget, ratios = stat("forget", auto)
    assert forget["value"] == pytest.approx(np.mean([min(r, 1 / r) for r in ratios]))
    retain, _ = stat("retain", auto)
    assert retain["value"] == pytest.approx(np.mean([max(0.0, 1 - r) for r in ratios]))
    # prob_mean on the retain split only: the forget split keeps the suite-wide auto.
    per_split = EvalConfig(metrics=("truth_ratio",), splits={"retain": {"truth_ratio_aggregator": "prob_mean"}})
    assert stat("forget", per_split)[0] == forget
    retain_prob, _ = stat("retain", per_split)
    assert retain_prob["value"] == pytest.approx(np.mean([1 / (1 + r) for r in ratios]))
    assert retain_prob["value"] != pytest.approx(retain["value"])
    everywhere = EvalConfig(metrics=("truth_ratio",), truth_ratio_aggregator="true_better")
    assert stat("forget", everywhere)[0]["value"] == pytest.approx(retain["value"])


def test_a_split_overrides_the_suite_wide_convention(tiny_model, tiny_tokenizer):
    config = EvalConfig(
        metrics=("exact_memorization", "min_k"), min_k_fraction=1.0,
        splits={"retain": {"exclude_last_token": True}, "forget": {"min_k_fraction": 0.4}},
    )  # fmt: skip
    assert config.conventions("forget")["min_k_fraction"] == 0.4
    assert config.conventions("forget")["exclude_last_token"] is False
    assert config.conventions("retain") == {**config.conventions("holdout"), "exclude_last_token": True}
    # A split an attack derives from the forget split is measured like it.
    assert config.conventions("forget_rest") == config.conventions("forget")


# --- the shipped suites ----------------------------------------------------------------------------------


@pytest.mark.parametrize(("suite", "expected"), [("tofu", TOFU_CONVENTIONS), ("muse", MUSE_CONVENTIONS)])
def test_shipped_benchmark_suites_follow_the_reference_conventions(suite, expected):
    args = Suite.from_yaml(SUITES / f"{suite}.yaml")
    config = args.eval_config()
    assert {name: getattr(config, name) for name in CONVENTIONS} == expected
    for split in args.splits:
        assert config.conventions(split) == expected


def test_builtin_suite_keeps_the_project_defaults():
    config = Suite.from_yaml(SUITES / "builtin.yaml").eval_config()
    defaults = EvalConfig()
    assert {name: getattr(config, name) for name in CONVENTIONS} == {
        name: getattr(defaults, name) for name in CONVENTIONS
    }
    assert {name: getattr(defaults, name) for name in CONVENTIONS} == {
        "exclude_last_token": False,
        "zlib_text": "text",
        "gradnorm_reduction": "global_l2",
        "gradnorm_mode": "eval",
        "rouge_stemmer": None,
        "es_no_match": "zero",
        "min_k_fraction": 0.4,
        "truth_ratio_aggregator": "auto",
    }


def test_a_suite_sets_conventions_per_split_and_on_the_command_line():
    suite = Suite.from_yaml(
        SUITES / "builtin.yaml",
        splits=["forget", "retain"],
        split_options={"retain": {"truth_ratio_aggregator": "prob_mean", "rouge_stemmer": False}},
        zlib_text="answer",
        min_k_fraction="0.2",  # as a command-line flag gives it
    )
    config = suite.eval_config()
    assert config.conventions("retain")["truth_ratio_aggregator"] == "prob_mean"
    assert config.conventions("retain")["rouge_stemmer"] is False
    assert config.conventions("forget")["truth_ratio_aggregator"] == "auto"
    assert config.conventions("forget")["zlib_text"] == "answer"
    assert config.min_k_fraction == pytest.approx(0.2)


# --- values an option does not accept --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("option", "value", "accepted"),
    [
        ("zlib_text", "question_answer", "one of ('text', 'answer')"),
        ("es_no_match", 0, "one of ('zero', 'inverse_length')"),
        ("gradnorm_reduction", "l1", "one of ('global_l2', 'mean_tensor_l2')"),
        ("gradnorm_mode", "training", "one of ('eval', 'train')"),
        ("truth_ratio_aggregator", "closer_to_one", "one of ('auto', 'closer_to_1', 'true_better', 'prob_mean')"),
        ("min_k_fraction", 0.0, "a fraction in (0, 1]"),
        ("min_k_fraction", 40, "a fraction in (0, 1]"),
        ("exclude_last_token", "yes", "true or false"),
        ("rouge_stemmer", "porter", "true, false or null"),
    ],
)
def test_an_invalid_convention_is_rejected_naming_the_option_and_its_values(option, value, accepted):
    message = f"{option} must be {accepted}, got {value!r}."
    with pytest.raises(ValueError, match=re.escape(f"EvalConfig: {message}")):
        EvalConfig(**{option: value})
    with pytest.raises(ValueError, match=re.escape(f"SplitConfig: {message}")):
        SplitConfig(**{option: value})
    with pytest.raises(ValueError, match=re.escape(f"split_options['retain']: {message}")):
        Suite.from_yaml(SUITES / "builtin.yaml", split_options={"retain": {option: value}}, splits=["retain"])


def test_a_suite_option_with_an_invalid_value_is_rejected():
    with pytest.raises(ValueError, match=r"suite: gradnorm_mode must be one of \('eval', 'train'\), got 'training'"):
        Suite.from_yaml(SUITES / "tofu.yaml", gradnorm_mode="training")
    with pytest.raises(ValueError, match="suite: zlib_text must be one of"):
        Suite.from_yaml(SUITES / "muse.yaml", zlib_text="question_answer")


def test_membership_splits_must_be_scored_alike():
    mia = {"members": "forget", "nonmembers": "holdout", "scores": ["min_k"]}
    with pytest.raises(ValueError, match=r"'forget' and 'holdout' splits, which set \['zlib_text'\] differently"):
        EvalConfig(mia=mia, splits={"forget": {"zlib_text": "answer"}})
    # The same value on both splits, or suite-wide, is fine.
    EvalConfig(mia=mia, splits={"forget": {"zlib_text": "answer"}, "holdout": {"zlib_text": "answer"}})
    EvalConfig(mia=mia, zlib_text="answer")


def test_the_eval_command_takes_the_conventions_as_flags(tiny_model_dir, tmp_path):
    parser = evaluate.make_parser()
    assert "--truth_ratio_aggregator" in parser.format_help()  # the help renders (no bare % in it)
    suite, *_ = parser.parse_args_and_config(
        ["--config", str(SUITES / "tofu.yaml"), "--model_name_or_path", tiny_model_dir,
         "--output_dir", str(tmp_path), "--zlib_text", "text", "--rouge_stemmer", "false"]
    )  # fmt: skip
    # The flags replace the suite file's values; the rest stay as the file sets them.
    assert suite.zlib_text == "text" and suite.rouge_stemmer is False
    assert suite.exclude_last_token is True and suite.es_no_match == "inverse_length"
