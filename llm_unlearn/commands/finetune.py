"""Fine-tune the target model (`train_on: all`) or the retain model (`train_on: retain`, the exact-unlearning
baseline): `accelerate launch recipes/finetune.py --config configs/builtin/finetune.yaml`."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from transformers import TrainingArguments
from trl import TrlParser

from llm_unlearn.finetune import FinetuneArguments, finetune
from llm_unlearn.models import ModelArguments


@dataclass
class FinetuneScriptArguments(FinetuneArguments):
    """The data options and what to train on, and whether an existing output may be replaced."""

    overwrite: bool = field(default=False, metadata={"help": "Replace an existing output directory."})


def main(
    script_args: FinetuneScriptArguments, training_args: TrainingArguments, model_args: ModelArguments
) -> Path:
    """Fine-tune and save the model with its run.json; returns the output directory."""
    output_dir = finetune(model_args, script_args, training_args, overwrite=script_args.overwrite)
    print(f"finetune: wrote {output_dir}")
    return output_dir


def make_parser(prog: str | None = None) -> TrlParser:
    """The recipe's parser: data, training and model arguments, with `--config file.yaml`."""
    return TrlParser((FinetuneScriptArguments, TrainingArguments, ModelArguments), prog=prog)
