"""Per-item metrics as small pure functions, registered by name with the per-item inputs they need.

A metric declares its inputs by name (`"statistics"`: the item's teacher-forced `ItemStatistics`;
`"answer_group"`: the statistics of its answer, paraphrased answer and perturbed answers against one prompt;
`"generation"`: the greedy completion of its prompt; `"answer"`: the reference answer; `"text"`: the item's
scored text, prompt followed by answer, or the whole text of a plain-text item; `"gradient_norm"`: the norm of
the gradient of its NLL), and the evaluator runs each pass that produces an input once for all the metrics that
need it. A metric returns None where it does not apply to an item (a truth ratio without perturbed answers). Definitions follow docs/metrics.md
(TOFU, Maini et al. 2024; MUSE, Shi et al. 2024) and, for the membership-inference scores, section 3: those
follow "higher = looks less like a member" (less like training data).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal
from zlib import compress

import numpy as np
from rouge_score import rouge_scorer

from llm_unlearn.evaluation.aggregate import multiple_choice_probability
from llm_unlearn.evaluation.aggregate import truth_ratio as truth_ratio_of
from llm_unlearn.evaluation.statistics import ItemStatistics
from llm_unlearn.registry import Registry

# Inputs a metric may ask for; each is computed once per item by the evaluator. "text" is the prompt followed
# by the answer as one string (the whole text for a plain-text item): the zlib score compresses it.
METRIC_INPUTS = (
    "statistics", "distribution_statistics", "answer_group", "generation", "answer", "text", "gradient_norm",
)  # fmt: skip


@dataclass(frozen=True)
class AnswerGroupStatistics:
    """Teacher-forced statistics of an item's answer and its alternatives, all scored against the same prompt."""

    answer: ItemStatistics
    paraphrased: ItemStatistics | None  # the item's `paraphrased_answer`, when it has one
    perturbed: tuple[ItemStatistics, ...]  # its `perturbed_answer`s (wrong answers in the same form)


@dataclass(frozen=True)
class Metric:
    """A registered metric: `fn(*inputs)` -> float, where `inputs` name the per-item values it is given."""

    name: str
    fn: Callable[..., float | None]
    inputs: tuple[str, ...]


METRICS: Registry[Metric] = Registry("metric")


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
        METRICS.register(name, Metric(name=name, fn=fn, inputs=inputs))
        return fn

    return decorate


def get_metric(name: str) -> Metric:
    """Return the registered metric `name`, or raise ValueError listing the known ones."""
    return METRICS.get(name)


@register_metric("probability", inputs=("statistics",))
def probability(stats: ItemStatistics) -> float:
    """Length-normalised answer probability P(y|x) = exp(-NLL(y|x)), the geometric mean token probability
    (TOFU, Maini et al. 2024; docs/metrics.md#probability)."""
    return math.exp(-stats.nll)


@register_metric("probability_mc", inputs=("answer_group",))
def probability_mc(group: AnswerGroupStatistics) -> float | None:
    """Multiple-choice normalised probability P_true / (P_true + sum_j P_wrong_j) over the answer and its
    perturbed answers, each length-normalised (TOFU real authors / world facts; docs/metrics.md#probability_mc); None
    without perturbed answers."""
    if not group.perturbed:
        return None
    return multiple_choice_probability(
        math.exp(-group.answer.nll), [math.exp(-wrong.nll) for wrong in group.perturbed]
    )


@register_metric("truth_ratio", inputs=("answer_group",))
def truth_ratio(group: AnswerGroupStatistics) -> float | None:
    """Truth ratio R: geometric mean of the perturbed answers' length-normalised probabilities over that of the
    paraphrased answer (the answer itself where there is no paraphrase, as on TOFU's real authors and world
    facts) (TOFU, Maini et al. 2024; docs/metrics.md#truth_ratio); None without perturbed answers."""
    if not group.perturbed:
        return None
    true = group.paraphrased if group.paraphrased is not None else group.answer
    return truth_ratio_of(-true.nll, [-wrong.nll for wrong in group.perturbed])


# Built once: the stemmer and tokenizer setup is not free, and ROUGE runs on every generated item.
_ROUGE_STEMMED = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
_ROUGE_PLAIN = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)


@register_metric("rouge_l_recall", inputs=("generation", "answer"))
def rouge_l_recall(prediction: str, reference: str) -> float:
    """ROUGE-L recall of `prediction` against `reference` with the Porter stemmer: LCS length / reference
    length (TOFU convention, Maini et al. 2024; docs/metrics.md#rouge_l_recall)."""
    return float(_ROUGE_STEMMED.score(reference, prediction)["rougeL"].recall)


@register_metric("rouge_l_f1", inputs=("generation", "answer"))
def rouge_l_f1(prediction: str, reference: str) -> float:
    """ROUGE-L F1 of `prediction` against `reference` without stemming (MUSE convention, Shi et al. 2024;
    docs/metrics.md#rouge_l_f1)."""
    return float(_ROUGE_PLAIN.score(reference, prediction)["rougeL"].fmeasure)


@register_metric("exact_memorization", inputs=("statistics",))
def exact_memorization(stats: ItemStatistics) -> float:
    """Exact memorization EM = (1/|y|) sum_t 1[argmax_t == y_t] under teacher forcing (Tirumala et al. 2022;
    docs/metrics.md#exact_memorization)."""
    return float(stats.argmax_hits.mean())


@register_metric("extraction_strength", inputs=("statistics",))
def extraction_strength(stats: ItemStatistics, *, no_match: Literal["zero", "one_token"] = "zero") -> float:
    """Extraction strength ES = 1 - k*/|y|, k* the smallest k with argmax == y from position k to the end
    (Carlini et al. 2021; Wang et al. 2025; docs/metrics.md#extraction_strength).

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
    docs/metrics.md#loss)."""
    return stats.nll


@register_metric("zlib", inputs=("statistics", "text"))
def zlib(stats: ItemStatistics, text: str) -> float:
    """zlib membership score: NLL(y|x) / len(zlib.compress(text.encode("utf-8"))), `text` the prompt followed
    by the answer (Carlini et al. 2021; docs/metrics.md#zlib)."""
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
    TOFU / MUSE configs (Shi et al. 2024; docs/metrics.md#min_k)."""
    return -_lowest_fraction_mean(stats.logprobs, k)


@register_metric("min_k_plus_plus", inputs=("distribution_statistics",))
def min_k_plus_plus(stats: ItemStatistics, *, k: float = 0.4) -> float:
    """Min-K%++ membership score: -(mean of the lowest fraction k of z_t = (lp_t - mu_t) / sigma_t), with mu_t,
    sigma_t the mean and standard deviation of log p under the model's next-token distribution at t (Zhang et
    al. 2024; docs/metrics.md#min_k_plus_plus). Needs `compute_item_statistics(..., distribution_stats=True)`.

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


@register_metric("gradnorm", inputs=("gradient_norm",))
def gradnorm(norm: float) -> float:
    """GradNorm membership score: the L2 norm of the gradient of the item's NLL with respect to the model's
    parameters, batch size 1 (docs/metrics.md#gradnorm); training items sit near a minimum, so a small norm looks
    like a member."""
    return norm
