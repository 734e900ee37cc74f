"""The ledger: a SQLite file that records which training examples (by fingerprint and subject id, never text)
went into which model versions, and every deletion request with its status, timestamps and steps.

A request moves `received -> running -> verified | failed`; a failed (or killed, still `running`) request may
run again. Each step of a request records its output path and a hash of that output, so a rerun skips the
steps whose output is still there unchanged. Every write is one transaction and the file is in WAL mode: a
process killed mid-write loses only the write it was making, never one already committed.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import sqlite3
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from datasets import Dataset

from llm_unlearn.data.loading import content_fingerprints, fingerprint
from llm_unlearn.data.schema import SUBJECT_FIELD, validate_dataset
from llm_unlearn.manifest import directory_manifest, sha256_file

SCHEMA_VERSION = 1
LEDGER_FILE = "ledger.sqlite"
STATUSES = ("received", "running", "verified", "failed")
# A request killed while running is still `running`; running it again records `running` once more. A verified
# request is final: a rerun has nothing to do.
TRANSITIONS = {
    "received": ("running",),
    "running": ("running", "verified", "failed"),
    "failed": ("running",),
    "verified": (),
}

_SCHEMA = """
CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS datasets (
    fingerprint TEXT PRIMARY KEY, source TEXT NOT NULL, num_examples INTEGER NOT NULL, recorded_at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS examples (
    dataset_fingerprint TEXT NOT NULL REFERENCES datasets (fingerprint), row INTEGER NOT NULL,
    example_fingerprint TEXT NOT NULL, subject_id TEXT, PRIMARY KEY (dataset_fingerprint, row)
);
CREATE INDEX IF NOT EXISTS examples_by_subject ON examples (subject_id);
CREATE TABLE IF NOT EXISTS model_data (
    model_version TEXT NOT NULL, dataset_fingerprint TEXT NOT NULL REFERENCES datasets (fingerprint),
    model_path TEXT, recorded_at TEXT NOT NULL, PRIMARY KEY (model_version, dataset_fingerprint)
);
CREATE TABLE IF NOT EXISTS requests (
    request_id TEXT PRIMARY KEY, subjects TEXT NOT NULL, settings TEXT NOT NULL, status TEXT NOT NULL,
    reason TEXT, created_at TEXT NOT NULL, updated_at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS events (
    id INTEGER PRIMARY KEY AUTOINCREMENT, request_id TEXT NOT NULL REFERENCES requests (request_id),
    at TEXT NOT NULL, kind TEXT NOT NULL, name TEXT NOT NULL, detail TEXT
);
CREATE TABLE IF NOT EXISTS steps (
    request_id TEXT NOT NULL REFERENCES requests (request_id), step TEXT NOT NULL, status TEXT NOT NULL,
    output_path TEXT, output_hash TEXT, started_at TEXT NOT NULL, finished_at TEXT, detail TEXT,
    PRIMARY KEY (request_id, step)
);
"""


class LedgerError(ValueError):
    """A ledger operation that cannot be done: unknown subject or request, a transition not allowed, a ledger
    written by another schema version."""


@dataclass(frozen=True)
class TrainingExample:
    """One training example in the lineage: where it is and whose it is, by fingerprint (never its text)."""

    subject_id: str | None
    example_fingerprint: str
    dataset_fingerprint: str
    source: str
    row: int


@dataclass(frozen=True)
class Request:
    """A deletion request: its subjects, the settings it was opened with, and where it stands."""

    request_id: str
    subjects: list[str]
    settings: dict[str, Any]
    status: str
    reason: str | None
    created_at: str
    updated_at: str


@dataclass(frozen=True)
class StepRecord:
    """One step of a request: its status, its output and that output's hash, and when it ran."""

    request_id: str
    step: str
    status: str
    output_path: str | None
    output_hash: str | None
    started_at: str
    finished_at: str | None
    detail: dict[str, Any] | None


def utc_now() -> str:
    """The current UTC time as ISO 8601 with microseconds (ordered as text, as it is as time)."""
    return datetime.now(UTC).isoformat(timespec="microseconds")


def request_id_for(subjects: Sequence[str], key: str = "") -> str:
    """A request id from the sorted, deduplicated subjects and a caller key: the same command finds the same
    request, whatever the order its subjects were given in."""
    content = json.dumps({"subjects": sorted({str(s) for s in subjects}), "key": key}, separators=(",", ":"))
    return "req-" + hashlib.sha256(content.encode("utf-8")).hexdigest()[:16]


def output_hash(path: str | os.PathLike) -> str | None:
    """A sha256 of a file, or of a directory's relative file paths and their sha256 (hidden staging files left
    out); None when the path does not exist."""
    path = Path(path)
    if path.is_file():
        return sha256_file(path)
    if not path.is_dir():
        return None
    digest = hashlib.sha256()
    for record in directory_manifest(path, exclude=()):
        digest.update(f"{record['path']}\t{record['sha256']}\n".encode())
    return digest.hexdigest()


def _subject_sample(subjects: Sequence[str]) -> str:
    return ", ".join(subjects[:5]) + (", ..." if len(subjects) > 5 else "")


class Ledger:
    """The lineage and request ledger in one SQLite file (created with its schema on first open)."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # Autocommit mode: transactions are opened explicitly (`_transaction`), so none is left open by accident.
        self._connection = sqlite3.connect(self.path, timeout=30, isolation_level=None)
        self._connection.row_factory = sqlite3.Row
        self._connection.execute("PRAGMA journal_mode=WAL")
        self._connection.execute("PRAGMA foreign_keys=ON")
        with self._transaction() as db:
            # executescript would commit first; statement by statement they stay in this transaction.
            for statement in _SCHEMA.split(";"):
                if statement.strip():
                    db.execute(statement)
            versions = [row["version"] for row in db.execute("SELECT version FROM schema_version")]
            if not versions:
                db.execute("INSERT INTO schema_version (version) VALUES (?)", (SCHEMA_VERSION,))
            elif versions != [SCHEMA_VERSION]:
                raise LedgerError(
                    f"{self.path}: ledger schema version {versions}, but this llm_unlearn reads version "
                    f"{SCHEMA_VERSION}; use the llm_unlearn version that wrote it, or give a new --ledger path."
                )

    def close(self) -> None:
        """Close the database connection."""
        self._connection.close()

    def __enter__(self) -> Ledger:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        # IMMEDIATE takes the write lock at once, so two processes on one ledger queue instead of failing late.
        self._connection.execute("BEGIN IMMEDIATE")
        try:
            yield self._connection
        except BaseException:
            self._connection.execute("ROLLBACK")
            raise
        self._connection.execute("COMMIT")

    def _query(self, sql: str, parameters: Sequence[Any] = ()) -> list[sqlite3.Row]:
        return self._connection.execute(sql, parameters).fetchall()

    # Lineage

    def record_training_data(
        self,
        dataset: Dataset,
        source: str,
        model_version: str | None = None,
        model_path: str | None = None,
    ) -> str:
        """Record each example of `dataset` (fingerprint, subject id, row) under the dataset's fingerprint, and
        that `model_version` (stored at `model_path`) was trained on it; returns the dataset fingerprint.
        Recording again adds nothing."""
        kind = validate_dataset(dataset, source)
        dataset_fingerprint = fingerprint(dataset)
        example_fingerprints = content_fingerprints(dataset, kind)
        subjects = dataset[SUBJECT_FIELD] if SUBJECT_FIELD in dataset.column_names else [None] * len(dataset)
        now = utc_now()
        with self._transaction() as db:
            db.execute(
                "INSERT OR IGNORE INTO datasets (fingerprint, source, num_examples, recorded_at) VALUES (?, ?, ?, ?)",
                (dataset_fingerprint, source, len(dataset), now),
            )
            db.executemany(
                "INSERT OR IGNORE INTO examples (dataset_fingerprint, row, example_fingerprint, subject_id) "
                "VALUES (?, ?, ?, ?)",
                [
                    (dataset_fingerprint, row, example, None if subject is None else str(subject))
                    for row, (example, subject) in enumerate(zip(example_fingerprints, subjects, strict=True))
                ],
            )
            if model_version is not None:
                db.execute(
                    "INSERT OR IGNORE INTO model_data (model_version, dataset_fingerprint, model_path, recorded_at) "
                    "VALUES (?, ?, ?, ?)",
                    (model_version, dataset_fingerprint, model_path, now),
                )
        return dataset_fingerprint

    def known_subjects(self) -> list[str]:
        """Every subject id in the lineage, sorted."""
        rows = self._query("SELECT DISTINCT subject_id FROM examples WHERE subject_id IS NOT NULL ORDER BY 1")
        return [row["subject_id"] for row in rows]

    def examples_of(
        self, subject_ids: Sequence[str], dataset_fingerprint: str | None = None
    ) -> list[TrainingExample]:
        """The recorded examples of these subjects (in one dataset when `dataset_fingerprint` is given), in
        dataset and row order; a subject the lineage does not know is an error that says which ones it knows."""
        subject_ids = sorted({str(subject) for subject in subject_ids})
        if not subject_ids:
            raise LedgerError("no subject ids given; name at least one subject whose examples to look up.")
        where = f"e.subject_id IN ({', '.join('?' * len(subject_ids))})"
        parameters: list[Any] = list(subject_ids)
        if dataset_fingerprint is not None:
            where += " AND e.dataset_fingerprint = ?"
            parameters.append(dataset_fingerprint)
        rows = self._query(
            "SELECT e.subject_id, e.example_fingerprint, e.dataset_fingerprint, d.source, e.row FROM examples e "
            f"JOIN datasets d ON d.fingerprint = e.dataset_fingerprint WHERE {where} "
            "ORDER BY d.recorded_at, e.dataset_fingerprint, e.row",
            parameters,
        )
        unknown = sorted(set(subject_ids) - {row["subject_id"] for row in rows})
        if unknown:
            known = self._subjects_in(dataset_fingerprint)
            scope = "that dataset" if dataset_fingerprint is not None else "the lineage"
            having = (
                f"{len(known)} subject(s), e.g. {_subject_sample(known)}"
                if known
                else "no subjects (record the training data first: record_training_data)"
            )
            raise LedgerError(f"unknown subject id(s) {unknown} in {self.path}: {scope} holds {having}.")
        return [TrainingExample(**dict(row)) for row in rows]

    def _subjects_in(self, dataset_fingerprint: str | None) -> list[str]:
        if dataset_fingerprint is None:
            return self.known_subjects()
        rows = self._query(
            "SELECT DISTINCT subject_id FROM examples WHERE dataset_fingerprint = ? AND subject_id IS NOT NULL "
            "ORDER BY 1",
            (dataset_fingerprint,),
        )
        return [row["subject_id"] for row in rows]

    def model_versions_with(self, subject_ids: Sequence[str]) -> dict[str, str | None]:
        """The recorded model versions (with where they were stored) trained on a dataset that holds any of these
        subjects' examples: the versions that contain their data."""
        subject_ids = sorted({str(subject) for subject in subject_ids})
        rows = self._query(
            "SELECT DISTINCT m.model_version, m.model_path FROM model_data m JOIN examples e "
            "ON e.dataset_fingerprint = m.dataset_fingerprint "
            f"WHERE e.subject_id IN ({', '.join('?' * len(subject_ids))}) ORDER BY 1",
            subject_ids,
        )
        return {row["model_version"]: row["model_path"] for row in rows}

    # Requests

    def _log(
        self,
        db: sqlite3.Connection,
        request_id: str,
        kind: str,
        name: str,
        detail: dict[str, Any],
        at: str | None = None,
    ) -> None:
        db.execute(
            "INSERT INTO events (request_id, at, kind, name, detail) VALUES (?, ?, ?, ?, ?)",
            (request_id, at or utc_now(), kind, name, json.dumps(detail, sort_keys=True)),
        )

    def open_request(
        self,
        subjects: Sequence[str],
        request_id: str | None = None,
        *,
        key: str = "",
        settings: dict[str, Any] | None = None,
    ) -> Request:
        """Return the request for these subjects (its id given, or `request_id_for(subjects, key)`), recording
        it as `received` if it is new. An existing id opened with other subjects or settings is an error."""
        subjects = sorted({str(subject) for subject in subjects})
        if not subjects:
            raise LedgerError("a deletion request needs at least one subject id.")
        request_id = request_id or request_id_for(subjects, key)
        # Through JSON, so the comparison with a stored request sees what was stored (tuples become lists).
        settings = json.loads(json.dumps(settings or {}, sort_keys=True))
        with self._transaction() as db:
            existing = db.execute("SELECT * FROM requests WHERE request_id = ?", (request_id,)).fetchone()
            if existing is None:
                now = utc_now()
                db.execute(
                    "INSERT INTO requests (request_id, subjects, settings, status, reason, created_at, updated_at) "
                    "VALUES (?, ?, ?, 'received', NULL, ?, ?)",
                    (request_id, json.dumps(subjects), json.dumps(settings, sort_keys=True), now, now),
                )
                self._log(db, request_id, "status", "received", {"subjects": subjects}, at=now)
            else:
                request = _request(existing)
                for name, old, new in (
                    ("subjects", request.subjects, subjects),
                    ("settings", request.settings, settings),
                ):
                    if old != new:
                        raise LedgerError(
                            f"request {request_id} exists with other {name}: {old}, not {new}; give a new request "
                            "id for a different request."
                        )
        return self.request(request_id)

    def request(self, request_id: str) -> Request:
        """The request with this id; an unknown id is an error that names some known ones."""
        row = self._connection.execute(
            "SELECT * FROM requests WHERE request_id = ?", (request_id,)
        ).fetchone()
        if row is None:
            known = [
                r["request_id"] for r in self._query("SELECT request_id FROM requests ORDER BY created_at")
            ]
            having = f"{len(known)} request(s), e.g. {_subject_sample(known)}" if known else "no requests"
            raise LedgerError(f"unknown request id {request_id!r}; {self.path} holds {having}.")
        return _request(row)

    def requests(self) -> list[Request]:
        """Every request, oldest first."""
        return [
            _request(row) for row in self._query("SELECT * FROM requests ORDER BY created_at, request_id")
        ]

    def set_status(self, request_id: str, status: str, reason: str | None = None) -> Request:
        """Move a request to `status` (with a reason, e.g. why it failed) and record the transition's time."""
        if status not in STATUSES:
            raise LedgerError(f"unknown request status {status!r}; statuses are {STATUSES}.")
        self.request(request_id)
        with self._transaction() as db:
            # Read inside the transaction: another process cannot move the request in between.
            (current,) = db.execute(
                "SELECT status FROM requests WHERE request_id = ?", (request_id,)
            ).fetchone()
            if status not in TRANSITIONS[current]:
                raise LedgerError(
                    f"request {request_id} is {current!r} and cannot become {status!r}; from {current!r} it may "
                    f"become {list(TRANSITIONS[current]) or 'nothing (it is final)'}."
                )
            now = utc_now()
            db.execute(
                "UPDATE requests SET status = ?, reason = ?, updated_at = ? WHERE request_id = ?",
                (status, reason, now, request_id),
            )
            self._log(db, request_id, "status", status, {"reason": reason} if reason else {}, at=now)
        return self.request(request_id)

    # Steps

    def step(self, request_id: str, step: str) -> StepRecord | None:
        """The record of one step of a request (its latest run), or None if it never started."""
        row = self._connection.execute(
            "SELECT * FROM steps WHERE request_id = ? AND step = ?", (request_id, step)
        ).fetchone()
        return None if row is None else _step(row)

    def steps(self, request_id: str) -> list[StepRecord]:
        """A request's steps in the order they were (last) started."""
        rows = self._query("SELECT * FROM steps WHERE request_id = ? ORDER BY started_at", (request_id,))
        return [_step(row) for row in rows]

    def start_step(self, request_id: str, step: str) -> StepRecord:
        """Record that a step starts (or starts again) now; a previous output hash is forgotten."""
        self.request(request_id)
        with self._transaction() as db:
            db.execute(
                "INSERT OR REPLACE INTO steps (request_id, step, status, output_path, output_hash, started_at, "
                "finished_at, detail) VALUES (?, ?, 'running', NULL, NULL, ?, NULL, NULL)",
                (request_id, step, utc_now()),
            )
            self._log(db, request_id, "step", step, {"status": "running"})
        return self.step(request_id, step)

    def finish_step(
        self,
        request_id: str,
        step: str,
        output_path: str | os.PathLike,
        detail: dict[str, Any] | None = None,
    ) -> StepRecord:
        """Record that a step is done, with its output (which must exist), the output's hash and a detail."""
        output_path = Path(output_path).resolve()
        digest = output_hash(output_path)
        if digest is None:
            raise LedgerError(f"step {step} of {request_id}: its output {output_path} does not exist.")
        record = self.step(request_id, step) or self.start_step(request_id, step)
        with self._transaction() as db:
            db.execute(
                "UPDATE steps SET status = 'done', output_path = ?, output_hash = ?, finished_at = ?, detail = ? "
                "WHERE request_id = ? AND step = ?",
                (str(output_path), digest, utc_now(), None if detail is None else json.dumps(detail, sort_keys=True),
                 request_id, step),
            )  # fmt: skip
            self._log(db, request_id, "step", step,
                      {"status": "done", "output_path": str(output_path), "output_hash": digest})  # fmt: skip
        return self.step(record.request_id, step)

    def fail_step(self, request_id: str, step: str, reason: str) -> StepRecord:
        """Record that a started step failed, and why."""
        with self._transaction() as db:
            db.execute(
                "UPDATE steps SET status = 'failed', finished_at = ?, detail = ? WHERE request_id = ? AND step = ?",
                (utc_now(), json.dumps({"error": reason}), request_id, step),
            )
            self._log(db, request_id, "step", step, {"status": "failed", "error": reason})
        return self.step(request_id, step)

    def skip_step(self, request_id: str, step: str) -> StepRecord:
        """Record that a rerun found this step done (see `step_is_done`) and did not run it again."""
        record = self.step(request_id, step)
        if record is None or record.status != "done":
            raise LedgerError(f"step {step} of {request_id} is not done, so it cannot be skipped; run it.")
        with self._transaction() as db:
            self._log(db, request_id, "step", step, {"status": "skipped"})
        return self.step(request_id, step)

    def step_is_done(self, request_id: str, step: str) -> bool:
        """Whether a step finished and its output is still there with the recorded hash."""
        record = self.step(request_id, step)
        return (
            record is not None
            and record.status == "done"
            and record.output_path is not None
            and output_hash(record.output_path) == record.output_hash
        )

    def history(self, request_id: str) -> list[dict[str, Any]]:
        """Everything that happened to a request, oldest first: each status it took (`kind` "status") and each
        step's start, finish, failure or skip (`kind` "step"), with the UTC time (`at`) and details."""
        self.request(request_id)
        rows = self._query(
            "SELECT at, kind, name, detail FROM events WHERE request_id = ? ORDER BY id", (request_id,)
        )
        return [
            {"at": row["at"], "kind": row["kind"], row["kind"]: row["name"], **json.loads(row["detail"])}
            for row in rows
        ]


def _request(row: sqlite3.Row) -> Request:
    return Request(
        request_id=row["request_id"],
        subjects=json.loads(row["subjects"]),
        settings=json.loads(row["settings"]),
        status=row["status"],
        reason=row["reason"],
        created_at=row["created_at"],
        updated_at=row["updated_at"],
    )


def _step(row: sqlite3.Row) -> StepRecord:
    return StepRecord(
        request_id=row["request_id"],
        step=row["step"],
        status=row["status"],
        output_path=row["output_path"],
        output_hash=row["output_hash"],
        started_at=row["started_at"],
        finished_at=row["finished_at"],
        detail=None if row["detail"] is None else json.loads(row["detail"]),
    )
