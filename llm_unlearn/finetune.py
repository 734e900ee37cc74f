"""Fine-tune the *target* model (forget and retain data) or the *retain* model (forget data left out: the
exact-unlearning baseline that approximate methods are judged against)."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

from datasets import concatenate_datasets
from transformers import Trainer, TrainingArguments, set_seed

from llm_unlearn.data.arguments import DataArguments
from llm_unlearn.data.formatting import PaddingCollator, tokenize_dataset
from llm_unlearn.models import ModelArguments, load_from_args
from llm_unlearn.run_record import describe_data, finish_run, staged_output

TRAIN_ON = ("all", "retain")


@dataclass
class FinetuneArguments(DataArguments):
    """The data options, plus which part of the data to train on."""

    train_on: str = field(
        default="all",
        metadata={"help": "'all': forget + retain (the target model); 'retain': retain only (the retain model)."},
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.train_on not in TRAIN_ON:
            raise ValueError(f"train_on={self.train_on!r} is not known; use one of {TRAIN_ON}.")


# What a fine-tuning recipe config holds, in the order of the finetune command's parser.
FINETUNE_ARGUMENTS = (FinetuneArguments, TrainingArguments, ModelArguments)


def finetune(
    model_args: ModelArguments,
    data_args: FinetuneArguments,
    training_args: TrainingArguments,
    *,
    overwrite: bool = False,
) -> Path:
    """Train on the selected data and save the model (or LoRA adapter) with its run.json in
    `training_args.output_dir`, which appears only when the run is complete; returns it."""
    if training_args.learning_rate <= 0:
        raise ValueError(f"learning_rate must be positive, got {training_args.learning_rate}.")
    started = time.perf_counter()
    output_dir = training_args.output_dir
    with staged_output(output_dir, overwrite) as staging:
        training_args.output_dir = str(staging)
        set_seed(training_args.seed)
        split = data_args.load_split()
        data = split.retain
        if data_args.train_on == "all":
            data = concatenate_datasets([split.forget, split.retain])
        model, tokenizer = load_from_args(model_args)
        train_dataset, truncation = tokenize_dataset(
            data, tokenizer, name="training data", **data_args.format_kwargs()
        )
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
            "train_on": data_args.train_on,
            "data": {
                "train": describe_data(data),
                "forget_excluded": describe_data(split.forget) if data_args.train_on == "retain" else None,
                "holdout": describe_data(split.holdout),
            },
            "truncation": {"train": truncation.to_dict()},
            "prompt_format": data_args.prompt_example(tokenizer, data),
        }
        return finish_run(
            trainer, output_dir, record, script_args=data_args, model_args=model_args, train_output=result,
            started=started,
        )  # fmt: skip
