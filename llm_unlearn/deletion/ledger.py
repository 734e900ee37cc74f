"""The ledger: a SQLite file that records which training examples (by fingerprint and subject id, never text)
went into which model versions, and every deletion request with its status, timestamps and steps.

A request moves `received -> running -> verified | failed`; a failed (or killed, still `running`) request may
run again. Each step of a request records its output path and a hash of that output, so a rerun skips the
steps whose output is still there unchanged. Every write is one transaction and the file is in WAL mode: a
process killed mid-write loses only the write it was making, never one already committed.

A ledger that cannot be created, opened, read or written (a directory that is missing or not writable, a file
that is not SQLite or not a ledger, a newer schema, another process holding the lock) raises `LedgerFileError`,
which names the file, what is wrong and what is accepted, with SQLite's error as its cause.
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


class LedgerFileError(LedgerError):
    """The ledger file cannot be created, opened, read or written: the message names the file, what is wrong
    with it and what is accepted; the SQLite or OS error is the cause."""


# What a ledger path may be, said by every LedgerFileError.
LEDGER_ACCEPTED = (
    "give --ledger PATH a file in a writable directory (a new ledger is created there, with any missing "
    "directories) or the ledger file of an earlier `llm-unlearn forget`"
)


def _writable_location_problem(path: Path) -> str | None:
    """Why a ledger at `path` could not be created or written, judged from the file system without touching
    it; None when nothing is seen to be wrong."""
    if path.is_dir():
        return f"is a directory, not a file (a ledger in it would be {path / LEDGER_FILE})"
    if path.exists():
        if not os.access(path, os.R_OK | os.W_OK):
            return "cannot be opened for reading and writing: the file is not readable and writable by this user"
        if not os.access(path.parent, os.W_OK | os.X_OK):
            return (
                f"cannot be written: its directory {path.parent} is not writable, and SQLite writes its journal "
                f"({path.name}-wal) there"
            )
        return None
    existing = path.parent
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        return f"cannot be created: {existing} is a file, not a directory"
    if not os.access(existing, os.W_OK | os.X_OK):
        if existing == path.parent:
            return f"cannot be created: its directory {existing} is not writable"
        return f"cannot be created: its directory {path.parent} does not exist and {existing} is not writable"
    return None


def ledger_file_error(path: str | os.PathLike, error: BaseException, timeout_s: float) -> LedgerFileError:
    """The LedgerFileError for a SQLite or OS `error` met while opening, reading or writing the ledger at
    `path`: what is wrong, in words, and what is accepted (the caller raises it from `error`)."""
    path = Path(path)
    code = getattr(error, "sqlite_errorname", "") or ""
    text = str(error)
    lowered = text.lower()
    kind = type(error).__name__ if isinstance(error, OSError) else f"sqlite3.{type(error).__name__}"
    cause = f"{kind}: {text}"
    if code == "SQLITE_NOTADB" or "not a database" in lowered or "file is encrypted" in lowered:
        problem = "is not an SQLite database"
    elif code == "SQLITE_CORRUPT" or "malformed" in lowered:
        problem = "is damaged: SQLite cannot read it"
    elif code in ("SQLITE_BUSY", "SQLITE_LOCKED") or "locked" in lowered:
        return LedgerFileError(
            f"ledger {path} is locked: another process has held its write lock for over {timeout_s:g} s "
            f"({cause}); wait until that process (e.g. another `llm-unlearn forget` on this ledger) finishes, "
            "or give --ledger PATH another ledger file."
        )
    elif code == "SQLITE_FULL" or "disk is full" in lowered:
        problem = "cannot be written: the disk is full"
    elif code == "SQLITE_READONLY" or "readonly" in lowered:
        problem = "cannot be written: it, its directory or its file system is read-only"
    else:
        problem = _writable_location_problem(path) or (
            "cannot be opened" if code == "SQLITE_CANTOPEN" or "unable to open" in lowered else
            "cannot be read or written"
        )  # fmt: skip
    return LedgerFileError(f"ledger {path} {problem} ({cause}); {LEDGER_ACCEPTED}.")


def check_ledger(path: str | os.PathLike) -> None:
    """Raise LedgerFileError when `path` cannot serve as the ledger, creating nothing: an existing file is opened
    as the ledger and closed again (which leaves its content as it was); for a new one, the directories it needs
    must be creatable and writable. Cheap, so callers check before any expensive work."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        Ledger(path).close()
        return
    problem = _writable_location_problem(path)
    if problem is not None:
        raise LedgerFileError(f"ledger {path} {problem}; {LEDGER_ACCEPTED}.")


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

    # Seconds to wait for another process's write lock before giving up with a LedgerFileError.
    lock_timeout_s = 30.0

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        problem = _writable_location_problem(self.path)
        if problem is not None:
            raise LedgerFileError(f"ledger {self.path} {problem}; {LEDGER_ACCEPTED}.")
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            # Autocommit mode: transactions are opened explicitly (`_transaction`), so none is left open by
            # accident.
            self._connection = sqlite3.connect(self.path, timeout=self.lock_timeout_s, isolation_level=None)
        except (OSError, sqlite3.Error) as error:
            raise ledger_file_error(self.path, error, self.lock_timeout_s) from error
        try:
            self._open()
        except BaseException:
            self._connection.close()
            raise

    def _open(self) -> None:
        """Check that the file is an llm_unlearn ledger of this schema version (or a new, empty database) before
        changing anything in it, then create the schema."""
        self._connection.row_factory = sqlite3.Row
        with self._sqlite_errors():
            tables = {row["name"] for row in self._query("SELECT name FROM sqlite_master WHERE type = 'table'")}
            if tables and "schema_version" not in tables:
                shown = ", ".join(sorted(tables)[:5]) + (", ..." if len(tables) > 5 else "")
                raise LedgerFileError(
                    f"ledger {self.path} is an SQLite database but not an llm_unlearn ledger (it has the tables "
                    f"{shown} and no schema_version); {LEDGER_ACCEPTED}."
                )
            if tables:
                self._check_version([row["version"] for row in self._query("SELECT version FROM schema_version")])
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
            else:
                self._check_version(versions)

    def _check_version(self, versions: list[int]) -> None:
        if versions in ([], [SCHEMA_VERSION]):
            return
        newer = all(isinstance(v, int) for v in versions) and max(versions) > SCHEMA_VERSION
        raise LedgerFileError(
            f"ledger {self.path} has schema version {versions}, but this llm_unlearn reads version "
            f"{SCHEMA_VERSION}" + (" (a newer llm_unlearn wrote it)" if newer else "")
            + "; open it with the llm_unlearn version that wrote it, or give --ledger PATH a new ledger file."
        )

    @contextlib.contextmanager
    def _sqlite_errors(self) -> Iterator[None]:
        """Raise a SQLite or OS error in the block as the LedgerFileError that says what it means."""
        try:
            yield
        except (sqlite3.Error, OSError) as error:
            raise ledger_file_error(self.path, error, self.lock_timeout_s) from error

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
        with self._sqlite_errors():
            self._connection.execute("BEGIN IMMEDIATE")
        try:
            yield self._connection
            with self._sqlite_errors():
                self._connection.execute("COMMIT")
        except BaseException as error:
            # SQLite may have rolled back already (a full disk does): then there is nothing left to roll back.
            if self._connection.in_transaction:
                with contextlib.suppress(sqlite3.Error):
                    self._connection.execute("ROLLBACK")
            if isinstance(error, sqlite3.Error | OSError):
                raise ledger_file_error(self.path, error, self.lock_timeout_s) from error
            raise

    def _query(self, sql: str, parameters: Sequence[Any] = ()) -> list[sqlite3.Row]:
        with self._sqlite_errors():
            return self._connection.execute(sql, parameters).fetchall()

    def _one(self, sql: str, parameters: Sequence[Any] = ()) -> sqlite3.Row | None:
        rows = self._query(sql, parameters)
        return rows[0] if rows else None

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
        row = self._one("SELECT * FROM requests WHERE request_id = ?", (request_id,))
        if row is None:
            known = [
                r["request_id"] for r in self._query("SELECT request_id FROM requests ORDER BY created_at")
            ]
            having = f"{len(known)} request(s), e.g. {_subject_sample(known)}" if known else "no requests"
            raise LedgerError(f"unknown request id {request_id!r}; {self.path} holds {having}.")
        return _request(row)

    def find_request(self, request_id: str) -> Request | None:
        """The request with this id, or None when the ledger has none."""
        row = self._one("SELECT * FROM requests WHERE request_id = ?", (request_id,))
        return None if row is None else _request(row)

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
        row = self._one("SELECT * FROM steps WHERE request_id = ? AND step = ?", (request_id, step))
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
