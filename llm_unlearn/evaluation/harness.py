"""Standard benchmarks through lm-evaluation-harness (`lm_eval`, the optional `harness` extra): a suite's
`lm_eval_tasks` (MMLU, WMDP or any lm-eval task, including custom task YAMLs under `include_path`) run on the
model already loaded for the evaluation, so a merged adapter or an unlearned checkpoint is measured exactly as the
suite's own splits measure it, and the results become eval.json's `harness` section.

`lm_eval` is imported only when tasks are indexed or run, so the base install never needs it; `check_installed`
says which extra to install before any model loads."""

from __future__ import annotations

import contextlib
import difflib
import importlib.metadata
import importlib.util
import math
import random
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from packaging.version import Version
from transformers import PreTrainedModel, PreTrainedTokenizerBase

if TYPE_CHECKING:
    from lm_eval.tasks import TaskManager

INSTALL_HINT = "pip install 'llm-unlearn[harness]'"
# The lower bound of pyproject.toml's `harness` extra: lm-eval 0.4.9 imports transformers'
# AutoModelForVision2Seq, which transformers 5 removed.
MINIMUM_LM_EVAL = "0.4.10"
ARG_KEYS = ("num_fewshot", "limit", "batch_size", "include_path", "include_defaults")


# A ValueError, so the command line reports it as bad input (exit code 2, the message alone).
class HarnessUnavailableError(ValueError):
    """lm-evaluation-harness is not installed, or too old: the message names the extra to install."""


def check_installed() -> None:
    """Raise HarnessUnavailableError, naming the `harness` extra, unless a usable lm_eval is installed."""
    if importlib.util.find_spec("lm_eval") is None:
        raise HarnessUnavailableError(
            f"the suite names lm_eval_tasks, which run through lm-evaluation-harness, and it is not installed: "
            f"{INSTALL_HINT}."
        )
    installed = importlib.metadata.version("lm_eval")
    if Version(installed) < Version(MINIMUM_LM_EVAL):
        raise HarnessUnavailableError(
            f"lm-eval {installed} is installed; lm_eval_tasks need lm-eval>={MINIMUM_LM_EVAL}: {INSTALL_HINT}."
        )


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


@dataclass(frozen=True)
class HarnessConfig:
    """The lm-eval tasks a suite runs and lm-eval's settings for them (`lm_eval_args`)."""

    tasks: tuple[str, ...]
    num_fewshot: int | None = None  # None: each task's own default
    limit: int | float | None = None  # at most this many items per task; a float below 1 is a fraction
    batch_size: int | str = 16  # or "auto" (lm-eval finds the largest that fits)
    include_path: tuple[str, ...] = ()  # directories or files of custom task YAMLs
    include_defaults: bool = True  # False: index only include_path, not lm-eval's built-in tasks

    @classmethod
    def from_args(cls, tasks: Sequence[str], args: Mapping[str, Any], batch_size: int = 16) -> HarnessConfig:
        """The config of `lm_eval_tasks` and `lm_eval_args` (the suite's `batch_size` unless `args` sets one),
        checked; ValueError names the first bad entry."""
        unknown = sorted(set(args) - set(ARG_KEYS))
        if unknown:
            raise ValueError(f"lm_eval_args has unknown keys {unknown}; accepted: {list(ARG_KEYS)}.")
        if isinstance(tasks, str) or not all(isinstance(task, str) and task.strip() for task in tasks):
            raise ValueError(f"lm_eval_tasks must be a list of lm-eval task names, got {tasks!r}.")
        if len(set(tasks)) != len(tasks):
            raise ValueError(f"lm_eval_tasks names a task twice: {list(tasks)}.")
        num_fewshot = args.get("num_fewshot")
        if num_fewshot is not None and not (_is_int(num_fewshot) and num_fewshot >= 0):
            raise ValueError(f"lm_eval_args.num_fewshot must be an integer >= 0, got {num_fewshot!r}.")
        limit = args.get("limit")
        if limit is not None and not (
            (_is_int(limit) and limit >= 1) or (isinstance(limit, float) and 0 < limit < 1)
        ):
            raise ValueError(
                f"lm_eval_args.limit must be a number of items (an integer >= 1) or a fraction (0 < limit < 1), "
                f"got {limit!r}."
            )
        size = args.get("batch_size", batch_size)
        if not ((_is_int(size) and size >= 1) or (isinstance(size, str) and size.startswith("auto"))):
            raise ValueError(f"lm_eval_args.batch_size must be an integer >= 1 or 'auto', got {size!r}.")
        paths = args.get("include_path") or ()
        paths = (paths,) if isinstance(paths, str) else tuple(paths)
        for path in paths:
            if not isinstance(path, str) or not Path(path).exists():
                raise ValueError(
                    f"lm_eval_args.include_path {path!r} does not exist; give the directory (or YAML file) of "
                    f"the custom tasks."
                )
        include_defaults = args.get("include_defaults", True)
        if not isinstance(include_defaults, bool):
            raise ValueError(
                f"lm_eval_args.include_defaults must be true or false, got {include_defaults!r}."
            )
        if not include_defaults and not paths:
            raise ValueError(
                "lm_eval_args.include_defaults is false, so include_path must name the tasks' YAMLs."
            )
        return cls(tuple(tasks), num_fewshot, limit, size, paths, include_defaults)


def task_manager(config: HarnessConfig) -> TaskManager:
    """lm-eval's index of the tasks `config` can name, after checking that every one of `config.tasks` is in it
    (or is a task YAML file); ValueError names an unknown task and the closest known names."""
    check_installed()
    from lm_eval.tasks import TaskManager

    manager = TaskManager(
        include_path=list(config.include_path) or None, include_defaults=config.include_defaults
    )
    known = set(manager.all_tasks)
    for task in config.tasks:
        if task not in known and not (task.endswith((".yaml", ".yml")) and Path(task).is_file()):
            sources = []
            if config.include_defaults:
                sources.append("lm-eval's tasks")
            if config.include_path:
                sources.append("the tasks of include_path")
            close = difflib.get_close_matches(task, known, n=5)
            hint = f"; closest: {close}" if close else ""
            raise ValueError(
                f"lm_eval_tasks names {task!r}, which is not among {' or '.join(sources)}{hint}."
            )
    return manager


@contextlib.contextmanager
def _random_state_kept(device: torch.device) -> Iterator[None]:
    """Restore Python's, NumPy's and torch's global random states on exit: lm-eval seeds all three itself (for
    results that match its own command line), and the caller's random streams should not depend on whether the
    suite ran benchmarks."""
    python_state, numpy_state = random.getstate(), np.random.get_state()
    devices = [device.index or 0] if device.type == "cuda" else []
    try:
        with torch.random.fork_rng(devices=devices):
            yield
    finally:
        random.setstate(python_state)
        np.random.set_state(numpy_state)


def _number(value: Any) -> float | None:
    """`value` as a float when it is a finite number; lm-eval writes 'N/A' for a stderr it did not compute."""
    if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
        return float(value)
    return None


def _item_counts(output: Mapping[str, Any]) -> dict[str, int]:
    """The number of items each task and group was scored on: a task's effective sample count, a group's the sum
    of its subtasks' (lm-eval's `n-samples` has tasks only)."""
    counts = {task: entry["effective"] for task, entry in output.get("n-samples", {}).items()}
    groups = output.get("group_subtasks", {})

    def count(name: str, seen: frozenset[str]) -> int:
        if name in counts or name not in groups or name in seen:
            return counts.get(name, 0)
        return sum(count(child, seen | {name}) for child in groups[name])

    return {name: count(name, frozenset()) for name in [*counts, *groups]}


def harness_section(output: Mapping[str, Any], config: HarnessConfig) -> dict[str, Any]:
    """eval.json's `harness` section from `lm_eval.simple_evaluate`'s output: per task (and group), each metric's
    `value`, `stderr` and item count `n`; a metric of a filter other than lm-eval's default keeps lm-eval's
    `metric,filter` name. The tasks the suite named come first, in its order."""
    counts = _item_counts(output)
    tasks: dict[str, dict[str, dict[str, Any]]] = {}
    results = output["results"]
    for task in [*(t for t in config.tasks if t in results), *(t for t in results if t not in config.tasks)]:
        metrics = {}
        for key, value in results[task].items():
            metric, comma, kept = key.partition(",")
            if not comma or metric.endswith("_stderr"):
                continue  # alias, name, sample counts; a stderr goes with its metric
            metrics[metric if kept == "none" else key] = {
                "value": _number(value),
                "stderr": _number(results[task].get(f"{metric}_stderr,{kept}")),
                "n": counts.get(task),
            }
        tasks[task] = metrics
    return {
        "lm_eval_version": importlib.metadata.version("lm_eval"),
        "requested": list(config.tasks),
        "args": {key: value for key, value in asdict(config).items() if key != "tasks"},
        "n_shot": dict(output.get("n-shot", {})),
        "tasks": tasks,
    }


def run_harness(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    config: HarnessConfig,
    manager: TaskManager | None = None,
) -> dict[str, Any] | None:
    """Run `config`'s tasks on `model` as it is loaded (lm-eval's HFLM around it) and return eval.json's `harness`
    section; `manager` is `task_manager(config)` when already built. None on a process other than lm-eval's
    main one (under torchrun, each process runs every task on its own copy of the model)."""
    manager = manager or task_manager(config)
    import lm_eval
    from lm_eval.models.huggingface import HFLM

    was_training = model.training  # HFLM puts the model in eval mode
    try:
        with _random_state_kept(model.device):
            lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=config.batch_size)
            output = lm_eval.simple_evaluate(
                model=lm,
                tasks=list(config.tasks),
                num_fewshot=config.num_fewshot,
                limit=config.limit,
                task_manager=manager,
                log_samples=False,
            )
    finally:
        model.train(was_training)
    return None if output is None else harness_section(output, config)
