"""Evaluate a model on the forget, retain and holdout sets (and extra splits such as `world_facts`); write
eval.json with per-item values and aggregates."""

from __future__ import annotations

import argparse
import random
import time
from dataclasses import dataclass, field
from pathlib import Path

from datasets import Dataset
from trl import TrlParser

from llm_unlearn.data.arguments import DataArguments
from llm_unlearn.data.loading import load_records
from llm_unlearn.evaluation import EvalConfig, evaluate_splits, load_eval, save_eval
from llm_unlearn.models import load_model_and_tokenizer

SPLITS = ("forget", "retain", "holdout")


@dataclass
class EvalScriptArguments(DataArguments):
    """The model to evaluate, the data (as for the recipes), the metrics and where to write eval.json."""

    model_name_or_path: str | None = field(
        default=None, metadata={"help": "Model, adapter dir or 'embedded'."}
    )
    output_dir: str | None = field(default=None, metadata={"help": "Directory for eval.json."})
    splits: list[str] = field(default_factory=lambda: list(SPLITS), metadata={"help": f"Any of {SPLITS}."})
    extra_splits: list[str] = field(
        default_factory=list, metadata={"help": "Splits of `dataset` evaluated whole, e.g. world_facts."}
    )
    metrics: list[str] = field(default_factory=lambda: ["probability", "rouge_l_recall"])
    batch_size: int = 16
    max_new_tokens: int = field(
        default=200, metadata={"help": "Greedy generation length for ROUGE (TOFU: 200)."}
    )
    max_items: int | None = field(
        default=None, metadata={"help": "Evaluate at most this many items per split (a seeded sample)."}
    )
    seed: int = 42
    dtype: str = "float32"
    overwrite: bool = field(default=False, metadata={"help": "Replace an existing eval.json."})
    reference_eval: str | None = field(
        default=None,
        metadata={"help": "The retain model's eval.json (with truth_ratio), for forget quality."},
    )

    def __post_init__(self) -> None:
        if self.model_name_or_path is None or self.output_dir is None:
            raise ValueError("eval needs --model_name_or_path and --output_dir.")
        unknown = sorted(set(self.splits) - set(SPLITS))
        if unknown:
            raise ValueError(
                f"splits {unknown} are not known; choose from {SPLITS} (use extra_splits for others)."
            )

    def eval_config(self) -> EvalConfig:
        return EvalConfig(
            metrics=tuple(self.metrics),
            batch_size=self.batch_size,
            max_new_tokens=self.max_new_tokens,
            max_length=self.max_length,
            prompt_template=self.prompt_template,
            system_prompt=self.system_prompt,
        )


def sample(dataset: Dataset, max_items: int | None, seed: int) -> Dataset:
    """A seeded subset of at most `max_items` rows, kept in their original order (all rows when None)."""
    if max_items is None or len(dataset) <= max_items:
        return dataset
    return dataset.select(sorted(random.Random(seed).sample(range(len(dataset)), max_items)))


def main(script_args: EvalScriptArguments) -> Path:
    """Evaluate and write `output_dir/eval.json`; returns its path."""
    path = Path(script_args.output_dir) / "eval.json"
    if path.exists() and not script_args.overwrite:
        raise FileExistsError(f"{path} exists; pass --overwrite to replace it.")
    reference = None
    if script_args.reference_eval is not None:
        # Checked before loading any model or data, so a wrong path fails at once.
        if not Path(script_args.reference_eval).is_file():
            raise FileNotFoundError(f"--reference_eval {script_args.reference_eval} does not exist.")
        reference = load_eval(script_args.reference_eval)
    started = time.perf_counter()
    split = script_args.load_split()
    available = {"forget": split.forget, "retain": split.retain, "holdout": split.holdout}
    datasets = {name: available[name] for name in script_args.splits if available[name] is not None}
    for name in script_args.extra_splits:
        datasets[name] = load_records(script_args.dataset, config=script_args.dataset_config, split=name)
    datasets = {
        name: sample(data, script_args.max_items, script_args.seed) for name, data in datasets.items()
    }
    model, tokenizer = load_model_and_tokenizer(script_args.model_name_or_path, dtype=script_args.dtype)
    result = evaluate_splits(model, tokenizer, datasets, script_args.eval_config(), reference=reference)
    result["model"] = script_args.model_name_or_path
    result["wall_time_s"] = time.perf_counter() - started
    return save_eval(result, path)


def make_parser(subparsers: argparse._SubParsersAction | None = None, prog: str | None = None) -> TrlParser:
    """The eval parser, with `--config file.yaml`."""
    if subparsers is not None:
        return subparsers.add_parser(
            "eval", help=__doc__.splitlines()[0], dataclass_types=[EvalScriptArguments]
        )
    return TrlParser([EvalScriptArguments], prog=prog)


if __name__ == "__main__":
    main(*make_parser().parse_args_and_config())
