"""UnlearnTrainer: a `transformers.Trainer` whose training set is the forget set, paired with retain batches.

The trainer is generic: each step it builds an `UnlearnStep` from the forget batch (from the usual Trainer
dataloader, so accelerate shards it across processes) and a retain batch, and hands it to the configured
method's loss. Retain batches come from one seeded global stream that every rank indexes by
(step, rank): ranks draw different retain examples, and the global retain batch is the same for any number
of processes at a fixed global batch size.
"""

from __future__ import annotations

import contextlib
import copy
import json
import logging
import math
from collections import defaultdict
from collections.abc import Iterator, Mapping
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from accelerate.utils import send_to_device
from datasets import Dataset
from peft import PeftModel
from transformers import (
    PreTrainedTokenizerBase,
    Trainer,
    TrainerCallback,
    TrainerControl,
    TrainerState,
    TrainingArguments,
)

from llm_unlearn.data.formatting import (
    VIEW_SEPARATOR,
    PaddingCollator,
    Truncation,
    tokenize_dataset,
    tokenize_views,
    view_column,
)
from llm_unlearn.methods import UnlearnStep, get_method
from llm_unlearn.methods.logprobs import sequence_logprob


@dataclass
class UnlearnConfig(TrainingArguments):
    """Training arguments of an unlearning run: the transformers ones plus the method and its hyperparameters."""

    method: str = field(
        default="graddiff", metadata={"help": "Unlearning method, a name registered in METHODS."}
    )
    method_args: dict | str | None = field(
        default=None,
        metadata={
            "help": "The method's hyperparameters: a mapping in a YAML config (method_args: {beta: 0.1}), JSON on "
            "the command line ('{\"beta\": 0.1}'); `llm-unlearn methods NAME` lists them."
        },
    )
    retain_batch_size: int | None = field(
        default=None,
        metadata={"help": "Retain examples per device per step; defaults to per_device_train_batch_size."},
    )

    stop_on_nonfinite: bool = field(
        default=True,
        metadata={
            "help": "Stop when a loss or gradient is NaN/inf, keeping the weights of the last good step."
        },
    )
    retain_loss_limit: float | None = field(
        default=None,
        metadata={
            "help": "Utility floor: stop once the method's retain loss (averaged over ranks) exceeds this."
        },
    )

    eval_every_steps: int | None = field(
        default=None,
        metadata={
            "help": "Run the eval suite of eval_config before training, every this many optimizer steps and at "
            "the end, logging eval/<split>/<metric> and eval/summary/<name> (llm_unlearn/evaluation/callback.py)."
        },
    )
    eval_config: str | None = field(
        default=None,
        metadata={
            "help": "Suite YAML, as given to eval/run.py (data, splits, metrics, max_items, reference_eval), "
            "for eval_every_steps."
        },
    )
    best_metric: str | None = field(
        default=None,
        metadata={
            "help": "Keep the best model by this eval number in output_dir/best ('forget_quality', "
            "'forget/probability': names as in the CI gate); set greater_is_better too. The run's output "
            "stays the final model."
        },
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.learning_rate <= 0:
            raise ValueError(f"learning_rate must be positive, got {self.learning_rate}.")
        self._check_eval_fields()
        if isinstance(self.method_args, str):
            try:
                self.method_args = json.loads(self.method_args)
            except json.JSONDecodeError as error:
                raise ValueError(
                    f"method_args must be a JSON mapping, got {self.method_args!r}: {error}"
                ) from None
        if self.method_args is not None and not isinstance(self.method_args, dict):
            raise ValueError(f"method_args must be a mapping, got {type(self.method_args).__name__}.")
        # Built here, once, so a bad name or hyperparameter fails before any model is loaded. Not a dataclass
        # field: run.json records `method_args`, and TrainingArguments serializes its fields only.
        self.method_config = get_method(self.method).make_config(self.method_args)

    def _check_eval_fields(self) -> None:
        """The eval-during-unlearning fields go together; checked before any model or data is loaded."""
        if self.eval_every_steps is None:
            if self.eval_config is not None or self.best_metric is not None:
                raise ValueError(
                    "eval_config and best_metric take effect with eval_every_steps; set eval_every_steps "
                    "(e.g. 10) to evaluate during unlearning."
                )
            return
        if self.eval_every_steps < 1:
            raise ValueError(f"eval_every_steps must be at least 1, got {self.eval_every_steps}.")
        if self.eval_config is None:
            raise ValueError(
                "eval_every_steps needs eval_config: a suite YAML as eval/run.py takes, e.g. eval/builtin.yaml."
            )
        if not Path(self.eval_config).is_file():
            raise FileNotFoundError(
                f"eval_config {self.eval_config!r} does not exist; give a suite YAML file."
            )


logger = logging.getLogger(__name__)
REFERENCE_LOGPROB = "ref_seq_logprob"
# A dataset with this column is tokenized already.
TOKENIZED = "input_ids"


class RetainStream:
    """An endless, seeded sequence of retain indices (a fresh permutation each pass) shared by all ranks."""

    def __init__(self, size: int, seed: int) -> None:
        if size == 0:
            raise ValueError("the retain set is empty, but the method needs retain batches.")
        self.size = size
        self.seed = seed
        self._orders: dict[int, list[int]] = {}

    def __getitem__(self, position: int) -> int:
        epoch, offset = divmod(position, self.size)
        if epoch not in self._orders:
            generator = torch.Generator().manual_seed(self.seed + epoch)
            self._orders = {epoch: torch.randperm(self.size, generator=generator).tolist()}
        return self._orders[epoch][offset]


def split_views(inputs: dict[str, torch.Tensor], name: str) -> dict[str, dict[str, torch.Tensor]]:
    """Split a collated batch into its views: plain keys go to `name`, `<view>__key` to `<name>_<view>`."""
    batches: dict[str, dict[str, torch.Tensor]] = {name: {}}
    for key, value in inputs.items():
        view, _, field_name = key.rpartition(VIEW_SEPARATOR)
        batches.setdefault(f"{name}_{view}" if view else name, {})[field_name] = value
    return batches


def retain_positions(step: int, world_size: int, rank: int, batch_size: int) -> range:
    """Positions in the retain stream that `rank` reads at micro-step `step`: the global retain batch of a step
    is the same slice of the stream for any number of processes, and ranks read disjoint parts of it."""
    start = (step * world_size + rank) * batch_size
    return range(start, start + batch_size)


def frozen_reference(model: torch.nn.Module, device: torch.device | str) -> torch.nn.Module | None:
    """A frozen copy of `model` for per-step reference outputs; None for a PEFT model, whose reference is
    itself with the adapters disabled (no second copy in memory)."""
    if isinstance(model, PeftModel):
        return None
    reference = copy.deepcopy(model).eval()
    reference.requires_grad_(False)
    return reference.to(device)


@contextlib.contextmanager
def reference_model(model: torch.nn.Module, frozen: torch.nn.Module | None) -> Iterator[torch.nn.Module]:
    """Yield the reference model under no_grad: `frozen`, or `model` with its adapters disabled."""
    with torch.no_grad():
        if frozen is not None:
            yield frozen
        else:
            with model.disable_adapter():
                yield model


class SafeguardStopCallback(TrainerCallback):
    """Stops training once `trainer.safeguard_stop` is set: `control.should_training_stop` is the documented way
    to end a run, and callbacks are where Trainer expects it to be set."""

    def __init__(self, trainer: UnlearnTrainer) -> None:
        self.trainer = trainer

    def _stop_if_tripped(self, control: TrainerControl) -> TrainerControl:
        if self.trainer.safeguard_stop is not None:
            control.should_training_stop = True
        return control

    def on_substep_end(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> TrainerControl:
        # A micro-step short of the optimizer step (gradient accumulation): stop here, before the remaining
        # micro-steps accumulate and the optimizer applies a partial gradient.
        return self._stop_if_tripped(control)

    def on_step_end(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> TrainerControl:
        # After the optimizer step, before logging and saving (a non-finite step's gradients were dropped, so
        # that optimizer step changed nothing).
        return self._stop_if_tripped(control)


class UnlearnTrainer(Trainer):
    """Trainer for unlearning: `train_dataset` is the forget set, `retain_dataset` the retain set.

    Datasets of question/answer rows are tokenized here with `processing_class`, the forget set with the extra
    answers the method asks for (`forget_views`, e.g. DPO's preferred answer) and `prompt_format` (the keyword
    arguments of `tokenize_dataset`: template, system_prompt, max_length); datasets that already hold
    `input_ids` are used as they are, as TRL's trainers do.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        args: UnlearnConfig,
        train_dataset: Dataset,
        retain_dataset: Dataset | None = None,
        *,
        processing_class: PreTrainedTokenizerBase | None = None,
        prompt_format: Mapping[str, Any] | None = None,
        data_collator: Any = None,
        **kwargs: Any,
    ) -> None:
        self.method = get_method(args.method)
        self.method_config = args.method_config
        if self.method_config.uses_retain and retain_dataset is None:
            raise ValueError(f"method {self.method.name!r} needs a retain set, and none was given.")
        untokenized = [data for data in (train_dataset, retain_dataset) if data is not None]
        untokenized = [data for data in untokenized if TOKENIZED not in data.column_names]
        if processing_class is None and (untokenized or data_collator is None):
            raise ValueError(
                "UnlearnTrainer needs processing_class (the tokenizer) to tokenize question/answer rows and pad "
                "batches; pass it, or tokenized datasets and a data_collator."
            )
        prompt_format = dict(prompt_format or {})
        # What max_length cut from the data this trainer tokenized, by set; recorded in run.json.
        self.truncation: dict[str, Truncation] = {}
        if TOKENIZED not in train_dataset.column_names:
            views = self.method_config.forget_views()
            train_dataset, self.truncation["forget"] = tokenize_views(
                train_dataset, processing_class, views, name="forget set", **prompt_format
            )
        if retain_dataset is not None and TOKENIZED not in retain_dataset.column_names:
            retain_dataset, self.truncation["retain"] = tokenize_dataset(
                retain_dataset, processing_class, name="retain set", **prompt_format
            )
        # The batches carry their own masks and labels; our loss reads them, the model never sees `labels`.
        args.remove_unused_columns = False
        self.method_config.configure_model(model)
        super().__init__(
            model=model,
            args=args,
            train_dataset=train_dataset,
            processing_class=processing_class,
            data_collator=data_collator or PaddingCollator(processing_class.pad_token_id),
            **kwargs,
        )
        # Losses are per-example means, so Trainer must divide by the accumulation steps itself.
        self.loss_is_scaled_for_ga = False
        self.retain_dataset = retain_dataset
        self._retain_stream = (
            RetainStream(len(retain_dataset), args.seed) if self.method_config.uses_retain else None
        )
        self._retain_cursor = 0
        if self.method_config.cached_reference_views:
            self.train_dataset = self._with_reference_logprobs(self.train_dataset)
        self._reference_model = (
            frozen_reference(self.model, self.args.device)
            if self.method_config.needs_reference_model
            else None
        )
        self._component_logs: dict[str, list[float]] = defaultdict(list)
        self._step_retain_loss: float | None = None
        self.safeguard_stop: dict[str, Any] | None = None
        self.add_callback(SafeguardStopCallback(self))

    def _with_reference_logprobs(self, dataset: Dataset) -> Dataset:
        """Add `<view>__ref_seq_logprob` columns: the reference model's sequence log-prob of each forget
        example, computed once here instead of by a reference forward pass every step."""
        model = self.accelerator.unwrap_model(self.model)
        was_training = model.training
        model.eval()
        batch_size = self.args.per_device_eval_batch_size
        values: dict[str, list[float]] = {view: [] for view in self.method_config.cached_reference_views}
        # Before training the model is its own reference (LoRA adapters are disabled to be exact).
        frozen = None if isinstance(model, PeftModel) else model
        with reference_model(model, frozen) as reference:
            for start in range(0, len(dataset), batch_size):
                rows = [dataset[i] for i in range(start, min(start + batch_size, len(dataset)))]
                batch = self._to_device(self.data_collator(rows))
                for view in values:
                    inputs = {
                        name: batch[view_column(view, name)]
                        for name in ("input_ids", "attention_mask", "labels")
                    }
                    logits = reference(
                        input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"]
                    ).logits
                    values[view].extend(sequence_logprob(logits, inputs["labels"]).float().tolist())
        model.train(was_training)
        for view, column in values.items():
            dataset = dataset.add_column(view_column(view, REFERENCE_LOGPROB), column)
        return dataset

    def _reference(self) -> AbstractContextManager[torch.nn.Module]:
        return reference_model(self.accelerator.unwrap_model(self.model), self._reference_model)

    def _next_retain_batch(self) -> dict[str, torch.Tensor]:
        size = self.args.retain_batch_size or self.args.per_device_train_batch_size
        positions = retain_positions(self._retain_cursor, self.args.world_size, self.args.process_index, size)
        self._retain_cursor += 1
        rows = [self.retain_dataset[self._retain_stream[position]] for position in positions]
        return self._to_device(self.data_collator(rows))

    def _to_device(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        # To the device Trainer puts the forget batch on, with dtypes kept. Trainer's private `_prepare_inputs` would
        # also cast float tensors to DeepSpeed's dtype under DeepSpeed; our only float columns, the cached reference
        # log-probs, are more accurate in float32, and the methods cast them where they use them.
        return send_to_device(batch, self.args.device)

    def compute_loss(
        self,
        model: torch.nn.Module,
        inputs: dict[str, torch.Tensor],
        return_outputs: bool = False,
        num_items_in_batch: torch.Tensor | int | None = None,
    ) -> torch.Tensor:
        """Run the method's loss on this step's forget batch and (if used) a retain batch."""
        batches = split_views(inputs, "forget")
        if self.method_config.uses_retain:
            batches["retain"] = self._next_retain_batch()
        reference = self._reference if self.method_config.needs_reference_model else None
        step = UnlearnStep(model, batches, reference=reference)
        loss, components = self.method.loss(step, self.method_config)
        for name, value in components.items():
            self._component_logs[name].append(value)
        self._step_retain_loss = next((v for k, v in components.items() if k.startswith("retain_")), None)
        if return_outputs:
            return loss, {"logits": step.logits("forget")}
        return loss

    def training_step(
        self,
        model: torch.nn.Module,
        inputs: dict[str, torch.Tensor],
        num_items_in_batch: torch.Tensor | int | None = None,
    ) -> torch.Tensor:
        """One forward/backward, then the safeguards: a non-finite loss or gradient drops this step's update
        (so the weights stay those of the last good step) and stops the run; so does a retain loss above
        `retain_loss_limit`."""
        loss = super().training_step(model, inputs, num_items_in_batch)
        if self.safeguard_stop is not None:
            return loss
        reason = None
        if self.args.stop_on_nonfinite and not self._gradients_finite(loss):
            reason = f"non-finite loss or gradient (loss {loss.item():.4g})"
            model.zero_grad(set_to_none=True)
        elif self.args.retain_loss_limit is not None and self._step_retain_loss is not None:
            retain = self.accelerator.reduce(torch.tensor(self._step_retain_loss, device=loss.device), "mean")
            if retain.item() > self.args.retain_loss_limit:
                reason = f"retain loss {retain.item():.4g} exceeded retain_loss_limit {self.args.retain_loss_limit}"
        if reason is not None:
            # SafeguardStopCallback ends the run at the end of this micro-step.
            self.safeguard_stop = {"reason": reason, "step": self.state.global_step}
            logger.warning(
                "Stopping unlearning at step %d: %s. The saved model is the one before this step.",
                self.state.global_step,
                reason,
            )
        return loss

    def _gradients_finite(self, loss: torch.Tensor) -> bool:
        # Gradients are already averaged across ranks here, so every rank reaches the same verdict.
        grads = [p.grad for p in self.model.parameters() if p.grad is not None]
        # The largest |entry| over all gradients: NaN or inf exactly when some entry is. The max-norm, unlike the
        # 2-norm, cannot overflow to inf on large but finite gradients.
        total = (
            torch.nn.utils.get_total_norm(grads, norm_type=math.inf, error_if_nonfinite=False).to(loss.device)
            if grads
            else torch.zeros((), device=loss.device)
        )
        finite = torch.isfinite(total) & torch.isfinite(loss.detach().float())
        return self.accelerator.reduce(finite.float(), "sum").item() == self.accelerator.num_processes

    def safeguard_report(self) -> dict[str, Any]:
        """The safeguard settings and whether (and why) they stopped the run, for run.json."""
        return {
            "stop_on_nonfinite": self.args.stop_on_nonfinite,
            "retain_loss_limit": self.args.retain_loss_limit,
            "stopped": self.safeguard_stop,
        }

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        """Add the mean of each loss component since the last log to Trainer's logs."""
        if self._component_logs and "loss" in logs:
            for name, values in self._component_logs.items():
                logs[name] = sum(values) / len(values)
            self._component_logs.clear()
        super().log(logs, start_time)
