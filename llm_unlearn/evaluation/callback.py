"""Evaluate during unlearning: a `TrainerCallback` that runs the eval suite before training, every N optimizer
steps and at the end, logs its numbers with the training logs, and keeps the best model by a chosen number in
`<output_dir>/best/`.

Why not transformers' own `eval_strategy`/`eval_steps`/`metric_for_best_model`/`load_best_model_at_end`: those
drive `Trainer.evaluate()`, a loss on an `eval_dataset`, and pick the best among the `checkpoint-N` directories
that `save_strategy` writes (so save and eval steps must line up, and each candidate carries optimizer states).
Unlearning is judged by the eval suite instead (generation, truth ratio, forget quality), and the best model is
wanted as a plain model directory. Separate names (`eval_every_steps`, `best_metric`) keep Trainer's own
evaluation available and unchanged; `greater_is_better` is transformers' field with its meaning, but it is never
guessed from the name, because the direction depends on the split (forget/probability should fall,
retain/probability should not).

The best model is not loaded back at the end: the run's output stays the final model, `best/` holds the best one,
and `report()` (recorded in run.json) names both.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from accelerate import Accelerator, DistributedType
from datasets import Dataset
from transformers import Trainer, TrainerCallback, TrainerControl, TrainerState, TrainingArguments

from llm_unlearn.evaluation.evaluator import EvalConfig, evaluate_splits
from llm_unlearn.evaluation.results import EvalResult, save_eval
from llm_unlearn.files import atomic_directory, write_json_atomic

logger = logging.getLogger(__name__)

BEST_DIR = "best"
LOG_PREFIX = "eval/"


def is_sharded(accelerator: Accelerator) -> bool:
    """Whether `accelerator` shards the model's parameters across processes: FSDP, or DeepSpeed ZeRO stage 3."""
    # accelerate's documented state, rather than Trainer's undocumented is_fsdp_enabled / is_deepspeed_enabled.
    if accelerator.distributed_type == DistributedType.FSDP:
        return True
    return (
        accelerator.distributed_type == DistributedType.DEEPSPEED
        and accelerator.state.deepspeed_plugin.zero_stage == 3
    )


def log_numbers(result: EvalResult) -> dict[str, float]:
    """The numbers to log, by the gate's names: `eval/summary/<name>`, `eval/<split>/<metric>`, `eval/mia/<score>`
    and `eval/attack/...`, leaving out those not computed (NaN, or null such as forget quality without a
    reference)."""
    summary = set(result.summary_names())
    return {
        f"{LOG_PREFIX}summary/{name}" if name in summary else f"{LOG_PREFIX}{name}": measurement.value
        for name in result.names()
        if (measurement := result.measure(name)).computed
    }


class UnlearningEvalCallback(TrainerCallback):
    """Evaluate `trainer`'s model on `splits` with `config` before training (step 0), every `eval_every_steps`
    optimizer steps and at the end; log the numbers (they land in `state.log_history`) and, with `best_metric`,
    save the model (the adapter in LoRA mode), tokenizer, eval.json and best.json to `<output_dir>/best/`
    whenever that number improves on the best of the evaluations after step 0.

    Every process runs the evaluation (the evaluator shares the items out and gathers them, so every rank sees
    the same numbers and takes the same decision); only the main process writes files. `reference` is the
    retain model's eval result, for forget quality. Sharded training (FSDP, DeepSpeed ZeRO-3) is refused: the
    evaluator runs the unsharded model.
    """

    def __init__(
        self,
        trainer: Trainer,
        splits: Mapping[str, Dataset],
        config: EvalConfig,
        *,
        eval_every_steps: int,
        best_metric: str | None = None,
        greater_is_better: bool | None = None,
        reference: EvalResult | None = None,
    ) -> None:
        if eval_every_steps < 1:
            raise ValueError(f"eval_every_steps must be at least 1, got {eval_every_steps}.")
        if not splits:
            raise ValueError("the eval during unlearning needs at least one split to evaluate.")
        if trainer.processing_class is None:
            raise ValueError("the eval during unlearning needs the trainer's tokenizer (processing_class).")
        if best_metric is not None and greater_is_better is None:
            raise ValueError(
                f"best_metric {best_metric!r} needs greater_is_better: true when a higher value is better "
                "(forget_quality, model_utility, retain/probability), false when lower is better "
                "(forget/probability, forget/rouge_l_recall)."
            )
        if is_sharded(trainer.accelerator):
            raise ValueError(
                "the eval during unlearning runs the whole model on each process and does not support FSDP or "
                "DeepSpeed ZeRO-3; use DDP or ZeRO-2, or evaluate the saved model with eval/run.py."
            )
        self.trainer = trainer
        self.splits = dict(splits)
        self.config = config
        self.eval_every_steps = eval_every_steps
        self.best_metric = best_metric
        self.greater_is_better = greater_is_better
        self.reference = reference
        self.evaluated_steps: list[int] = []
        self.best: dict[str, Any] | None = None
        self.last: dict[str, Any] | None = None

    @property
    def best_dir(self) -> Path:
        """Where the best model goes: `best/` inside the trainer's output directory."""
        return Path(self.trainer.args.output_dir) / BEST_DIR

    def on_train_begin(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        # The model before unlearning: the start of every logged curve, and a real result to check best_metric
        # against before any weight changes. It is not a best candidate: best/ holds an unlearned model.
        result = self.evaluate(state.global_step)
        if self.best_metric is not None:
            self._check_best_metric(result)

    def on_step_end(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        if state.global_step % self.eval_every_steps == 0:
            self._evaluate_candidate(state.global_step)

    def on_train_end(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        # The last step is evaluated even off the schedule, so the logs always end with the final model.
        if self.evaluated_steps[-1] != state.global_step:
            self._evaluate_candidate(state.global_step)

    def evaluate(self, step: int) -> EvalResult:
        """Evaluate the model being trained, log its numbers and return the eval result. The model is left in the
        mode it was in, with its gradients untouched."""
        model = self.trainer.accelerator.unwrap_model(self.trainer.model)
        was_training = model.training
        try:
            model.eval()
            document = evaluate_splits(
                model, self.trainer.processing_class, self.splits, self.config, reference=self.reference
            )
        finally:
            model.train(was_training)
        result = EvalResult(document, source=f"the eval at step {step}")
        numbers = log_numbers(result)
        self.trainer.log(dict(numbers))
        self.evaluated_steps.append(step)
        self.last = {"step": step, "logged": numbers}
        return result

    def _evaluate_candidate(self, step: int) -> None:
        """Evaluate, and save the model to `best/` when `best_metric` improves on the best so far."""
        result = self.evaluate(step)
        if self.best_metric is None:
            return
        value = result.measure(self.best_metric).value
        self.last["value"] = value
        if self._improves(value):
            self.best = {
                "step": step,
                "metric": self.best_metric,
                "value": value,
                "logged": self.last["logged"],
            }
            self._save_best(result)
        elif math.isnan(value):
            logger.warning(
                "best_metric %s is not a number at step %d; not a best candidate.", self.best_metric, step
            )

    def _check_best_metric(self, result: EvalResult) -> None:
        """Raise ValueError unless `best_metric` names a number of this eval that was computed."""
        if self.best_metric not in result.names():
            raise ValueError(
                f"best_metric {self.best_metric!r} is not a number this eval reports; choose one of "
                f"{sorted(result.names())}."
            )
        measurement = result.measure(self.best_metric)
        if not measurement.computed:
            reason = measurement.reason
            raise ValueError(
                f"best_metric {self.best_metric!r} has no value in the eval before training"
                f"{f' ({reason})' if reason else ''}, so it could never pick a model; choose another best_metric "
                "or give the eval what it needs."
            )

    def _improves(self, value: float) -> bool:
        if math.isnan(value):
            return False
        if self.best is None:
            return True
        return value > self.best["value"] if self.greater_is_better else value < self.best["value"]

    def _save_best(self, result: EvalResult) -> None:
        """Replace `best/` with the current model, tokenizer, best.json and the full eval.json, atomically."""
        if not self.trainer.accelerator.is_main_process:
            return
        model = self.trainer.accelerator.unwrap_model(self.trainer.model)
        with atomic_directory(self.best_dir, overwrite=True) as staging:
            model.save_pretrained(staging)
            self.trainer.processing_class.save_pretrained(staging)
            save_eval(result, staging / "eval.json")
            write_json_atomic(
                {**self.best, "greater_is_better": self.greater_is_better}, staging / "best.json"
            )
        logger.info(
            "New best %s = %.6g at step %d, saved to %s.",
            self.best_metric,
            self.best["value"],
            self.best["step"],
            self.best_dir,
        )

    def report(self) -> dict[str, Any]:
        """What the evaluations found, for run.json: the schedule, the evaluated steps, the best model (kept in
        `best/`) and the final one (the run's output)."""
        best = None if self.best is None else {**self.best, "dir": BEST_DIR}
        return {
            "eval_every_steps": self.eval_every_steps,
            "best_metric": self.best_metric,
            "greater_is_better": self.greater_is_better,
            "evaluated_steps": self.evaluated_steps,
            "best": best,
            "final": self.last,
        }
