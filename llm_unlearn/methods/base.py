"""The method interface: a method is a hyperparameter dataclass plus a loss over one training step.

A loss function takes an `UnlearnStep`, which runs the forward passes it asks for (each at most once) and
nothing else, so the trainer stays generic and a method pays only for what its definition needs.
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import textwrap
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from types import UnionType
from typing import Any, Union, get_args, get_origin, get_type_hints

import torch

from llm_unlearn.methods.layers import capture_layer_output
from llm_unlearn.registry import Registry

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
class MethodField:
    """One hyperparameter of a method as `method_args` takes it: name, annotated type, default and meaning."""

    name: str
    type: str
    default: Any
    help: str


@dataclass(frozen=True)
class UnlearnMethod:
    """A registered method: its name, hyperparameter dataclass and loss function."""

    name: str
    config_class: type[MethodConfig]
    loss: LossFn

    @property
    def summary(self) -> str:
        """What the method does, with its paper: the first paragraph of its config class's docstring."""
        return _first_paragraph(self.config_class.__doc__)

    def fields(self) -> list[MethodField]:
        """The method's hyperparameters: those it adds first, then those of its bases (gamma, alpha, ...)."""
        hints = get_type_hints(self.config_class)
        inherited = {
            f.name
            for base in self.config_class.__mro__[1:]
            if dataclasses.is_dataclass(base)
            for f in dataclasses.fields(base)
        }
        ordered = sorted(dataclasses.fields(self.config_class), key=lambda f: f.name in inherited)
        return [
            MethodField(f.name, _type_text(hints[f.name]), _default(f), f.metadata.get("help", ""))
            for f in ordered
        ]

    def make_config(self, kwargs: dict[str, Any] | None) -> MethodConfig:
        """Build the method's config from `method_args`, naming any key the method does not take and any value
        whose type does not match its field's annotation (an int is accepted for a float)."""
        kwargs = dict(kwargs or {})
        hints = get_type_hints(self.config_class)
        known = {f.name for f in dataclasses.fields(self.config_class)}
        unknown = sorted(set(kwargs) - known)
        if unknown:
            raise ValueError(
                f"method {self.name!r} does not take {unknown} in method_args; it takes {sorted(known)}."
            )
        for key, value in kwargs.items():
            if not _accepts(hints[key], value):
                raise ValueError(
                    f"method {self.name!r}: method_args.{key} must be {_expected(hints[key])}, got {value!r} "
                    f"({type(value).__name__})."
                )
        return self.config_class(**kwargs)


def _first_paragraph(doc: str | None) -> str:
    """The first paragraph of a docstring on one line."""
    return " ".join(inspect.cleandoc(doc or "").partition("\n\n")[0].split())


def _default(f: dataclasses.Field) -> Any:
    """A field's default value, made by its default factory where it has one."""
    return f.default if f.default is not dataclasses.MISSING else f.default_factory()


def _accepts(hint: Any, value: Any) -> bool:
    """Whether `value`, as YAML or JSON gives it, fits the field annotation `hint`."""
    origin, args = get_origin(hint), get_args(hint)
    if origin in (Union, UnionType):
        return any(_accepts(arg, value) for arg in args)
    if origin in (list, tuple):
        # YAML and JSON have only lists, so a list is taken for a tuple annotation and the reverse.
        return isinstance(value, list | tuple) and all(_accepts(args[0], item) for item in value)
    # bool is an int subclass: without this, `true` would pass as the number 1 and 1 as a flag.
    if isinstance(value, bool) != (hint is bool):
        return False
    if hint is float:
        return isinstance(value, int | float)
    # Annotations that are not classes (Any, Literal) are left to the config's own checks.
    return not isinstance(hint, type) or isinstance(value, hint)


def _type_text(hint: Any) -> str:
    """An annotation as written in source: `float`, `str | None`, `tuple[str, ...]`."""
    if get_origin(hint) in (Union, UnionType):
        return " | ".join(_type_text(arg) for arg in get_args(hint))
    if hint is type(None):
        return "None"
    return str(hint) if get_args(hint) else getattr(hint, "__name__", str(hint))


def _expected(hint: Any) -> str:
    """An annotation in words for an error message: `a float`, `an int`, `a str or None`."""
    options = get_args(hint) if get_origin(hint) in (Union, UnionType) else (hint,)
    texts = [_type_text(option) for option in options]
    return " or ".join(
        text if text == "None" else f"{'an' if text[0] in 'aeiou' else 'a'} {text}" for text in texts
    )


METHODS: Registry[UnlearnMethod] = Registry("unlearning method")


def register_method(name: str, config_class: type[MethodConfig]) -> Callable[[LossFn], LossFn]:
    """Decorator: register `loss` under `name` with its config dataclass."""

    # method_args may be empty, so every hyperparameter needs a default.
    required = [
        f.name
        for f in dataclasses.fields(config_class)
        if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
    ]
    if required:
        raise ValueError(
            f"method {name!r}: the config fields {required} need defaults, as method_args may be empty."
        )

    def decorator(loss: LossFn) -> LossFn:
        METHODS.register(name, UnlearnMethod(name=name, config_class=config_class, loss=loss))
        return loss

    return decorator


def get_method(name: str) -> UnlearnMethod:
    """Look up a registered method by name, in any case."""
    return METHODS.get(name.lower())


# Line width of `describe_method`'s output; a help column narrower than 40 characters widens it.
DESCRIBE_WIDTH = 110


def describe_method(name: str) -> str:
    """A readable description of method `name`: what it does, its loss, and each `method_args` key with its
    type, default and meaning."""
    method = get_method(name)
    lines = [textwrap.fill(f"{method.name}: {method.summary}", DESCRIBE_WIDTH, subsequent_indent="  ")]
    if method.loss.__doc__:
        loss = f"loss: {_first_paragraph(method.loss.__doc__)}"
        lines.append(textwrap.fill(loss, DESCRIBE_WIDTH, subsequent_indent="  "))
    fields = method.fields()
    if not fields:
        lines.append("method_args: none; the method has no hyperparameters besides the training arguments.")
        return "\n".join(lines)
    example = fields[0]
    lines.append(
        f"method_args (YAML `method_args: {{{example.name}: {json.dumps(example.default)}}}`, command line "
        f"`--method_args '{json.dumps({example.name: example.default})}'`):"
    )
    rows = [(f.name, f.type, f"(default {f.default!r})", f.help) for f in fields]
    # Name, type and default in aligned columns, then the help text wrapped beside them, as argparse lays out
    # options.
    widths = [max(len(row[column]) for row in rows) for column in range(3)]
    for *columns, help_text in rows:
        lead = "  " + "  ".join(text.ljust(width) for text, width in zip(columns, widths, strict=True)) + "  "
        width = max(DESCRIBE_WIDTH, len(lead) + 40)
        wrapped = textwrap.fill(help_text, width, initial_indent=lead, subsequent_indent=" " * len(lead))
        lines.append(wrapped or lead.rstrip())
    return "\n".join(lines)
