"""Process deletion requests: find each request's subjects' training examples through the lineage, unlearn them
(with an approximate recipe, or exactly by deleting them from a SISA run), evaluate the target and the unlearned
model with a suite, gate the result, write the signed unlearning report, and record every step and the outcome
in the ledger. Running the same command again resumes what a killed run left and skips what is done.

    llm-unlearn forget --subject person-0000 --model_name_or_path outputs/demo/target --dataset builtin \\
        --dataset_config num_people=10,num_holdout=4 --recipe configs/builtin/graddiff_lora.yaml \\
        --suite eval/builtin.yaml --reference_eval outputs/demo/retain/eval.json \\
        --check "forget/probability<=0.5*target" --output_dir outputs/requests

With a SISA directory as the model there is no --recipe: the shards that hold the subjects are retrained without
them, in a copy of the directory, with the data and settings recorded in its sisa.json.

    llm-unlearn forget --subject person-0000 --model_name_or_path outputs/builtin/sisa --suite eval/builtin.yaml \\
        --check "forget/probability<=0.8*target" --output_dir outputs/requests
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass, field
from pathlib import Path

from trl import TrlParser

from llm_unlearn.deletion.pipeline import (
    BATCH_FORMAT,
    DeletionSettings,
    RequestSpec,
    check_request_id,
    process,
    read_requests_file,
)
from llm_unlearn.models import ModelArguments


@dataclass
class ForgetArguments(DeletionSettings):
    """What to forget (the subjects of one request, or a batch file of requests) and how."""

    subjects: list[str] | None = field(
        default=None, metadata={"help": "Subject ids of one request (or repeat --subject ID)."}
    )
    request_id: str | None = field(
        default=None, metadata={"help": "Name the request (default: derived from its subjects and settings)."}
    )
    requests_file: str | None = field(
        default=None,
        metadata={"help": 'A batch: JSON lines {"request_id"?: ..., "subjects": [...]}, processed in order.'},
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        if isinstance(self.subjects, str):
            self.subjects = [self.subjects]
        if bool(self.subjects) == bool(self.requests_file):
            raise ValueError("give the subjects of one request (--subject ID ...) or a --requests_file, not both.")
        if self.requests_file and self.request_id:
            raise ValueError("--request_id names the request of --subject; in a --requests_file give it per line.")
        if self.request_id is not None:
            check_request_id(self.request_id, "--request_id")
        if self.requests_file is not None and Path(self.requests_file).is_dir():
            raise IsADirectoryError(
                f"--requests_file {self.requests_file} is a directory; give a JSON-lines file: {BATCH_FORMAT}."
            )
        if self.requests_file is not None and not Path(self.requests_file).is_file():
            raise FileNotFoundError(
                f"--requests_file {self.requests_file} does not exist; give a JSON-lines file: {BATCH_FORMAT}."
            )

    def request_specs(self) -> list[RequestSpec]:
        """The requests to process: the one of --subject, or each line of the batch file."""
        if self.subjects:
            return [RequestSpec([str(subject) for subject in self.subjects], self.request_id, origin="--subject")]
        return read_requests_file(self.requests_file)


def main(args: ForgetArguments, model_args: ModelArguments) -> int:
    """Process every request in order and print each outcome; returns 0 when all are verified, else 1."""
    outcomes = process(args.request_specs(), args, model_args)
    for outcome in outcomes:
        if outcome.error is not None:
            print(
                f"forget: request {outcome.request_id} (subjects {', '.join(outcome.spec.subjects)}) failed: "
                f"{outcome.error}",
                file=sys.stderr,
            )
    print("\nrequest                subjects  status")
    for outcome in outcomes:
        print(f"{outcome.request_id:<22} {','.join(outcome.spec.subjects)}  {outcome.status}")
    print(f"ledger: {args.ledger_path()}")
    return 0 if all(outcome.status == "verified" for outcome in outcomes) else 1


def make_parser(prog: str | None = None) -> TrlParser:
    """The forget parser: repeatable --subject and --check, the model arguments, and `--config file.yaml`."""
    parser = TrlParser(
        [ForgetArguments, ModelArguments],
        prog=prog,
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    for flag, dest, metavar in (("--subject", "subjects", "ID"), ("--check", "checks", "CHECK")):
        parser.add_argument(
            flag, dest=dest, action="append", default=argparse.SUPPRESS, metavar=metavar,
            help=f"One {metavar.lower()}; repeat for more.",
        )  # fmt: skip
    return parser
