"""SISA training (Bourtoule et al. 2021, arXiv 1912.03817): plan k shards of subjects with r slices each, and
train every shard's LoRA adapter on the shared frozen base stage by stage (stage j: the shard's slices 0..j),
with a checkpoint after each stage, into a SISA directory (`llm_unlearn.sisa.record`).

Each stage starts a fresh optimizer from the previous checkpoint's adapter weights, so a deletion
(`llm_unlearn.sisa.delete`), which runs a shard's later stages again with the helpers here, produces the shard
that training without the deleted subjects would have produced.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import os
import shutil
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import transformers
from accelerate import PartialState
from datasets import Dataset
from peft import LoraConfig, PeftModel, get_peft_model
from transformers import PreTrainedTokenizerBase, Trainer, TrainingArguments, set_seed
from trl import get_peft_config

from llm_unlearn.data.arguments import DataArguments
from llm_unlearn.data.formatting import PaddingCollator, tokenize_dataset
from llm_unlearn.data.loading import content_fingerprints, fingerprint, load_records
from llm_unlearn.data.schema import SUBJECT_FIELD, DataError, validate_dataset
from llm_unlearn.files import write_json_atomic
from llm_unlearn.manifest import artifact_manifest
from llm_unlearn.models import ModelArguments, hub_commit, load_model_and_tokenizer, name_adapter_base
from llm_unlearn.run_record import (
    describe_data,
    input_revisions,
    jsonable,
    library_versions,
    prepare_output,
    run_inputs,
)
from llm_unlearn.sisa.plan import plan_shards, shard_slices
from llm_unlearn.sisa.record import (
    SISA_FILE,
    SISA_FORMAT,
    adapter_sha256,
    checkpoint_name,
    ensemble_sha256,
    shard_dir,
)

logger = logging.getLogger(__name__)

# Options of DataArguments that choose forget, retain or holdout sets, which SISA training has no use for.
SELECTORS = ("forget_subjects", "retain_subjects", "forget_data", "holdout_subjects", "holdout_data")


def check_options(data_args: DataArguments, num_shards: int, num_slices: int) -> None:
    """Raise ValueError for what SISA training cannot take: a forget, retain or holdout selection (it trains on
    every row of the dataset), or fewer than one shard or slice."""
    given = [name for name in SELECTORS if getattr(data_args, name) is not None]
    if given:
        raise ValueError(
            f"sisa trains on every row of the dataset, so {given} do not apply; delete subjects after "
            "training with --delete_subjects, and give evaluation data to the eval suite."
        )
    if num_shards < 1 or num_slices < 1:
        raise ValueError(f"num_shards and num_slices must be at least 1, got {num_shards} and {num_slices}.")


@dataclass
class SisaArguments(DataArguments):
    """The data options and SISA's k and r, checked when they are set (`check_options`)."""

    num_shards: int = field(default=4, metadata={"help": "k: shards, one LoRA adapter each."})
    num_slices: int = field(
        default=2, metadata={"help": "r: slices per shard, with a checkpoint after training on each."}
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        check_options(self, self.num_shards, self.num_slices)


# What a SISA recipe config holds, in the order of the sisa command's parser.
SISA_ARGUMENTS = (SisaArguments, TrainingArguments, ModelArguments)


def check_single_process() -> None:
    """Raise ValueError under several processes: the shards train one after another in one process."""
    if PartialState().num_processes > 1:
        raise ValueError(
            "sisa trains its shards one after another in a single process; run it without torchrun or a "
            "multi-process accelerate config."
        )


def data_source(data_args: DataArguments) -> dict[str, Any]:
    """Where the training data comes from, as sisa.json records it (a local file by absolute path, so that a
    deletion run from another directory finds it)."""
    source = Path(data_args.dataset).expanduser()
    return {
        "dataset": str(source.resolve()) if source.exists() else data_args.dataset,
        "dataset_config": data_args.dataset_config,
        "dataset_split": data_args.dataset_split,
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


def stage_arguments(training_args: TrainingArguments, scratch: Path, epochs: float) -> TrainingArguments:
    """The arguments of one stage's Trainer run: `epochs` epochs, and nothing saved by the Trainer (the stage
    saves the adapter itself)."""
    return dataclasses.replace(
        training_args, output_dir=str(scratch), num_train_epochs=epochs, save_strategy="no"
    )


def training_args_record(training_args: TrainingArguments) -> dict[str, Any]:
    """The training arguments as sisa.json records them, for a deletion to train with again."""
    # to_dict masks tokens as "<HUB_TOKEN>"-style placeholders, which must not come back as values.
    return {key: value for key, value in training_args.to_dict().items() if not key.endswith("_token")}


def rebuild_training_args(recorded: Mapping[str, Any]) -> TrainingArguments:
    """The training arguments sisa.json recorded, as the running transformers takes them (a field it no longer
    has is dropped, with a warning)."""
    names = {item.name for item in dataclasses.fields(TrainingArguments) if item.init}
    # A field renamed or removed since sisa.json was written cannot be passed on, and the retrained shard may
    # then train differently from the shards kept: say which.
    dropped = sorted(key for key in recorded if key not in names)
    if dropped:
        logger.warning(
            "sisa.json records training arguments that TrainingArguments of transformers %s does not have, so "
            "the retrained shards run without them: %s.",
            transformers.__version__,
            ", ".join(dropped),
        )
    return TrainingArguments(**{key: value for key, value in recorded.items() if key in names})


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


def describe_shard(
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


def total_cost(shards: Sequence[Mapping[str, Any]]) -> dict[str, float]:
    """Optimizer steps and seconds of training every shard from its initialisation (the cost of a full
    retrain), summed over the stages' recorded costs."""
    stages = [part for shard in shards for part in shard["slices"]]
    return {
        "steps": sum(part["steps"] for part in stages),
        "seconds": sum(part["seconds"] for part in stages),
    }


def train(
    data_args: DataArguments,
    training_args: TrainingArguments,
    model_args: ModelArguments,
    *,
    num_shards: int,
    num_slices: int,
    overwrite: bool = False,
) -> Path:
    """Plan `num_shards` shards of `num_slices` slices, train every shard's LoRA adapter slice by slice on the
    shared base, and write the SISA directory (checkpoints, tokenizer, sisa.json, run.json) to
    `training_args.output_dir`, which appears only when it is complete; return it."""
    check_single_process()
    check_options(data_args, num_shards, num_slices)
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
    staging = prepare_output(output_dir, overwrite)
    staging.mkdir(parents=True)
    data_record = data_source(data_args)
    data = load_training_data(data_record)
    subjects = list(data[SUBJECT_FIELD])
    counts = {subject: subjects.count(subject) for subject in set(subjects)}
    seed = training_args.seed
    assignment = plan_shards(counts, num_shards, num_slices, seed)
    dtype = model_args.dtype or "float32"
    base, tokenizer = load_model_and_tokenizer(
        base_model, dtype=dtype, trust_remote_code=model_args.trust_remote_code,
        revision=model_args.model_revision,
    )  # fmt: skip
    format_kwargs = data_args.format_kwargs()
    tokenized, truncation = tokenize_dataset(data, tokenizer, name="training data", **format_kwargs)
    fingerprints = content_fingerprints(data, validate_dataset(data, data_record["dataset"]))
    # Stage j trains slices 0..j, so an example of slice j is seen in r - j stages: 2e/(r+1) epochs per stage
    # give it e epochs on average, the budget of training the shard without slicing (Bourtoule et al. 2021).
    stage_epochs = 2 * training_args.num_train_epochs / (num_slices + 1)
    stage_args = stage_arguments(training_args, staging / ".trainer", stage_epochs)
    slices = shard_slices(assignment, subjects, num_shards, num_slices)
    shards = []
    for index, slices_of_shard in enumerate(slices):
        directory = shard_dir(staging, index)
        # A seed per shard makes each shard's initial adapter reproducible on its own (a deletion that starts
        # from the first slice starts from this initial adapter, saved as `init`).
        set_seed(seed + index)
        model = get_peft_model(base, copy.deepcopy(peft_config))
        name_adapter_base(model, base_model)  # as sisa.json records it
        model.save_pretrained(str(directory / checkpoint_name(-1)))
        costs = train_shard(model, tokenizer, tokenized, slices_of_shard, 0, directory, stage_args)
        base = model.unload()
        shards.append(describe_shard(index, slices_of_shard, subjects, fingerprints, costs, directory))
    shutil.rmtree(staging / ".trainer", ignore_errors=True)
    tokenizer.save_pretrained(str(staging))
    last = checkpoint_name(num_slices - 1)
    record = {
        "format": SISA_FORMAT,
        "base_model": base_model,
        # A deletion retrains a shard on this base: pinned to the commit the Hub cache resolved the revision to
        # (None for a local or embedded base), so that a branch moving on cannot give it another base.
        "base_revision": model_args.model_revision,
        "base_commit": hub_commit(base_model, model_args.model_revision),
        "trust_remote_code": model_args.trust_remote_code,
        "dtype": dtype,
        "num_shards": num_shards,
        "num_slices": num_slices,
        "seed": seed,
        "stage_epochs": stage_epochs,
        "data": {**data_record, "fingerprint": fingerprint(data), "num_examples": len(data)},
        "format_kwargs": format_kwargs,
        "truncation": truncation.to_dict(),
        "training_args": training_args_record(training_args),
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
        "training": total_cost(shards),
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
        "truncation": {"train": truncation.to_dict()},
        "prompt_format": data_args.prompt_example(tokenizer, data),
        "script_args": {**jsonable(data_args), "num_shards": num_shards, "num_slices": num_slices},
        "training_args": training_args,
        "model_args": model_args,
        "wall_time_s": time.perf_counter() - started,
        "versions": library_versions(),
        # What the run read, and every file it wrote (checkpoints, sisa.json, tokenizer) by content hash.
        "artifacts": artifact_manifest(
            inputs := run_inputs(model_args.model_name_or_path, data_args),
            staging,
            revisions=input_revisions(inputs, model_args.model_name_or_path, model_args.model_revision),
        ),
    }
    write_json_atomic(jsonable(run), staging / "run.json")
    if output_dir.exists():
        shutil.rmtree(output_dir)
    os.replace(staging, output_dir)
    return output_dir
