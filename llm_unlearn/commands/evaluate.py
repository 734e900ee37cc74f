"""Evaluate a model with a suite (`--config eval/builtin.yaml`, `eval/tofu.yaml`, `eval/muse.yaml`): its splits,
metrics, membership inference and robustness attacks; write eval.json with per-item values and aggregates, and
the report beside it. Under `accelerate launch` the items are shared among the processes."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from trl import TrlParser

from llm_unlearn.evaluation.reference_logs import EXPORT_FORMATS
from llm_unlearn.evaluation.runner import evaluate_model, export_path
from llm_unlearn.evaluation.suite import Suite
from llm_unlearn.models import ModelArguments


@dataclass
class EvalOutputArguments:
    """Where eval.json goes, and in which other format it is written too."""

    output_dir: str | None = field(default=None, metadata={"help": "Directory for eval.json and the report."})
    overwrite: bool = field(default=False, metadata={"help": "Replace an existing eval.json (and export)."})
    export_reference_format: str | None = field(
        default=None,
        metadata={
            "help": f"Also write the numbers as a log of the reference framework, one of {EXPORT_FORMATS}: "
            "open-unlearning writes TOFU_EVAL.json (MUSE_EVAL.json for the muse suite) beside eval.json, with "
            "locuslab/open-unlearning's key names, for its tools (e.g. as its retain_logs_path)."
        },
    )

    def __post_init__(self) -> None:
        if self.output_dir is None:
            raise ValueError("eval needs --output_dir, the directory for eval.json.")


def main(suite: Suite, output: EvalOutputArguments, model_args: ModelArguments) -> Path:
    """Evaluate and write eval.json; returns its path."""
    path = evaluate_model(
        model_args, suite, output.output_dir, overwrite=output.overwrite,
        export_reference_format=output.export_reference_format,
    )  # fmt: skip
    print(f"eval: wrote {path}")
    if output.export_reference_format is not None:
        print(f"eval: wrote {export_path(output.output_dir, suite)}")
    return path


def make_parser(prog: str | None = None) -> TrlParser:
    """The eval parser: the suite's options, the output and the model, with `--config suite.yaml`."""
    return TrlParser((Suite, EvalOutputArguments, ModelArguments), prog=prog)
