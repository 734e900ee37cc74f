"""Process deletion requests: find each request's subjects' training examples through the lineage, unlearn them
(with an approximate recipe, or exactly by deleting them from a SISA run), evaluate the target and the unlearned
model with a suite, gate the result, write the signed unlearning report, and record every step and the outcome
in the ledger.

Idempotent and resumable: each step's output appears atomically and the ledger records its hash, so running the
same command again skips every step whose output is still there unchanged and finishes what a killed run left.

    llm-unlearn forget --subject person-0000 --model outputs/demo/target --data builtin \\
        --data_config num_people=10,num_holdout=4 --recipe configs/builtin/graddiff_lora.yaml \\
        --suite eval/builtin.yaml --reference_eval outputs/demo/retain/eval.json \\
        --check "forget/probability<=0.5*target" --output_dir outputs/requests

With a SISA directory as --model there is no --recipe: the shards that hold the subjects are retrained without
them, in a copy of the directory, with the data and settings recorded in its sisa.json.

    llm-unlearn forget --subject person-0000 --model outputs/builtin/sisa --suite eval/builtin.yaml \\
        --check "forget/probability<=0.8*target" --output_dir outputs/requests
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from datasets import Dataset
from trl import TrlParser

from llm_unlearn.commands import evaluate
from llm_unlearn.data.loading import fingerprint, load_records
from llm_unlearn.data.schema import DataError
from llm_unlearn.deletion.ledger import LEDGER_FILE, Ledger, LedgerError, Request, utc_now
from llm_unlearn.deletion.paths import SisaPath, UnlearningPath, unlearning_path
from llm_unlearn.deletion.report import (
    REPORT_JSON,
    build_unlearning_report,
    sign,
    standard_statements,
    write_unlearning_report,
)
from llm_unlearn.evaluation import load_eval
from llm_unlearn.evaluation.gate import GateArguments, format_table, gate, parse_check, results_to_json
from llm_unlearn.files import write_json_atomic
from llm_unlearn.manifest import read_record, sha256_file
from llm_unlearn.sisa import is_sisa_dir, read_sisa_record

# The steps of one request in the order they run, each with the steps whose output it reads: when one of those
# runs again, so must it.
STEPS = {
    "resolve": (),
    "unlearn": ("resolve",),
    "evaluate_target": (),
    "evaluate": ("unlearn",),
    "gate": ("evaluate_target", "evaluate"),
    "report": ("resolve", "unlearn", "evaluate_target", "evaluate", "gate"),
}
# For the resumability tests: the process kills itself (SIGKILL, no clean-up) right after recording this step.
KILL_AFTER_STEP_ENV = "LLM_UNLEARN_KILL_AFTER_STEP"
BATCH_KEYS = ("request_id", "subjects")
# The request settings the target model's eval depends on.
TARGET_EVAL_SETTINGS = ("model", "data", "suite", "reference_eval", "max_eval_items")


@dataclass
class RequestSpec:
    """One deletion request to process: its subjects, and its id when the caller names it."""

    subjects: list[str]
    request_id: str | None = None


@dataclass
class ForgetArguments:
    """What to forget (subjects, or a batch file of requests), from which model and data, with which recipe,
    suite and checks, and where the outputs and the ledger go."""

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
    model: str | None = field(
        default=None,
        metadata={"aliases": ["--model_name_or_path"], "help": "The trained (target) model to unlearn from."},
    )
    data: str | None = field(
        default=None,
        metadata={
            "aliases": ["--dataset"],
            "help": "The data the model was trained on, as in the recipes (default: builtin; for a SISA run, "
            "the data in its sisa.json).",
        },
    )
    data_config: str | None = field(
        default=None, metadata={"aliases": ["--dataset_config"], "help": "Its Hub config or builtin options."}
    )
    data_split: str = field(
        default="train", metadata={"aliases": ["--dataset_split"], "help": "The split trained on."}
    )
    recipe: str | None = field(
        default=None,
        metadata={"help": "Unlearning recipe config (configs/...yaml); none for a SISA run as --model."},
    )
    suite: str | None = field(default=None, metadata={"help": "Eval suite YAML (eval/builtin.yaml)."})
    reference_eval: str | None = field(
        default=None, metadata={"help": "The retain model's eval.json (forget quality; the gate's 'retain')."}
    )
    checks: list[str] = field(
        default_factory=list,
        metadata={"help": "Gate checks 'NAME OP RHS' the unlearned model must pass (or repeat --check)."},
    )
    max_eval_items: int | None = field(default=None, metadata={"help": "Evaluate at most N items per split."})
    target_days: float | None = field(
        default=None,
        metadata={"help": "Time allowed from receipt to finish (default: 30 days, GDPR Art. 12(3))."},
    )
    output_dir: str = field(
        default="outputs/requests", metadata={"help": "One directory per request in here."}
    )
    ledger: str | None = field(
        default=None, metadata={"help": f"Ledger file (default output_dir/{LEDGER_FILE})."}
    )

    def __post_init__(self) -> None:
        if isinstance(self.subjects, str):
            self.subjects = [self.subjects]
        if isinstance(self.checks, str):
            self.checks = [self.checks]
        missing = [name for name in ("model", "suite") if getattr(self, name) is None]
        sisa = self.model is not None and is_sisa_dir(self.model)
        if self.recipe is None and not sisa:
            missing.insert(1, "recipe")
        if missing:
            raise ValueError(
                f"forget needs {', '.join('--' + name for name in missing)} (no --recipe for a SISA run as "
                "--model)."
            )
        if sisa and self.recipe is not None:
            raise ValueError(
                f"--model {self.model} is a SISA run: a deletion retrains its shards with the data and settings "
                "in its sisa.json, so --recipe does not apply; leave it out."
            )
        if sisa and self.data is None:
            recorded = read_sisa_record(self.model)["data"]
            self.data, self.data_config = recorded["dataset"], recorded["dataset_config"]
            self.data_split = recorded["dataset_split"]
        elif self.data is None:
            self.data = "builtin"
        if bool(self.subjects) == bool(self.requests_file):
            raise ValueError(
                "give the subjects of one request (--subject ID ...) or a --requests_file, not both."
            )
        if self.requests_file and self.request_id:
            raise ValueError(
                "--request_id names the request of --subject; in a --requests_file give it per line."
            )
        if not self.checks:
            raise ValueError(
                "forget needs at least one --check the unlearned model must pass, e.g. "
                "--check 'forget/probability<=0.5*target'."
            )
        for check in self.checks:
            parse_check(check)
        for name in ("recipe", "suite", "reference_eval", "requests_file"):
            path = getattr(self, name)
            if path is not None and not Path(path).is_file():
                raise FileNotFoundError(f"--{name} {path} does not exist.")

    def request_specs(self) -> list[RequestSpec]:
        """The requests to process: the one of --subject, or each line of the batch file."""
        if self.subjects:
            return [RequestSpec([str(subject) for subject in self.subjects], self.request_id)]
        return read_requests_file(self.requests_file)

    def ledger_path(self) -> Path:
        """Where the ledger is."""
        return Path(self.ledger) if self.ledger else Path(self.output_dir) / LEDGER_FILE

    def data_source(self) -> str:
        """The training data as the lineage names it: source, config and split."""
        config = f" ({self.data_config})" if self.data_config else ""
        return f"{self.data}{config} [{self.data_split}]"


def read_requests_file(path: str | os.PathLike) -> list[RequestSpec]:
    """Read a batch file: one JSON object per line with `subjects` (a list of ids) and optionally `request_id`."""
    specs = []
    accepted = 'each line is a JSON object {"subjects": ["id", ...]} with an optional "request_id"'
    for number, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            entry = json.loads(line)
        except json.JSONDecodeError as error:
            raise ValueError(f"{path} line {number}: not valid JSON ({error}); {accepted}.") from None
        if not isinstance(entry, dict) or set(entry) - set(BATCH_KEYS):
            raise ValueError(f"{path} line {number}: {line.strip()!r} is not accepted; {accepted}.")
        subjects = entry.get("subjects")
        if (
            not isinstance(subjects, list)
            or not subjects
            or not all(isinstance(s, str | int) for s in subjects)
        ):
            raise ValueError(f"{path} line {number}: 'subjects' must be a non-empty list of ids; {accepted}.")
        specs.append(RequestSpec([str(subject) for subject in subjects], entry.get("request_id")))
    if not specs:
        raise ValueError(f"{path} holds no requests; {accepted}.")
    return specs


def model_identity(model: str) -> str:
    """The model by content where it can be read (a local directory or file, `embedded`), else its Hub id."""
    record = read_record(model)
    return record.get("model_version") or record.get("sha256") or record["path"]


def request_settings(args: ForgetArguments, path: UnlearningPath, data: Dataset) -> dict[str, Any]:
    """What a request's result depends on, by content: model, data, recipe, suite, reference eval, checks.
    Part of the derived request id, so the same command finds the same request and a changed recipe makes a
    new one."""
    return {
        "model": model_identity(args.model),
        "data": {"source": args.data_source(), "fingerprint": fingerprint(data)},
        "recipe": path.identity(),
        "suite": sha256_file(args.suite),
        "reference_eval": sha256_file(args.reference_eval) if args.reference_eval else None,
        "checks": list(args.checks),
        "max_eval_items": args.max_eval_items,
    }


def _shown_path(model: str) -> str:
    """A local model by absolute path (as the report shows every artifact), else its Hub id or name."""
    path = Path(model).expanduser()
    return str(path.resolve()) if path.exists() else model


def _run_recipe(module: Any, flags: list[str]) -> Any:
    return module.main(*module.make_parser().parse_args_and_config(flags))


def _mean(aggregate: Any) -> float | None:
    if isinstance(aggregate, dict):
        return aggregate.get("mean", aggregate.get("value"))
    return None


def utility_change(target: dict[str, Any], unlearned: dict[str, Any]) -> dict[str, dict[str, float | None]]:
    """Model utility and every metric of the splits that are neither forgotten nor non-members, before
    (target) and after (unlearned)."""
    config = unlearned.get("config", {})
    excluded = {config.get("forget_split", "forget"), (config.get("mia") or {}).get("nonmembers")}
    change = {}
    before, after = (e.get("summary", {}).get("model_utility", {}).get("value") for e in (target, unlearned))
    if before is not None and after is not None:
        change["model_utility"] = {"before": before, "after": after}
    for split, body in unlearned["splits"].items():
        if split in excluded:
            continue
        for metric, aggregate in body["aggregates"].items():
            old = _mean(target["splits"].get(split, {}).get("aggregates", {}).get(metric))
            new = _mean(aggregate)
            if old is not None and new is not None:
                change[f"{split}/{metric}"] = {"before": old, "after": new}
    return change


class RequestRun:
    """One request's steps, run in order against the ledger: each skipped when its output is recorded and
    unchanged, recorded when a killed run wrote its output but not the record, else run."""

    def __init__(
        self, args: ForgetArguments, path: UnlearningPath, ledger: Ledger, request: Request, data: Dataset
    ) -> None:
        self.args, self.path, self.ledger, self.request, self.data = args, path, ledger, request, data
        output_dir = Path(args.output_dir).resolve()
        self.directory = output_dir / request.request_id
        # The target's eval depends on the model, the data, the suite and which subjects form the forget split,
        # not on the recipe or the checks: a request retried with another recipe reuses it.
        evaluated = {key: request.settings[key] for key in TARGET_EVAL_SETTINGS}
        target_key = hashlib.sha256(
            json.dumps({**evaluated, "subjects": request.subjects}, sort_keys=True).encode()
        ).hexdigest()[:16]
        self.outputs = {
            "resolve": self.directory / "resolve.json",
            "unlearn": self.directory / "model",
            "evaluate_target": output_dir / "target_evals" / target_key / "eval.json",
            "evaluate": self.directory / "eval" / "eval.json",
            "gate": self.directory / "gate.json",
            "report": self.directory / REPORT_JSON,
        }
        self.ran: set[str] = set()

    def run(self) -> Request:
        """Run the steps not done yet and record the outcome: verified when every check passes, else failed."""
        work: dict[str, Callable[[Path, bool], dict[str, Any]]] = {
            "resolve": self.resolve,
            "unlearn": self.unlearn,
            "evaluate_target": self.evaluate_target,
            "evaluate": self.evaluate,
            "gate": self.gate,
            "report": self.report,
        }
        for step, needs in STEPS.items():
            self._step(step, work[step], stale=any(need in self.ran for need in needs))
        status, reason = self.outcome()
        return self.ledger.set_status(self.request.request_id, status, reason)

    def outcome(self) -> tuple[str, str | None]:
        """`verified` when every gate check passed, else `failed` with the failed checks as the reason."""
        results = json.loads(self.outputs["gate"].read_text())
        failed = [check for check in results["checks"] if not check["passed"]]
        if not failed:
            return "verified", None
        reasons = "; ".join(
            f"{check['check']} (value {check['value']}, threshold {check['threshold']}"
            + (f": {check['reason']})" if check["reason"] else ")")
            for check in failed
        )
        return "failed", f"checks failed: {reasons}"

    def _step(self, step: str, work: Callable[[Path, bool], dict[str, Any]], stale: bool) -> None:
        request_id, output = self.request.request_id, self.outputs[step]
        record = self.ledger.step(request_id, step)
        if not stale and self.ledger.step_is_done(request_id, step):
            self.ledger.skip_step(request_id, step)
            print(f"[{request_id}] {step}: done before, output unchanged; skipped", flush=True)
            return
        if not stale and output.exists() and (record is None or record.status == "running"):
            # Outputs appear atomically, so one that is there is complete: a run was killed after writing it and
            # before recording it (or, for the target's eval, another request wrote it). A step that failed
            # after writing its output runs again.
            self.ledger.finish_step(request_id, step, output, detail={"found_complete": True})
            print(f"[{request_id}] {step}: output found complete; recorded", flush=True)
            return
        started = time.perf_counter()
        print(f"[{request_id}] {step}: running", flush=True)
        self.ledger.start_step(request_id, step)
        try:
            # An output that is there but stale, or changed since it was recorded, is replaced.
            detail = work(output, output.exists())
        except Exception as error:
            self.ledger.fail_step(request_id, step, f"{type(error).__name__}: {error}")
            raise
        self.ledger.finish_step(request_id, step, output, detail)
        self.ran.add(step)
        print(f"[{request_id}] {step}: done in {time.perf_counter() - started:.1f} s", flush=True)
        if os.environ.get(KILL_AFTER_STEP_ENV) == step:
            os.kill(os.getpid(), signal.SIGKILL)

    # The steps. Each writes its output atomically (`replace`: an output is there and must be replaced) and
    # returns what the ledger records about it.

    def resolve(self, output: Path, replace: bool) -> dict[str, Any]:
        """Record the lineage (once) and resolve the subjects' examples: count and fingerprints per subject."""
        self.path.check_subjects(self.request.subjects)
        dataset_fingerprint = self.ledger.record_training_data(
            self.data, self.args.data_source(), self.request.settings["model"], _shown_path(self.args.model)
        )
        examples = self.ledger.examples_of(self.request.subjects, dataset_fingerprint)
        fingerprints = {
            subject: [e.example_fingerprint for e in examples if e.subject_id == subject]
            for subject in self.request.subjects
        }
        write_json_atomic(
            {
                "request_id": self.request.request_id,
                "subjects": self.request.subjects,
                "data": {"source": self.args.data_source(), "fingerprint": dataset_fingerprint,
                         "num_examples": len(self.data)},
                "num_examples": len(examples),
                "examples": fingerprints,
                "model_versions": self.ledger.model_versions_with(self.request.subjects),
            },
            output,
        )  # fmt: skip
        return {"num_examples": len(examples)}

    def _data_flags(self) -> list[str]:
        flags = ["--dataset", self.args.data, "--dataset_split", self.args.data_split]
        if self.args.data_config is not None:
            flags += ["--dataset_config", self.args.data_config]
        return [*flags, "--forget_subjects", *self.request.subjects]

    def unlearn(self, output: Path, replace: bool) -> dict[str, Any]:
        """Unlearn the request's subjects: the recipe with them as the forget set, or their SISA deletion."""
        detail = self.path.unlearn(output, replace, self.request.subjects, self._data_flags())
        resolved = json.loads(self.outputs["resolve"].read_text())["num_examples"]
        if detail["num_examples"] != resolved:
            raise LedgerError(
                f"{self.path.kind} unlearning removed {detail['num_examples']} examples, but the lineage holds "
                f"{resolved} of subjects {self.request.subjects}; does the recipe's config hold some of them out "
                "(holdout_*)?"
            )
        return detail

    def _evaluate(self, model: str, output: Path, replace: bool, *flags: str) -> dict[str, Any]:
        reference = ["--reference_eval", self.args.reference_eval] if self.args.reference_eval else []
        items = ["--max_items", str(self.args.max_eval_items)] if self.args.max_eval_items else []
        _run_recipe(
            evaluate,
            ["--config", self.args.suite, "--model_name_or_path", model, "--output_dir", str(output.parent),
             *self._data_flags(), *reference, *items, *flags, "--overwrite", str(replace).lower()],
        )  # fmt: skip
        return {"model": model}

    def evaluate_target(self, output: Path, replace: bool) -> dict[str, Any]:
        """Evaluate the target model on the request's forget split; the robustness attacks are for the
        unlearned model (the target has forgotten nothing for them to bring back)."""
        return self._evaluate(self.args.model, output, replace, "--attacks", "none")

    def evaluate(self, output: Path, replace: bool) -> dict[str, Any]:
        """Evaluate the unlearned model with the whole suite."""
        return self._evaluate(str(self.outputs["unlearn"]), output, replace)

    def gate(self, output: Path, replace: bool) -> dict[str, Any]:
        """Check the unlearned model's eval against the checks (`target`: the target's eval)."""
        gate_args = GateArguments(
            eval_json=str(self.outputs["evaluate"]),
            checks=list(self.args.checks),
            target=str(self.outputs["evaluate_target"]),
            retain=self.args.reference_eval,
        )
        results = gate(gate_args)
        print(format_table(results), flush=True)
        record = results_to_json(results, gate_args)
        write_json_atomic(record, output)
        return {"passed": record["passed"], "num_failed": record["num_failed"]}

    def report(self, output: Path, replace: bool) -> dict[str, Any]:
        """Record the new model in the lineage and write the signed unlearning report (json and md) of the
        request's outcome."""
        model = self.outputs["unlearn"]
        resolved = json.loads(self.outputs["resolve"].read_text())
        target_eval, unlearned_eval = (
            load_eval(self.outputs["evaluate_target"]),
            load_eval(self.outputs["evaluate"]),
        )
        status, reason = self.outcome()
        finished_at = utc_now()
        contained = [
            {"role": "trained on the subjects' data (lineage)", "path": path or "not recorded", "model_version": version}
            for version, path in resolved["model_versions"].items()
        ]  # fmt: skip
        # The artifacts hash the new model's weights; the lineage takes that version instead of hashing again.
        artifacts = self.path.artifacts(model, contained)
        # The new model holds the training data it derives from: all of it after approximate unlearning (which
        # proves no removal), the rest after a SISA deletion. A later request finds it among the versions that
        # contained its subjects' data.
        kept = self.path.data_after(self.data, self.request.subjects)
        self.ledger.record_training_data(
            kept, self.args.data_source(), artifacts["new_model"]["model_version"], str(model)
        )
        compute_s = sum(
            (
                datetime.fromisoformat(step.finished_at) - datetime.fromisoformat(step.started_at)
            ).total_seconds()
            for step in self.ledger.steps(self.request.request_id)
            if step.status == "done" and step.finished_at is not None
        )
        timing: dict[str, Any] = {"compute_s": compute_s}
        if self.args.target_days is not None:
            timing.update(target_s=self.args.target_days * 86400.0, target=f"{self.args.target_days:g} days")
        guarantee, limitations = standard_statements(self.path.kind)
        report = build_unlearning_report(
            request={"request_id": self.request.request_id, "subject_ids": self.request.subjects,
                     "status": status, "reason": reason, "received_at": self.request.created_at,
                     "finished_at": finished_at, "ledger": str(self.ledger.path.resolve())},
            removed=resolved["examples"],
            artifacts=artifacts,
            method=self.path.method(model),
            comparison=self.path.comparison(model, unlearned_eval, self.args.reference_eval),
            tests=json.loads(self.outputs["gate"].read_text())["checks"],
            utility=utility_change(target_eval, unlearned_eval),
            timing=timing,
            guarantee=guarantee,
            limitations=limitations,
        )  # fmt: skip
        write_unlearning_report(report, output.parent, overwrite=replace)
        # The content hash kept apart from the report, in the ledger: a later change to the report shows.
        return {"status": status, "content_hash": sign(report)["signature"]["content_hash"]}


def process_request(
    args: ForgetArguments,
    path: UnlearningPath,
    ledger: Ledger,
    spec: RequestSpec,
    data: Dataset,
    settings: dict[str, Any],
) -> Request:
    """Open (or find) one request and bring it to verified or failed; a request already finished is left as
    it is. An error in a step marks the request failed with the error, and is raised."""
    request = ledger.open_request(
        spec.subjects, spec.request_id, key=json.dumps(settings, sort_keys=True), settings=settings
    )
    request_id = request.request_id
    if request.status == "verified" or (
        request.status == "failed" and all(ledger.step_is_done(request_id, step) for step in STEPS)
    ):
        print(f"[{request_id}] already {request.status}" + (f": {request.reason}" if request.reason else ""))
        return request
    ledger.set_status(request_id, "running")
    try:
        return RequestRun(args, path, ledger, request, data).run()
    except Exception as error:
        ledger.set_status(request_id, "failed", f"{type(error).__name__}: {error}")
        raise


def main(args: ForgetArguments) -> int:
    """Process every request in order and print each outcome; returns 0 when all are verified, else 1."""
    specs = args.request_specs()
    path = unlearning_path(args.model, args.recipe)
    data = load_records(args.data, config=args.data_config, split=args.data_split)
    if isinstance(path, SisaPath) and fingerprint(data) != path.record["data"]["fingerprint"]:
        recorded = path.record["data"]
        raise DataError(
            f"--data {args.data_source()} is not the data the SISA run {args.model} was trained on "
            f"({recorded['dataset']} {recorded['dataset_config'] or ''} [{recorded['dataset_split']}], "
            f"fingerprint {recorded['fingerprint']}); leave --data out to use that data."
        )
    settings = request_settings(args, path, data)
    lineage = path.lineage_data(data)
    outcomes: list[tuple[RequestSpec, str, str]] = []
    with Ledger(args.ledger_path()) as ledger:
        for spec in specs:
            try:
                request = process_request(args, path, ledger, spec, lineage, settings)
                outcomes.append((spec, request.request_id, request.status))
            except Exception as error:
                # One request's error does not stop the batch; the ledger holds it as the request's reason.
                print(
                    f"forget: request for {spec.subjects} failed: {type(error).__name__}: {error}",
                    file=sys.stderr,
                )
                outcomes.append((spec, spec.request_id or "-", "failed"))
    print("\nrequest                subjects  status")
    for spec, request_id, status in outcomes:
        print(f"{request_id:<22} {','.join(spec.subjects)}  {status}")
    print(f"ledger: {args.ledger_path()}")
    return 0 if all(status == "verified" for _, _, status in outcomes) else 1


def make_parser(subparsers: argparse._SubParsersAction | None = None, prog: str | None = None) -> TrlParser:
    """The forget parser: repeatable --subject and --check, and `--config file.yaml`."""
    if subparsers is not None:
        parser = subparsers.add_parser(
            "forget", help=__doc__.splitlines()[0], dataclass_types=[ForgetArguments]
        )
    else:
        parser = TrlParser(
            [ForgetArguments],
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


if __name__ == "__main__":
    sys.exit(main(*make_parser().parse_args_and_config()))
