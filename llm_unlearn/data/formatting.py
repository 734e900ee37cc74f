"""Tokenization and label masking: turn QA pairs and raw texts into `input_ids` + `labels`, count what
`max_length` cuts, and pad batches.

A QA pair becomes `prompt_ids + completion_ids` in a prompt format (`llm_unlearn.data.prompts`), so that
generation from `prompt_ids` sees what training saw. Prompt tokens get label -100: the loss is on answer tokens
only. A raw text is trained on every token.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch
from datasets import Dataset, concatenate_datasets
from transformers import PreTrainedTokenizerBase

from llm_unlearn.data.prompts import PromptFormat, resolve_format

logger = logging.getLogger(__name__)

IGNORE_INDEX = -100
VIEW_SEPARATOR = "__"
VIEW_ANSWER = "__view_answer"
# Tokens an example lost to `max_length`; a column only while a data set is being tokenized.
DROPPED = "__dropped_tokens"


@dataclass(frozen=True)
class Truncation:
    """What `max_length` cut from a tokenized data set: how many examples were longer, how many tokens they
    lost, and the longest example's length before the cut."""

    max_length: int | None
    examples: int
    truncated: int = 0
    tokens_dropped: int = 0
    longest: int = 0

    @classmethod
    def of(cls, dropped: Sequence[int], full_lengths: Sequence[int], max_length: int | None) -> Truncation:
        """The truncation of a data set whose examples lost `dropped` tokens and were `full_lengths` long
        before the cut."""
        return cls(
            max_length=max_length,
            examples=len(dropped),
            truncated=sum(1 for count in dropped if count),
            tokens_dropped=sum(dropped),
            longest=max(full_lengths, default=0),
        )

    def __add__(self, other: Truncation) -> Truncation:
        """Both data sets' counts together (e.g. the forget set and its extra answers)."""
        return Truncation(
            max_length=self.max_length,
            examples=self.examples + other.examples,
            truncated=self.truncated + other.truncated,
            tokens_dropped=self.tokens_dropped + other.tokens_dropped,
            longest=max(self.longest, other.longest),
        )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def warning(self, name: str) -> str | None:
        """The line to warn with when anything was cut; None when nothing was."""
        if not self.truncated:
            return None
        return (
            f"{name}: {self.truncated} of {self.examples} examples are longer than max_length={self.max_length} "
            f"tokens (the longest has {self.longest}) and were cut, dropping {self.tokens_dropped} tokens in all; "
            f"raise --max_length to keep them."
        )


def encode_qa(
    tokenizer: PreTrainedTokenizerBase,
    question: str,
    answer: str,
    *,
    template: str = "auto",
    system_prompt: str | None = None,
    date_string: str | None = None,
    max_length: int | None = None,
) -> dict[str, list[int]]:
    """Tokenize a QA pair into `input_ids` and `labels` with the prompt masked (-100), in the prompt format
    `template` names (`llm_unlearn.data.prompts`)."""
    prompt_format = resolve_format(tokenizer, template, system_prompt=system_prompt, date_string=date_string)
    encoded, _ = _encode_qa(tokenizer, prompt_format, question, answer, max_length=max_length)
    return encoded


def _encode_qa(
    tokenizer: PreTrainedTokenizerBase,
    prompt_format: PromptFormat,
    question: str,
    answer: str,
    *,
    max_length: int | None,
) -> tuple[dict[str, list[int]], int]:
    """`encode_qa`'s result and the number of tokens `max_length` cut from it."""
    prompt_ids, completion_ids = prompt_format.encode(tokenizer, question, answer)
    input_ids = prompt_ids + completion_ids
    labels = [IGNORE_INDEX] * len(prompt_ids) + completion_ids
    dropped = 0
    if max_length is not None:
        dropped = max(0, len(input_ids) - max_length)
        input_ids, labels = input_ids[:max_length], labels[:max_length]
    if all(label == IGNORE_INDEX for label in labels):
        raise ValueError(
            f"max_length={max_length} leaves no answer tokens for the question {question[:60]!r} "
            f"(its prompt alone is {len(prompt_ids)} tokens); raise max_length."
        )
    return {"input_ids": input_ids, "labels": labels}, dropped


def encode_text(
    tokenizer: PreTrainedTokenizerBase, text: str, *, max_length: int | None = None
) -> dict[str, list[int]]:
    """Tokenize a raw text for training on every token (labels equal input_ids)."""
    encoded, _ = _encode_text(tokenizer, text, max_length=max_length)
    return encoded


def _encode_text(
    tokenizer: PreTrainedTokenizerBase, text: str, *, max_length: int | None
) -> tuple[dict[str, list[int]], int]:
    """`encode_text`'s result and the number of tokens `max_length` cut from it."""
    input_ids = tokenizer(text, add_special_tokens=True)["input_ids"]
    full_length = len(input_ids)
    if max_length is not None and full_length > max_length:
        # The tokenizer's own truncation keeps its special tokens (BOS, EOS) and cuts the text between them.
        input_ids = tokenizer(text, add_special_tokens=True, truncation=True, max_length=max_length)["input_ids"]
    if len(input_ids) < 2:
        raise ValueError(f"the text {text[:60]!r} has fewer than 2 tokens; nothing to predict.")
    return {"input_ids": input_ids, "labels": list(input_ids)}, full_length - len(input_ids)


def tokenize_dataset(
    dataset: Dataset,
    tokenizer: PreTrainedTokenizerBase,
    *,
    template: str = "auto",
    system_prompt: str | None = None,
    date_string: str | None = None,
    max_length: int | None = 256,
    answer_field: str = "answer",
    name: str = "data",
) -> tuple[Dataset, Truncation]:
    """Map a QA (`question`/`answer`) or text (`text`) dataset to `input_ids` + `labels` columns; also return
    what `max_length` cut, which is logged as a warning naming the data set (`name`) when anything was."""
    columns = dataset.column_names
    if "question" in columns:
        if answer_field not in columns:
            raise ValueError(f"answer_field={answer_field!r} is not a column; the dataset has {columns}.")

        prompt_format = resolve_format(tokenizer, template, system_prompt=system_prompt, date_string=date_string)

        def encode(row: dict[str, Any]) -> dict[str, Any]:
            encoded, dropped = _encode_qa(
                tokenizer, prompt_format, row["question"], row[answer_field], max_length=max_length
            )
            return {**encoded, DROPPED: dropped}

    elif "text" in columns:

        def encode(row: dict[str, Any]) -> dict[str, Any]:
            encoded, dropped = _encode_text(tokenizer, row["text"], max_length=max_length)
            return {**encoded, DROPPED: dropped}

    else:
        raise ValueError(
            f"a dataset needs a 'question' and 'answer' column or a 'text' column; it has {columns}."
        )
    tokenized = dataset.map(encode, remove_columns=columns, desc="Tokenizing", load_from_cache_file=False)
    dropped = tokenized[DROPPED]
    full_lengths = [len(ids) + lost for ids, lost in zip(tokenized["input_ids"], dropped, strict=True)]
    truncation = Truncation.of(dropped, full_lengths, max_length)
    if (warning := truncation.warning(name)) is not None:
        logger.warning(warning)
    return tokenized.remove_columns(DROPPED), truncation


def tokenize_views(
    dataset: Dataset,
    tokenizer: PreTrainedTokenizerBase,
    views: Mapping[str, Callable[[dict[str, Any]], str]],
    *,
    name: str = "data",
    **format_kwargs: Any,
) -> tuple[Dataset, Truncation]:
    """Tokenize a QA dataset as in `tokenize_dataset`, plus one extra answer per example for each named view
    (e.g. DPO's preferred answer), stored as `<view>__input_ids` / `<view>__labels` columns; the truncation
    counts every view's examples."""
    tokenized, truncation = tokenize_dataset(dataset, tokenizer, name=name, **format_kwargs)
    for view, answer_of in views.items():
        answers = dataset.add_column(VIEW_ANSWER, [answer_of(row) for row in dataset])
        extra, cut = tokenize_dataset(
            answers, tokenizer, answer_field=VIEW_ANSWER, name=f"{name} ({view} answers)", **format_kwargs
        )
        extra = extra.rename_columns({column: view_column(view, column) for column in extra.column_names})
        tokenized = concatenate_datasets([tokenized, extra], axis=1)
        truncation = truncation + cut
    return tokenized, truncation


def view_column(view: str, name: str) -> str:
    """The column holding `name` (e.g. input_ids) of a view; the main view uses the plain name."""
    return f"{view}{VIEW_SEPARATOR}{name}" if view else name


@dataclass
class PaddingCollator:
    """Right-pad `input_ids` (with the pad id) and `labels` (with -100); the attention mask comes from the true
    lengths, never from comparing tokens with the pad id (which hides real end-of-turn tokens when the pad token
    is the end-of-turn token, as in SmolLM2).

    Each extra view (`<view>__input_ids`, `<view>__labels`) is padded on its own and gets its own
    `<view>__attention_mask`; any other field (e.g. a cached reference log-prob) is stacked as a tensor.
    """

    pad_token_id: int
    pad_to_multiple_of: int | None = None

    def __call__(self, features: Sequence[dict[str, Any]]) -> dict[str, torch.Tensor]:
        views = [key[: -len("input_ids")] for key in features[0] if key.endswith("input_ids")]
        batch: dict[str, torch.Tensor] = {}
        for prefix in views:
            batch.update(self._pad(features, prefix))
        for key in features[0]:
            if key not in batch and not key.endswith(("input_ids", "labels")):
                batch[key] = torch.tensor([feature[key] for feature in features])
        return batch

    def _pad(self, features: Sequence[dict[str, Any]], prefix: str) -> dict[str, torch.Tensor]:
        lengths = [len(f[f"{prefix}input_ids"]) for f in features]
        width = max(lengths)
        if self.pad_to_multiple_of:
            width = -(-width // self.pad_to_multiple_of) * self.pad_to_multiple_of
        input_ids = torch.full((len(features), width), self.pad_token_id, dtype=torch.long)
        labels = torch.full((len(features), width), IGNORE_INDEX, dtype=torch.long)
        attention_mask = torch.zeros((len(features), width), dtype=torch.long)
        for row, (feature, length) in enumerate(zip(features, lengths, strict=True)):
            input_ids[row, :length] = torch.as_tensor(feature[f"{prefix}input_ids"])
            labels[row, :length] = torch.as_tensor(feature[f"{prefix}labels"])
            attention_mask[row, :length] = 1
        return {
            f"{prefix}input_ids": input_ids,
            f"{prefix}labels": labels,
            f"{prefix}attention_mask": attention_mask,
        }
