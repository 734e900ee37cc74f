"""`DataArguments`: the data options every recipe shares (source, forget/retain/holdout selection, formatting)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from datasets import Dataset
from transformers import PreTrainedTokenizerBase

from llm_unlearn.data.loading import load_records
from llm_unlearn.data.prompts import PROMPT_TEMPLATES, check_prompt_template, rendered_example
from llm_unlearn.data.selection import UnlearnSplit, select_forget_retain


@dataclass
class DataArguments:
    """Where the data comes from, which part is forgotten, and how examples are rendered as prompts."""

    dataset: str = field(
        default="builtin",
        metadata={"help": "'builtin', a local .json/.jsonl/.csv/.parquet file, or a Hub dataset name."},
    )
    dataset_config: str | None = field(default=None, metadata={"help": "Hub config, or builtin options."})
    dataset_split: str = field(default="train", metadata={"help": "Split of `dataset` that was trained on."})
    forget_subjects: list[str] | None = field(
        default=None, metadata={"help": "Subject ids whose examples form the forget set."}
    )
    retain_subjects: list[str] | None = field(
        default=None, metadata={"help": "Subject ids to keep; every other subject is forgotten."}
    )
    forget_data: str | None = field(
        default=None, metadata={"help": "A separate file or Hub dataset holding the forget set."}
    )
    forget_data_config: str | None = field(default=None, metadata={"help": "Hub config of `forget_data`."})
    forget_data_split: str = field(default="train", metadata={"help": "Split of `forget_data`."})
    holdout_subjects: list[str] | None = field(
        default=None, metadata={"help": "Subject ids never trained on (removed from forget and retain)."}
    )
    holdout_data: str | None = field(
        default=None, metadata={"help": "A separate file or Hub dataset of never-trained examples."}
    )
    holdout_data_config: str | None = field(default=None, metadata={"help": "Hub config of `holdout_data`."})
    holdout_data_split: str = field(default="train", metadata={"help": "Split of `holdout_data`."})
    prompt_template: str = field(
        default="auto",
        metadata={
            "help": f"The prompt format: one of {', '.join(PROMPT_TEMPLATES)} ('auto': the tokenizer's chat template "
            "if it has one, else 'plain'; the tofu_* and muse presets are the published models' formats), or a "
            ".yaml file of prompt format fields."
        },
    )
    system_prompt: str | None = field(
        default=None, metadata={"help": "System message, in place of the prompt format's own (if any)."}
    )
    date_string: str | None = field(
        default=None,
        metadata={"help": "Date that chat templates which print one (Llama 3) show, in place of the format's own."},
    )
    max_length: int = field(default=256, metadata={"help": "Maximum tokens per example (prompt + answer)."})

    def __post_init__(self) -> None:
        # Checked here, before any model loads, rather than when the first example is rendered.
        check_prompt_template(self.prompt_template)
        if self.max_length < 1:
            raise ValueError(f"max_length must be at least 1 token, got {self.max_length}.")

    def load_split(self) -> UnlearnSplit:
        """Load the data and split it into forget, retain and holdout sets."""
        data = load_records(self.dataset, config=self.dataset_config, split=self.dataset_split)
        forget_data = self._load_optional(self.forget_data, self.forget_data_config, self.forget_data_split)
        holdout_data = self._load_optional(
            self.holdout_data, self.holdout_data_config, self.holdout_data_split
        )
        return select_forget_retain(
            data,
            forget_subjects=self.forget_subjects,
            retain_subjects=self.retain_subjects,
            forget_data=forget_data,
            holdout_subjects=self.holdout_subjects,
            holdout_data=holdout_data,
        )

    def _load_optional(self, source: str | None, config: str | None, split: str) -> Dataset | None:
        if source is None:
            return None
        # Another split of the same dataset (e.g. builtin's holdout) shares its config unless given one.
        if config is None and source == self.dataset:
            config = self.dataset_config
        return load_records(source, config=config, split=split)

    def prompt_example(self, tokenizer: PreTrainedTokenizerBase, data: Dataset) -> dict[str, Any] | None:
        """A fixed question and answer in this prompt format, decoded with its special tokens (for run.json); None
        for text data, which has no prompt."""
        if "question" not in data.column_names:
            return None
        return rendered_example(
            tokenizer, self.prompt_template, system_prompt=self.system_prompt, date_string=self.date_string
        )

    def format_kwargs(self) -> dict:
        """Keyword arguments for `tokenize_dataset` / `EvalConfig` that fix how prompts are rendered."""
        return {
            "template": self.prompt_template,
            "system_prompt": self.system_prompt,
            "date_string": self.date_string,
            "max_length": self.max_length,
        }
