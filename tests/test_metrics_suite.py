"""The metric suite on cases whose answers are known by hand: per-position distribution statistics against a
naive full softmax, memorization and membership-inference scores, truth ratio, forget quality, model utility,
AUC and PrivLeak orientations, and bootstrap confidence intervals."""

from __future__ import annotations

import math
import zlib as zlib_module

import numpy as np
import pytest
import torch
from conftest import build_tiny_llama, item_statistics
from scipy import stats as scipy_stats

from llm_unlearn.data.formatting import IGNORE_INDEX, encode_qa, encode_text
from llm_unlearn.evaluation import statistics as statistics_module
from llm_unlearn.evaluation.aggregate import (
    bootstrap_ci,
    bootstrap_ci_two_sample,
    forget_quality,
    model_utility,
    multiple_choice_probability,
    privleak,
    roc_auc,
    roc_auc_batched,
    roc_curve,
    summarize,
    summarize_with_ci,
    truth_ratio,
    truth_ratio_forget,
    truth_ratio_retain,
)
from llm_unlearn.evaluation.metrics import (
    METRIC_INPUTS,
    exact_memorization,
    extraction_strength,
    get_metric,
    loss,
    min_k,
    min_k_plus_plus,
    zlib,
)
from llm_unlearn.evaluation.statistics import compute_item_statistics

# Retrained-model AUCs published by MUSE (Shi et al. 2024), in MUSE's orientation (docs/metrics.md#privleak).
MUSE_RETRAINED_AUC = {"news": 0.4772, "books": 0.5393}


# --- distribution statistics in the one teacher-forced pass ---------------------------------------------


def _items(tokenizer) -> list[dict]:
    return [
        encode_qa(tokenizer, "Where was Ada Lovelace born?", "Ada Lovelace was born in London."),
        encode_qa(tokenizer, "What is the capital of France?", "Paris."),
        encode_text(tokenizer, "The quick brown fox jumps over the lazy dog 0123456789."),
    ]


def _sharp_model(tokenizer):
    """The tiny Llama with a scaled output layer: peaked next-token distributions whose spread varies."""
    model = build_tiny_llama(tokenizer)
    with torch.no_grad():
        model.lm_head.weight.mul_(40.0)
    return model


def _naive_distribution(model, item: dict) -> tuple[np.ndarray, np.ndarray]:
    """mu_t and sigma_t by the definition, from a float64 full softmax of one unpadded sequence."""
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([item["input_ids"]])).logits[0].double()
    log_p = torch.log_softmax(logits, dim=-1)
    p = log_p.exp()
    means, stds = [], []
    for position in range(len(item["input_ids"]) - 1):
        if item["labels"][position + 1] != IGNORE_INDEX:
            mu = float((p[position] * log_p[position]).sum())
            second = float((p[position] * log_p[position] ** 2).sum())
            means.append(mu)
            stds.append(math.sqrt(max(second - mu**2, 0.0)))
    return np.array(means), np.array(stds)


@pytest.mark.parametrize("logits_window", [True, False], ids=["logits_to_keep", "all_logits"])
def test_distribution_statistics_match_a_naive_full_softmax(tiny_tokenizer, monkeypatch, logits_window):
    if not logits_window:
        monkeypatch.setattr(statistics_module.compat, "forward_parameters", lambda model: frozenset())
    model = _sharp_model(tiny_tokenizer)
    items = _items(tiny_tokenizer)
    pad = tiny_tokenizer.pad_token_id
    plain = compute_item_statistics(model, items, batch_size=2, pad_token_id=pad)
    full = compute_item_statistics(model, items, batch_size=2, pad_token_id=pad, distribution_stats=True)
    stds = []
    for item, without, with_ in zip(items, plain, full, strict=True):
        assert without.position_mean is None and without.position_std is None
        # The extra statistics leave the existing arrays bit-identical.
        np.testing.assert_array_equal(with_.logprobs, without.logprobs)
        np.testing.assert_array_equal(with_.argmax_hits, without.argmax_hits)
        mean, std = _naive_distribution(model, item)
        assert with_.position_mean.shape == with_.position_std.shape == (without.num_tokens,)
        np.testing.assert_allclose(with_.position_mean, mean, atol=2e-4, rtol=1e-4)
        np.testing.assert_allclose(with_.position_std, std, atol=2e-4, rtol=1e-4)
        stds.append(std)
    # The sharp model makes the comparison meaningful: entropies and spreads differ from position to position.
    assert np.ptp(np.concatenate(stds)) > 0.5


def test_distribution_statistics_cost_nothing_when_off(tiny_model, tiny_tokenizer, monkeypatch):
    def forbidden(*args, **kwargs):
        raise AssertionError("the full-vocabulary statistics should not be computed")

    monkeypatch.setattr(statistics_module, "_distribution_statistics", forbidden)
    items = _items(tiny_tokenizer)
    stats = compute_item_statistics(tiny_model, items, pad_token_id=tiny_tokenizer.pad_token_id)
    assert all(item.position_mean is None for item in stats)
    with pytest.raises(AssertionError, match="should not be computed"):
        compute_item_statistics(
            tiny_model, items, pad_token_id=tiny_tokenizer.pad_token_id, distribution_stats=True
        )


def test_distribution_statistics_on_hand_logits():
    # Row 0: p = (1/4, 3/4), a masked -inf entry; row 1: uniform over two tokens.
    logits = torch.tensor([[0.0, math.log(3.0), -math.inf], [2.0, 2.0, -math.inf]])
    stats = statistics_module._position_statistics(logits, torch.tensor([1, 0]), distribution_stats=True)
    expected_mean = 0.25 * math.log(0.25) + 0.75 * math.log(0.75)
    # Two values of log p, log 3 apart, with weights 1/4 and 3/4: variance (1/4)(3/4)(log 3)^2.
    expected_std = math.sqrt(3 / 16) * math.log(3.0)
    np.testing.assert_allclose(stats["position_mean"].numpy(), [expected_mean, math.log(0.5)], atol=1e-6)
    np.testing.assert_allclose(stats["position_std"].numpy(), [expected_std, 0.0], atol=1e-6)
    np.testing.assert_allclose(stats["logprobs"].numpy(), [math.log(0.75), math.log(0.5)], atol=1e-6)


# --- per-item metrics ------------------------------------------------------------------------------------


def test_new_metrics_are_registered_with_their_inputs():
    assert "text" in METRIC_INPUTS
    for name in ("exact_memorization", "extraction_strength", "loss", "min_k"):
        assert get_metric(name).inputs == ("statistics",)
    assert get_metric("min_k_plus_plus").inputs == ("distribution_statistics",)
    assert get_metric("zlib").inputs == ("statistics", "answer", "text")
    assert get_metric("min_k").fn is min_k


def test_exact_memorization_is_the_fraction_of_argmax_hits():
    assert exact_memorization(item_statistics(hits=[True, False, True, True])) == 0.75
    assert exact_memorization(item_statistics(hits=[False, False])) == 0.0


@pytest.mark.parametrize(
    ("hits", "zero", "inverse_length"),
    [
        ([1, 1, 1], 1.0, 1.0),
        ([0, 1, 1], 2 / 3, 2 / 3),
        ([1, 0, 1], 1 / 3, 1 / 3),
        ([1, 1, 0], 0.0, 1 / 3),
        ([0, 0, 0, 0], 0.0, 1 / 4),
        ([1], 1.0, 1.0),
        ([0], 0.0, 1.0),
    ],
)
def test_extraction_strength_on_argmax_patterns(hits, zero, inverse_length):
    stats = item_statistics(hits=hits)
    assert extraction_strength(stats) == pytest.approx(zero)
    assert extraction_strength(stats, no_match="inverse_length") == pytest.approx(inverse_length)
    assert get_metric("extraction_strength").fn(stats) == pytest.approx(zero)


def test_extraction_strength_rejects_an_unknown_convention():
    with pytest.raises(ValueError, match="no_match must be"):
        extraction_strength(item_statistics(hits=[1]), no_match="half")


def test_loss_and_zlib_scores():
    stats = item_statistics(logprobs=[-1.0, -3.0])
    assert loss(stats) == pytest.approx(2.0)
    # An empty input compresses to 8 bytes: a 2-byte zlib header, a 2-byte empty final block, a 4-byte Adler-32.
    assert zlib(stats, answer="", text="") == pytest.approx(2.0 / 8)
    text = "Ada Lovelace wurde in London geboren. Ça va ? 東京"
    assert zlib(stats, answer="", text=text) == pytest.approx(2.0 / len(zlib_module.compress(text.encode("utf-8"))))
    # Repetitive text compresses well: a smaller divisor, a larger score.
    rng = np.random.default_rng(0)
    varied = "".join(chr(c) for c in rng.integers(ord("a"), ord("z") + 1, size=400))
    assert zlib(stats, answer="", text="ab" * 200) > zlib(stats, answer="", text=varied)


def test_min_k_on_a_hand_array():
    stats = item_statistics(logprobs=[-3.0, -1.0, -5.0, -2.0, -4.0])
    assert min_k(stats) == pytest.approx(4.5)  # floor(0.4 * 5) = 2 lowest: -5, -4
    assert min_k(stats, k=0.1) == pytest.approx(5.0)  # floor(0.5) = 0 -> at least one token
    assert min_k(stats, k=1.0) == pytest.approx(3.0)
    assert min_k(item_statistics(logprobs=[-0.5])) == pytest.approx(0.5)
    for bad in (0.0, 1.5, -0.2):
        with pytest.raises(ValueError, match=r"k must be a fraction in \(0, 1\]"):
            min_k(stats, k=bad)


def test_min_k_plus_plus_with_hand_mean_and_std():
    # z = (-1 + 1.5) / 0.5 = 1, (-2 + 1) / 1 = -1, and 0 where sigma = 0 (guarded, not 0/0 or -1/0).
    stats = item_statistics(logprobs=[-1.0, -2.0, -3.0], mean=[-1.5, -1.0, -2.0], std=[0.5, 1.0, 0.0])
    assert min_k_plus_plus(stats) == pytest.approx(1.0)  # floor(1.2) = 1 lowest z: -1
    assert min_k_plus_plus(stats, k=2 / 3) == pytest.approx(0.5)  # mean(-1, 0)
    assert min_k_plus_plus(stats, k=1.0) == pytest.approx(0.0)
    assert math.isfinite(min_k_plus_plus(stats, k=1.0))
    with pytest.raises(ValueError, match=r"distribution_stats=True"):
        min_k_plus_plus(item_statistics(logprobs=[-1.0]))


def test_min_k_plus_plus_from_the_model_pass(tiny_tokenizer):
    model = _sharp_model(tiny_tokenizer)
    item = _items(tiny_tokenizer)[2]
    stats = compute_item_statistics(
        model, [item], pad_token_id=tiny_tokenizer.pad_token_id, distribution_stats=True
    )[0]
    mean, std = _naive_distribution(model, item)
    z = (stats.logprobs.astype(np.float64) - mean) / std
    count = max(1, int(0.4 * z.size))
    assert min_k_plus_plus(stats) == pytest.approx(-np.sort(z)[:count].mean(), rel=1e-3, abs=1e-3)


# --- truth ratio -----------------------------------------------------------------------------------------


def test_truth_ratio_in_both_conventions():
    para, wrongs = math.log(0.5), [math.log(0.25), math.log(0.5)]
    # Geometric: sqrt(0.25 * 0.5) / 0.5; arithmetic: mean(0.25, 0.5) / 0.5.
    assert truth_ratio(para, wrongs) == pytest.approx(math.sqrt(0.125) / 0.5)
    assert truth_ratio(para, wrongs, wrong_mean="arithmetic") == pytest.approx(0.75)
    # Long answers: log-probs of -2000 underflow exp(), but the ratio is still defined (here 1).
    assert truth_ratio(-2000.0, [-2000.0, -2000.0], wrong_mean="arithmetic") == pytest.approx(1.0)
    with pytest.raises(ValueError, match="wrong_mean must be"):
        truth_ratio(para, wrongs, wrong_mean="harmonic")
    with pytest.raises(ValueError, match="perturbed_logprob_means is empty"):
        truth_ratio(para, [])
    with pytest.raises(ValueError, match="paraphrased_logprob_mean is NaN"):
        truth_ratio(math.nan, wrongs)


def test_truth_ratio_perfect_knowledge_versus_indifference():
    knows = [truth_ratio(0.0, [-30.0, -40.0, -50.0])] * 3  # the true answer is certain, the wrong ones not
    indifferent = [truth_ratio(-2.0, [-2.0, -2.0])] * 3
    assert truth_ratio_forget(knows) == pytest.approx(0.0, abs=1e-12)
    assert truth_ratio_retain(knows) == pytest.approx(1.0)
    assert truth_ratio_forget(indifferent) == pytest.approx(1.0)
    assert truth_ratio_retain(indifferent) == pytest.approx(0.0)


def test_truth_ratio_aggregates_on_hand_values():
    ratios = [0.5, 2.0, 1.0]
    assert truth_ratio_forget(ratios) == pytest.approx((0.5 + 0.5 + 1.0) / 3)
    assert truth_ratio_retain(ratios) == pytest.approx((0.5 + 0.0 + 0.0) / 3)
    assert truth_ratio_forget([0.0, math.inf]) == 0.0
    for aggregate in (truth_ratio_forget, truth_ratio_retain):
        with pytest.raises(ValueError, match="ratios is empty"):
            aggregate([])
        with pytest.raises(ValueError, match="non-negative"):
            aggregate([1.0, -0.5])
        with pytest.raises(ValueError, match="NaN at index 1"):
            aggregate([1.0, math.nan])


def test_multiple_choice_probability():
    assert multiple_choice_probability(0.6, [0.2, 0.1, 0.1]) == pytest.approx(0.6)
    assert multiple_choice_probability(0.0, [0.3]) == 0.0
    with pytest.raises(ValueError, match="non-negative"):
        multiple_choice_probability(0.5, [-0.1])
    with pytest.raises(ValueError, match="undefined"):
        multiple_choice_probability(0.0, [0.0, 0.0])
    with pytest.raises(ValueError, match="p_wrongs is empty"):
        multiple_choice_probability(0.5, [])


# --- forget quality and model utility --------------------------------------------------------------------


def test_forget_quality_hand_cases():
    ratios = [0.3, 0.9, 0.5, 0.7, 0.2]
    assert forget_quality(ratios, list(ratios)) == 1.0
    # Fully separated samples of 5: only 2 of the C(10, 5) = 252 orderings reach D = 1 (exact test).
    assert forget_quality([1, 2, 3, 4, 5], [6, 7, 8, 9, 10]) == pytest.approx(2 / 252)
    rng = np.random.default_rng(0)
    unlearned, retain = rng.lognormal(0, 1, 40), rng.lognormal(1.5, 1, 40)
    value = forget_quality(unlearned, retain)
    assert value < 1e-4
    assert value == pytest.approx(scipy_stats.ks_2samp(unlearned, retain).pvalue)


def test_forget_quality_rejects_empty_and_unpaired_inputs():
    with pytest.raises(ValueError, match="unlearned_ratios is empty"):
        forget_quality([], [1.0])
    with pytest.raises(ValueError, match=r"same forget items.*3 unlearned and 2 retain"):
        forget_quality([1.0, 2.0, 3.0], [1.0, 2.0])


def test_model_utility_is_a_harmonic_mean_with_a_zero_rule():
    assert model_utility({"a": 0.5, "b": 0.25, "c": 1.0}) == pytest.approx(3 / (2 + 4 + 1))
    nine = {f"{stat}/{split}": 0.6 for stat in ("p", "rouge", "tr") for split in ("retain", "ra", "wf")}
    assert model_utility(nine) == pytest.approx(0.6)
    assert model_utility({**nine, "p/retain": 0.0}) == 0.0
    assert model_utility({**nine, "tr/wf": -0.1}) == 0.0
    with pytest.raises(ValueError, match="at least one value"):
        model_utility({})
    with pytest.raises(ValueError, match="'rouge/ra' is NaN"):
        model_utility({**nine, "rouge/ra": math.nan})


# --- membership inference: AUC and PrivLeak --------------------------------------------------------------


def test_roc_auc_orientation_and_hand_cases():
    members, non_members = [0.1, 0.2, 0.3], [2.0, 3.0, 4.0]  # scores: higher = looks less like a member
    assert roc_auc(members, non_members) == 1.0
    assert roc_auc(non_members, members) == 0.0
    assert roc_auc([1.0, 2.0, 3.0], [1.0, 2.0, 3.0]) == 0.5
    # Holdout 2 beats forget 1 and ties 2 (1.5); 3 beats 1, 2 and ties 3 (2.5); 4 beats all (3): 7 / 9.
    assert roc_auc([1.0, 2.0, 3.0], [2.0, 3.0, 4.0]) == pytest.approx(7 / 9)
    with pytest.raises(ValueError, match="holdout_scores is empty"):
        roc_auc([1.0], [])


def test_roc_auc_with_the_metrics_orientation():
    # Forget items the model reproduces confidently (high lp_t) against holdout items it finds unlikely.
    forget = [item_statistics(logprobs=[-0.1, -0.2, -0.05]), item_statistics(logprobs=[-0.3, -0.1, -0.2])]
    holdout = [item_statistics(logprobs=[-3.0, -2.0, -4.0]), item_statistics(logprobs=[-2.5, -5.0, -1.5])]
    for score in (loss, min_k):
        assert roc_auc([score(s) for s in forget], [score(s) for s in holdout]) == 1.0


def test_roc_curve_area_equals_auc_and_batched_auc_equals_auc():
    rng = np.random.default_rng(1)
    forget = rng.integers(0, 6, size=30).astype(float)  # many ties
    holdout = rng.integers(2, 9, size=25).astype(float)
    fpr, tpr, thresholds = roc_curve(forget, holdout)
    assert (fpr[0], tpr[0], fpr[-1], tpr[-1]) == (0.0, 0.0, 1.0, 1.0)
    assert thresholds[0] == math.inf and (np.diff(thresholds) < 0).all()
    assert (np.diff(fpr) >= 0).all() and (np.diff(tpr) >= 0).all()
    area = float(np.sum(np.diff(fpr) * (tpr[1:] + tpr[:-1]) / 2))
    assert area == pytest.approx(roc_auc(forget, holdout))
    pairs = np.mean((holdout[:, None] > forget[None, :]) + 0.5 * (holdout[:, None] == forget[None, :]))
    assert roc_auc(forget, holdout) == pytest.approx(pairs)
    rows_f, rows_h = rng.normal(size=(4, 7)), rng.normal(size=(4, 5))
    np.testing.assert_allclose(
        roc_auc_batched(rows_f, rows_h), [roc_auc(f, h) for f, h in zip(rows_f, rows_h, strict=True)]
    )


def test_privleak_sign_conventions_with_the_published_retrained_aucs():
    for auc_retrained in MUSE_RETRAINED_AUC.values():
        assert privleak(auc_retrained, auc_retrained) == 0.0
        # Under-unlearned: forget texts still look like training data, MUSE-orientation AUC near 0.
        assert privleak(0.001, auc_retrained) < -99.0
        assert privleak(0.0, auc_retrained) == pytest.approx(-100.0)
        # Over-unlearned: forget texts look less like training data than never-seen ones.
        assert privleak(0.9, auc_retrained) > 60.0
    assert privleak(0.25, 0.5) == pytest.approx(-50.0)
    # The MUSE News target: PrivLeak -99.8 against the retrained 0.4772 means an AUC of 0.4772 * 0.002.
    assert privleak(0.4772 * 0.002, 0.4772) == pytest.approx(-99.8)


def test_privleak_from_roc_auc_orientation():
    forget_auc = roc_auc([0.1, 0.2, 0.3], [2.0, 3.0, 4.0])  # 1.0: forget items look like members
    retrained = 1.0 - MUSE_RETRAINED_AUC["news"]
    assert privleak(forget_auc, retrained, orientation="roc_auc") == pytest.approx(-100.0)
    assert privleak(0.5, 0.5, orientation="roc_auc") == 0.0
    with pytest.raises(ValueError, match="orientation must be"):
        privleak(0.5, 0.5, orientation="sklearn")
    with pytest.raises(ValueError, match=r"auc_unlearned must be an AUC in \[0, 1\]"):
        privleak(1.5, 0.5)
    with pytest.raises(ValueError, match="undefined"):
        privleak(0.5, 0.0)
    with pytest.raises(ValueError, match="undefined"):
        privleak(0.5, 1.0, orientation="roc_auc")


# --- bootstrap confidence intervals ----------------------------------------------------------------------


def test_bootstrap_ci_hand_cases():
    assert bootstrap_ci([0.7] * 5) == (0.7, 0.7)
    # The mean of two draws from {0, 1} is 0, 1/2 or 1 with probabilities 1/4, 1/2, 1/4: the 95% interval
    # spans the extremes.
    assert bootstrap_ci([0.0, 1.0], n_resamples=4000) == (0.0, 1.0)
    assert bootstrap_ci([0.0, 1.0], confidence=0.2, n_resamples=4000) == (0.5, 0.5)


def test_bootstrap_ci_contains_the_mean_is_seeded_and_narrows_with_n():
    rng = np.random.default_rng(0)
    small, large = rng.normal(1.0, 1.0, 20), rng.normal(1.0, 1.0, 2000)
    low, high = bootstrap_ci(small)
    assert low < small.mean() < high
    assert bootstrap_ci(small, seed=3) == bootstrap_ci(small, seed=3)
    assert bootstrap_ci(small, seed=3) != bootstrap_ci(small, seed=4)
    large_low, large_high = bootstrap_ci(large)
    assert large_high - large_low < (high - low) / 4
    median_low, median_high = bootstrap_ci(small, statistic=np.median)
    assert median_low <= np.median(small) <= median_high


def test_bootstrap_ci_errors():
    with pytest.raises(ValueError, match="values is empty"):
        bootstrap_ci([])
    with pytest.raises(ValueError, match=r"confidence must be in \(0, 1\)"):
        bootstrap_ci([1.0, 2.0], confidence=1.0)
    with pytest.raises(ValueError, match="n_resamples must be at least 1"):
        bootstrap_ci([1.0, 2.0], n_resamples=0)
    with pytest.raises(ValueError, match="first is empty"):
        bootstrap_ci_two_sample([], [1.0], roc_auc_batched)


def test_bootstrap_ci_two_sample_for_the_auc():
    assert bootstrap_ci_two_sample([0.1, 0.2, 0.3], [2.0, 3.0], roc_auc_batched) == (1.0, 1.0)
    rng = np.random.default_rng(2)
    forget, holdout = rng.normal(0.0, 1.0, 60), rng.normal(0.8, 1.0, 40)
    low, high = bootstrap_ci_two_sample(forget, holdout, roc_auc_batched, seed=5)
    assert low < roc_auc(forget, holdout) < high
    assert 0.5 < high <= 1.0
    assert bootstrap_ci_two_sample(forget, holdout, roc_auc_batched, seed=5) == (low, high)
    with pytest.raises(ValueError, match="one value per resample"):
        bootstrap_ci_two_sample(forget, holdout, lambda a, b: a.mean())


def test_summarize_with_ci_extends_summarize():
    values = [0.2, 0.4, 0.9, 0.5]
    summary = summarize_with_ci(values, seed=1)
    assert set(summary) == {"mean", "n", "std", "ci_low", "ci_high"}
    assert {key: summary[key] for key in ("mean", "n", "std")} == summarize(values)
    assert (summary["ci_low"], summary["ci_high"]) == bootstrap_ci(values, seed=1)
    assert summary["ci_low"] < summary["mean"] < summary["ci_high"]
    empty = summarize_with_ci([])
    assert empty["n"] == 0 and math.isnan(empty["ci_low"]) and math.isnan(empty["ci_high"])
    assert summarize_with_ci(iter(values), seed=1) == summary


def test_evaluator_serves_all_logit_metrics_from_one_forward_pass(tiny_model, tiny_tokenizer):
    """zlib reads the item's text and Min-K%++ the distribution statistics, both from the single pass."""
    import zlib as zlib_module

    from datasets import Dataset

    from llm_unlearn.evaluation import EvalConfig, evaluate_splits

    data = Dataset.from_list(
        [{"question": "Where was Ada born?", "answer": "In London."}, {"question": "Q?", "answer": "A."}]
    )
    calls = []
    tiny_model.register_forward_hook(lambda *_: calls.append(1))
    metrics = (
        "probability",
        "loss",
        "zlib",
        "min_k",
        "min_k_plus_plus",
        "exact_memorization",
        "extraction_strength",
    )
    result = evaluate_splits(
        tiny_model, tiny_tokenizer, {"forget": data}, EvalConfig(metrics=metrics, batch_size=8)
    )
    assert len(calls) == 1
    item = result["splits"]["forget"]["items"][0]
    expected_zlib = item["loss"] / len(zlib_module.compress(b"Where was Ada born? In London."))
    assert item["zlib"] == pytest.approx(expected_zlib, rel=1e-6)
    assert all(np.isfinite(item[name]) for name in metrics)


def test_privleak_without_a_reference_eval_takes_the_published_retrained_auc_and_says_so():
    """MUSE's own code compares with the published retrained AUC (News 0.4772, MUSE orientation) when no retrained
    model was evaluated; the summary does the same when the suite names it, and labels the value."""
    from llm_unlearn.evaluation.membership import privleak_summary

    mia = {"members": "f", "nonmembers": "h", "scores": {"min_k": {"auc": 0.9, "ci_low": 0.8, "ci_high": 0.95}}}
    summary = privleak_summary(mia, None, "min_k", published_auc=0.4772)
    # The AUC's interval, mapped through PrivLeak (which falls as the AUC rises).
    assert (summary["ci_low"], summary["ci_high"]) == pytest.approx(
        ((0.05 - 0.4772) / 0.4772 * 100, (0.2 - 0.4772) / 0.4772 * 100)
    )
    assert summary["reference"] == "published"
    assert summary["reference_auc"] == pytest.approx(1 - 0.4772)
    # roc_auc 0.9 is 0.1 in MUSE's orientation: (0.1 - 0.4772) / 0.4772 * 100.
    assert summary["value"] == pytest.approx((0.1 - 0.4772) / 0.4772 * 100)
    assert privleak_summary(mia, None, "min_k")["reason"].startswith("no reference eval given")
    with_reference = {"mia": {"members": "f", "nonmembers": "h", "scores": {"min_k": {"auc": 0.5}}}}
    assert privleak_summary(mia, with_reference, "min_k", published_auc=0.4772)["reference"] == "reference eval"


def test_intervals_resample_subjects_when_items_come_in_clusters():
    """Twenty answers about one author move together; resampling them as independent items understates the
    uncertainty of the mean. The cluster bootstrap resamples authors and gives the wider, honest interval."""
    from llm_unlearn.evaluation.aggregate import bootstrap_ci, cluster_bootstrap_ci, summarize_with_ci

    rng = np.random.default_rng(0)
    authors = np.repeat(np.arange(10), 20)
    values = rng.normal(size=10)[authors] + 0.1 * rng.normal(size=authors.size)
    item_low, item_high = bootstrap_ci(values)
    low, high = cluster_bootstrap_ci(values, list(authors))
    assert (high - low) > 2 * (item_high - item_low)
    assert low < values.mean() < high
    assert summarize_with_ci(values, clusters=list(authors))["ci_low"] == low
    # One subject, or none known: the items are resampled.
    assert summarize_with_ci(values, clusters=[None] * values.size)["ci_low"] == item_low
    assert summarize_with_ci(values, clusters=["a"] * values.size)["ci_low"] == item_low
    # Every cluster the same size: the resampled mean is the mean of cluster means.
    assert cluster_bootstrap_ci([1.0, 1.0, 3.0, 3.0], ["x", "x", "y", "y"], n_resamples=2000) == (1.0, 3.0)
