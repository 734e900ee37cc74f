"""Train a SISA ensemble of LoRA adapters (k shards of subjects, each trained slice by slice with a checkpoint
after every slice), or delete subjects from one: only their shards are retrained, from the checkpoint before
their slice (`llm_unlearn.sisa`; Bourtoule et al. 2021, arXiv 1912.03817).

    llm-unlearn sisa --config configs/builtin/sisa.yaml --output_dir outputs/builtin/sisa
    llm-unlearn sisa --output_dir outputs/builtin/sisa --delete_subjects person-0003

A deletion uses the base model (at its recorded revision), data and training settings recorded in sisa.json (a
shard is retrained exactly as it was trained), so it needs only the directory and the subject ids.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from transformers import TrainingArguments
from trl import TrlParser

from llm_unlearn.models import ModelArguments
from llm_unlearn.sisa.delete import delete
from llm_unlearn.sisa.train import SisaArguments, train


@dataclass
class SisaScriptArguments(SisaArguments):
    """Data options, the number of shards and slices, and the subjects to delete from an existing SISA run."""

    delete_subjects: list[str] | None = field(
        default=None,
        metadata={
            "help": "Delete these subject ids from the SISA run in output_dir (retrains their shards)."
        },
    )
    overwrite: bool = field(default=False, metadata={"help": "Replace an existing output directory."})


def main(
    script_args: SisaScriptArguments, training_args: TrainingArguments, model_args: ModelArguments
) -> Path:
    """Train a SISA run into output_dir, or, with `delete_subjects`, delete them from the run there; returns
    the run's directory."""
    if script_args.delete_subjects is None:
        output_dir = train(
            script_args, training_args, model_args, num_shards=script_args.num_shards,
            num_slices=script_args.num_slices, overwrite=script_args.overwrite,
        )  # fmt: skip
        print(f"sisa: wrote {output_dir}")
        return output_dir
    output_dir = Path(training_args.output_dir).resolve()
    entry = delete(output_dir, script_args.delete_subjects)
    if entry is None:
        print(f"sisa: {script_args.delete_subjects} were already deleted from {output_dir}")
    else:
        shards = [shard["shard"] for shard in entry["retrained"]]
        print(
            f"sisa: deleted {entry['subjects']} from {output_dir}, retraining shard(s) {shards} in "
            f"{entry['steps']} optimizer steps (a full retrain: {entry['full_retrain']['steps']})"
        )
    return output_dir


def make_parser(prog: str | None = None) -> TrlParser:
    """The recipe's parser: data and shard options, training and model (LoRA) arguments, `--config x.yaml`."""
    return TrlParser((SisaScriptArguments, TrainingArguments, ModelArguments), prog=prog)
