"""Unlearn a forget set while keeping a retain set, with a registered method, full-parameter or LoRA."""

from __future__ import annotations

import time
from pathlib import Path

from transformers import set_seed

from llm_unlearn.data.arguments import DataArguments
from llm_unlearn.evaluation.callback import UnlearningEvalCallback
from llm_unlearn.evaluation.evaluator import check_reference, forget_questions
from llm_unlearn.evaluation.reference_logs import load_reference
from llm_unlearn.evaluation.suite import Suite
from llm_unlearn.models import ModelArguments, load_from_args
from llm_unlearn.run_record import describe_data, finish_run, jsonable, staged_output
from llm_unlearn.trainer import UnlearnConfig, UnlearnTrainer

# What an unlearning recipe config holds, in the order of the unlearn command's parser (TRL's: script, training,
# model arguments).
UNLEARN_ARGUMENTS = (DataArguments, UnlearnConfig, ModelArguments)


def unlearn(
    model_args: ModelArguments,
    data_args: DataArguments,
    training_args: UnlearnConfig,
    *,
    overwrite: bool = False,
) -> Path:
    """Run the method of `training_args` on the forget/retain split of `data_args` and save the model (or
    adapter) with its run.json in `training_args.output_dir`, which appears only when the run is complete;
    with `eval_every_steps`, evaluate during training and keep the best model in `best/`. Returns the output
    directory."""
    started = time.perf_counter()
    output_dir = training_args.output_dir
    suite, reference = None, None
    if training_args.eval_every_steps is not None:
        # Read before the model loads, so a bad suite or reference fails at once.
        suite = Suite.from_yaml(training_args.eval_config)
        splits, eval_config = suite.load()
        if suite.reference_eval is not None:
            reference = load_reference(suite.reference_eval, eval_config)
            check_reference(
                eval_config, list(splits), reference, suite.reference_eval,
                forget_questions(splits, eval_config.forget_split),
            )  # fmt: skip
    with staged_output(output_dir, overwrite) as staging:
        training_args.output_dir = str(staging)
        set_seed(training_args.seed)
        split = data_args.load_split()
        model, tokenizer = load_from_args(model_args)
        trainer = UnlearnTrainer(
            model=model,
            args=training_args,
            train_dataset=split.forget,
            retain_dataset=split.retain,
            processing_class=tokenizer,
            prompt_format=data_args.format_kwargs(),
        )
        eval_callback = None
        if suite is not None:
            eval_callback = UnlearningEvalCallback(
                trainer,
                splits,
                eval_config,
                eval_every_steps=training_args.eval_every_steps,
                best_metric=training_args.best_metric,
                greater_is_better=training_args.greater_is_better,
                reference=reference,
            )
            trainer.add_callback(eval_callback)
        result = trainer.train()
        record = {
            "recipe": "unlearn",
            "method": trainer.method.name,
            "method_config": jsonable(trainer.method_config),
            "safeguard": trainer.safeguard_report(),
            "eval_during_training": eval_callback.report() if eval_callback is not None else None,
            "truncation": {name: cut.to_dict() for name, cut in trainer.truncation.items()},
            "prompt_format": data_args.prompt_example(tokenizer, split.forget),
            "data": {
                "forget": describe_data(split.forget),
                "retain": describe_data(split.retain),
                "holdout": describe_data(split.holdout),
            },
        }
        return finish_run(
            trainer, output_dir, record, script_args=data_args, model_args=model_args, train_output=result,
            started=started,
        )  # fmt: skip
