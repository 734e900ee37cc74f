"""Per-item metrics as small pure functions, registered by name with the per-item inputs they need.

A metric declares its inputs by name (`"statistics"`: the item's teacher-forced `ItemStatistics`;
`"answer_group"`: the statistics of its answer, paraphrased answer and perturbed answers against one prompt;
`"generation"`: the greedy completion of its prompt; `"answer"`: the reference answer; `"text"`: the item's
scored text, prompt followed by answer, or the whole text of a plain-text item; `"gradient_norm"`: the norm of
the gradient of its NLL), and the evaluator runs each pass that produces an input once for all the metrics that
need it. A metric also declares the metric conventions it takes (`options`: keyword parameter -> name in
METRIC_OPTIONS, e.g. Min-K%'s `k` from `min_k_fraction`), which the evaluator fills in from the suite's settings
(docs/metrics.md#metric-conventions); called directly, each function has its own defaults. A metric returns None
where it does not apply to an item (a truth ratio without perturbed answers). Definitions follow docs/metrics.md
(TOFU, Maini et al. 2024; MUSE, Shi et al. 2024) and, for the membership-inference scores, section 3: those
follow "higher = looks less like a member" (less like training data).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, get_args
from zlib import compress

import numpy as np
from rouge_score import rouge_scorer

from llm_unlearn.evaluation.aggregate import multiple_choice_probability
from llm_unlearn.evaluation.aggregate import truth_ratio as truth_ratio_of
from llm_unlearn.evaluation.statistics import ItemStatistics
from llm_unlearn.registry import Registry

# Inputs a metric may ask for; each is computed once per item by the evaluator. "text" is the prompt followed
# by the answer as one string (the whole text for a plain-text item): the zlib score compresses it, or the
# "answer" alone (`zlib_text`).
METRIC_INPUTS = (
    "statistics", "distribution_statistics", "answer_group", "generation", "answer", "text", "gradient_norm",
)  # fmt: skip
# Metric conventions a metric may take as keyword options (docs/metrics.md#metric-conventions); the evaluator
# gives each the value the suite sets for the split.
METRIC_OPTIONS = ("exclude_last_token", "zlib_text", "rouge_stemmer", "es_no_match", "min_k_fraction")

# The text zlib compresses: the item's answer alone, or its whole text (question and answer, or the document).
ZlibText = Literal["text", "answer"]
ZLIB_TEXTS: tuple[str, ...] = get_args(ZlibText)
# Extraction strength when not even the last token is reproduced: 0 (the definition) or 1/|y|.
EsNoMatch = Literal["zero", "inverse_length"]
ES_NO_MATCH: tuple[str, ...] = get_args(EsNoMatch)


@dataclass(frozen=True)
class AnswerGroupStatistics:
    """Teacher-forced statistics of an item's answer and its alternatives, all scored against the same prompt."""

    answer: ItemStatistics
    paraphrased: ItemStatistics | None  # the item's `paraphrased_answer`, when it has one
    perturbed: tuple[ItemStatistics, ...]  # its `perturbed_answer`s (wrong answers in the same form)


@dataclass(frozen=True)
class Metric:
    """A registered metric: `fn(*inputs, **options)` -> float, where `inputs` name the per-item values it is given
    and `options` map its keyword parameters to the metric conventions (METRIC_OPTIONS) that set them."""

    name: str
    fn: Callable[..., float | None]
    inputs: tuple[str, ...]
    options: Mapping[str, str] = field(default_factory=dict)

    def compute(self, values: Sequence[Any], conventions: Mapping[str, Any]) -> float | None:
        """The metric of one item from its input `values` (in `inputs` order), with each option taken from
        `conventions` (convention name -> value); a convention that is None leaves the function's own default."""
        kwargs = {
            parameter: conventions[option]
            for parameter, option in self.options.items()
            if conventions.get(option) is not None
        }
        return self.fn(*values, **kwargs)


METRICS: Registry[Metric] = Registry("metric")


def register_metric(
    name: str, *, inputs: tuple[str, ...], options: Mapping[str, str] | None = None
) -> Callable[[Callable[..., float]], Callable[..., float]]:
    """Register `fn` as metric `name`, called with the per-item `inputs` (names from METRIC_INPUTS) in order and
    with `options` (keyword parameter -> convention name from METRIC_OPTIONS) as keywords."""
    unknown = [key for key in inputs if key not in METRIC_INPUTS]
    if unknown:
        raise ValueError(
            f"metric {name!r} asks for unknown inputs {unknown}; known inputs are {METRIC_INPUTS}."
        )
    options = dict(options or {})
    unknown = [option for option in options.values() if option not in METRIC_OPTIONS]
    if unknown:
        raise ValueError(
            f"metric {name!r} takes unknown options {unknown}; known options are {METRIC_OPTIONS}."
        )

    def decorate(fn: Callable[..., float]) -> Callable[..., float]:
        METRICS.register(name, Metric(name=name, fn=fn, inputs=inputs, options=options))
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
_ROUGE = {stemmer: rouge_scorer.RougeScorer(["rougeL"], use_stemmer=stemmer) for stemmer in (True, False)}


@register_metric("rouge_l_recall", inputs=("generation", "answer"), options={"stemmer": "rouge_stemmer"})
def rouge_l_recall(prediction: str, reference: str, *, stemmer: bool = True) -> float:
    """ROUGE-L recall of `prediction` against `reference`: LCS length / reference length, with the Porter
    stemmer by default (TOFU convention, Maini et al. 2024; docs/metrics.md#rouge_l_recall)."""
    return float(_ROUGE[stemmer].score(reference, prediction)["rougeL"].recall)


@register_metric("rouge_l_f1", inputs=("generation", "answer"), options={"stemmer": "rouge_stemmer"})
def rouge_l_f1(prediction: str, reference: str, *, stemmer: bool = False) -> float:
    """ROUGE-L F1 of `prediction` against `reference`, without stemming by default (MUSE convention, Shi et al.
    2024; docs/metrics.md#rouge_l_f1)."""
    return float(_ROUGE[stemmer].score(reference, prediction)["rougeL"].fmeasure)


def _scored(values: np.ndarray, exclude_last_token: bool) -> np.ndarray:
    """`values` without its final entry when `exclude_last_token` (the end-of-turn / EOS prediction of a QA
    answer; docs/metrics.md#last-target-token); an item with a single scored token keeps it, as there would
    be nothing left to score."""
    return values[:-1] if exclude_last_token and values.size > 1 else values


@register_metric(
    "exact_memorization", inputs=("statistics",), options={"exclude_last_token": "exclude_last_token"}
)  # fmt: skip
def exact_memorization(stats: ItemStatistics, *, exclude_last_token: bool = False) -> float:
    """Exact memorization EM = (1/|y|) sum_t 1[argmax_t == y_t] under teacher forcing (Tirumala et al. 2022;
    docs/metrics.md#exact_memorization), over every target token or, with `exclude_last_token`, all but the
    last."""
    return float(_scored(stats.argmax_hits, exclude_last_token).mean())


@register_metric(
    "extraction_strength", inputs=("statistics",),
    options={"no_match": "es_no_match", "exclude_last_token": "exclude_last_token"},
)  # fmt: skip
def extraction_strength(
    stats: ItemStatistics, *, no_match: EsNoMatch = "zero", exclude_last_token: bool = False
) -> float:
    """Extraction strength ES = 1 - k*/|y|, k* the smallest k with argmax == y from position k to the end
    (Carlini et al. 2021; Wang et al. 2025; docs/metrics.md#extraction_strength), over every target token or,
    with `exclude_last_token`, all but the last.

    When not even the last token is reproduced, `no_match="zero"` (default, the definition: k* = |y|) gives 0;
    `no_match="inverse_length"` gives 1/|y|, as a reference implementation does whose search stops at
    k = |y| - 1.
    """
    if no_match not in ES_NO_MATCH:
        raise ValueError(f"no_match must be one of {ES_NO_MATCH}, got {no_match!r}.")
    hits = _scored(stats.argmax_hits, exclude_last_token)
    misses = np.flatnonzero(~hits)
    # 1 - k*/|y| is the fraction of tokens in the trailing run of hits.
    suffix = hits.size - (int(misses[-1]) + 1) if misses.size else hits.size
    if suffix == 0 and no_match == "inverse_length":
        suffix = 1
    return suffix / hits.size


@register_metric("loss", inputs=("statistics",))
def loss(stats: ItemStatistics) -> float:
    """LOSS membership score: NLL(y|x), the mean token negative log-likelihood (Yeom et al. 2018;
    docs/metrics.md#loss)."""
    return stats.nll


@register_metric("zlib", inputs=("statistics", "answer", "text"), options={"compressed": "zlib_text"})
def zlib(stats: ItemStatistics, answer: str, text: str, *, compressed: ZlibText = "text") -> float:
    """zlib membership score: NLL(y|x) / len(zlib.compress(s.encode("utf-8"))), `s` the item's whole `text`
    (question and answer, or the document; `compressed="text"`, default) or its `answer` alone
    (`compressed="answer"`) (Carlini et al. 2021; docs/metrics.md#zlib)."""
    if compressed not in ZLIB_TEXTS:
        raise ValueError(f"compressed must be one of {ZLIB_TEXTS}, got {compressed!r}.")
    return stats.nll / len(compress((answer if compressed == "answer" else text).encode("utf-8")))


def _lowest_fraction_mean(values: np.ndarray, k: float) -> float:
    # floor(k * |y|) of the smallest values, at least one, as in the Min-K% reference code.
    if not 0.0 < k <= 1.0:
        raise ValueError(f"k must be a fraction in (0, 1], got {k}.")
    count = max(1, int(k * values.size))
    return float(np.sort(values.astype(np.float64))[:count].mean())


# Min-K% and Min-K%++ take the same fraction k and the same last-token convention.
_MIN_K_OPTIONS = {"k": "min_k_fraction", "exclude_last_token": "exclude_last_token"}


@register_metric("min_k", inputs=("statistics",), options=_MIN_K_OPTIONS)
def min_k(stats: ItemStatistics, *, k: float = 0.4, exclude_last_token: bool = False) -> float:
    """Min-K% membership score: -(mean of the lowest fraction k of lp_t), at least one token; k = 0.4 as in the
    TOFU / MUSE configs (Shi et al. 2024; docs/metrics.md#min_k); over every target token or, with
    `exclude_last_token`, all but the last."""
    return -_lowest_fraction_mean(_scored(stats.logprobs, exclude_last_token), k)


@register_metric("min_k_plus_plus", inputs=("distribution_statistics",), options=_MIN_K_OPTIONS)
def min_k_plus_plus(stats: ItemStatistics, *, k: float = 0.4, exclude_last_token: bool = False) -> float:
    """Min-K%++ membership score: -(mean of the lowest fraction k of z_t = (lp_t - mu_t) / sigma_t), with mu_t,
    sigma_t the mean and standard deviation of log p under the model's next-token distribution at t (Zhang et
    al. 2024; docs/metrics.md#min_k_plus_plus), over every target token or, with `exclude_last_token`, all but
    the last. Needs `compute_item_statistics(..., distribution_stats=True)`.

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
    return -_lowest_fraction_mean(_scored(z, exclude_last_token), k)


@register_metric("gradnorm", inputs=("gradient_norm",))
def gradnorm(norm: float) -> float:
    """GradNorm membership score: the L2 norm of the gradient of the item's NLL with respect to the model's
    parameters, batch size 1, as the gradient pass reduces it (docs/metrics.md#gradnorm; the pass takes the
    last-token and GradNorm conventions); training items sit near a minimum, so a small norm looks like a
    member."""
    return norm
