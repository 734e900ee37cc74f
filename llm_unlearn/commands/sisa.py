"""Train a SISA ensemble of LoRA adapters (k shards of subjects, each trained slice by slice with a checkpoint
after every slice), or delete subjects from one: only their shards are retrained, from the checkpoint before
their slice (Bourtoule et al. 2021, arXiv 1912.03817; REFERENCE.md section 5).

    llm-unlearn sisa --config configs/builtin/sisa.yaml --output_dir outputs/builtin/sisa
    llm-unlearn sisa --output_dir outputs/builtin/sisa --delete_subjects person-0003

A deletion uses the data, model and training settings recorded in sisa.json (a shard is retrained exactly as
it was trained), so it needs only the directory and the subject ids. Each stage starts a fresh optimizer from
the previous checkpoint's adapter weights, so a retrained shard is the shard that training without the deleted
subjects would have produced.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import logging
import os
import shutil
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import transformers
from accelerate import PartialState
from datasets import Dataset
from peft import LoraConfig, PeftModel, get_peft_model
from transformers import PreTrainedModel, PreTrainedTokenizerBase, Trainer, TrainingArguments, set_seed
from trl import TrlParser, get_peft_config

from llm_unlearn.data.arguments import DataArguments
from llm_unlearn.data.formatting import PaddingCollator, tokenize_dataset
from llm_unlearn.data.loading import content_fingerprints, fingerprint, load_records
from llm_unlearn.data.schema import SUBJECT_FIELD, DataError, validate_dataset
from llm_unlearn.deletion.report import EXACT_GUARANTEE
from llm_unlearn.files import atomic_directory, write_json_atomic
from llm_unlearn.manifest import artifact_manifest
from llm_unlearn.models import ModelArguments, load_model_and_tokenizer, name_adapter_base
from llm_unlearn.run_record import (
    describe_data,
    input_revisions,
    jsonable,
    library_versions,
    prepare_output,
    run_inputs,
)
from llm_unlearn.sisa import (
    SISA_FILE,
    SISA_FORMAT,
    adapter_sha256,
    checkpoint_name,
    ensemble_sha256,
    plan_shards,
    read_sisa_record,
    shard_dir,
)

logger = logging.getLogger(__name__)

# Options of DataArguments that choose forget, retain or holdout sets, which SISA training has no use for.
SELECTORS = ("forget_subjects", "retain_subjects", "forget_data", "holdout_subjects", "holdout_data")


@dataclass
class SisaScriptArguments(DataArguments):
    """Data options, the number of shards and slices, and the subjects to delete from an existing SISA run."""

    num_shards: int = field(default=4, metadata={"help": "k: shards, one LoRA adapter each."})
    num_slices: int = field(
        default=2, metadata={"help": "r: slices per shard, with a checkpoint after training on each."}
    )
    delete_subjects: list[str] | None = field(
        default=None,
        metadata={
            "help": "Delete these subject ids from the SISA run in output_dir (retrains their shards)."
        },
    )
    overwrite: bool = field(default=False, metadata={"help": "Replace an existing output directory."})

    def __post_init__(self) -> None:
        given = [name for name in SELECTORS if getattr(self, name) is not None]
        if given:
            raise ValueError(
                f"sisa trains on every row of the dataset, so {given} do not apply; delete subjects after "
                "training with --delete_subjects, and give evaluation data to the eval suite."
            )
        if self.num_shards < 1 or self.num_slices < 1:
            raise ValueError(
                f"num_shards and num_slices must be at least 1, got {self.num_shards} and {self.num_slices}."
            )
        if self.delete_subjects is not None:
            self.delete_subjects = [str(subject) for subject in self.delete_subjects]

    def data_record(self) -> dict[str, Any]:
        """Where the training data comes from, as sisa.json records it (a local file by absolute path)."""
        source = Path(self.dataset).expanduser()
        dataset = str(source.resolve()) if source.exists() else self.dataset
        return {
            "dataset": dataset,
            "dataset_config": self.dataset_config,
            "dataset_split": self.dataset_split,
        }


def load_training_data(data: Mapping[str, Any]) -> Dataset:
    """Load the data a sisa.json `data` entry names; every row needs a subject id, the unit of sharding."""
    dataset = load_records(data["dataset"], config=data["dataset_config"], split=data["dataset_split"])
    if SUBJECT_FIELD not in dataset.column_names:
        raise DataError(
            f"{data['dataset']}: SISA puts whole subjects into shards, but the data has no {SUBJECT_FIELD!r} "
            f"column (it has {dataset.column_names})."
        )
    missing = [row for row, subject in enumerate(dataset[SUBJECT_FIELD]) if subject is None]
    if missing:
        raise DataError(
            f"{data['dataset']}: {len(missing)} row(s) have no {SUBJECT_FIELD}, e.g. row {missing[0]}; SISA "
            "puts whole subjects into shards, so give every row a subject id (a row may be a subject of its "
            "own)."
        )
    return dataset


def _utc_now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def _stage_arguments(training_args: TrainingArguments, scratch: Path, epochs: float) -> TrainingArguments:
    # Each stage is its own Trainer run: its own epochs, and nothing saved by the Trainer (the recipe saves
    # the adapter itself).
    return dataclasses.replace(
        training_args, output_dir=str(scratch), num_train_epochs=epochs, save_strategy="no"
    )


def train_shard(
    model: PeftModel,
    tokenizer: PreTrainedTokenizerBase,
    tokenized: Dataset,
    slices: Sequence[Sequence[int]],
    first_slice: int,
    directory: Path,
    stage_args: TrainingArguments,
) -> list[dict[str, float]]:
    """Train stages `first_slice`, ..., r-1 of one shard (stage j: the rows of slices 0..j, a fresh optimizer
    from the adapter as it is) and save the adapter after each as `directory/slice-<j>`; return each stage's
    optimizer steps and seconds."""
    costs = []
    for stage in range(first_slice, len(slices)):
        started = time.perf_counter()
        rows = [row for part in slices[: stage + 1] for row in part]
        steps = 0
        # Stage 0 of a shard whose first slice lost all its subjects has nothing to learn: the checkpoint is
        # the adapter unchanged.
        if rows:
            trainer = Trainer(
                model=model,
                args=stage_args,
                train_dataset=tokenized.select(rows),
                data_collator=PaddingCollator(tokenizer.pad_token_id),
                processing_class=tokenizer,
            )
            trainer.train()
            steps = trainer.state.global_step
        model.save_pretrained(str(directory / checkpoint_name(stage)))
        costs.append({"steps": steps, "seconds": time.perf_counter() - started})
    return costs


def _shard_slices(
    assignment: Mapping[str, tuple[int, int]], subjects: Sequence[str], num_shards: int, num_slices: int
) -> list[list[list[int]]]:
    """Row indices of every (shard, slice), in data order, from each subject's (shard, slice)."""
    slices: list[list[list[int]]] = [[[] for _ in range(num_slices)] for _ in range(num_shards)]
    for row, subject in enumerate(subjects):
        if subject in assignment:
            shard, slice_index = assignment[subject]
            slices[shard][slice_index].append(row)
    return slices


def _describe_shard(
    index: int,
    slices: Sequence[Sequence[int]],
    subjects: Sequence[str],
    fingerprints: Sequence[str],
    costs: Sequence[Mapping[str, float]],
    directory: Path,
) -> dict[str, Any]:
    """A shard's entry in sisa.json: per slice its subjects, example fingerprints (never text) and the cost of
    its stage; the content hash of every checkpoint."""
    names = [checkpoint_name(stage) for stage in range(-1, len(slices))]
    return {
        "index": index,
        "num_examples": sum(len(rows) for rows in slices),
        "slices": [
            {
                "subjects": sorted({subjects[row] for row in rows}),
                "num_examples": len(rows),
                "example_fingerprints": [fingerprints[row] for row in rows],
                "steps": cost["steps"],
                "seconds": cost["seconds"],
            }
            for rows, cost in zip(slices, costs, strict=True)
        ],
        "checkpoints": {name: adapter_sha256(directory / name) for name in names},
    }


def _total_cost(shards: Sequence[Mapping[str, Any]]) -> dict[str, float]:
    """Optimizer steps and seconds of training every shard from its initialisation (the cost of a full
    retrain), summed over the stages' recorded costs."""
    stages = [part for shard in shards for part in shard["slices"]]
    return {
        "steps": sum(part["steps"] for part in stages),
        "seconds": sum(part["seconds"] for part in stages),
    }


def _training_args_record(training_args: TrainingArguments) -> dict[str, Any]:
    # to_dict masks tokens as "<HUB_TOKEN>"-style placeholders, which must not come back as values.
    return {key: value for key, value in training_args.to_dict().items() if not key.endswith("_token")}


def _rebuild_training_args(recorded: Mapping[str, Any]) -> TrainingArguments:
    names = {item.name for item in dataclasses.fields(TrainingArguments) if item.init}
    # A field the running transformers no longer has (renamed or removed since sisa.json was written) cannot be
    # passed on, and the retrained shard may then train differently from the shards kept: say which.
    dropped = sorted(key for key in recorded if key not in names)
    if dropped:
        logger.warning(
            "sisa.json records training arguments that TrainingArguments of transformers %s does not have, so "
            "the retrained shards run without them: %s.",
            transformers.__version__,
            ", ".join(dropped),
        )
    return TrainingArguments(**{key: value for key, value in recorded.items() if key in names})


def _check_single_process() -> None:
    if PartialState().num_processes > 1:
        raise RuntimeError(
            "sisa trains its shards one after another in a single process; run it without torchrun or a "
            "multi-process accelerate config."
        )


def train_sisa(
    script_args: SisaScriptArguments, training_args: TrainingArguments, model_args: ModelArguments
) -> Path:
    """Plan the shards and slices, train every shard's adapter slice by slice on the shared base, and write
    the SISA directory (checkpoints, tokenizer, sisa.json, run.json) into `training_args.output_dir`
    atomically."""
    started = time.perf_counter()
    peft_config = get_peft_config(model_args)
    if not isinstance(peft_config, LoraConfig):
        raise ValueError(
            "sisa trains one LoRA adapter per shard: set use_peft: true (with lora_r, lora_alpha and "
            "lora_target_modules)."
        )
    if training_args.max_steps > 0:
        raise ValueError(
            f"max_steps={training_args.max_steps}: sisa sets the length of each slice's stage from "
            "num_train_epochs; leave max_steps unset."
        )
    base_model = model_args.model_name_or_path
    if not base_model:
        raise ValueError("no model given; pass --model_name_or_path (a Hub id, a directory or 'embedded').")
    if Path(base_model).expanduser().exists():
        # Recorded for deletions, which may run from another working directory.
        base_model = str(Path(base_model).expanduser().resolve())
    output_dir = Path(training_args.output_dir).resolve()
    staging = prepare_output(output_dir, script_args.overwrite)
    staging.mkdir(parents=True)
    data_record = script_args.data_record()
    data = load_training_data(data_record)
    subjects = list(data[SUBJECT_FIELD])
    counts = {subject: subjects.count(subject) for subject in set(subjects)}
    seed = training_args.seed
    assignment = plan_shards(counts, script_args.num_shards, script_args.num_slices, seed)
    dtype = model_args.dtype or "float32"
    base, tokenizer = load_model_and_tokenizer(
        base_model, dtype=dtype, trust_remote_code=model_args.trust_remote_code,
        revision=model_args.model_revision,
    )  # fmt: skip
    format_kwargs = script_args.format_kwargs()
    tokenized = tokenize_dataset(data, tokenizer, **format_kwargs)
    fingerprints = content_fingerprints(data, validate_dataset(data, data_record["dataset"]))
    # Stage j trains slices 0..j, so an example of slice j is seen in r - j stages: 2e/(r+1) epochs per stage
    # give it e epochs on average, the budget of training the shard without slicing (Bourtoule et al. 2021).
    stage_epochs = 2 * training_args.num_train_epochs / (script_args.num_slices + 1)
    stage_args = _stage_arguments(training_args, staging / ".trainer", stage_epochs)
    slices = _shard_slices(assignment, subjects, script_args.num_shards, script_args.num_slices)
    shards = []
    for index, shard_slices in enumerate(slices):
        directory = shard_dir(staging, index)
        # A seed per shard makes each shard's initial adapter reproducible on its own (a deletion that starts
        # from the first slice starts from this initial adapter, saved as `init`).
        set_seed(seed + index)
        model = get_peft_model(base, copy.deepcopy(peft_config))
        name_adapter_base(model, base_model)  # as sisa.json records it
        model.save_pretrained(str(directory / checkpoint_name(-1)))
        costs = train_shard(model, tokenizer, tokenized, shard_slices, 0, directory, stage_args)
        base = model.unload()
        shards.append(_describe_shard(index, shard_slices, subjects, fingerprints, costs, directory))
    shutil.rmtree(staging / ".trainer", ignore_errors=True)
    tokenizer.save_pretrained(str(staging))
    last = checkpoint_name(script_args.num_slices - 1)
    record = {
        "format": SISA_FORMAT,
        "base_model": base_model,
        "dtype": dtype,
        "num_shards": script_args.num_shards,
        "num_slices": script_args.num_slices,
        "seed": seed,
        "stage_epochs": stage_epochs,
        "data": {**data_record, "fingerprint": fingerprint(data), "num_examples": len(data)},
        "format_kwargs": format_kwargs,
        "training_args": _training_args_record(training_args),
        "subjects": {
            subject: {
                "shard": shard,
                "slice": slice_index,
                "num_examples": counts[subject],
                "example_fingerprints": [
                    fp for fp, s in zip(fingerprints, subjects, strict=True) if s == subject
                ],
            }
            for subject, (shard, slice_index) in sorted(assignment.items())
        },
        "shards": shards,
        "ensemble_sha256": ensemble_sha256(shard["checkpoints"][last] for shard in shards),
        "training": _total_cost(shards),
        "deleted_subjects": [],
        "deletions": [],
    }
    write_json_atomic(record, staging / SISA_FILE)
    run = {
        "recipe": "sisa",
        "model": base_model,
        "mode": "lora",
        "seed": seed,
        "num_processes": 1,
        "data": {"train": describe_data(data)},
        "script_args": script_args,
        "training_args": training_args,
        "model_args": model_args,
        "wall_time_s": time.perf_counter() - started,
        "versions": library_versions(),
        # What the run read, and every file it wrote (checkpoints, sisa.json, tokenizer) by content hash.
        "artifacts": artifact_manifest(
            inputs := run_inputs(model_args.model_name_or_path, script_args),
            staging,
            revisions=input_revisions(inputs, model_args.model_name_or_path, model_args.model_revision),
        ),
    }
    write_json_atomic(jsonable(run), staging / "run.json")
    if output_dir.exists():
        shutil.rmtree(output_dir)
    os.replace(staging, output_dir)
    return output_dir


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
    for shard, shard_slices in zip(record["shards"], slices, strict=True):
        for slice_index, (entry, rows) in enumerate(zip(shard["slices"], shard_slices, strict=True)):
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


def delete_subjects(sisa_dir: str | os.PathLike, subjects: Sequence[str]) -> dict[str, Any] | None:
    """Delete `subjects` from the SISA run in `sisa_dir`: retrain each shard that held one of them from the
    checkpoint before the earliest such slice, without their examples, swap the retrained shard in, and log
    the deletion in sisa.json (subjects, removed example fingerprints, retrained shards, cost against a full
    retrain, ensemble hashes before and after). Other shards' files are not touched. Returns the deletion's
    log entry, or None when every subject was already deleted (running a deletion again is safe)."""
    _check_single_process()
    started, started_at = time.perf_counter(), _utc_now()
    root = Path(sisa_dir).resolve()
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
        record, _shard_slices(old_assignment, data_subjects, num_shards, num_slices), fingerprints
    )
    assignment = {s: place for s, place in old_assignment.items() if s not in todo}
    slices = _shard_slices(assignment, data_subjects, num_shards, num_slices)

    base, tokenizer = load_model_and_tokenizer(record["base_model"], dtype=record["dtype"])
    tokenized = tokenize_dataset(data, tokenizer, **record["format_kwargs"])
    scratch = root / ".sisa-trainer"
    stage_args = _stage_arguments(
        _rebuild_training_args(record["training_args"]), scratch, record["stage_epochs"]
    )
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
        new = _describe_shard(index, slices[index], data_subjects, fingerprints, costs, directory)
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

    full = _total_cost(record["shards"])
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


def main(
    script_args: SisaScriptArguments, training_args: TrainingArguments, model_args: ModelArguments
) -> Path:
    """Train a SISA run into output_dir, or, with `delete_subjects`, delete them from the run there."""
    _check_single_process()
    if script_args.delete_subjects is not None:
        delete_subjects(training_args.output_dir, script_args.delete_subjects)
        return Path(training_args.output_dir).resolve()
    return train_sisa(script_args, training_args, model_args)


def make_parser(subparsers: argparse._SubParsersAction | None = None, prog: str | None = None) -> TrlParser:
    """The recipe's parser: data and shard options, training and model (LoRA) arguments, `--config x.yaml`."""
    dataclass_types = (SisaScriptArguments, TrainingArguments, ModelArguments)
    if subparsers is not None:
        return subparsers.add_parser("sisa", help=__doc__.splitlines()[0], dataclass_types=dataclass_types)
    return TrlParser(dataclass_types, prog=prog)


if __name__ == "__main__":
    main(*make_parser().parse_args_and_config())
