"""SISA deletion (Bourtoule et al. 2021, arXiv 1912.03817): remove subjects from a trained SISA directory by
retraining only the shards that held them, from the checkpoint taken before their earliest slice, on the base,
data and training settings that sisa.json recorded (so a retrained shard is the one that training without the
subjects would have produced)."""

from __future__ import annotations

import logging
import os
import shutil
import time
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from datasets import Dataset
from peft import PeftModel
from transformers import PreTrainedModel, PreTrainedTokenizerBase, TrainingArguments

from llm_unlearn.data.formatting import tokenize_dataset
from llm_unlearn.data.loading import content_fingerprints
from llm_unlearn.data.schema import SUBJECT_FIELD, DataError, validate_dataset
from llm_unlearn.files import atomic_directory, write_json_atomic
from llm_unlearn.models import load_model_and_tokenizer
from llm_unlearn.sisa.plan import shard_slices
from llm_unlearn.sisa.record import (
    EXACT_GUARANTEE,
    SISA_FILE,
    base_model_kwargs,
    checkpoint_name,
    ensemble_sha256,
    read_sisa_record,
    shard_dir,
)
from llm_unlearn.sisa.train import (
    check_single_process,
    describe_shard,
    load_training_data,
    rebuild_training_args,
    stage_arguments,
    total_cost,
    train_shard,
)

logger = logging.getLogger(__name__)


def _utc_now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def _restore_interrupted_swap(directory: Path) -> None:
    """Put back a shard directory that a killed deletion had moved aside (`atomic_directory`'s `.<name>.old`)
    before moving the retrained one in."""
    moved_aside = directory.with_name(f".{directory.name}.old")
    if moved_aside.is_dir() and not directory.exists():
        os.replace(moved_aside, directory)


def _check_unchanged_data(
    record: Mapping[str, Any], slices: Sequence[Sequence[Sequence[int]]], fps: Sequence[str]
) -> None:
    """Raise DataError when the remaining subjects' examples differ from those each slice was trained on."""
    for shard, shard_rows in zip(record["shards"], slices, strict=True):
        for slice_index, (entry, rows) in enumerate(zip(shard["slices"], shard_rows, strict=True)):
            if sorted(fps[row] for row in rows) != sorted(entry["example_fingerprints"]):
                raise DataError(
                    f"the data {record['data']['dataset']!r} no longer holds the examples that shard "
                    f"{shard['index']} slice {slice_index} was trained on; a deletion retrains a shard on "
                    "the same data (only the deleted subjects' rows may be gone)."
                )


def _retrain_shard(
    base: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    tokenized: Dataset,
    slices: Sequence[Sequence[int]],
    first_slice: int,
    directory: Path,
    stage_args: TrainingArguments,
) -> tuple[PreTrainedModel, list[dict[str, float]]]:
    """Replace a shard's directory atomically by one with its checkpoints up to the one before `first_slice`
    copied and the later ones retrained on `slices`; return the base (adapter removed) and the retrained
    stages' costs."""
    with atomic_directory(directory, overwrite=True) as staging:
        for stage in range(-1, first_slice):
            shutil.copytree(directory / checkpoint_name(stage), staging / checkpoint_name(stage))
        model = PeftModel.from_pretrained(
            base, str(staging / checkpoint_name(first_slice - 1)), is_trainable=True
        )
        costs = train_shard(model, tokenizer, tokenized, slices, first_slice, staging, stage_args)
        base = model.unload()
    return base, costs


def delete(path: str | os.PathLike, subjects: Sequence[str]) -> dict[str, Any] | None:
    """Delete `subjects` from the SISA directory `path`: retrain each shard that held one of them from the
    checkpoint before the earliest such slice, without their examples, on the recorded base (at its recorded
    revision), swap the retrained shard in, and log the deletion in sisa.json (subjects, removed example
    fingerprints, retrained shards, cost against a full retrain, ensemble hashes before and after). Other
    shards' files are not touched. Returns the deletion's log entry, or None when every subject was already
    deleted (running a deletion again is safe)."""
    check_single_process()
    started, started_at = time.perf_counter(), _utc_now()
    root = Path(path).resolve()
    record = read_sisa_record(root)
    requested = sorted({str(subject) for subject in subjects})
    if not requested:
        raise ValueError("give at least one subject id to delete.")
    unknown = [s for s in requested if s not in record["subjects"] and s not in record["deleted_subjects"]]
    if unknown:
        known = sorted(record["subjects"])
        raise ValueError(
            f"unknown subject id(s) {unknown}: the SISA run in {str(root)!r} holds {len(known)} subject(s), "
            f"e.g. {', '.join(known[:5])}; deleted before: {record['deleted_subjects'] or 'none'}."
        )
    todo = [s for s in requested if s in record["subjects"]]
    if not todo:
        logger.info("subjects %s were already deleted from %s; nothing to do", requested, root)
        return None
    for shard in record["shards"]:
        _restore_interrupted_swap(shard_dir(root, shard["index"]))
    # Each shard that held a deleted subject restarts at the earliest slice that held one.
    restart: dict[int, int] = {}
    for subject in todo:
        shard, slice_index = record["subjects"][subject]["shard"], record["subjects"][subject]["slice"]
        restart[shard] = min(restart.get(shard, slice_index), slice_index)
    data = load_training_data(record["data"])
    data_subjects = list(data[SUBJECT_FIELD])
    fingerprints = content_fingerprints(data, validate_dataset(data, record["data"]["dataset"]))
    old_assignment = {s: (entry["shard"], entry["slice"]) for s, entry in record["subjects"].items()}
    num_shards, num_slices = record["num_shards"], record["num_slices"]
    _check_unchanged_data(
        record, shard_slices(old_assignment, data_subjects, num_shards, num_slices), fingerprints
    )
    assignment = {s: place for s, place in old_assignment.items() if s not in todo}
    slices = shard_slices(assignment, data_subjects, num_shards, num_slices)

    base, tokenizer = load_model_and_tokenizer(**base_model_kwargs(record), dtype=record["dtype"])
    tokenized, _ = tokenize_dataset(data, tokenizer, name="training data", **record["format_kwargs"])
    scratch = root / ".sisa-trainer"
    stage_args = stage_arguments(rebuild_training_args(record["training_args"]), scratch, record["stage_epochs"])
    last = checkpoint_name(num_slices - 1)
    ensemble_before = record["ensemble_sha256"]
    retrained = []
    for index, first_slice in sorted(restart.items()):
        old = record["shards"][index]
        directory = shard_dir(root, index)
        base, costs = _retrain_shard(
            base, tokenizer, tokenized, slices[index], first_slice, directory, stage_args
        )
        costs = [{"steps": p["steps"], "seconds": p["seconds"]} for p in old["slices"][:first_slice]] + costs
        new = describe_shard(index, slices[index], data_subjects, fingerprints, costs, directory)
        record["shards"][index] = new
        replaced = [checkpoint_name(stage) for stage in range(first_slice, num_slices)]
        retrained.append({
            "shard": index,
            "from_checkpoint": checkpoint_name(first_slice - 1),
            "retrained_slices": list(range(first_slice, num_slices)),
            "steps": sum(cost["steps"] for cost in costs[first_slice:]),
            "seconds": sum(cost["seconds"] for cost in costs[first_slice:]),
            "replaced_checkpoints": {name: old["checkpoints"][name] for name in replaced},
            "new_checkpoints": {name: new["checkpoints"][name] for name in replaced},
        })  # fmt: skip
    shutil.rmtree(scratch, ignore_errors=True)

    full = total_cost(record["shards"])
    steps = sum(entry["steps"] for entry in retrained)
    seconds = sum(entry["seconds"] for entry in retrained)
    entry = {
        "subjects": todo,
        "num_examples": sum(record["subjects"][s]["num_examples"] for s in todo),
        "example_fingerprints": {s: record["subjects"][s]["example_fingerprints"] for s in todo},
        "started": started_at,
        "finished": _utc_now(),
        "retrained": retrained,
        "steps": steps,
        "seconds": seconds,
        "wall_seconds": time.perf_counter() - started,
        "full_retrain": full,
        "cost_fraction": {
            "steps": steps / full["steps"] if full["steps"] else None,
            "seconds": seconds / full["seconds"] if full["seconds"] else None,
        },
        "ensemble_sha256_before": ensemble_before,
        "guarantee": EXACT_GUARANTEE,
    }
    for subject in todo:
        del record["subjects"][subject]
    record["deleted_subjects"] = sorted(record["deleted_subjects"] + todo)
    record["ensemble_sha256"] = ensemble_sha256(shard["checkpoints"][last] for shard in record["shards"])
    entry["ensemble_sha256_after"] = record["ensemble_sha256"]
    record["deletions"].append(entry)
    write_json_atomic(record, root / SISA_FILE)
    return entry
