"""The method interface: a method is a hyperparameter dataclass plus a loss over one training step.

A loss function takes an `UnlearnStep`, which runs the forward passes it asks for (each at most once) and
nothing else, so the trainer stays generic and a method pays only for what its definition needs.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass, fields
from typing import Any

import torch

from llm_unlearn.methods.layers import capture_layer_output

LossFn = Callable[["UnlearnStep", Any], tuple[torch.Tensor, dict[str, float]]]


@dataclass
class MethodConfig:
    """Hyperparameters shared by all methods; a method's own dataclass extends this."""

    @property
    def uses_retain(self) -> bool:
        """Whether the loss reads a retain batch."""
        return False

    @property
    def needs_reference_model(self) -> bool:
        """Whether the loss needs per-step outputs of the frozen reference model."""
        return False

    @property
    def cached_reference_views(self) -> tuple[str, ...]:
        """Forget views ("" is the true answer) whose reference sequence log-probs the trainer computes once
        before training and puts in the batch as `ref_seq_logprob` (NPO, DPO: constant during training)."""
        return ()

    def forget_views(self) -> dict[str, Callable[[dict[str, Any]], str]]:
        """Extra answers per forget example, by view name (e.g. DPO's preferred answer); none by default."""
        return {}

    def configure_model(self, model: torch.nn.Module) -> None:
        """Adjust the model before training (e.g. choose which parameters train); most methods need nothing."""


class UnlearnStep:
    """Lazily computed, cached model outputs for one step's forget and retain batches.

    `reference()` is a context manager that yields the frozen reference model under `torch.no_grad()` (in
    LoRA mode, the trained model with its adapters disabled).
    """

    def __init__(
        self,
        model: torch.nn.Module,
        batches: dict[str, dict[str, torch.Tensor]],
        reference: Callable[[], AbstractContextManager[torch.nn.Module]] | None = None,
    ) -> None:
        self.model = model
        self.batches = batches
        self.reference = reference
        self._logits: dict[str, torch.Tensor] = {}
        self._reference_logits: dict[str, torch.Tensor] = {}
        self._activations: dict[tuple[str, str], torch.Tensor] = {}
        self._reference_activations: dict[tuple[str, str], torch.Tensor] = {}

    def batch(self, split: str) -> dict[str, torch.Tensor]:
        if split not in self.batches:
            raise KeyError(f"this step has no {split!r} batch; it has {sorted(self.batches)}.")
        return self.batches[split]

    def labels(self, split: str) -> torch.Tensor:
        return self.batch(split)["labels"]

    def logits(self, split: str) -> torch.Tensor:
        """Logits of the trained model on `split` (with gradient)."""
        if split not in self._logits:
            batch = self.batch(split)
            outputs = self.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
            self._logits[split] = outputs.logits
        return self._logits[split]

    def reference_logits(self, split: str) -> torch.Tensor:
        """Logits of the frozen reference model on `split` (no gradient)."""
        if self.reference is None:
            raise RuntimeError(
                "this method asked for reference outputs but the trainer has no reference model."
            )
        if split not in self._reference_logits:
            batch = self.batch(split)
            with self.reference() as reference:
                outputs = reference(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
            self._reference_logits[split] = outputs.logits
        return self._reference_logits[split]

    def activations(self, split: str, layer_path: str) -> torch.Tensor:
        """Output of the block at `layer_path` (see `layers.py`) in the trained model on `split` (with gradient);
        the forward pass stops after that block."""
        key = (split, layer_path)
        if key not in self._activations:
            self._activations[key] = capture_layer_output(self.model, layer_path, self.batch(split))
        return self._activations[key]

    def reference_activations(self, split: str, layer_path: str) -> torch.Tensor:
        """Output of the block at `layer_path` in the frozen reference model on `split` (no gradient)."""
        if self.reference is None:
            raise RuntimeError(
                "this method asked for reference outputs but the trainer has no reference model."
            )
        key = (split, layer_path)
        if key not in self._reference_activations:
            with self.reference() as reference:
                self._reference_activations[key] = capture_layer_output(
                    reference, layer_path, self.batch(split)
                )
        return self._reference_activations[key]


@dataclass(frozen=True)
class UnlearnMethod:
    """A registered method: its name, hyperparameter dataclass and loss function."""

    name: str
    config_class: type[MethodConfig]
    loss: LossFn

    def make_config(self, kwargs: dict[str, Any] | None) -> MethodConfig:
        """Build the method's config from `method_args`, naming any key the method does not take."""
        kwargs = dict(kwargs or {})
        known = {f.name for f in fields(self.config_class)}
        unknown = sorted(set(kwargs) - known)
        if unknown:
            raise ValueError(
                f"method {self.name!r} does not take {unknown} in method_args; it takes {sorted(known)}."
            )
        return self.config_class(**kwargs)


METHODS: dict[str, UnlearnMethod] = {}


def register_method(name: str, config_class: type[MethodConfig]) -> Callable[[LossFn], LossFn]:
    """Decorator: register `loss` under `name` with its config dataclass."""

    def decorator(loss: LossFn) -> LossFn:
        if name in METHODS:
            raise ValueError(f"method {name!r} is already registered.")
        METHODS[name] = UnlearnMethod(name=name, config_class=config_class, loss=loss)
        return loss

    return decorator


def get_method(name: str) -> UnlearnMethod:
    """Look up a registered method by name."""
    key = name.lower()
    if key not in METHODS:
        raise ValueError(f"unknown unlearning method {name!r}; known methods: {sorted(METHODS)}.")
    return METHODS[key]
