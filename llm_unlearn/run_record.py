"""`run.json`: what a run did (config, method, data fingerprints, seed, library versions, wall time), and the
final move of a finished run from its staging directory into place."""

from __future__ import annotations

import contextlib
import dataclasses
import importlib.metadata
import json
import os
import platform
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from accelerate import PartialState
from datasets import Dataset
from transformers import Trainer

from llm_unlearn.data.loading import fingerprint
from llm_unlearn.data.selection import subject_ids
from llm_unlearn.files import check_output_dir, write_json_atomic
from llm_unlearn.manifest import artifact_manifest
from llm_unlearn.models import ADAPTER_CONFIG, hub_commit

LIBRARIES = ("llm-unlearn", "torch", "transformers", "peft", "accelerate", "trl", "datasets")


def library_versions() -> dict[str, str]:
    """Installed versions of the libraries a result depends on."""
    versions = {"python": platform.python_version()}
    for name in LIBRARIES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def describe_data(dataset: Dataset | None) -> dict[str, Any] | None:
    """Counts, subjects and a content fingerprint of a data set; never its text."""
    if dataset is None:
        return None
    subjects = subject_ids(dataset) if "subject_id" in dataset.column_names else []
    return {"num_examples": len(dataset), "fingerprint": fingerprint(dataset), "subject_ids": subjects}


def jsonable(obj: Any) -> Any:
    """A JSON-safe copy of a config: dataclasses to dicts, unknown objects to strings."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        obj = obj.to_dict() if hasattr(obj, "to_dict") else dataclasses.asdict(obj)
    if isinstance(obj, dict):
        return {str(key): jsonable(value) for key, value in obj.items()}
    if isinstance(obj, list | tuple | set):
        return [jsonable(value) for value in obj]
    if obj is None or isinstance(obj, bool | int | float | str):
        return obj
    return str(obj)


def run_inputs(model_name_or_path: str, script_args: Any) -> list[str]:
    """What a run read, in order and once each: the model (and, for an adapter directory, the base it names),
    then every data source that is a local file or directory (`builtin` is generated, not read)."""
    inputs = [model_name_or_path]
    adapter_dir = Path(model_name_or_path).expanduser()
    if (adapter_dir / ADAPTER_CONFIG).is_file():
        base = json.loads((adapter_dir / ADAPTER_CONFIG).read_text()).get("base_model_name_or_path")
        if base:
            # The loader resolves a relative base against the adapter directory; so does this record.
            relative = adapter_dir / base
            inputs.append(
                str(relative.resolve()) if not Path(base).is_absolute() and relative.exists() else base
            )
    for name in ("dataset", "forget_data", "holdout_data"):
        source = getattr(script_args, name, None)
        if source and Path(source).expanduser().exists():
            inputs.append(source)
    return list(dict.fromkeys(inputs))


def input_revisions(
    inputs: list[str], model_name_or_path: str, revision: str | None
) -> dict[str, str | None]:
    """The Hub commit of each input that is a Hub id (None for the others): the model at `revision`, and a base
    that an adapter names at `main`, which is what the loader loads it at."""
    return {name: hub_commit(name, revision if name == model_name_or_path else None) for name in inputs}


def staging_dir(output_dir: str | os.PathLike) -> Path:
    """The directory a run writes into before it is complete (same name on every rank)."""
    output_dir = Path(output_dir).resolve()
    return output_dir.with_name(f".{output_dir.name}.partial")


def prepare_output(output_dir: str | os.PathLike, overwrite: bool) -> Path:
    """Check the output directory and return a clean staging directory beside it."""
    check_output_dir(output_dir, overwrite)
    staging = staging_dir(output_dir)
    state = PartialState()
    if state.is_main_process:
        # Left by an interrupted run of ours; its partial checkpoints must not leak into this run.
        shutil.rmtree(staging, ignore_errors=True)
    state.wait_for_everyone()
    return staging


@contextlib.contextmanager
def staged_output(output_dir: str | os.PathLike, overwrite: bool) -> Iterator[Path]:
    """`prepare_output`'s staging directory for the block, removed when the block raises: a run that fails
    leaves neither a partial output nor an empty `.NAME.partial` behind (the output is moved into place by
    `finish_run`)."""
    staging = prepare_output(output_dir, overwrite)
    try:
        yield staging
    except BaseException:
        if PartialState().is_main_process:
            shutil.rmtree(staging, ignore_errors=True)
        raise


def finish_run(
    trainer: Trainer,
    output_dir: str | os.PathLike,
    record: dict[str, Any],
    *,
    script_args: Any,
    model_args: Any,
    train_output: Any,
    started: float,
) -> Path:
    """Save model (or adapter) and tokenizer, write run.json (the recipe's `record` plus what every run
    records, with `artifacts`: the manifest of what it read and wrote), and move the staging directory into
    place."""
    output_dir = Path(output_dir).resolve()
    staging = Path(trainer.args.output_dir)
    trainer.save_model(str(staging))
    trainer.accelerator.wait_for_everyone()
    if trainer.accelerator.is_main_process:
        for checkpoint in staging.glob("checkpoint-*"):
            shutil.rmtree(checkpoint)
        inputs = run_inputs(model_args.model_name_or_path, script_args)
        revisions = input_revisions(inputs, model_args.model_name_or_path, model_args.model_revision)
        record = {
            **record,
            "model": model_args.model_name_or_path,
            "mode": "lora" if model_args.use_peft else "full",
            "seed": trainer.args.seed,
            "num_processes": trainer.args.world_size,
            "script_args": script_args,
            "training_args": trainer.args,
            "model_args": model_args,
            "train_metrics": train_output.metrics,
            "wall_time_s": time.perf_counter() - started,
            "versions": library_versions(),
            "log_history": trainer.state.log_history,
            # After the save and the checkpoint clean-up, so `wrote` is exactly what lands in output_dir.
            "artifacts": artifact_manifest(inputs, staging, revisions=revisions),
        }
        write_json_atomic(jsonable(record), staging / "run.json")
        if output_dir.exists():
            shutil.rmtree(output_dir)
        os.replace(staging, output_dir)
    trainer.accelerator.wait_for_everyone()
    return output_dir
