"""Evaluate a model on QA splits: each pass the requested metrics need runs once, every metric is derived
from the passes' per-item outputs, and the result is per-item JSON with aggregates and timings."""

from __future__ import annotations

import dataclasses
import json
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from datasets import Dataset
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from llm_unlearn.data.formatting import encode_qa, format_qa
from llm_unlearn.evaluation import aggregate
from llm_unlearn.evaluation.aggregate import summarize_with_ci
from llm_unlearn.evaluation.generation import generate_greedy
from llm_unlearn.evaluation.metrics import METRICS, Metric, get_metric
from llm_unlearn.evaluation.statistics import compute_item_statistics
from llm_unlearn.io import write_json_atomic

# An evaluator-level metric: it scores extra answers per item (paraphrased and perturbed), not the item's own
# answer, so it has its own teacher-forced pass rather than a per-item registry entry.
TRUTH_RATIO = "truth_ratio"
TRUTH_RATIO_COLUMNS = ("paraphrased_answer", "perturbed_answer")
# Model utility's components per split (REFERENCE.md section 2): two per-item means and the truth-ratio stat.
_UTILITY_MEANS = ("probability", "rouge_l_recall")


def check_metric_names(names: tuple[str, ...]) -> None:
    """Raise ValueError naming the first unknown metric and listing the known ones."""
    known = sorted([*METRICS, TRUTH_RATIO])
    for name in names:
        if name not in known:
            raise ValueError(f"unknown metric {name!r}; known metrics are {known}.")


@dataclass
class EvalConfig:
    """What to compute and how: metric names, batching, generation length and prompt formatting."""

    metrics: tuple[str, ...] = ("probability", "rouge_l_recall")
    batch_size: int = 16
    max_new_tokens: int = 200  # TOFU's ROUGE setting
    max_length: int = 512
    prompt_template: str = "auto"
    system_prompt: str | None = None

    def __post_init__(self) -> None:
        self.metrics = tuple(self.metrics)  # YAML and command lines give lists
        check_metric_names(self.metrics)
        for field in ("batch_size", "max_new_tokens", "max_length"):
            if getattr(self, field) < 1:
                raise ValueError(f"EvalConfig.{field} must be at least 1, got {getattr(self, field)}.")


def _column(dataset: Dataset, name: str) -> list[Any]:
    return list(dataset[name]) if name in dataset.column_names else [None] * len(dataset)


def _encode(
    tokenizer: PreTrainedTokenizerBase, config: EvalConfig, question: str, answer: str
) -> dict[str, list[int]]:
    # encode_qa gives the exact token layout that training sees (prompt masked, answer scored).
    return encode_qa(
        tokenizer,
        question,
        answer,
        template=config.prompt_template,
        system_prompt=config.system_prompt,
        max_length=config.max_length,
    )


def _teacher_forced(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    dataset: Dataset,
    config: EvalConfig,
    split: str,
    distribution_stats: bool = False,
) -> list[Any]:
    encoded = [
        _encode(tokenizer, config, question, answer)
        for question, answer in zip(_column(dataset, "question"), _column(dataset, "answer"), strict=True)
    ]
    pad_token_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    return compute_item_statistics(
        model,
        encoded,
        batch_size=config.batch_size,
        pad_token_id=pad_token_id,
        progress=f"{split}: forward",
        distribution_stats=distribution_stats,
    )


def _generation(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    dataset: Dataset,
    config: EvalConfig,
    split: str,
) -> list[Any]:
    prompts = [
        format_qa(tokenizer, question, template=config.prompt_template, system_prompt=config.system_prompt)[0]
        for question in _column(dataset, "question")
    ]
    return generate_greedy(
        model,
        tokenizer,
        prompts,
        max_new_tokens=config.max_new_tokens,
        batch_size=config.batch_size,
        progress=f"{split}: generate",
    )


def _truth_ratios(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    dataset: Dataset,
    config: EvalConfig,
    split: str,
) -> list[float | None]:
    """Per-item truth ratio R (REFERENCE.md section 2) from one teacher-forced pass over every paraphrased and
    perturbed answer of the split; None for an item without a paraphrased answer or perturbed answers."""
    missing = [column for column in TRUTH_RATIO_COLUMNS if column not in dataset.column_names]
    if missing:
        raise ValueError(
            f"split {split!r} lacks the column(s) {missing} that the truth_ratio metric needs; "
            f"it has {dataset.column_names}."
        )
    encoded: list[dict[str, list[int]]] = []
    # Per scored item: its index and the slice of `encoded` holding its paraphrased then perturbed answers.
    spans: list[tuple[int, slice]] = []
    rows = zip(dataset["question"], dataset["paraphrased_answer"], dataset["perturbed_answer"], strict=True)
    for index, (question, paraphrased, perturbed) in enumerate(rows):
        if not paraphrased or not perturbed:
            continue
        start = len(encoded)
        encoded.extend(_encode(tokenizer, config, question, answer) for answer in [paraphrased, *perturbed])
        spans.append((index, slice(start, len(encoded))))
    if not spans:
        raise ValueError(
            f"split {split!r} has no item with both a paraphrased answer and perturbed answers; "
            f"the truth_ratio metric has nothing to score."
        )
    pad_token_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    statistics = compute_item_statistics(
        model,
        encoded,
        batch_size=config.batch_size,
        pad_token_id=pad_token_id,
        progress=f"{split}: truth ratio",
    )
    ratios: list[float | None] = [None] * len(dataset)
    for index, span in spans:
        # The mean token log-prob is -NLL, the length-normalised input `aggregate.truth_ratio` expects.
        paraphrased, *perturbed = (-stats.nll for stats in statistics[span])
        ratios[index] = aggregate.truth_ratio(paraphrased, perturbed)
    return ratios


def _truth_ratio_stat(split: str, ratios: list[float]) -> dict[str, Any]:
    """The split's truth-ratio statistic: min(R, 1/R) on `forget`, max(0, 1 - R) elsewhere (REFERENCE.md 2)."""
    statistic = aggregate.truth_ratio_forget if split == "forget" else aggregate.truth_ratio_retain
    return {"value": statistic(ratios), "n": len(ratios)}


# Inputs served by the teacher-forced pass; distribution statistics come from the same pass when asked for.
_TEACHER_FORCED = {"statistics", "distribution_statistics"}


def _evaluate_split(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    split: str,
    dataset: Dataset,
    metrics: list[Metric],
    config: EvalConfig,
    timing: dict[str, float],
) -> dict[str, Any]:
    missing = [column for column in ("question", "answer") if column not in dataset.column_names]
    if missing:
        raise ValueError(
            f"split {split!r} lacks the column(s) {missing}; a QA split needs 'question' and 'answer' "
            f"(and optionally 'subject_id'); it has {dataset.column_names}."
        )
    questions, answers = _column(dataset, "question"), _column(dataset, "answer")
    # zlib's text: the question and the answer, without the chat template, whose fixed markup would
    # dominate the compressed length of short items.
    inputs: dict[str, list[Any]] = {
        "answer": answers,
        "text": [f"{question} {answer}" for question, answer in zip(questions, answers, strict=True)],
    }
    needed = {key for metric in metrics for key in metric.inputs}
    if needed & _TEACHER_FORCED:
        started = time.perf_counter()
        statistics = _teacher_forced(
            model, tokenizer, dataset, config, split, distribution_stats="distribution_statistics" in needed
        )
        inputs["statistics"] = inputs["distribution_statistics"] = statistics
        timing["forward_s"] += time.perf_counter() - started
    if "generation" in needed:
        started = time.perf_counter()
        inputs["generation"] = _generation(model, tokenizer, dataset, config, split)
        timing["generation_s"] += time.perf_counter() - started
    truth_ratio = TRUTH_RATIO in config.metrics
    if truth_ratio:
        started = time.perf_counter()
        ratios = _truth_ratios(model, tokenizer, dataset, config, split)
        timing["truth_ratio_s"] += time.perf_counter() - started

    items = []
    for index, (subject_id, question, answer) in enumerate(
        zip(_column(dataset, "subject_id"), questions, answers, strict=True)
    ):
        stats = inputs["statistics"][index] if "statistics" in inputs else None
        item = {
            "index": index,
            "subject_id": subject_id,
            "question": question,
            "answer": answer,
            "generation": inputs["generation"][index] if "generation" in inputs else None,
            "num_answer_tokens": stats.num_tokens if stats is not None else None,
        }
        for metric in metrics:
            item[metric.name] = float(metric.fn(*(inputs[key][index] for key in metric.inputs)))
        if truth_ratio:
            item[TRUTH_RATIO] = ratios[index]
        items.append(item)
    aggregates = {metric.name: summarize_with_ci(item[metric.name] for item in items) for metric in metrics}
    if truth_ratio:
        scored = [ratio for ratio in ratios if ratio is not None]
        aggregates[TRUTH_RATIO] = summarize_with_ci(scored)
        aggregates["truth_ratio_stat"] = _truth_ratio_stat(split, scored)
    return {"num_items": len(items), "aggregates": aggregates, "items": items}


def _forget_ratios(splits: Mapping[str, Any], owner: str) -> list[float]:
    """The per-item forget truth ratios of an eval result's `splits`, or ValueError saying what is missing."""
    items = splits.get("forget", {}).get("items", [])
    if not items or any(TRUTH_RATIO not in item for item in items):
        raise ValueError(
            f"the {owner} has no per-item truth ratios on a 'forget' split; evaluate it with the "
            f"truth_ratio metric on the forget split."
        )
    return [item[TRUTH_RATIO] for item in items if item[TRUTH_RATIO] is not None]


def _forget_quality(splits: Mapping[str, Any], reference: Mapping[str, Any] | None) -> dict[str, Any]:
    """Forget quality against the retain model's eval result `reference` (REFERENCE.md section 2), or why not."""
    if reference is None:
        return {"value": None, "reason": "no reference eval given (pass --reference_eval retain/eval.json)"}
    if "forget" not in splits:
        return {"value": None, "reason": "no 'forget' split was evaluated"}
    ratios = _forget_ratios(splits, "evaluated model")
    reference_ratios = _forget_ratios(reference.get("splits", {}), "reference eval")
    if len(ratios) != len(reference_ratios):
        raise ValueError(
            f"forget quality compares the same forget items, but this eval has {len(ratios)} forget truth "
            f"ratios and the reference eval {len(reference_ratios)}; evaluate both on the same items."
        )
    return {"value": aggregate.forget_quality(ratios, reference_ratios), "n": len(ratios)}


def _model_utility(splits: Mapping[str, Any]) -> dict[str, Any]:
    """Model utility over every non-forget split with all its components (REFERENCE.md section 2), or why not."""
    inputs: dict[str, float] = {}
    for split, result in splits.items():
        aggregates = result["aggregates"]
        if split == "forget" or not all(name in aggregates for name in (*_UTILITY_MEANS, "truth_ratio_stat")):
            continue
        inputs.update({f"{split}/{name}": aggregates[name]["mean"] for name in _UTILITY_MEANS})
        inputs[f"{split}/truth_ratio_stat"] = aggregates["truth_ratio_stat"]["value"]
    if not inputs:
        return {
            "value": None,
            "reason": "no non-forget split has probability, rouge_l_recall and truth_ratio_stat "
            "(evaluate probability, rouge_l_recall and truth_ratio on a retain split)",
        }
    return {"value": aggregate.model_utility(inputs), "inputs": inputs}


def evaluate_splits(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    splits: Mapping[str, Dataset],
    config: EvalConfig,
    reference: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Evaluate `model` on each QA split (`question`, `answer`, optional `subject_id`; `paraphrased_answer` and
    `perturbed_answer` for truth_ratio) with `config.metrics`; return a JSON-serialisable dict with the config,
    per-split aggregates and items, pass timings and, with truth_ratio, a summary of forget quality against
    `reference` (the retain model's saved eval result) and model utility."""
    check_metric_names(config.metrics)
    truth_ratio = TRUTH_RATIO in config.metrics
    if reference is not None and not truth_ratio:
        raise ValueError(
            "a reference eval is only used for forget quality, which needs the truth_ratio metric."
        )
    metrics = [get_metric(name) for name in config.metrics if name != TRUTH_RATIO]
    timing = {"forward_s": 0.0, "generation_s": 0.0}
    if truth_ratio:
        timing["truth_ratio_s"] = 0.0
    results = {
        split: _evaluate_split(model, tokenizer, split, dataset, metrics, config, timing)
        for split, dataset in splits.items()
    }
    result = {
        "config": {**dataclasses.asdict(config), "metrics": list(config.metrics)},
        "splits": results,
        "timing": timing,
    }
    if truth_ratio:
        # Both suite-level numbers need truth ratios, so the summary exists only when they were computed.
        result["summary"] = {
            "forget_quality": _forget_quality(results, reference),
            "model_utility": _model_utility(results),
        }
    return result


def save_eval(result: Mapping[str, Any], path: str | os.PathLike) -> Path:
    """Write an `evaluate_splits` result to `path` as JSON, atomically."""
    return write_json_atomic(result, path)


def load_eval(path: str | os.PathLike) -> dict[str, Any]:
    """Read a result written by `save_eval`."""
    with open(path, encoding="utf-8") as handle:
        return json.load(handle)
