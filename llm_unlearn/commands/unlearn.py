"""Unlearn a forget set while keeping a retain set, with a registered method, full-parameter or LoRA:
`accelerate launch recipes/unlearn.py --config configs/builtin/graddiff_lora.yaml`. The method's hyperparameters
go in `method_args` (`llm-unlearn methods NAME` lists them)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from trl import TrlParser

from llm_unlearn.data.arguments import DataArguments
from llm_unlearn.models import ModelArguments
from llm_unlearn.trainer import UnlearnConfig
from llm_unlearn.unlearn import unlearn


@dataclass
class UnlearnScriptArguments(DataArguments):
    """The data options, and whether an existing output may be replaced."""

    overwrite: bool = field(default=False, metadata={"help": "Replace an existing output directory."})


def main(
    script_args: UnlearnScriptArguments, training_args: UnlearnConfig, model_args: ModelArguments
) -> Path:
    """Unlearn and save the model with its run.json; returns the output directory."""
    output_dir = unlearn(model_args, script_args, training_args, overwrite=script_args.overwrite)
    print(f"unlearn: wrote {output_dir}")
    return output_dir


def make_parser(prog: str | None = None) -> TrlParser:
    """The recipe's parser: data, unlearning and model arguments, with `--config file.yaml`."""
    return TrlParser(
        (UnlearnScriptArguments, UnlearnConfig, ModelArguments),
        prog=prog,
        epilog="The methods and their method_args (types, defaults, meanings): `llm-unlearn methods [NAME]`.",
    )
