"""Unlearn a forget set while keeping a retain set, with a registered method, full-parameter or LoRA."""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass, field
from pathlib import Path

from transformers import set_seed
from trl import TrlParser

from llm_unlearn.data.arguments import DataArguments
from llm_unlearn.data.formatting import PaddingCollator, tokenize_dataset, tokenize_views
from llm_unlearn.methods import get_method
from llm_unlearn.models import ModelArguments, load_from_args
from llm_unlearn.run_record import describe_data, finish_run, jsonable, prepare_output
from llm_unlearn.trainer import UnlearnConfig, UnlearnTrainer


@dataclass
class UnlearnScriptArguments(DataArguments):
    """Data options of an unlearning run."""

    overwrite: bool = field(default=False, metadata={"help": "Replace an existing output directory."})


def main(
    script_args: UnlearnScriptArguments, training_args: UnlearnConfig, model_args: ModelArguments
) -> Path:
    """Run the method on the forget/retain split and save the model (or adapter) with its run.json."""
    started = time.perf_counter()
    output_dir = training_args.output_dir
    training_args.output_dir = str(prepare_output(output_dir, script_args.overwrite))
    set_seed(training_args.seed)
    split = script_args.load_split()
    model, tokenizer = load_from_args(model_args)
    format_kwargs = script_args.format_kwargs()
    method_config = get_method(training_args.method).make_config(training_args.method_args)
    trainer = UnlearnTrainer(
        model=model,
        args=training_args,
        train_dataset=tokenize_views(split.forget, tokenizer, method_config.forget_views(), **format_kwargs),
        retain_dataset=tokenize_dataset(split.retain, tokenizer, **format_kwargs),
        data_collator=PaddingCollator(tokenizer.pad_token_id),
        processing_class=tokenizer,
    )
    result = trainer.train()
    record = {
        "recipe": "unlearn",
        "method": trainer.method.name,
        "method_config": jsonable(trainer.method_config),
        "safeguard": trainer.safeguard_report(),
        "data": {
            "forget": describe_data(split.forget),
            "retain": describe_data(split.retain),
            "holdout": describe_data(split.holdout),
        },
    }
    return finish_run(
        trainer, output_dir, record, script_args=script_args, model_args=model_args, train_output=result,
        started=started,
    )  # fmt: skip


def make_parser(subparsers: argparse._SubParsersAction | None = None, prog: str | None = None) -> TrlParser:
    """The recipe's parser: data, unlearning and model arguments, with `--config file.yaml`."""
    dataclass_types = (UnlearnScriptArguments, UnlearnConfig, ModelArguments)
    if subparsers is not None:
        return subparsers.add_parser("unlearn", help=__doc__.splitlines()[0], dataclass_types=dataclass_types)
    return TrlParser(dataclass_types, prog=prog)


if __name__ == "__main__":
    main(*make_parser().parse_args_and_config())
