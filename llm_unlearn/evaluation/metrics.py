"""Per-item metrics as small pure functions, registered by name with the per-item inputs they need.

A metric declares its inputs by name (`"statistics"`: the item's teacher-forced `ItemStatistics`;
`"generation"`: the greedy completion of its prompt; `"answer"`: the reference answer), and the evaluator
runs each pass that produces an input once for all the metrics that need it. Definitions follow
REFERENCE.md section 2 (TOFU, Maini et al. 2024; MUSE, Shi et al. 2024).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import numpy as np
from rouge_score import rouge_scorer

from llm_unlearn.evaluation.statistics import ItemStatistics

# Inputs a metric may ask for; each is computed once per item by the evaluator.
METRIC_INPUTS = ("statistics", "generation", "answer")


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


def summarize(values: Iterable[float]) -> dict[str, float | int]:
    """Aggregate per-item values: mean, count and sample standard deviation (ddof=1; NaN when undefined)."""
    array = np.asarray(list(values), dtype=np.float64)
    n = int(array.size)
    return {
        "mean": float(array.mean()) if n else math.nan,
        "n": n,
        "std": float(array.std(ddof=1)) if n > 1 else math.nan,
    }
