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
from llm_unlearn.evaluation.aggregate import summarize_with_ci
from llm_unlearn.evaluation.generation import generate_greedy
from llm_unlearn.evaluation.metrics import Metric, get_metric
from llm_unlearn.evaluation.statistics import compute_item_statistics
from llm_unlearn.io import write_json_atomic


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
        for name in self.metrics:
            get_metric(name)
        for field in ("batch_size", "max_new_tokens", "max_length"):
            if getattr(self, field) < 1:
                raise ValueError(f"EvalConfig.{field} must be at least 1, got {getattr(self, field)}.")


def _column(dataset: Dataset, name: str) -> list[Any]:
    return list(dataset[name]) if name in dataset.column_names else [None] * len(dataset)


def _teacher_forced(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    dataset: Dataset,
    config: EvalConfig,
    split: str,
    distribution_stats: bool = False,
) -> list[Any]:
    # encode_qa gives the exact token layout that training sees (prompt masked, answer scored).
    encoded = [
        encode_qa(
            tokenizer,
            question,
            answer,
            template=config.prompt_template,
            system_prompt=config.system_prompt,
            max_length=config.max_length,
        )
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
        items.append(item)
    return {
        "num_items": len(items),
        "aggregates": {
            metric.name: summarize_with_ci(item[metric.name] for item in items) for metric in metrics
        },
        "items": items,
    }


def evaluate_splits(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    splits: Mapping[str, Dataset],
    config: EvalConfig,
) -> dict[str, Any]:
    """Evaluate `model` on each QA split (`question`, `answer`, optional `subject_id`) with `config.metrics`;
    return a JSON-serialisable dict with the config, per-split aggregates and items, and pass timings."""
    metrics = [get_metric(name) for name in config.metrics]
    timing = {"forward_s": 0.0, "generation_s": 0.0}
    results = {
        split: _evaluate_split(model, tokenizer, split, dataset, metrics, config, timing)
        for split, dataset in splits.items()
    }
    return {
        "config": {**dataclasses.asdict(config), "metrics": list(config.metrics)},
        "splits": results,
        "timing": timing,
    }


def save_eval(result: Mapping[str, Any], path: str | os.PathLike) -> Path:
    """Write an `evaluate_splits` result to `path` as JSON, atomically."""
    return write_json_atomic(result, path)


def load_eval(path: str | os.PathLike) -> dict[str, Any]:
    """Read a result written by `save_eval`."""
    with open(path, encoding="utf-8") as handle:
        return json.load(handle)
