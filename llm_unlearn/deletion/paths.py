"""The two ways `llm-unlearn forget` carries out a deletion request, each with what the unlearning report says
about it (method, comparison with retraining, affected artifacts, guarantee):

- `RecipePath`, approximate: an unlearning recipe (configs/...yaml) runs on the trained model with the
  request's subjects as the forget set. It is compared with retraining through the retain model: its eval
  (forget quality, PrivLeak) and its training cost.
- `SisaPath`, exact: the subjects are deleted from a SISA run (Bourtoule et al. 2021): the request's model is a
  copy of the SISA directory in which only the shards that held them are retrained without them, from the
  checkpoint before their slice. The trained run is left as it is, so the request's output is a new model
  version, like the approximate path's.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

from datasets import Dataset

from llm_unlearn.config_files import load_arguments
from llm_unlearn.data.schema import SUBJECT_FIELD
from llm_unlearn.deletion.ledger import LedgerError
from llm_unlearn.deletion.report import model_artifact
from llm_unlearn.evaluation.reference_logs import load_reference
from llm_unlearn.evaluation.results import EvalResult
from llm_unlearn.files import atomic_directory
from llm_unlearn.manifest import model_version, sha256_file
from llm_unlearn.models import ModelArguments
from llm_unlearn.sisa import SISA_FILE, checkpoint_name, is_sisa_dir, read_sisa_record, shard_dir
from llm_unlearn.sisa.delete import delete
from llm_unlearn.unlearn import UNLEARN_ARGUMENTS, unlearn

# The training settings a report lists as the method's hyperparameters (beside the method's own config).
TRAINING_HYPERPARAMETERS = (
    "learning_rate", "num_train_epochs", "max_steps", "per_device_train_batch_size",
    "gradient_accumulation_steps", "lr_scheduler_type", "weight_decay", "seed",
)  # fmt: skip
LORA_HYPERPARAMETERS = ("lora_r", "lora_alpha", "lora_dropout", "lora_target_modules")


class UnlearningPath(Protocol):
    """What the forget command needs from a way of unlearning."""

    kind: str

    def identity(self) -> str:
        """What, beside the model and the data, the result depends on (a request setting)."""

    def lineage_data(self, data: Dataset) -> Dataset:
        """The examples the model to unlearn from was trained on, out of the training data."""

    def check_subjects(self, subjects: Sequence[str]) -> None:
        """Raise LedgerError when the subjects cannot be removed this way."""

    def check_settings(self, subjects: Sequence[str], data: Mapping[str, Any], output_dir: str) -> None:
        """Raise ValueError when `unlearn` would refuse its settings for these subjects (before any model
        loads)."""

    def data_after(self, data: Dataset, subjects: Sequence[str]) -> Dataset:
        """The training data the unlearned model holds, out of `data` (the lineage data)."""

    def unlearn(
        self, output: Path, replace: bool, subjects: Sequence[str], data: Mapping[str, Any]
    ) -> dict:
        """Write the unlearned model to `output` atomically, with `data` the data options (dataset, config,
        split) the model was trained on; return what the ledger records (with `num_examples`, the count of
        examples removed)."""

    def method(self, output: Path) -> dict[str, Any]:
        """The report's method section."""

    def comparison(self, output: Path, unlearned_eval: EvalResult, reference_eval: str | None) -> dict | None:
        """The report's comparison with retraining (None when not compared)."""

    def artifacts(self, output: Path, contained: list[dict[str, Any]]) -> dict[str, Any]:
        """The report's artifacts section, given the lineage's model versions that contained the data."""


def _read_json(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text(encoding="utf-8"))


def _training_hyperparameters(run: Mapping[str, Any]) -> dict[str, Any]:
    training = run.get("training_args", {})
    values = {"training": {key: training[key] for key in TRAINING_HYPERPARAMETERS if key in training}}
    if run.get("mode") == "lora":
        model_args = run.get("model_args", {})
        values["lora"] = {key: model_args[key] for key in LORA_HYPERPARAMETERS if key in model_args}
    return values


def training_cost(run: Mapping[str, Any]) -> dict[str, float] | None:
    """The optimizer steps and training-loop seconds of a run.json (None when it recorded no training)."""
    seconds = (run.get("train_metrics") or {}).get("train_runtime")
    steps = next((entry["step"] for entry in reversed(run.get("log_history", [])) if "step" in entry), None)
    if seconds is None or steps is None:
        return None
    return {"steps": steps, "seconds": seconds}


def _retain_run(reference_eval: str) -> dict[str, Any] | None:
    """The run.json of the model that `reference_eval` evaluated, when it is a local training run."""
    model = load_reference(reference_eval).model
    run = Path(str(model)) / "run.json" if model else None
    return _read_json(run) if run is not None and run.is_file() else None


class RecipePath:
    """Approximate unlearning: an unlearning recipe run on the trained model."""

    kind = "approximate"

    def __init__(self, model_args: ModelArguments, recipe: str) -> None:
        self.model_args, self.recipe = model_args, recipe
        self.model = model_args.model_name_or_path

    def identity(self) -> str:
        """The recipe file's sha256."""
        return sha256_file(self.recipe)

    def lineage_data(self, data: Dataset) -> Dataset:
        """All of it: the trained model saw every example."""
        return data

    def check_subjects(self, subjects: Sequence[str]) -> None:
        """Any subject of the training data can be unlearned."""

    def _arguments(self, subjects: Sequence[str], data: Mapping[str, Any], output: str) -> tuple:
        return load_arguments(
            UNLEARN_ARGUMENTS, self.recipe, model_name_or_path=self.model, forget_subjects=list(subjects),
            model_revision=self.model_args.model_revision, trust_remote_code=self.model_args.trust_remote_code,
            output_dir=output, **data,
        )  # fmt: skip

    def check_settings(self, subjects: Sequence[str], data: Mapping[str, Any], output_dir: str) -> None:
        """Parse the recipe as `unlearn` will (a typo or a bad method argument fails now), and refuse a recipe
        that holds one of the subjects out of training."""
        data_args, _, _ = self._arguments(subjects, data, output_dir)
        held_out = sorted(set(subjects) & {str(s) for s in data_args.holdout_subjects or ()})
        if held_out:
            raise ValueError(
                f"--recipe {self.recipe} holds subject(s) {held_out} out (holdout_subjects), so it cannot unlearn "
                "them; remove them from its holdout_subjects, or give another --recipe."
            )

    def data_after(self, data: Dataset, subjects: Sequence[str]) -> Dataset:
        """All of it: approximate unlearning does not prove that the subjects' examples are gone."""
        return data

    def unlearn(
        self, output: Path, replace: bool, subjects: Sequence[str], data: Mapping[str, Any]
    ) -> dict:
        """Run the recipe with the subjects as the forget set (the recipe writes its output atomically)."""
        data_args, training_args, model_args = self._arguments(subjects, data, str(output))
        unlearn(model_args, data_args, training_args, overwrite=replace)
        run = _read_json(output / "run.json")
        return {
            "method": run["method"],
            "mode": run["mode"],
            "model_version": run["artifacts"]["model_version"],
            "num_examples": run["data"]["forget"]["num_examples"],
        }

    def method(self, output: Path) -> dict[str, Any]:
        """The recipe's method, its config and the training and LoRA settings it ran with."""
        run = _read_json(output / "run.json")
        return {
            "name": run["method"],
            "kind": self.kind,
            "mode": run["mode"],
            "recipe": str(Path(self.recipe).resolve()),
            "hyperparameters": {"method": run.get("method_config", {}), **_training_hyperparameters(run)},
        }

    def comparison(self, output: Path, unlearned_eval: EvalResult, reference_eval: str | None) -> dict | None:
        """Against the retain model (trained without the forget set): forget quality and PrivLeak from the
        eval, and the unlearning's training cost as a fraction of the retain model's."""
        if not reference_eval:
            return None
        values = {
            name: unlearned_eval.summary_value(name)
            for name in ("forget_quality", "privleak")
            if unlearned_eval.summary_value(name) is not None
        }
        description = (
            "evaluated against the retain model (trained without the forget set): forget quality and PrivLeak "
            "compare the unlearned model's forget-set statistics with it."
        )
        unlearning, retraining = training_cost(_read_json(output / "run.json")), None
        retain_run = _retain_run(reference_eval)
        if retain_run is not None:
            retraining = training_cost(retain_run)
        if unlearning and retraining:
            values.update(
                unlearning_steps=unlearning["steps"], retraining_steps=retraining["steps"],
                cost_fraction_steps=unlearning["steps"] / retraining["steps"],
                unlearning_train_s=unlearning["seconds"], retraining_train_s=retraining["seconds"],
                cost_fraction_seconds=unlearning["seconds"] / retraining["seconds"],
            )  # fmt: skip
            description += (
                " The cost fractions divide the unlearning's training (optimizer steps, training-loop "
                "seconds) by the retain model's, the cost of retraining without the forget set."
            )
        return {
            "kind": self.kind,
            "description": description,
            "reference": str(Path(reference_eval).resolve()),
            "values": values,
        }

    def artifacts(self, output: Path, contained: list[dict[str, Any]]) -> dict[str, Any]:
        """The trained model unlearned from, the lineage's versions, and the unlearned model."""
        return {
            "base_model": model_artifact(self.model, "target model (unlearned from)"),
            "contained_data": contained,
            "new_model": model_artifact(output, "unlearned model"),
        }


class SisaPath:
    """Exact unlearning: a deletion from a SISA run, written as a new SISA directory."""

    kind = "exact"

    def __init__(self, model: str) -> None:
        self.model = str(Path(model).resolve())
        self.record = read_sisa_record(self.model)

    def identity(self) -> str:
        """The deletion retrains with the settings recorded in sisa.json, part of the model's identity."""
        return "sisa"

    def lineage_data(self, data: Dataset) -> Dataset:
        """The examples of the subjects still in the run (those deleted before are in no served shard)."""
        return self.data_after(data, self.record["deleted_subjects"])

    def data_after(self, data: Dataset, subjects: Sequence[str]) -> Dataset:
        """The examples of every subject but these."""
        removed = set(subjects)
        if not removed:
            return data
        return data.select([row for row, subject in enumerate(data[SUBJECT_FIELD]) if subject not in removed])

    def check_settings(self, subjects: Sequence[str], data: Mapping[str, Any], output_dir: str) -> None:
        """Nothing to check: the deletion retrains with the settings its sisa.json records."""

    def check_subjects(self, subjects: Sequence[str]) -> None:
        """Refuse subjects deleted from this run before, naming the deletion."""
        for entry in self.record["deletions"]:
            done = sorted(set(subjects) & set(entry["subjects"]))
            if done:
                raise LedgerError(
                    f"subject(s) {done} were deleted from the SISA run {self.model} on {entry['finished']}; "
                    "its shards no longer hold their examples, so there is nothing to delete."
                )

    def unlearn(
        self, output: Path, replace: bool, subjects: Sequence[str], data: Mapping[str, Any]
    ) -> dict:
        """Copy the SISA directory and delete the subjects from the copy (retraining their shards); the copy
        appears at `output` only when the deletion is complete."""
        # A killed run leaves its staging copy behind (SIGKILL runs no clean-up); only this step writes there.
        for stale in output.parent.glob(f".{output.name}.*.partial"):
            shutil.rmtree(stale, ignore_errors=True)
        with atomic_directory(output, overwrite=replace) as staging:
            # Hidden entries are a killed deletion's scratch, not part of the run.
            shutil.copytree(self.model, staging, dirs_exist_ok=True, ignore=shutil.ignore_patterns(".*"))
            entry = delete(staging, subjects)
        if entry is None:
            raise LedgerError(f"subjects {list(subjects)} were already deleted from {self.model}.")
        return {
            "method": "sisa",
            "mode": "lora",
            "model_version": model_version(output),
            "num_examples": entry["num_examples"],
            "retrained_shards": [shard["shard"] for shard in entry["retrained"]],
        }

    def _deletion(self, output: Path) -> dict[str, Any]:
        return read_sisa_record(output)["deletions"][-1]

    def method(self, output: Path) -> dict[str, Any]:
        """SISA with its plan (shards, slices, epochs per stage) and the training and LoRA settings."""
        run = _read_json(Path(self.model) / "run.json")
        record = self.record
        return {
            "name": "sisa",
            "kind": self.kind,
            "mode": "lora",
            "recipe": str(Path(self.model) / SISA_FILE),
            "hyperparameters": {
                "sharding": {
                    key: record[key] for key in ("num_shards", "num_slices", "stage_epochs", "seed")
                },
                **_training_hyperparameters(run),
            },
        }

    def comparison(self, output: Path, unlearned_eval: EvalResult, reference_eval: str | None) -> dict | None:
        """Exact by construction: what was retrained, from which checkpoint, and at what fraction of the cost of
        retraining every shard; with forget quality and PrivLeak against a retain model when one is given."""
        deletion = self._deletion(output)
        retrained = "; ".join(
            f"shard {entry['shard']} from its checkpoint {entry['from_checkpoint']!r} (slices "
            f"{entry['retrained_slices']} retrained)"
            for entry in deletion["retrained"]
        )
        untouched = self.record["num_shards"] - len(deletion["retrained"])
        values: dict[str, Any] = {
            "retrained_shards": len(deletion["retrained"]),
            "num_shards": self.record["num_shards"],
            "deletion_steps": deletion["steps"],
            "full_retrain_steps": deletion["full_retrain"]["steps"],
            "cost_fraction_steps": deletion["cost_fraction"]["steps"],
            "deletion_train_s": deletion["seconds"],
            "full_retrain_train_s": deletion["full_retrain"]["seconds"],
            "cost_fraction_seconds": deletion["cost_fraction"]["seconds"],
        }
        for name in ("forget_quality", "privleak"):
            if unlearned_eval.summary_value(name) is not None:
                values[name] = unlearned_eval.summary_value(name)
        return {
            "kind": self.kind,
            "description": (
                f"the served model is a retrained model. Retrained without the subjects' examples: {retrained}, "
                f"with the settings recorded at training; the other {untouched} shard(s) never held them and "
                "are unchanged (their checkpoint hashes match). The cost fractions divide the deletion's "
                "training (optimizer steps, training-loop seconds) by that of retraining every shard without "
                "them from its initial adapter."
                + (
                    " Forget quality and PrivLeak compare with the retain model's eval given as reference."
                    if reference_eval
                    else ""
                )
            ),
            "reference": str(Path(reference_eval).resolve()) if reference_eval else None,
            "values": values,
        }

    def artifacts(self, output: Path, contained: list[dict[str, Any]]) -> dict[str, Any]:
        """The frozen base, the lineage's versions and every shard checkpoint the deletion replaced (each was
        trained on the subjects' examples), and the new SISA directory."""
        deletion = self._deletion(output)
        replaced = [
            {
                "role": f"shard {entry['shard']} checkpoint {name} (trained on the subjects' data; replaced)",
                "path": str(shard_dir(self.model, entry["shard"]) / name),
                "model_version": model_version(shard_dir(self.model, entry["shard"]) / name),
            }
            for entry in deletion["retrained"]
            for name in entry["replaced_checkpoints"]
        ]
        served = checkpoint_name(self.record["num_slices"] - 1)
        return {
            "base_model": model_artifact(
                self.record["base_model"], "frozen base model of every shard (unchanged)"
            ),
            "contained_data": contained + replaced,
            "new_model": model_artifact(output, f"SISA run after the deletion (each shard serves {served})"),
        }


def unlearning_path(model_args: ModelArguments, recipe: str | None) -> UnlearningPath:
    """The SISA path for a SISA directory, else the recipe's (run on the model at its revision)."""
    model = model_args.model_name_or_path
    if not is_sisa_dir(model):
        if recipe is None:
            raise ValueError(f"{model} is not a SISA directory, so deletion requests need an unlearning --recipe.")
        return RecipePath(model_args, recipe)
    if recipe is not None:
        raise ValueError(
            f"{model} is a SISA run: a deletion retrains its shards with the data and settings in its sisa.json, "
            "so --recipe does not apply; leave it out."
        )
    return SisaPath(model)
