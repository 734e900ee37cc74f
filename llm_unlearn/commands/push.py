"""Publish a run directory on the Hugging Face Hub: the adapter (or the merged model with `--merge`), a model card
with the eval results, eval.json, run.json and the reports, in one commit.

The run directory is positional (`llm-unlearn push RUN_DIR --repo_id ORG/NAME`), or `--run_dir` / `run_dir:` in a
`--config` file. The Hub token comes from `huggingface-cli login` or the HF_TOKEN environment variable.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from huggingface_hub import CommitInfo
from trl import TrlParser

from llm_unlearn.commands.arguments import OptionalPositional
from llm_unlearn.hub import push_run
from llm_unlearn.models import DTYPES


@dataclass
class PushScriptArguments:
    """The run to publish, the repository, and how: adapter or merged model, visibility, branch, base and license."""

    run_dir: str | None = field(
        default=None,
        metadata={"help": "Run directory of `llm-unlearn finetune` or `unlearn` (or the first argument)."},
    )
    repo_id: str | None = field(default=None, metadata={"help": "Hub model repository ORG/NAME."})
    merge: bool = field(
        default=False,
        metadata={"help": "Upload the adapter merged into its base as full weights instead of the adapter."},
    )
    private: bool = field(default=False, metadata={"help": "Create the repository private (if it is new)."})
    base_model: str | None = field(
        default=None,
        metadata={
            "help": "Hub id of the adapter's base, written into the uploaded adapter_config.json and the card; "
            "needed when the run's base is a local directory."
        },
    )
    license: str | None = field(
        default=None,
        metadata={
            "help": "License id for the card; default: apache-2.0 for models derived from SmolLM2, else none."
        },
    )
    eval_json: str | None = field(
        default=None, metadata={"help": "The model's eval.json, when not in the run directory."}
    )
    unlearning_report: str | None = field(
        default=None,
        metadata={
            "help": "Directory (or JSON file) of the unlearning report, when not in the run directory; for "
            "`llm-unlearn forget` that is the request's directory."
        },
    )
    revision: str | None = field(default=None, metadata={"help": "Branch to commit to (created if missing)."})
    commit_message: str | None = field(default=None, metadata={"help": "Commit message."})
    dtype: str = field(
        default="float32", metadata={"help": f"dtype of the merged weights with --merge: {sorted(DTYPES)}."}
    )

    def __post_init__(self) -> None:
        if self.run_dir is None or self.repo_id is None:
            raise ValueError(
                "push needs a run directory and --repo_id: llm-unlearn push RUN_DIR --repo_id ORG/NAME."
            )
        if self.dtype not in DTYPES:
            raise ValueError(f"dtype={self.dtype!r} is not supported; use one of {sorted(DTYPES)}.")


def main(script_args: PushScriptArguments) -> CommitInfo:
    """Push the run; prints and returns the commit."""
    commit = push_run(
        script_args.run_dir,
        script_args.repo_id,
        merge=script_args.merge,
        private=script_args.private,
        revision=script_args.revision,
        commit_message=script_args.commit_message,
        base_model=script_args.base_model,
        license=script_args.license,
        dtype=script_args.dtype,
        eval_json=script_args.eval_json,
        unlearning_report=script_args.unlearning_report,
    )
    print(f"pushed {script_args.run_dir} to {script_args.repo_id}: {commit.commit_url}")
    return commit


def make_parser(prog: str | None = None) -> TrlParser:
    """The push parser: RUN_DIR positional (or --run_dir), --repo_id, --merge, --private, ... and --config."""
    parser = TrlParser([PushScriptArguments], prog=prog, description=__doc__)
    parser.add_argument(
        "run_dir", nargs="?", action=OptionalPositional, metavar="RUN_DIR", help="Run directory to publish."
    )
    return parser
