"""Turn the rows of an evaluation split into token-level items: the prompt, the scored target, the alternative
answers scored against the same prompt, and the text a generation is compared with.

A split's `format` says how a row becomes an item:
- `qa`: a question and answer rendered like training data (chat template or plain prompt); the paraphrased and
  perturbed answers, when present, are its alternatives (truth ratio, multiple-choice probability).
- `fewshot_qa`: MUSE knowledge memorization: a plain few-shot prompt of "Question: q\\nAnswer: a" shots, then
  the question (docs/metrics.md#muse-knowledge-memorization).
- `completion`: a plain `prompt` continued by the `answer` (MUSE verbatim memorization).
- `text`: a raw `text`, every token after the first scored (membership inference on documents); no prompt to
  generate from.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from datasets import Dataset
from transformers import PreTrainedTokenizerBase

from llm_unlearn.data.benchmarks import muse_fewshot_prompt
from llm_unlearn.data.formatting import Truncation
from llm_unlearn.data.prompts import PromptFormat, resolve_format

FORMATS = ("qa", "fewshot_qa", "completion", "text")
_REQUIRED_COLUMNS = {
    "qa": ("question", "answer"),
    "fewshot_qa": ("question", "answer"),
    "completion": ("prompt", "answer"),
    "text": ("text",),
}


@dataclass
class EvalItem:
    """One item to score: `prompt_ids` (not scored) followed by `answer_ids` (scored), and the alternatives."""

    prompt_ids: list[int]
    answer_ids: list[int]
    prompt: str | None  # the prompt's text, which generation continues (as `prompt_ids`); None for `text` items
    reference: str  # what a generation is compared with
    text: str  # the item's text without markup (zlib's denominator)
    paraphrased_ids: list[int] | None = None
    perturbed_ids: list[list[int]] = field(default_factory=list)
    # What max_length cut: tokens dropped from the answer and its alternatives, and the longest of those
    # sequences before the cut (`truncation` sums them over a split).
    dropped_tokens: int = 0
    untruncated_length: int = 0

    @property
    def has_alternatives(self) -> bool:
        """Whether the item has a paraphrased or perturbed answer to score against its prompt."""
        return self.paraphrased_ids is not None or bool(self.perturbed_ids)

    def encoded(self) -> dict[str, list[int]]:
        """`input_ids` and `labels` (-100 on the prompt) of the item's own answer, as training encodes it."""
        return {
            "input_ids": self.prompt_ids + self.answer_ids,
            "labels": [-100] * len(self.prompt_ids) + self.answer_ids,
        }


def check_columns(split: str, dataset: Dataset, data_format: str) -> None:
    """Raise ValueError naming the split, its format and the columns it lacks."""
    if data_format not in FORMATS:
        raise ValueError(f"split {split!r}: format {data_format!r} is not known; use one of {FORMATS}.")
    missing = [name for name in _REQUIRED_COLUMNS[data_format] if name not in dataset.column_names]
    if missing:
        raise ValueError(
            f"split {split!r} (format {data_format!r}) lacks the column(s) {missing}; that format needs "
            f"{list(_REQUIRED_COLUMNS[data_format])}, and the split has {dataset.column_names}."
        )


def _fit(split: str, index: int, prompt_ids: list[int], answer_ids: list[int], max_length: int) -> list[int]:
    """`answer_ids` cut so that prompt + answer fit `max_length`, or ValueError when no answer token fits."""
    room = max_length - len(prompt_ids)
    if room < 1 or not answer_ids:
        raise ValueError(
            f"split {split!r}, item {index}: max_length={max_length} leaves no answer token to score "
            f"(prompt {len(prompt_ids)} tokens, answer {len(answer_ids)}); raise max_length."
        )
    return answer_ids[:room]


def _with_cut(item: EvalItem, prompt_ids: list[int], full_answers: Sequence[list[int] | None]) -> EvalItem:
    """`item` with what max_length cut from its answers, given them before the cut (None for a missing one)."""
    kept = [item.answer_ids, item.paraphrased_ids, *item.perturbed_ids]
    pairs = [(full, cut) for full, cut in zip(full_answers, kept, strict=True) if full is not None]
    item.dropped_tokens = sum(len(full) - len(cut) for full, cut in pairs)
    item.untruncated_length = len(prompt_ids) + max(len(full) for full, _ in pairs)
    return item


def truncation(items: Sequence[EvalItem], max_length: int) -> Truncation:
    """What `max_length` cut from a split's items."""
    return Truncation.of(
        [item.dropped_tokens for item in items], [item.untruncated_length for item in items], max_length
    )


def _qa_items(
    split: str, tokenizer: PreTrainedTokenizerBase, rows: list[dict[str, Any]], *, prompt_format: PromptFormat,
    max_length: int,
) -> list[EvalItem]:  # fmt: skip
    items = []
    for index, row in enumerate(rows):
        question = row["question"]
        # The prompt depends on the question alone, so every answer continues the same prompt tokens.
        prompt = prompt_format.render(tokenizer, question)[0]
        prompt_ids = prompt_format.prompt_ids(tokenizer, question)
        answers = [row["answer"], row.get("paraphrased_answer"), *(row.get("perturbed_answer") or [])]
        full = [prompt_format.encode(tokenizer, question, answer)[1] if answer else None for answer in answers]
        answer_ids, paraphrased_ids, *perturbed_ids = [
            _fit(split, index, prompt_ids, ids, max_length) if ids is not None else None for ids in full
        ]
        item = EvalItem(
            prompt_ids=prompt_ids,
            answer_ids=answer_ids,
            prompt=prompt,
            reference=row["answer"],
            text=f"{question} {row['answer']}",
            paraphrased_ids=paraphrased_ids,
            perturbed_ids=perturbed_ids,
        )
        items.append(_with_cut(item, prompt_ids, full))
    return items


def _plain_items(
    split: str, tokenizer: PreTrainedTokenizerBase, prompts: Sequence[str], answers: Sequence[str],
    texts: Sequence[str], max_length: int,
) -> list[EvalItem]:  # fmt: skip
    items = []
    for index, (prompt, answer, text) in enumerate(zip(prompts, answers, texts, strict=True)):
        # Plain text as a base model reads it: the tokenizer's own special tokens (BOS) before the prompt.
        prompt_ids = tokenizer(prompt, add_special_tokens=True)["input_ids"]
        answer_ids = tokenizer(answer, add_special_tokens=False)["input_ids"]
        item = EvalItem(
            prompt_ids=prompt_ids,
            answer_ids=_fit(split, index, prompt_ids, answer_ids, max_length),
            prompt=prompt,
            reference=answer,
            text=text,
        )
        items.append(_with_cut(item, prompt_ids, [answer_ids, None]))
    return items


def _text_items(
    split: str, tokenizer: PreTrainedTokenizerBase, texts: Sequence[str], max_length: int
) -> list[EvalItem]:
    items = []
    for index, text in enumerate(texts):
        ids = tokenizer(text, add_special_tokens=True)["input_ids"]
        full_length = len(ids)
        if full_length > max_length:
            # The tokenizer's own truncation keeps its special tokens and cuts the text between them.
            ids = tokenizer(text, add_special_tokens=True, truncation=True, max_length=max_length)["input_ids"]
        if len(ids) < 2:
            raise ValueError(
                f"split {split!r}, item {index}: the text has fewer than 2 tokens; nothing to score."
            )
        items.append(EvalItem(
            prompt_ids=ids[:1], answer_ids=ids[1:], prompt=None, reference=text, text=text,
            dropped_tokens=full_length - len(ids), untruncated_length=full_length,
        ))  # fmt: skip
    return items


def build_items(
    split: str,
    dataset: Dataset,
    tokenizer: PreTrainedTokenizerBase,
    *,
    data_format: str = "qa",
    template: str = "auto",
    system_prompt: str | None = None,
    date_string: str | None = None,
    max_length: int = 512,
    fewshot: Sequence[tuple[str, str]] = (),
    max_answer_tokens: int | None = None,
) -> list[EvalItem]:
    """The items of `dataset` in `data_format` (see the module docstring), `qa` items in the prompt format
    `template` names (`llm_unlearn.data.prompts`); `fewshot` holds the (question, answer) shots of a `fewshot_qa`
    split; `max_answer_tokens` cuts each answer, and the text generations are compared with, to that many tokens
    counting the special tokens the tokenizer adds to a text (MUSE scores verbatim continuations against the first
    128 tokens of the continuation encoded on its own, BOS included)."""
    items = _build_items(
        split, dataset, tokenizer, data_format=data_format, max_length=max_length, fewshot=fewshot,
        prompt_format=resolve_format(tokenizer, template, system_prompt=system_prompt, date_string=date_string)
        if data_format == "qa" else None,
    )  # fmt: skip
    if max_answer_tokens is not None:
        special = set(tokenizer.all_special_ids)
        for item in items:
            # MUSE counts the reference's tokens as the tokenizer encodes the text on its own, special tokens (BOS)
            # included: on a tokenizer that adds BOS, 128 tokens hold 127 of the text.
            counted = tokenizer(item.reference, add_special_tokens=True)["input_ids"][:max_answer_tokens]
            kept = sum(token not in special for token in counted)
            if kept < len(item.answer_ids):
                item.answer_ids = item.answer_ids[:kept]
                item.reference = tokenizer.decode(item.answer_ids, skip_special_tokens=True)
    return items


def _build_items(
    split: str, dataset: Dataset, tokenizer: PreTrainedTokenizerBase, *, data_format: str,
    prompt_format: PromptFormat | None, max_length: int, fewshot: Sequence[tuple[str, str]],
) -> list[EvalItem]:  # fmt: skip
    check_columns(split, dataset, data_format)
    rows = dataset.to_list()
    if prompt_format is not None:
        return _qa_items(split, tokenizer, rows, prompt_format=prompt_format, max_length=max_length)
    if data_format == "text":
        return _text_items(split, tokenizer, [row["text"] for row in rows], max_length)
    answers = [row["answer"] for row in rows]
    if data_format == "completion":
        prompts = [row["prompt"] for row in rows]
        texts = [prompt + answer for prompt, answer in zip(prompts, answers, strict=True)]
    else:
        prompts = [muse_fewshot_prompt(row["question"], fewshot) for row in rows]
        texts = [f"{row['question']} {row['answer']}" for row in rows]
    return _plain_items(split, tokenizer, prompts, answers, texts, max_length)
