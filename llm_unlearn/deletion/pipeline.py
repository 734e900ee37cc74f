"""Process deletion requests end to end: find each request's subjects' training examples through the lineage,
unlearn them (with an approximate recipe, or exactly by deleting them from a SISA run), evaluate the target and
the unlearned model with a suite, gate the result, write the signed unlearning report, and record every step and
the outcome in the ledger.

Idempotent and resumable: each step's output appears atomically and the ledger records its hash, so processing
the same request again skips every step whose output is still there unchanged and finishes what a killed run
left. `process` is the entry point; `llm-unlearn forget` parses its arguments and prints the outcomes.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from datasets import Dataset

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
from llm_unlearn.evaluation.gate import parse_check, run_gate
from llm_unlearn.evaluation.results import load_eval, utility_change
from llm_unlearn.evaluation.runner import evaluate_model
from llm_unlearn.evaluation.suite import Suite
from llm_unlearn.files import write_json_atomic
from llm_unlearn.manifest import read_record, sha256_file
from llm_unlearn.models import ModelArguments

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
BATCH_KEYS = ("request_id", "subjects")
# The request settings the target model's eval depends on.
TARGET_EVAL_SETTINGS = ("model", "data", "suite", "reference_eval", "max_eval_items")
DEFAULT_DATASET = "builtin"


@dataclass
class RequestSpec:
    """One deletion request to process: its subjects, and its id when the caller names it."""

    subjects: list[str]
    request_id: str | None = None


@dataclass
class Outcome:
    """How one request ended: its id (None when it failed before the ledger opened it), status and error."""

    spec: RequestSpec
    request_id: str | None
    status: str
    error: str | None = None


@dataclass
class DeletionSettings:
    """How requests are carried out and checked: the data the model was trained on, the recipe, the suite and
    the checks, and where the outputs and the ledger go."""

    dataset: str | None = field(
        default=None,
        metadata={
            "help": f"The data the model was trained on, as in the recipes (default: {DEFAULT_DATASET}; for a SISA "
            "run, the data in its sisa.json)."
        },
    )
    dataset_config: str | None = field(default=None, metadata={"help": "Its Hub config or builtin options."})
    dataset_split: str = field(default="train", metadata={"help": "The split trained on."})
    recipe: str | None = field(
        default=None,
        metadata={"help": "Unlearning recipe config (configs/...yaml); none for a SISA run as the model."},
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
    output_dir: str = field(default="outputs/requests", metadata={"help": "One directory per request in here."})
    ledger: str | None = field(
        default=None, metadata={"help": f"Ledger file (default output_dir/{LEDGER_FILE})."}
    )

    def __post_init__(self) -> None:
        if isinstance(self.checks, str):
            self.checks = [self.checks]
        if self.suite is None:
            raise ValueError("deletion requests need --suite, the eval suite YAML (e.g. eval/builtin.yaml).")
        if not self.checks:
            raise ValueError(
                "deletion requests need at least one --check the unlearned model must pass, e.g. "
                "--check 'forget/probability<=0.5*target'."
            )
        for check in self.checks:
            parse_check(check)
        for name in ("recipe", "suite", "reference_eval"):
            path = getattr(self, name)
            if path is not None and not Path(path).is_file():
                raise FileNotFoundError(f"--{name} {path} does not exist.")

    def for_path(self, path: UnlearningPath) -> DeletionSettings:
        """These settings with the training data filled in when none is given: a SISA run's is the data its
        sisa.json records, else the built-in data."""
        if self.dataset is not None:
            return self
        if not isinstance(path, SisaPath):
            return dataclasses.replace(self, dataset=DEFAULT_DATASET)
        recorded = path.record["data"]
        return dataclasses.replace(
            self, dataset=recorded["dataset"], dataset_config=recorded["dataset_config"],
            dataset_split=recorded["dataset_split"],
        )  # fmt: skip

    def ledger_path(self) -> Path:
        """Where the ledger is."""
        return Path(self.ledger) if self.ledger else Path(self.output_dir) / LEDGER_FILE

    def data_source(self) -> str:
        """The training data as the lineage names it: source, config and split."""
        config = f" ({self.dataset_config})" if self.dataset_config else ""
        return f"{self.dataset}{config} [{self.dataset_split}]"

    def data_options(self) -> dict[str, Any]:
        """The training data as recipe and suite options."""
        return {"dataset": self.dataset, "dataset_config": self.dataset_config, "dataset_split": self.dataset_split}


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


def request_settings(
    settings: DeletionSettings, model_args: ModelArguments, path: UnlearningPath, data: Dataset
) -> dict[str, Any]:
    """What a request's result depends on, by content: model, data, recipe, suite, reference eval, checks.
    Part of the derived request id, so the same command finds the same request and a changed recipe makes a
    new one."""
    return {
        "model": model_identity(model_args.model_name_or_path),
        "data": {"source": settings.data_source(), "fingerprint": fingerprint(data)},
        "recipe": path.identity(),
        "suite": sha256_file(settings.suite),
        "reference_eval": sha256_file(settings.reference_eval) if settings.reference_eval else None,
        "checks": list(settings.checks),
        "max_eval_items": settings.max_eval_items,
    }


def _shown_path(model: str) -> str:
    """A local model by absolute path (as the report shows every artifact), else its Hub id or name."""
    path = Path(model).expanduser()
    return str(path.resolve()) if path.exists() else model


class RequestRun:
    """One request's steps, run in order against the ledger: each skipped when its output is recorded and
    unchanged, recorded when a killed run wrote its output but not the record, else run."""

    def __init__(
        self,
        settings: DeletionSettings,
        model_args: ModelArguments,
        path: UnlearningPath,
        ledger: Ledger,
        request: Request,
        data: Dataset,
    ) -> None:
        self.settings, self.model_args, self.path = settings, model_args, path
        self.ledger, self.request, self.data = ledger, request, data
        output_dir = Path(settings.output_dir).resolve()
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

    # The steps. Each writes its output atomically (`replace`: an output is there and must be replaced) and
    # returns what the ledger records about it.

    def resolve(self, output: Path, replace: bool) -> dict[str, Any]:
        """Record the lineage (once) and resolve the subjects' examples: count and fingerprints per subject."""
        self.path.check_subjects(self.request.subjects)
        dataset_fingerprint = self.ledger.record_training_data(
            self.data, self.settings.data_source(), self.request.settings["model"],
            _shown_path(self.model_args.model_name_or_path),
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
                "data": {"source": self.settings.data_source(), "fingerprint": dataset_fingerprint,
                         "num_examples": len(self.data)},
                "num_examples": len(examples),
                "examples": fingerprints,
                "model_versions": self.ledger.model_versions_with(self.request.subjects),
            },
            output,
        )  # fmt: skip
        return {"num_examples": len(examples)}

    def unlearn(self, output: Path, replace: bool) -> dict[str, Any]:
        """Unlearn the request's subjects: the recipe with them as the forget set, or their SISA deletion."""
        detail = self.path.unlearn(output, replace, self.request.subjects, self.settings.data_options())
        resolved = json.loads(self.outputs["resolve"].read_text())["num_examples"]
        if detail["num_examples"] != resolved:
            raise LedgerError(
                f"{self.path.kind} unlearning removed {detail['num_examples']} examples, but the lineage holds "
                f"{resolved} of subjects {self.request.subjects}; does the recipe's config hold some of them out "
                "(holdout_*)?"
            )
        return detail

    def _evaluate(self, model_args: ModelArguments, output: Path, replace: bool, attacks: bool) -> dict[str, Any]:
        suite = Suite.from_yaml(
            self.settings.suite, **self.settings.data_options(), forget_subjects=list(self.request.subjects),
            reference_eval=self.settings.reference_eval,
            **({"max_items": self.settings.max_eval_items} if self.settings.max_eval_items else {}),
        )  # fmt: skip
        evaluate_model(model_args, suite if attacks else suite.without_attacks(), output.parent, overwrite=replace)
        return {"model": model_args.model_name_or_path}

    def evaluate_target(self, output: Path, replace: bool) -> dict[str, Any]:
        """Evaluate the target model on the request's forget split; the robustness attacks are for the
        unlearned model (the target has forgotten nothing for them to bring back)."""
        return self._evaluate(self.model_args, output, replace, attacks=False)

    def evaluate(self, output: Path, replace: bool) -> dict[str, Any]:
        """Evaluate the unlearned model with the whole suite."""
        unlearned = ModelArguments(
            model_name_or_path=str(self.outputs["unlearn"]), dtype=self.model_args.dtype,
            trust_remote_code=self.model_args.trust_remote_code,
        )  # fmt: skip
        return self._evaluate(unlearned, output, replace, attacks=True)

    def gate(self, output: Path, replace: bool) -> dict[str, Any]:
        """Check the unlearned model's eval against the checks (`target`: the target's eval)."""
        result = run_gate(
            self.outputs["evaluate"], list(self.settings.checks), target=self.outputs["evaluate_target"],
            retain=self.settings.reference_eval,
        )  # fmt: skip
        print(result.table(), flush=True)
        record = result.to_json()
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
            kept, self.settings.data_source(), artifacts["new_model"]["model_version"], str(model)
        )
        compute_s = sum(
            (
                datetime.fromisoformat(step.finished_at) - datetime.fromisoformat(step.started_at)
            ).total_seconds()
            for step in self.ledger.steps(self.request.request_id)
            if step.status == "done" and step.finished_at is not None
        )
        timing: dict[str, Any] = {"compute_s": compute_s}
        if self.settings.target_days is not None:
            timing.update(target_s=self.settings.target_days * 86400.0, target=f"{self.settings.target_days:g} days")
        guarantee, limitations = standard_statements(self.path.kind)
        report = build_unlearning_report(
            request={"request_id": self.request.request_id, "subject_ids": self.request.subjects,
                     "status": status, "reason": reason, "received_at": self.request.created_at,
                     "finished_at": finished_at, "ledger": str(self.ledger.path.resolve())},
            removed=resolved["examples"],
            artifacts=artifacts,
            method=self.path.method(model),
            comparison=self.path.comparison(model, unlearned_eval, self.settings.reference_eval),
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
    settings: DeletionSettings,
    model_args: ModelArguments,
    path: UnlearningPath,
    ledger: Ledger,
    spec: RequestSpec,
    data: Dataset,
    request_settings: dict[str, Any],
) -> Request:
    """Open (or find) one request and bring it to verified or failed; a request already finished is left as
    it is. An error in a step marks the request failed with the error, and is raised."""
    request = ledger.open_request(
        spec.subjects, spec.request_id, key=json.dumps(request_settings, sort_keys=True), settings=request_settings
    )
    request_id = request.request_id
    if request.status == "verified" or (
        request.status == "failed" and all(ledger.step_is_done(request_id, step) for step in STEPS)
    ):
        print(f"[{request_id}] already {request.status}" + (f": {request.reason}" if request.reason else ""))
        return request
    ledger.set_status(request_id, "running")
    try:
        return RequestRun(settings, model_args, path, ledger, request, data).run()
    except Exception as error:
        ledger.set_status(request_id, "failed", f"{type(error).__name__}: {error}")
        raise


def process(
    requests: Sequence[RequestSpec], settings: DeletionSettings, model_args: ModelArguments
) -> list[Outcome]:
    """Carry out every request in order against the ledger (resuming any a killed run left) and return each
    outcome; one request's error does not stop the batch, the ledger records it as the request's reason."""
    model = model_args.model_name_or_path
    if not model:
        raise ValueError("deletion requests need the trained model: pass --model_name_or_path.")
    path = unlearning_path(model_args, settings.recipe)
    settings = settings.for_path(path)
    data = load_records(settings.dataset, config=settings.dataset_config, split=settings.dataset_split)
    if isinstance(path, SisaPath) and fingerprint(data) != path.record["data"]["fingerprint"]:
        recorded = path.record["data"]
        raise DataError(
            f"--dataset {settings.data_source()} is not the data the SISA run {model} was trained on "
            f"({recorded['dataset']} {recorded['dataset_config'] or ''} [{recorded['dataset_split']}], "
            f"fingerprint {recorded['fingerprint']}); leave --dataset out to use that data."
        )
    identity = request_settings(settings, model_args, path, data)
    lineage = path.lineage_data(data)
    outcomes = []
    with Ledger(settings.ledger_path()) as ledger:
        for spec in requests:
            try:
                request = process_request(settings, model_args, path, ledger, spec, lineage, identity)
                outcomes.append(Outcome(spec, request.request_id, request.status))
            except Exception as error:
                outcomes.append(Outcome(spec, spec.request_id, "failed", f"{type(error).__name__}: {error}"))
    return outcomes
