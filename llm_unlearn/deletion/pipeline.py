"""Process deletion requests end to end: find each request's subjects' training examples through the lineage,
unlearn them (with an approximate recipe, or exactly by deleting them from a SISA run), evaluate the target and
the unlearned model with a suite, gate the result, write the signed unlearning report, and record every step and
the outcome in the ledger.

Idempotent and resumable: each step's output appears atomically and the ledger records its hash, so processing
the same request again skips every step whose output is still there unchanged and finishes what a killed run
left. `process` is the entry point; `llm-unlearn forget` parses its arguments and prints the outcomes.

Bad input is refused before anything is recorded and before any model loads, each with a message that names
what is wrong and what is accepted: a ledger or output directory that cannot be used, a subject the training
data does not hold, a request id used twice or reused with other subjects or settings, a recipe, suite or
reference eval that does not parse.
"""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import json
import os
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from datasets import Dataset

from llm_unlearn.data.loading import fingerprint, load_records
from llm_unlearn.data.schema import SUBJECT_FIELD, DataError
from llm_unlearn.deletion.ledger import (
    LEDGER_FILE,
    Ledger,
    LedgerError,
    LedgerFileError,
    Request,
    check_ledger,
    request_id_for,
    utc_now,
)
from llm_unlearn.deletion.paths import SisaPath, UnlearningPath, unlearning_path
from llm_unlearn.deletion.report import (
    REPORT_JSON,
    build_unlearning_report,
    sign,
    standard_statements,
    write_unlearning_report,
)
from llm_unlearn.evaluation.gate import parse_check, run_gate
from llm_unlearn.evaluation.reference_logs import load_reference
from llm_unlearn.evaluation.results import load_eval, utility_change
from llm_unlearn.evaluation.runner import evaluate_model
from llm_unlearn.evaluation.suite import Suite
from llm_unlearn.files import check_writable_dir, write_json_atomic
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
# A request id names the request's directory in the output directory, beside these.
RESERVED_IDS = ("target_evals", LEDGER_FILE)
MAX_ID_LENGTH = 128
BATCH_FORMAT = 'each line is a JSON object {"subjects": ["id", ...]} with an optional "request_id"'


class RequestError(ValueError):
    """A deletion request that cannot be carried out as given (a subject the data does not hold, a request id
    used twice or reused with other subjects or settings): refused before anything is recorded."""


@dataclass
class RequestSpec:
    """One deletion request to process: its subjects, its id when the caller names it, and where it was given
    (`--subject`, a line of a batch file) for messages."""

    subjects: list[str]
    request_id: str | None = None
    origin: str | None = None

    def describe(self) -> str:
        """The request as a message names it: its id when named, and where it was given."""
        if self.request_id is None:
            return f"the request ({self.origin})" if self.origin else f"the request for subjects {self.subjects}"
        return f"request {self.request_id}" + (f" ({self.origin})" if self.origin else "")

    def new_id_hint(self) -> str:
        """How to give this request another id."""
        if self.origin == "--subject":
            where = "another --request_id"
        elif self.origin and " line " in self.origin:
            where = 'that line another "request_id"'
        else:
            where = "it another request id"
        return f"give {where}, or none (an id is then derived from the subjects and settings)"


def check_request_id(request_id: Any, where: str) -> str:
    """`request_id` when it can name a request (and its directory under the output directory), else a
    ValueError that says what is accepted."""
    accepted = (
        f"a request id names the request's directory under --output_dir, so it is a string of 1 to "
        f"{MAX_ID_LENGTH} characters without '/', '\\' or control characters, not starting with '.', and not "
        f"{' or '.join(repr(name) for name in RESERVED_IDS)}"
    )
    if not isinstance(request_id, str):
        raise ValueError(f"{where}: request id {request_id!r} is a {type(request_id).__name__}; {accepted}.")
    if (
        not request_id.strip()
        or len(request_id) > MAX_ID_LENGTH
        or request_id.startswith(".")
        or re.search(r"[/\\\x00-\x1f\x7f]", request_id)
        or request_id in RESERVED_IDS
    ):
        raise ValueError(f"{where}: request id {request_id!r} is not accepted; {accepted}.")
    return request_id


@dataclass
class Outcome:
    """How one request ended: its id, status and error."""

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
            if path is not None and Path(path).is_dir():
                raise IsADirectoryError(f"--{name} {path} is a directory; give a file.")
            if path is not None and not Path(path).is_file():
                raise FileNotFoundError(f"--{name} {path} does not exist.")
        if self.max_eval_items is not None and self.max_eval_items < 1:
            raise ValueError(
                f"--max_eval_items must be at least 1, got {self.max_eval_items}; leave it out to evaluate every "
                "item."
            )
        if self.target_days is not None and not self.target_days > 0:
            raise ValueError(f"--target_days must be a positive number of days, got {self.target_days}.")

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
    path = Path(path)
    accepted = BATCH_FORMAT
    if path.is_dir():
        raise IsADirectoryError(f"requests file {path} is a directory; give a JSON-lines file: {accepted}.")
    if not path.is_file():
        raise FileNotFoundError(f"requests file {path} does not exist; give a JSON-lines file: {accepted}.")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as error:
        raise ValueError(
            f"{path}: not UTF-8 text (byte {error.object[error.start]:#x} at offset {error.start}); save it as "
            f"UTF-8: {accepted}."
        ) from None
    lines = [(number, line) for number, line in enumerate(text.splitlines(), start=1) if line.strip()]
    try:
        whole = json.loads(text)
    except ValueError:
        whole = None
    if isinstance(whole, list) or (isinstance(whole, dict) and len(lines) > 1):
        kind = "array" if isinstance(whole, list) else "object"
        raise ValueError(
            f"{path} holds one JSON {kind} spread over the file, but a requests file is JSON lines: {accepted}, "
            "one request per line."
        )
    specs = []
    for number, line in lines:
        where = f"{path} line {number}"
        try:
            entry = json.loads(line)
        except json.JSONDecodeError as error:
            raise ValueError(f"{where}: not valid JSON ({error}); {accepted}.") from None
        if not isinstance(entry, dict):
            raise ValueError(f"{where}: {line.strip()!r} is a JSON {type(entry).__name__}; {accepted}.")
        unknown = sorted(set(entry) - set(BATCH_KEYS))
        if unknown:
            guesses = {key: difflib.get_close_matches(key, BATCH_KEYS, n=1) for key in unknown}
            shown = ", ".join(
                repr(key) + (f" (did you mean {guesses[key][0]!r}?)" if guesses[key] else "") for key in unknown
            )
            raise ValueError(f"{where}: unknown key(s) {shown}; {accepted}.")
        if "subjects" not in entry:
            raise ValueError(f"{where}: no 'subjects'; {accepted}.")
        subjects = entry["subjects"]
        if (
            not isinstance(subjects, list)
            or not subjects
            or not all(isinstance(s, str | int) and not isinstance(s, bool) for s in subjects)
        ):
            raise ValueError(
                f"{where}: 'subjects' must be a non-empty list of ids (strings), got {subjects!r}; {accepted}."
            )
        request_id = entry.get("request_id")
        if request_id is not None:
            check_request_id(request_id, where)
        specs.append(RequestSpec([str(subject) for subject in subjects], request_id, origin=where))
    if not specs:
        raise ValueError(f"{path} holds no requests; {accepted}.")
    return specs


def _closest(subject: str, known: Sequence[str]) -> str:
    matches = difflib.get_close_matches(subject, known, n=3, cutoff=0.6)
    return f"{subject!r} (closest: {', '.join(matches)})" if matches else f"{subject!r} (no close match)"


def _sample(values: Sequence[str], limit: int = 5) -> str:
    return ", ".join(values[:limit]) + (", ..." if len(values) > limit else "")


def check_subjects(
    requests: Sequence[RequestSpec], data: Dataset, settings: DeletionSettings, path: UnlearningPath
) -> None:
    """Refuse a request whose subjects the training data does not hold (naming the closest it does), or that
    this way of unlearning cannot remove (a subject deleted from a SISA run before)."""
    source = settings.data_source()
    again = (
        "give subject ids of its subject_id field, or --dataset (with --dataset_config and --dataset_split) the "
        "data the model was trained on; nothing was recorded in the ledger"
    )
    if SUBJECT_FIELD not in data.column_names:
        raise RequestError(
            f"the training data {source} has no {SUBJECT_FIELD!r} field, so a deletion request cannot name whose "
            "examples to remove; give --dataset (with --dataset_config and --dataset_split) the data the model "
            f"was trained on, with a {SUBJECT_FIELD!r} per example; nothing was recorded in the ledger."
        )
    known = sorted({str(subject) for subject in data[SUBJECT_FIELD] if subject is not None})
    known_set = set(known)
    holds = f"{len(known)} subject(s): {_sample(known)}" if known else "no subject ids"
    for spec in requests:
        unknown = [subject for subject in dict.fromkeys(map(str, spec.subjects)) if subject not in known_set]
        if unknown:
            raise RequestError(
                f"{spec.describe()}: unknown subject id(s) {'; '.join(_closest(s, known) for s in unknown)}. "
                f"The training data {source} holds {holds}; {again}."
            )
        try:
            path.check_subjects(spec.subjects)
        except LedgerError as error:
            raise RequestError(f"{spec.describe()}: {error} Nothing was recorded in the ledger.") from error


def check_inputs(settings: DeletionSettings, path: UnlearningPath, requests: Sequence[RequestSpec]) -> None:
    """Read the recipe, the suite and the reference eval as the steps will, so that a bad one fails now
    rather than after a model has been trained."""
    subjects = list(requests[0].subjects)
    Suite.from_yaml(
        settings.suite, **settings.data_options(), forget_subjects=subjects,
        reference_eval=settings.reference_eval,
        **({"max_items": settings.max_eval_items} if settings.max_eval_items else {}),
    )  # fmt: skip
    if settings.reference_eval:
        load_reference(settings.reference_eval)
    for spec in requests:
        path.check_settings(spec.subjects, settings.data_options(), settings.output_dir)


def _shown(value: Any) -> str:
    if isinstance(value, str) and re.fullmatch(r"[0-9a-f]{32,}", value):
        return f"sha256 {value[:12]}..."
    if isinstance(value, dict):
        return "{" + ", ".join(f"{key}: {_shown(item)}" for key, item in value.items()) + "}"
    return repr(value)


def request_ids(requests: Sequence[RequestSpec], identity: dict[str, Any]) -> list[str]:
    """Each request's id (named, or derived from its subjects and the settings); a request given twice is an
    error."""
    key = json.dumps(identity, sort_keys=True)
    ids = [spec.request_id or request_id_for(spec.subjects, key) for spec in requests]
    first: dict[str, RequestSpec] = {}
    for spec, request_id in zip(requests, ids, strict=True):
        earlier = first.setdefault(request_id, spec)
        if earlier is spec:
            continue
        subjects = sorted(set(spec.subjects))
        if sorted(set(earlier.subjects)) == subjects:
            raise RequestError(
                f"{spec.describe()} repeats {earlier.describe()}: the same subjects {subjects} and settings, so "
                f"the same request {request_id}; remove one of them."
            )
        raise RequestError(
            f"{spec.describe()}: {earlier.describe()} has this id too, for subjects "
            f"{sorted(set(earlier.subjects))}; each request needs its own id: {spec.new_id_hint()}."
        )
    return ids


def check_reopened(ledger: Ledger, spec: RequestSpec, request_id: str, identity: dict[str, Any]) -> None:
    """Refuse a request whose id the ledger holds with other subjects or settings, saying what differs."""
    existing = ledger.find_request(request_id)
    if existing is None:
        return
    subjects = sorted({str(subject) for subject in spec.subjects})
    named = f"{spec.describe()}: request {request_id} in ledger {ledger.path}"
    if spec.request_id is not None:
        named = f"{spec.describe()}: it is in ledger {ledger.path}"
    if existing.subjects != subjects:
        raise RequestError(
            f"{named} for subjects {existing.subjects}, not {subjects}; a request id names one request: "
            f"{spec.new_id_hint()}."
        )
    settings = json.loads(json.dumps(identity, sort_keys=True))
    if existing.settings != settings:
        changes = "; ".join(
            f"{key} {_shown(existing.settings.get(key))} then, {_shown(settings.get(key))} now"
            for key in sorted(set(existing.settings) | set(settings))
            if existing.settings.get(key) != settings.get(key)
        )
        raise RequestError(
            f"{named} ({existing.status}), opened with other settings: {changes}. A request keeps the "
            f"settings it was opened with: give those to resume it, or {spec.new_id_hint()}."
        )


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
        except LedgerFileError:
            raise  # the ledger cannot take the failure either
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
    except LedgerFileError:
        raise  # the ledger cannot take the failure either
    except Exception as error:
        ledger.set_status(request_id, "failed", f"{type(error).__name__}: {error}")
        raise


def process(
    requests: Sequence[RequestSpec], settings: DeletionSettings, model_args: ModelArguments
) -> list[Outcome]:
    """Carry out every request in order against the ledger (resuming any a killed run left) and return each
    outcome; one request's error does not stop the batch, the ledger records it as the request's reason.

    Bad input raises before any request is recorded and before any model loads: the ledger and the output
    directory are checked first, then the data, the subjects, the recipe, suite and reference eval, and the
    request ids against the ledger. A ledger that cannot be written mid-batch (LedgerFileError) stops it."""
    model = model_args.model_name_or_path
    if not model:
        raise ValueError("deletion requests need the trained model: pass --model_name_or_path.")
    requests = list(requests)
    if not requests:
        raise RequestError(
            "no deletion requests given: name the subjects of one (--subject) or a --requests_file."
        )
    for spec in requests:
        if not spec.subjects:
            raise RequestError(f"{spec.describe()} names no subjects; a deletion request needs at least one.")
        if spec.request_id is not None:
            check_request_id(spec.request_id, spec.origin or "request")
    # First the places the results go: a bad --ledger or --output_dir fails at once, before the data is read,
    # and nothing is created until every input has been checked.
    ledger_path = settings.ledger_path()
    check_ledger(ledger_path)
    check_writable_dir(settings.output_dir)
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
    check_subjects(requests, data, settings, path)
    check_inputs(settings, path, requests)
    identity = request_settings(settings, model_args, path, data)
    ids = request_ids(requests, identity)
    lineage = path.lineage_data(data)
    outcomes = []
    with Ledger(ledger_path) as ledger:
        for spec, request_id in zip(requests, ids, strict=True):
            check_reopened(ledger, spec, request_id, identity)
        for spec, request_id in zip(requests, ids, strict=True):
            try:
                request = process_request(settings, model_args, path, ledger, spec, lineage, identity)
                outcomes.append(Outcome(spec, request.request_id, request.status))
            except LedgerFileError:
                raise
            except Exception as error:
                outcomes.append(Outcome(spec, request_id, "failed", f"{type(error).__name__}: {error}"))
    return outcomes
