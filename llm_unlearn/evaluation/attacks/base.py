"""What every robustness attack shares (docs/attacks.md#how-attacks-run): the context it runs in, the registry of named
attacks with their default parameters, re-measuring splits against the main eval's baseline on the same items,
and putting the model back exactly as it was."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from datasets import Dataset
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from llm_unlearn.evaluation.aggregate import summarize_with_ci
from llm_unlearn.registry import Registry

# Re-measures the given splits with the suite's metrics; the same shape as `AttackContext.baseline`.
Evaluate = Callable[[PreTrainedModel, Mapping[str, Dataset]], dict[str, dict]]


@dataclass
class AttackContext:
    """What an attack may use: the evaluated model and QA splits, the main eval's result per split (`baseline`:
    `{"aggregates": ..., "items": [{"index": i, "<metric>": v, ...}]}`), the suite's `evaluate`, and the prompt
    formatting the eval used."""

    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    splits: Mapping[str, Dataset]
    baseline: Mapping[str, dict]
    evaluate: Evaluate
    prompt_template: str = "auto"
    system_prompt: str | None = None
    date_string: str | None = None
    max_length: int = 512
    forget_split: str = "forget"
    retain_split: str | None = "retain"
    seed: int = 0

    def split(self, name: str) -> Dataset:
        """The evaluated split `name`, or ValueError listing the evaluated ones."""
        if name not in self.splits:
            raise ValueError(
                f"the attack needs the split {name!r}; the evaluated splits are {sorted(self.splits)}."
            )
        return self.splits[name]

    @property
    def pad_token_id(self) -> int:
        """The tokenizer's pad id, or its eos id when it has no pad token."""
        pad = self.tokenizer.pad_token_id
        return pad if pad is not None else self.tokenizer.eos_token_id


@dataclass(frozen=True)
class Attack:
    """A registered attack: `fn(context, **params)` returns its result; `params` are the defaults."""

    name: str
    fn: Callable[..., dict]
    params: dict


ATTACKS: Registry[Attack] = Registry("attack")


def register_attack(name: str, **default_params: Any) -> Callable[[Callable[..., dict]], Callable[..., dict]]:
    """Register `fn(context, **params)` as attack `name` with these default parameters; a suite may override them.
    Stacking the decorator registers one function under several names (e.g. one per bit width)."""

    def decorate(fn: Callable[..., dict]) -> Callable[..., dict]:
        ATTACKS.register(name, Attack(name=name, fn=fn, params=dict(default_params)))
        return fn

    return decorate


def get_attack(name: str) -> Attack:
    """Return the registered attack `name`, or raise ValueError listing the known ones."""
    return ATTACKS.get(name)


def _check_override(attack: Attack, param: str, value: Any) -> None:
    default = attack.params[param]
    # None stands for "not set" (e.g. no quantization groups) and may replace, or be replaced by, any value.
    if default is None or value is None:
        return
    expected: tuple[type, ...] = (int, float) if isinstance(default, float) else (type(default),)
    # YAML reads 1e-5 as a string, and bool is an int subclass: both would slip through silently.
    if isinstance(value, bool) != isinstance(default, bool) or not isinstance(value, expected):
        raise ValueError(
            f"parameter {param!r} of attack {attack.name!r} must be {type(default).__name__} like its default "
            f"{default!r}, got {value!r} ({type(value).__name__})."
        )


def attack_params(name: str, **overrides: Any) -> dict:
    """The parameters attack `name` runs with: its defaults updated by `overrides`, or ValueError naming an
    unknown attack, an unknown parameter or a value of the wrong type (a suite can check its config with this
    before any model runs)."""
    attack = get_attack(name)
    for param, value in overrides.items():
        if param not in attack.params:
            raise ValueError(
                f"attack {name!r} has no parameter {param!r}; its parameters are {sorted(attack.params)}."
            )
        _check_override(attack, param, value)
    return {**attack.params, **overrides}


def run_attack(name: str, context: AttackContext, **overrides: Any) -> dict:
    """Run attack `name` on `context` with its default parameters updated by `overrides`; return
    `{"description", "params", "splits", "baseline", ...}` with aggregates per split (docs/attacks.md#how-attacks-run)."""
    params = attack_params(name, **overrides)
    result = get_attack(name).fn(context, **params)
    return {"description": result.pop("description"), "params": params, **result}


def summarize_items(items: Sequence[Mapping[str, Any]], metrics: Sequence[str]) -> dict[str, dict]:
    """Mean, n and bootstrap interval of each metric over `items`, skipping items without a value; a metric no
    item carries (a split-level aggregate such as the truth-ratio statistic) is left out."""
    return {
        metric: summarize_with_ci(item[metric] for item in items if item.get(metric) is not None)
        for metric in metrics
        if any(metric in item for item in items)
    }


def baseline_items(context: AttackContext, split: str, indices: Sequence[int]) -> list[Mapping[str, Any]]:
    """The main eval's items of `split` at `indices` (positions in the evaluated split), in that order."""
    if split not in context.baseline:
        raise ValueError(
            f"the baseline eval has no split {split!r} (it has {sorted(context.baseline)}); "
            f"the attack compares with the main eval of the same items."
        )
    by_index = {item["index"]: item for item in context.baseline[split]["items"]}
    missing = [index for index in indices if index not in by_index]
    if missing:
        raise ValueError(f"the baseline eval of split {split!r} has no item with index {missing[0]}.")
    return [by_index[index] for index in indices]


@dataclass(frozen=True)
class Remeasure:
    """A split to re-measure under attack: its data, and the evaluated split and item indices it stands for."""

    dataset: Dataset
    source: str
    indices: list[int]


def measure(context: AttackContext, remeasures: Mapping[str, Remeasure]) -> dict[str, dict]:
    """Evaluate `context.model` on each re-measured split and return `{"splits": ..., "baseline": ...}`: the
    aggregates now and those of the main eval on the same items, per split and metric."""
    results = context.evaluate(context.model, {name: entry.dataset for name, entry in remeasures.items()})
    splits, baseline = {}, {}
    for name, entry in remeasures.items():
        metrics = list(results[name]["aggregates"])
        splits[name] = summarize_items(results[name]["items"], metrics)
        baseline[name] = summarize_items(baseline_items(context, entry.source, entry.indices), metrics)
    return {"splits": splits, "baseline": baseline}


def whole_split(context: AttackContext, name: str) -> Remeasure:
    """Re-measure every item of the evaluated split `name`."""
    dataset = context.split(name)
    return Remeasure(dataset=dataset, source=name, indices=list(range(len(dataset))))


def retain_remeasure(context: AttackContext) -> dict[str, Remeasure]:
    """The whole retain split, when the context names one that was evaluated; otherwise nothing."""
    name = context.retain_split
    return {name: whole_split(context, name)} if name is not None and name in context.splits else {}


@contextmanager
def restored_afterwards(
    model: PreTrainedModel, parameters: Mapping[str, torch.nn.Parameter]
) -> Iterator[None]:
    """Snapshot `parameters` (to CPU, so no accelerator memory is held), run the block, then put back bit for
    bit everything the block may change on them (values, gradients, requires_grad) and the training flag."""
    was_training = model.training
    saved = {
        name: (param.detach().to("cpu", copy=True), param.grad, param.requires_grad)
        for name, param in parameters.items()
    }
    try:
        yield
    finally:
        with torch.no_grad():
            for name, param in parameters.items():
                value, grad, requires_grad = saved[name]
                param.copy_(value)
                param.grad = grad
                param.requires_grad_(requires_grad)
        model.train(was_training)
