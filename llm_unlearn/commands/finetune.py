"""Fine-tune the *target* model (forget and retain data) or the *retain* model (forget data left out: the
exact-unlearning baseline that approximate methods are judged against)."""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass, field
from pathlib import Path

from transformers import Trainer, TrainingArguments, set_seed
from trl import TrlParser

from llm_unlearn.data.arguments import DataArguments
from llm_unlearn.data.formatting import PaddingCollator, tokenize_dataset
from llm_unlearn.models import ModelArguments, load_from_args
from llm_unlearn.run_record import describe_data, finish_run, prepare_output

TRAIN_ON = ("all", "retain")


@dataclass
class FinetuneScriptArguments(DataArguments):
    """Data options plus which part of the data to train on."""

    train_on: str = field(
        default="all",
        metadata={
            "help": "'all': forget + retain (the target model); 'retain': retain only (the retain model)."
        },
    )
    overwrite: bool = field(default=False, metadata={"help": "Replace an existing output directory."})

    def __post_init__(self) -> None:
        if self.train_on not in TRAIN_ON:
            raise ValueError(f"train_on={self.train_on!r} is not known; use one of {TRAIN_ON}.")


def main(
    script_args: FinetuneScriptArguments, training_args: TrainingArguments, model_args: ModelArguments
) -> Path:
    """Train on the selected data and save the model (or LoRA adapter) with its run.json."""
    started = time.perf_counter()
    output_dir = training_args.output_dir
    training_args.output_dir = str(prepare_output(output_dir, script_args.overwrite))
    set_seed(training_args.seed)
    split = script_args.load_split()
    data = split.retain
    if script_args.train_on == "all":
        from datasets import concatenate_datasets

        data = concatenate_datasets([split.forget, split.retain])
    model, tokenizer = load_from_args(model_args)
    train_dataset = tokenize_dataset(data, tokenizer, **script_args.format_kwargs())
    trainer = Trainer(
        model=model,
        args=training_args,
        train_dataset=train_dataset,
        data_collator=PaddingCollator(tokenizer.pad_token_id),
        processing_class=tokenizer,
    )
    result = trainer.train()
    record = {
        "recipe": "finetune",
        "train_on": script_args.train_on,
        "data": {
            "train": describe_data(data),
            "forget_excluded": describe_data(split.forget) if script_args.train_on == "retain" else None,
            "holdout": describe_data(split.holdout),
        },
    }
    return finish_run(
        trainer, output_dir, record, script_args=script_args, model_args=model_args, train_output=result,
        started=started,
    )  # fmt: skip


def make_parser(subparsers: argparse._SubParsersAction | None = None, prog: str | None = None) -> TrlParser:
    """The recipe's parser: data, training and model arguments, with `--config file.yaml`."""
    dataclass_types = (FinetuneScriptArguments, TrainingArguments, ModelArguments)
    if subparsers is not None:
        return subparsers.add_parser(
            "finetune", help=__doc__.splitlines()[0], dataclass_types=dataclass_types
        )
    return TrlParser(dataclass_types, prog=prog)


if __name__ == "__main__":
    main(*make_parser().parse_args_and_config())
