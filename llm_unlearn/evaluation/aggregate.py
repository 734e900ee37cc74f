"""Suite-level metrics over per-item values: truth-ratio aggregates, forget quality and model utility (TOFU,
Maini et al. 2024), membership-inference AUC and PrivLeak (MUSE, Shi et al. 2024), and percentile-bootstrap
confidence intervals. Definitions follow docs/metrics.md.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, Literal

import numpy as np
from scipy import special, stats

Values = Sequence[float] | np.ndarray


def _as_1d(values: Values, name: str) -> np.ndarray:
    array = np.asarray(values, dtype=np.float64)
    if array.ndim != 1:
        raise ValueError(f"{name} must be a 1-D sequence of numbers, got an array of shape {array.shape}.")
    if array.size == 0:
        raise ValueError(f"{name} is empty; at least one value is needed.")
    if np.isnan(array).any():
        raise ValueError(f"{name} has a NaN at index {int(np.flatnonzero(np.isnan(array))[0])}.")
    return array


def _as_ratios(ratios: Values) -> np.ndarray:
    array = _as_1d(ratios, "ratios")
    if (array < 0).any():
        raise ValueError(f"truth ratios are non-negative, got {float(array.min())}.")
    return array


def truth_ratio(
    paraphrased_logprob_mean: float,
    perturbed_logprob_means: Values,
    *,
    wrong_mean: Literal["geometric", "arithmetic"] = "geometric",
) -> float:
    """Truth ratio R = [mean over perturbed answers of P(y_wrong|x)] / P(y_paraphrased|x), P = exp(-NLL) (TOFU,
    Maini et al. 2024; docs/metrics.md#truth_ratio).

    Inputs are length-normalised log-probabilities, -NLL(y|x) = (1/|y|) sum_t lp_t, one per answer.
    `wrong_mean="geometric"` (default, the TOFU reference code) averages the wrong answers in log space:
    R = exp(mean_j lp_j - lp_para). `wrong_mean="arithmetic"` (the paper's formula) averages their
    probabilities: R = mean_j exp(lp_j) / exp(lp_para).
    """
    perturbed = _as_1d(perturbed_logprob_means, "perturbed_logprob_means")
    if math.isnan(paraphrased_logprob_mean):
        raise ValueError("paraphrased_logprob_mean is NaN.")
    if wrong_mean == "geometric":
        log_wrong = float(perturbed.mean())
    elif wrong_mean == "arithmetic":
        # log of the mean probability via logsumexp: exp() of long answers' log-probs can underflow to 0.
        log_wrong = float(special.logsumexp(perturbed)) - math.log(perturbed.size)
    else:
        raise ValueError(f"wrong_mean must be 'geometric' or 'arithmetic', got {wrong_mean!r}.")
    with np.errstate(over="ignore"):
        return float(np.exp(log_wrong - paraphrased_logprob_mean))


def truth_ratio_forget(ratios: Values) -> float:
    """Forget-set truth-ratio statistic mean(min(R, 1/R)): 1 when true and wrong answers are equally likely
    (TOFU, Maini et al. 2024; docs/metrics.md#truth_ratio_stat)."""
    array = _as_ratios(ratios)
    with np.errstate(divide="ignore"):  # R = 0 gives 1/R = inf, and min(0, inf) = 0 as the limit says
        return float(np.minimum(array, 1.0 / array).mean())


def truth_ratio_retain(ratios: Values) -> float:
    """Retain / real-author / world-fact truth-ratio statistic mean(max(0, 1 - R)): 1 when the true answer is
    far likelier than the wrong ones (TOFU, Maini et al. 2024; docs/metrics.md#truth_ratio_stat)."""
    return float(np.maximum(0.0, 1.0 - _as_ratios(ratios)).mean())


def truth_ratio_prob_mean(ratios: Values) -> float:
    """Truth-ratio statistic `prob_mean`: mean of P_true / (P_true + P_wrong) = mean(1 / (1 + R)), P_true the
    truth ratio's denominator and P_wrong its numerator; 1 when the true answer is far likelier, 1/2 when they
    are equally likely (docs/metrics.md#truth_ratio_stat)."""
    return float((1.0 / (1.0 + _as_ratios(ratios))).mean())


# The truth-ratio statistics a split may take, by name (docs/metrics.md#truth_ratio_stat).
TRUTH_RATIO_AGGREGATORS: dict[str, Callable[[Values], float]] = {
    "closer_to_1": truth_ratio_forget,
    "true_better": truth_ratio_retain,
    "prob_mean": truth_ratio_prob_mean,
}


def multiple_choice_probability(p_true: float, p_wrongs: Values) -> float:
    """Multiple-choice probability P_true / (P_true + sum_j P_wrong_j) with length-normalised P = exp(-NLL)
    (TOFU real authors / world facts, Maini et al. 2024; docs/metrics.md#probability_mc)."""
    wrongs = _as_1d(p_wrongs, "p_wrongs")
    if not p_true >= 0 or (wrongs < 0).any():
        raise ValueError(
            f"probabilities must be non-negative, got p_true={p_true}, p_wrongs={wrongs.tolist()}."
        )
    total = p_true + float(wrongs.sum())
    if total == 0:
        raise ValueError("every probability is 0; the multiple-choice probability is undefined.")
    return p_true / total


def forget_quality(unlearned_ratios: Values, retain_ratios: Values) -> float:
    """Forget quality: p-value of the two-sample Kolmogorov-Smirnov test (scipy.stats.ks_2samp) between the
    per-item truth ratios of the unlearned model and of the retain model (TOFU, Maini et al. 2024; docs/metrics.md#forget_quality
    section 2). Both are measured on the same forget items, so the lengths must match; 1.0 for equal samples."""
    return ks_test(unlearned_ratios, retain_ratios)[0]


def ks_test(unlearned_ratios: Values, retain_ratios: Values) -> tuple[float, float]:
    """Forget quality's two-sample Kolmogorov-Smirnov test: its p-value and its statistic D, the largest gap between
    the two empirical distributions (D is comparable across set sizes, where the p-value is not)."""
    unlearned = _as_1d(unlearned_ratios, "unlearned_ratios")
    retain = _as_1d(retain_ratios, "retain_ratios")
    if unlearned.size != retain.size:
        raise ValueError(
            f"forget quality compares the truth ratios of the same forget items under both models, but got "
            f"{unlearned.size} unlearned and {retain.size} retain values."
        )
    result = stats.ks_2samp(unlearned, retain)
    return float(result.pvalue), float(result.statistic)


def model_utility(values: Mapping[str, float]) -> float:
    """Model utility: the harmonic mean of the given numbers (TOFU: probability, ROUGE-L recall and truth-ratio
    statistic on the retain set, real authors and world facts; Maini et al. 2024; docs/metrics.md#model_utility).

    Any value <= 0 makes it 0: the harmonic mean tends to 0 as one value does, and every TOFU component lies in
    [0, 1], so a negative one can only mean "nothing retained".
    """
    if not values:
        raise ValueError("model_utility needs at least one value, got none.")
    for name, value in values.items():
        if math.isnan(value):
            raise ValueError(f"model utility component {name!r} is NaN.")
    array = np.array(list(values.values()), dtype=np.float64)
    if (array <= 0).any():
        return 0.0
    return float(array.size / (1.0 / array).sum())


def roc_auc_batched(forget_scores: np.ndarray, holdout_scores: np.ndarray) -> np.ndarray:
    """`roc_auc` along the last axis, for many pairs of samples at once (e.g. bootstrap resamples): arrays
    `[..., n_forget]` and `[..., n_holdout]` give `[...]` (docs/metrics.md#auc)."""
    forget = np.asarray(forget_scores, dtype=np.float64)
    holdout = np.asarray(holdout_scores, dtype=np.float64)
    n_forget, n_holdout = forget.shape[-1], holdout.shape[-1]
    # Mann-Whitney: with average ranks a tie between a holdout and a forget score counts 1/2.
    ranks = stats.rankdata(np.concatenate([forget, holdout], axis=-1), axis=-1)
    u_holdout = ranks[..., n_forget:].sum(axis=-1) - n_holdout * (n_holdout + 1) / 2
    return u_holdout / (n_forget * n_holdout)


def roc_auc(forget_scores: Values, holdout_scores: Values) -> float:
    """Membership-inference AUC with forget items labelled 0 and holdout items 1, on scores where higher = looks
    less like a member: P(holdout score > forget score) + P(tie)/2, the Mann-Whitney U statistic over
    n_forget * n_holdout (docs/metrics.md#auc). Near 1: the forget items look like training data; 0.5:
    indistinguishable."""
    return float(
        roc_auc_batched(_as_1d(forget_scores, "forget_scores"), _as_1d(holdout_scores, "holdout_scores"))
    )


def roc_curve(forget_scores: Values, holdout_scores: Values) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """ROC points (fpr, tpr, thresholds) in `roc_auc`'s orientation (holdout = positive, predicted when
    score >= threshold), thresholds descending from +inf so the curve starts at (0, 0) and ends at (1, 1); its
    trapezoidal area is `roc_auc` (docs/metrics.md#auc)."""
    forget = np.sort(_as_1d(forget_scores, "forget_scores"))
    holdout = np.sort(_as_1d(holdout_scores, "holdout_scores"))
    thresholds = np.unique(np.concatenate([forget, holdout]))[::-1]
    # Counts of scores >= each threshold, from the sorted samples.
    fpr = (forget.size - np.searchsorted(forget, thresholds, side="left")) / forget.size
    tpr = (holdout.size - np.searchsorted(holdout, thresholds, side="left")) / holdout.size
    return (
        np.concatenate([[0.0], fpr]),
        np.concatenate([[0.0], tpr]),
        np.concatenate([[np.inf], thresholds]),
    )


def privleak(
    auc_unlearned: float,
    auc_retrained: float,
    *,
    orientation: Literal["muse", "roc_auc"] = "muse",
) -> float:
    """MUSE PrivLeak = (AUC_unlearned - AUC_retrained) / AUC_retrained * 100 (Shi et al. 2024; docs/metrics.md#privleak
    section 3), from the AUCs of the Min-40% score (`min_k`, k = 0.4) on the privleak forget vs holdout texts,
    for the unlearned model and for the model retrained without the forget set.

    `orientation="muse"` (default): the AUCs are in MUSE's orientation, 1 - `roc_auc(forget, holdout)` (near 0:
    the forget texts look like training data), so published figures such as the retrained AUCs News 0.4772 and
    Books 0.5393 go in as they are. `orientation="roc_auc"`: the AUCs are as `roc_auc` returns them and are
    converted here. Near 0 is good; strongly negative = under-unlearned; large positive = over-unlearned.
    """
    if orientation not in ("muse", "roc_auc"):
        raise ValueError(f"orientation must be 'muse' or 'roc_auc', got {orientation!r}.")
    for name, value in (("auc_unlearned", auc_unlearned), ("auc_retrained", auc_retrained)):
        if not 0.0 <= value <= 1.0:
            raise ValueError(f"{name} must be an AUC in [0, 1], got {value}.")
    if orientation == "roc_auc":
        auc_unlearned, auc_retrained = 1.0 - auc_unlearned, 1.0 - auc_retrained
    if auc_retrained == 0:
        raise ValueError("the retrained model's AUC (MUSE orientation) is 0; PrivLeak is undefined.")
    return (auc_unlearned - auc_retrained) / auc_retrained * 100.0


def _check_bootstrap(n_resamples: int, confidence: float) -> None:
    if n_resamples < 1:
        raise ValueError(f"n_resamples must be at least 1, got {n_resamples}.")
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}.")


def _percentile_interval(resampled: np.ndarray, n_resamples: int, confidence: float) -> tuple[float, float]:
    if resampled.shape != (n_resamples,):
        raise ValueError(
            f"the statistic must give one value per resample, shape ({n_resamples},); got {resampled.shape}."
        )
    tail = (1.0 - confidence) / 2
    low, high = np.quantile(resampled, [tail, 1.0 - tail])
    return float(low), float(high)


def bootstrap_ci(
    values: Values,
    statistic: Callable[..., np.ndarray] = np.mean,
    n_resamples: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
) -> tuple[float, float]:
    """Percentile-bootstrap confidence interval (low, high) of `statistic` over per-item `values`, deterministic
    by `seed` (docs/metrics.md#aggregates-and-confidence-intervals: report sample sizes and bootstrap confidence intervals).

    `statistic` is a numpy reduction taking `axis` (np.mean, np.median, ...): it runs once on all resamples,
    an `[n_resamples, n]` array, with `axis=-1`.
    """
    array = _as_1d(values, "values")
    _check_bootstrap(n_resamples, confidence)
    rng = np.random.default_rng(seed)
    rows = rng.integers(0, array.size, size=(n_resamples, array.size))
    return _percentile_interval(np.asarray(statistic(array[rows], axis=-1)), n_resamples, confidence)


def cluster_bootstrap_ci(
    values: Values,
    clusters: Sequence[Any],
    n_resamples: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
) -> tuple[float, float]:
    """Percentile-bootstrap interval (low, high) of the mean of `values` when items come in clusters (TOFU: 20
    questions per author): whole clusters are resampled with replacement and the mean is taken over all their
    items (the cluster bootstrap; Field and Welsh 2007). Resampling items alone treats answers about one author as
    independent and gives intervals that are too narrow."""
    array = _as_1d(values, "values")
    if len(clusters) != array.size:
        raise ValueError(f"got {array.size} values but {len(clusters)} cluster labels.")
    _check_bootstrap(n_resamples, confidence)
    labels, index = np.unique(np.asarray([str(cluster) for cluster in clusters]), return_inverse=True)
    sums = np.bincount(index, weights=array, minlength=labels.size)
    counts = np.bincount(index, minlength=labels.size).astype(np.float64)
    rows = np.random.default_rng(seed).integers(0, labels.size, size=(n_resamples, labels.size))
    return _percentile_interval(sums[rows].sum(axis=-1) / counts[rows].sum(axis=-1), n_resamples, confidence)


def resampled_rows(
    n: int, clusters: Sequence[Any] | None = None, n_resamples: int = 1000, seed: int = 0
) -> list[np.ndarray]:
    """The row indices of each bootstrap resample of `n` items: items drawn with replacement, or, given one
    cluster label per item (at least two distinct, none None), whole clusters drawn with replacement."""
    rng = np.random.default_rng(seed)
    if clusters is None or None in clusters or len(set(clusters)) < 2:
        return list(rng.integers(0, n, size=(n_resamples, n)))
    labels, index = np.unique(np.asarray([str(cluster) for cluster in clusters]), return_inverse=True)
    members = [np.flatnonzero(index == label) for label in range(labels.size)]
    picks = rng.integers(0, labels.size, size=(n_resamples, labels.size))
    return [np.concatenate([members[label] for label in row]) for row in picks]


def percentile_interval(values: Iterable[float], confidence: float = 0.95) -> tuple[float, float]:
    """The percentile interval (low, high) of resampled statistics, NaN ones left out; NaN bounds when none is
    left."""
    array = np.asarray([value for value in values if not math.isnan(value)], dtype=np.float64)
    if array.size == 0:
        return math.nan, math.nan
    tail = (1.0 - confidence) / 2
    low, high = np.quantile(array, [tail, 1.0 - tail])
    return float(low), float(high)


def bootstrap_ci_two_sample(
    first: Values,
    second: Values,
    statistic: Callable[[np.ndarray, np.ndarray], np.ndarray],
    n_resamples: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
) -> tuple[float, float]:
    """Percentile-bootstrap confidence interval (low, high) of a two-sample statistic, each sample resampled
    separately at its own size, deterministic by `seed` (docs/metrics.md#aggregates-and-confidence-intervals).

    `statistic(first_rows, second_rows)` gets `[n_resamples, n_first]` and `[n_resamples, n_second]` arrays and
    returns one value per row: e.g. `roc_auc_batched` for the forget-vs-holdout AUC.
    """
    first_array = _as_1d(first, "first")
    second_array = _as_1d(second, "second")
    _check_bootstrap(n_resamples, confidence)
    rng = np.random.default_rng(seed)
    first_rows = rng.integers(0, first_array.size, size=(n_resamples, first_array.size))
    second_rows = rng.integers(0, second_array.size, size=(n_resamples, second_array.size))
    resampled = np.asarray(statistic(first_array[first_rows], second_array[second_rows]))
    return _percentile_interval(resampled, n_resamples, confidence)


def summarize(values: Iterable[float]) -> dict[str, float | int]:
    """Aggregate per-item values: mean, count and sample standard deviation (ddof=1; NaN when undefined)."""
    array = np.asarray(list(values), dtype=np.float64)
    n = int(array.size)
    return {
        "mean": float(array.mean()) if n else math.nan,
        "n": n,
        "std": float(array.std(ddof=1)) if n > 1 else math.nan,
    }


def summarize_with_ci(
    values: Iterable[float],
    *,
    clusters: Sequence[Any] | None = None,
    confidence: float = 0.95,
    n_resamples: int = 1000,
    seed: int = 0,
) -> dict[str, float | int]:
    """`summarize` (mean, n, sample std) plus the percentile-bootstrap interval of the mean as `ci_low`
    and `ci_high` (docs/metrics.md#aggregates-and-confidence-intervals); NaN bounds when there is no value or a NaN
    value. With `clusters` (one label per value, e.g. the subject each item is about) and at least two distinct
    labels, whole clusters are resampled (`cluster_bootstrap_ci`)."""
    array = np.asarray(list(values), dtype=np.float64)
    summary = summarize(array)
    if array.size == 0 or np.isnan(array).any():
        low = high = math.nan
    elif clusters is not None and None not in clusters and len(set(clusters)) > 1:
        low, high = cluster_bootstrap_ci(
            array, clusters, n_resamples=n_resamples, confidence=confidence, seed=seed
        )
    else:
        low, high = bootstrap_ci(array, n_resamples=n_resamples, confidence=confidence, seed=seed)
    return {**summary, "ci_low": low, "ci_high": high}
