"""Per-item metrics as small pure functions, registered by name with the per-item inputs they need.

A metric declares its inputs by name (`"statistics"`: the item's teacher-forced `ItemStatistics`;
`"generation"`: the greedy completion of its prompt; `"answer"`: the reference answer; `"text"`: the item's
scored text, prompt followed by answer, or the whole text of a plain-text item), and the evaluator runs each
pass that produces an input once for all the metrics that need it. Definitions follow REFERENCE.md section 2
(TOFU, Maini et al. 2024; MUSE, Shi et al. 2024) and, for the membership-inference scores, section 3: those
follow "higher = looks less like a member" (less like training data).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Literal
from zlib import compress

import numpy as np
from rouge_score import rouge_scorer

from llm_unlearn.evaluation.statistics import ItemStatistics

# Inputs a metric may ask for; each is computed once per item by the evaluator. "text" is the prompt followed
# by the answer as one string (the whole text for a plain-text item): the zlib score compresses it.
METRIC_INPUTS = ("statistics", "distribution_statistics", "generation", "answer", "text")


@dataclass(frozen=True)
class Metric:
    """A registered metric: `fn(*inputs)` -> float, where `inputs` name the per-item values it is given."""

    name: str
    fn: Callable[..., float]
    inputs: tuple[str, ...]


METRICS: dict[str, Metric] = {}


def register_metric(
    name: str, *, inputs: tuple[str, ...]
) -> Callable[[Callable[..., float]], Callable[..., float]]:
    """Register `fn` as metric `name`, called with the per-item `inputs` (names from METRIC_INPUTS) in order."""
    unknown = [key for key in inputs if key not in METRIC_INPUTS]
    if unknown:
        raise ValueError(
            f"metric {name!r} asks for unknown inputs {unknown}; known inputs are {METRIC_INPUTS}."
        )

    def decorate(fn: Callable[..., float]) -> Callable[..., float]:
        if name in METRICS:
            raise ValueError(f"a metric named {name!r} is already registered.")
        METRICS[name] = Metric(name=name, fn=fn, inputs=inputs)
        return fn

    return decorate


def get_metric(name: str) -> Metric:
    """Return the registered metric `name`, or raise ValueError listing the known ones."""
    if name not in METRICS:
        raise ValueError(f"unknown metric {name!r}; known metrics are {sorted(METRICS)}.")
    return METRICS[name]


@register_metric("probability", inputs=("statistics",))
def probability(stats: ItemStatistics) -> float:
    """Length-normalised answer probability P(y|x) = exp(-NLL(y|x)), the geometric mean token probability
    (TOFU, Maini et al. 2024; REFERENCE.md section 2)."""
    return math.exp(-stats.nll)


# Built once: the stemmer and tokenizer setup is not free, and ROUGE runs on every generated item.
_ROUGE_STEMMED = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
_ROUGE_PLAIN = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)


@register_metric("rouge_l_recall", inputs=("generation", "answer"))
def rouge_l_recall(prediction: str, reference: str) -> float:
    """ROUGE-L recall of `prediction` against `reference` with the Porter stemmer: LCS length / reference
    length (TOFU convention, Maini et al. 2024; REFERENCE.md section 2)."""
    return float(_ROUGE_STEMMED.score(reference, prediction)["rougeL"].recall)


@register_metric("rouge_l_f1", inputs=("generation", "answer"))
def rouge_l_f1(prediction: str, reference: str) -> float:
    """ROUGE-L F1 of `prediction` against `reference` without stemming (MUSE convention, Shi et al. 2024;
    REFERENCE.md section 2)."""
    return float(_ROUGE_PLAIN.score(reference, prediction)["rougeL"].fmeasure)


@register_metric("exact_memorization", inputs=("statistics",))
def exact_memorization(stats: ItemStatistics) -> float:
    """Exact memorization EM = (1/|y|) sum_t 1[argmax_t == y_t] under teacher forcing (Tirumala et al. 2022;
    REFERENCE.md section 2)."""
    return float(stats.argmax_hits.mean())


@register_metric("extraction_strength", inputs=("statistics",))
def extraction_strength(stats: ItemStatistics, *, no_match: Literal["zero", "one_token"] = "zero") -> float:
    """Extraction strength ES = 1 - k*/|y|, k* the smallest k with argmax == y from position k to the end
    (Carlini et al. 2021; Wang et al. 2025; REFERENCE.md section 2).

    When not even the last token is reproduced, `no_match="zero"` (default, the definition: k* = |y|) gives 0;
    `no_match="one_token"` gives 1/|y|, as a reference implementation does whose search stops at k = |y| - 1.
    """
    if no_match not in ("zero", "one_token"):
        raise ValueError(f"no_match must be 'zero' or 'one_token', got {no_match!r}.")
    hits = stats.argmax_hits
    misses = np.flatnonzero(~hits)
    # 1 - k*/|y| is the fraction of tokens in the trailing run of hits.
    suffix = hits.size - (int(misses[-1]) + 1) if misses.size else hits.size
    if suffix == 0 and no_match == "one_token":
        suffix = 1
    return suffix / hits.size


@register_metric("loss", inputs=("statistics",))
def loss(stats: ItemStatistics) -> float:
    """LOSS membership score: NLL(y|x), the mean token negative log-likelihood (Yeom et al. 2018;
    REFERENCE.md section 3)."""
    return stats.nll


@register_metric("zlib", inputs=("statistics", "text"))
def zlib(stats: ItemStatistics, text: str) -> float:
    """zlib membership score: NLL(y|x) / len(zlib.compress(text.encode("utf-8"))), `text` the prompt followed
    by the answer (Carlini et al. 2021; REFERENCE.md section 3)."""
    return stats.nll / len(compress(text.encode("utf-8")))


def _lowest_fraction_mean(values: np.ndarray, k: float) -> float:
    # floor(k * |y|) of the smallest values, at least one, as in the Min-K% reference code.
    if not 0.0 < k <= 1.0:
        raise ValueError(f"k must be a fraction in (0, 1], got {k}.")
    count = max(1, int(k * values.size))
    return float(np.sort(values.astype(np.float64))[:count].mean())


@register_metric("min_k", inputs=("statistics",))
def min_k(stats: ItemStatistics, *, k: float = 0.4) -> float:
    """Min-K% membership score: -(mean of the lowest fraction k of lp_t), at least one token; k = 0.4 as in the
    TOFU / MUSE configs (Shi et al. 2024; REFERENCE.md section 3)."""
    return -_lowest_fraction_mean(stats.logprobs, k)


@register_metric("min_k_plus_plus", inputs=("distribution_statistics",))
def min_k_plus_plus(stats: ItemStatistics, *, k: float = 0.4) -> float:
    """Min-K%++ membership score: -(mean of the lowest fraction k of z_t = (lp_t - mu_t) / sigma_t), with mu_t,
    sigma_t the mean and standard deviation of log p under the model's next-token distribution at t (Zhang et
    al. 2024; REFERENCE.md section 3). Needs `compute_item_statistics(..., distribution_stats=True)`.

    Where sigma_t = 0 (every token of the distribution's support is equally likely) z_t is taken as 0: the
    target is then exactly as likely as the mean token, no evidence either way.
    """
    if stats.position_mean is None or stats.position_std is None:
        raise ValueError(
            "min_k_plus_plus needs the per-position distribution statistics: compute the item statistics "
            "with compute_item_statistics(..., distribution_stats=True)."
        )
    centred = stats.logprobs.astype(np.float64) - stats.position_mean
    std = stats.position_std.astype(np.float64)
    z = np.divide(centred, std, out=np.zeros_like(centred), where=std > 0)
    return -_lowest_fraction_mean(z, k)


def summarize(values: Iterable[float]) -> dict[str, float | int]:
    """Aggregate per-item values: mean, count and sample standard deviation (ddof=1; NaN when undefined)."""
    array = np.asarray(list(values), dtype=np.float64)
    n = int(array.size)
    return {
        "mean": float(array.mean()) if n else math.nan,
        "n": n,
        "std": float(array.std(ddof=1)) if n > 1 else math.nan,
    }
