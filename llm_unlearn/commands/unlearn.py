"""Unlearn a forget set while keeping a retain set, with a registered method, full-parameter or LoRA."""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass, field
from pathlib import Path

from datasets import Dataset
from transformers import set_seed
from trl import TrlParser

from llm_unlearn.commands import evaluate
from llm_unlearn.data.arguments import DataArguments
from llm_unlearn.data.formatting import PaddingCollator, tokenize_dataset, tokenize_views
from llm_unlearn.evaluation import EvalConfig, load_eval
from llm_unlearn.evaluation.callback import UnlearningEvalCallback
from llm_unlearn.methods import get_method
from llm_unlearn.models import ModelArguments, load_from_args
from llm_unlearn.run_record import describe_data, finish_run, jsonable, prepare_output
from llm_unlearn.trainer import UnlearnConfig, UnlearnTrainer


@dataclass
class UnlearnScriptArguments(DataArguments):
    """Data options of an unlearning run."""

    overwrite: bool = field(default=False, metadata={"help": "Replace an existing output directory."})


@dataclass
class EvalSuite:
    """What the eval during unlearning evaluates: an eval YAML's splits, config and reference eval."""

    splits: dict[str, Dataset]
    config: EvalConfig
    reference: dict | None


def load_eval_suite(path: str, model_name_or_path: str, output_dir: str) -> EvalSuite:
    """Read a suite YAML with eval/run.py's own parser and load its splits (sampled to `max_items` with its
    seed, so the numbers are those eval/run.py gives) and its reference eval."""
    try:
        # eval/run.py takes the model and the eval.json directory on its command line: here the model is the
        # one in training and nothing is written, so these two only satisfy the parser.
        (eval_args,) = evaluate.make_parser().parse_args_and_config(
            ["--config", path, "--model_name_or_path", model_name_or_path, "--output_dir", output_dir]
        )
    except ValueError as error:
        raise ValueError(f"eval_config {path!r}: {error}") from None
    splits, fewshot = eval_args.load_eval_splits()
    reference = load_eval(eval_args.reference_eval) if eval_args.reference_eval is not None else None
    return EvalSuite(splits, eval_args.eval_config(fewshot), reference)


def main(
    script_args: UnlearnScriptArguments, training_args: UnlearnConfig, model_args: ModelArguments
) -> Path:
    """Run the method on the forget/retain split and save the model (or adapter) with its run.json; with
    `eval_every_steps`, evaluate during training and keep the best model in `best/`."""
    started = time.perf_counter()
    output_dir = training_args.output_dir
    training_args.output_dir = str(prepare_output(output_dir, script_args.overwrite))
    set_seed(training_args.seed)
    eval_suite = None
    if training_args.eval_every_steps is not None:
        # Loaded before the model, so a bad eval config fails at once.
        eval_suite = load_eval_suite(
            training_args.eval_config, model_args.model_name_or_path or "", training_args.output_dir
        )
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
    eval_callback = None
    if eval_suite is not None:
        eval_callback = UnlearningEvalCallback(
            trainer,
            eval_suite.splits,
            eval_suite.config,
            eval_every_steps=training_args.eval_every_steps,
            best_metric=training_args.best_metric,
            greater_is_better=training_args.greater_is_better,
            reference=eval_suite.reference,
        )
        trainer.add_callback(eval_callback)
    result = trainer.train()
    record = {
        "recipe": "unlearn",
        "method": trainer.method.name,
        "method_config": jsonable(trainer.method_config),
        "safeguard": trainer.safeguard_report(),
        "eval_during_training": eval_callback.report() if eval_callback is not None else None,
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
