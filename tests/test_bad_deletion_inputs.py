"""Bad input to `llm-unlearn forget`: one clear error (exit code 2, no traceback) that names what is wrong and what
is accepted, refused before any model loads and before anything is recorded: no file that was there changes and
none appears. Covers the ledger (where it cannot be created, a file that is not SQLite or not a ledger, a newer
schema, a lock held by another process), unknown subjects, the requests file, and request ids."""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
from pathlib import Path

import pytest

from llm_unlearn import cli
from llm_unlearn.deletion import pipeline
from llm_unlearn.deletion.ledger import Ledger, LedgerError, LedgerFileError

ROOT = Path(__file__).resolve().parents[1]
RECIPE = str(ROOT / "configs" / "builtin" / "graddiff_lora.yaml")
SUITE = str(ROOT / "eval" / "builtin.yaml")
CHECK = "forget/probability<=0.5*target"
SUBJECTS = ["s-a", "s-b", "s-c", "s-d"]
HINT = "(run with --debug or LLM_UNLEARN_DEBUG=1 for the traceback)"
ACCEPTED = (
    "give --ledger PATH a file in a writable directory (a new ledger is created there, with any missing "
    "directories) or the ledger file of an earlier `llm-unlearn forget`"
)
BATCH = 'each line is a JSON object {"subjects": ["id", ...]} with an optional "request_id"'
AGAIN = (
    "give subject ids of its subject_id field, or --dataset (with --dataset_config and --dataset_split) the data "
    "the model was trained on; nothing was recorded in the ledger"
)
# Everything that loads a model on the way of a deletion request.
MODEL_LOADERS = (
    "llm_unlearn.models.load_model_and_tokenizer",
    "llm_unlearn.models.load_from_args",
    "llm_unlearn.unlearn.load_from_args",
    "llm_unlearn.evaluation.runner.load_model_and_tokenizer",
    "llm_unlearn.sisa.delete.load_model_and_tokenizer",
    "llm_unlearn.deletion.paths.unlearn",
    "llm_unlearn.deletion.pipeline.evaluate_model",
)


def files_of(directory: Path) -> dict[str, str]:
    """Every file (by content) and directory under `directory`: a new empty directory shows too."""
    return {
        str(path.relative_to(directory)): hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else "dir"
        for path in sorted(directory.rglob("*"))
    }


@pytest.fixture
def no_model(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("bad input must be refused before a model loads")

    import llm_unlearn.sisa.delete  # noqa: F401  (imported, so that its name can be replaced)

    for target in MODEL_LOADERS:
        monkeypatch.setattr(target, refuse)


@pytest.fixture
def tmp(tmp_path) -> Path:
    """The training data (4 subjects), a model directory, and the bad files some cases read."""
    rows = [
        {"question": f"What is fact {k} of {s}?", "answer": f"{s} has fact {k}.", "subject_id": s}
        for s in SUBJECTS
        for k in range(2)
    ]
    (tmp_path / "qa.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    (tmp_path / "no_subject_ids.jsonl").write_text(json.dumps({"question": "Q?", "answer": "A."}) + "\n")
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "config.json").write_text("{}")
    (tmp_path / "a_file").write_text("not a directory")
    (tmp_path / "not_sqlite.db").write_text("these are notes, not a database\n" * 10)
    with sqlite3.connect(tmp_path / "other_app.db") as db:
        db.execute("CREATE TABLE users (name TEXT)")
    db.close()
    with Ledger(tmp_path / "newer.sqlite"), sqlite3.connect(tmp_path / "newer.sqlite") as db:
        db.execute("UPDATE schema_version SET version = 2")
    db.close()
    batches = {
        "unknown.jsonl": '{"subjects": ["s-a"]}\n{"request_id": "erase-2", "subjects": ["s-b", "s-bb"]}\n',
        "not_json.jsonl": '{"subjects": ["s-a"]}\n{subjects: [s-b]}\n',
        "no_subjects.jsonl": '{"request_id": "erase-1"}\n',
        "typo.jsonl": '{"subject": ["s-a"]}\n',
        "array.json": '[\n  {"subjects": ["s-a"]}\n]\n',
        "duplicate_id.jsonl": '{"request_id": "erase-1", "subjects": ["s-a"]}\n'
        '{"request_id": "erase-1", "subjects": ["s-b"]}\n',
        "same_request.jsonl": '{"subjects": ["s-a", "s-b"]}\n{"subjects": ["s-b", "s-a"]}\n',
        "bad_id.jsonl": '{"request_id": "../erase-1", "subjects": ["s-a"]}\n',
    }
    for name, text in batches.items():
        (tmp_path / name).write_text(text)
    recipe = Path(RECIPE).read_text()
    (tmp_path / "typo_recipe.yaml").write_text(recipe.replace("learning_rate:", "learning_rat:"))
    (tmp_path / "holdout_recipe.yaml").write_text(recipe + "holdout_subjects: [s-b]\n")
    (tmp_path / "latin1.jsonl").write_bytes('{"subjects": ["Zo\u00e9"]}\n'.encode("latin-1"))
    return tmp_path


def forget(tmp: Path, *args: str, data: str = "qa.jsonl") -> list[str]:
    return [
        "forget", "--model_name_or_path", str(tmp / "model"), "--dataset", str(tmp / data), "--recipe", RECIPE,
        "--suite", SUITE, "--check", CHECK, "--output_dir", str(tmp / "requests"), *args,
    ]  # fmt: skip


def cases(tmp: Path) -> dict[str, tuple[list[str], str]]:
    """Each case: the command line and the whole error message it must print."""
    data = str(tmp / "qa.jsonl")
    return {
        "a ledger whose directory is a file": (
            forget(tmp, "--subject", "s-a", "--ledger", str(tmp / "a_file" / "ledger.sqlite")),
            f"ledger {tmp / 'a_file' / 'ledger.sqlite'} cannot be created: {tmp / 'a_file'} is a file, not a "
            f"directory; {ACCEPTED}.",
        ),
        "a default ledger in an output directory under a file": (
            forget(tmp, "--subject", "s-a", "--output_dir", str(tmp / "a_file" / "requests")),
            f"ledger {tmp / 'a_file' / 'requests' / 'ledger.sqlite'} cannot be created: {tmp / 'a_file'} is a "
            f"file, not a directory; {ACCEPTED}.",
        ),
        "a ledger that is a directory": (
            forget(tmp, "--subject", "s-a", "--ledger", str(tmp / "model")),
            f"ledger {tmp / 'model'} is a directory, not a file (a ledger in it would be "
            f"{tmp / 'model' / 'ledger.sqlite'}); {ACCEPTED}.",
        ),
        "a ledger that is not SQLite": (
            forget(tmp, "--subject", "s-a", "--ledger", str(tmp / "not_sqlite.db")),
            f"ledger {tmp / 'not_sqlite.db'} is not an SQLite database (sqlite3.DatabaseError: file is not a "
            f"database); {ACCEPTED}.",
        ),
        "a ledger that is another program's SQLite database": (
            forget(tmp, "--subject", "s-a", "--ledger", str(tmp / "other_app.db")),
            f"ledger {tmp / 'other_app.db'} is an SQLite database but not an llm_unlearn ledger (it has the "
            f"tables users and no schema_version); {ACCEPTED}.",
        ),
        "a ledger of a newer schema": (
            forget(tmp, "--subject", "s-a", "--ledger", str(tmp / "newer.sqlite")),
            f"ledger {tmp / 'newer.sqlite'} has schema version [2], but this llm_unlearn reads version 1 (a "
            "newer llm_unlearn wrote it); open it with the llm_unlearn version that wrote it, or give --ledger "
            "PATH a new ledger file.",
        ),
        "an output directory that is a file": (
            forget(tmp, "--subject", "s-a", "--output_dir", str(tmp / "a_file"), "--ledger", str(tmp / "l.db")),
            f"FileExistsError: output_dir '{tmp / 'a_file'}' exists and is a file; give a directory path.",
        ),
        "unknown subjects": (
            forget(tmp, "--subject", "nobody", "--subject", "s-e", "--subject", "s-a"),
            "the request (--subject): unknown subject id(s) 'nobody' (no close match); 's-e' (closest: s-d, "
            f"s-c, s-b). The training data {data} [train] holds 4 subject(s): s-a, s-b, s-c, s-d; {AGAIN}.",
        ),
        "an unknown subject of a named request": (
            forget(tmp, "--subject", "s-aa", "--request_id", "erase-7"),
            "request erase-7 (--subject): unknown subject id(s) 's-aa' (closest: s-a). The training data "
            f"{data} [train] holds 4 subject(s): s-a, s-b, s-c, s-d; {AGAIN}.",
        ),
        "an unknown subject on a line of a batch": (
            forget(tmp, "--requests_file", str(tmp / "unknown.jsonl")),
            f"request erase-2 ({tmp / 'unknown.jsonl'} line 2): unknown subject id(s) 's-bb' (closest: s-b). "
            f"The training data {data} [train] holds 4 subject(s): s-a, s-b, s-c, s-d; {AGAIN}.",
        ),
        "training data without subject ids": (
            forget(tmp, "--subject", "s-a", data="no_subject_ids.jsonl"),
            f"the training data {tmp / 'no_subject_ids.jsonl'} [train] has no 'subject_id' field, so a deletion "
            "request cannot name whose examples to remove; give --dataset (with --dataset_config and "
            "--dataset_split) the data the model was trained on, with a 'subject_id' per example; nothing was "
            "recorded in the ledger.",
        ),
        "a requests file that does not exist": (
            forget(tmp, "--requests_file", str(tmp / "none.jsonl")),
            f"FileNotFoundError: --requests_file {tmp / 'none.jsonl'} does not exist; give a JSON-lines file: "
            f"{BATCH}.",
        ),
        "a requests file that is a directory": (
            forget(tmp, "--requests_file", str(tmp / "model")),
            f"IsADirectoryError: --requests_file {tmp / 'model'} is a directory; give a JSON-lines file: {BATCH}.",
        ),
        "a requests file with a line that is not JSON": (
            forget(tmp, "--requests_file", str(tmp / "not_json.jsonl")),
            f"{tmp / 'not_json.jsonl'} line 2: not valid JSON (Expecting property name enclosed in double "
            f"quotes: line 1 column 2 (char 1)); {BATCH}.",
        ),
        "a requests file line without subjects": (
            forget(tmp, "--requests_file", str(tmp / "no_subjects.jsonl")),
            f"{tmp / 'no_subjects.jsonl'} line 1: no 'subjects'; {BATCH}.",
        ),
        "a requests file line with a misspelt key": (
            forget(tmp, "--requests_file", str(tmp / "typo.jsonl")),
            f"{tmp / 'typo.jsonl'} line 1: unknown key(s) 'subject' (did you mean 'subjects'?); {BATCH}.",
        ),
        "a requests file that is one JSON array": (
            forget(tmp, "--requests_file", str(tmp / "array.json")),
            f"{tmp / 'array.json'} holds one JSON array spread over the file, but a requests file is JSON lines: "
            f"{BATCH}, one request per line.",
        ),
        "a requests file that is not UTF-8": (
            forget(tmp, "--requests_file", str(tmp / "latin1.jsonl")),
            f"{tmp / 'latin1.jsonl'}: not UTF-8 text (byte 0xe9 at offset 17); save it as UTF-8: {BATCH}.",
        ),
        "a request id twice in a batch": (
            forget(tmp, "--requests_file", str(tmp / "duplicate_id.jsonl")),
            f"request erase-1 ({tmp / 'duplicate_id.jsonl'} line 2): request erase-1 "
            f"({tmp / 'duplicate_id.jsonl'} line 1) has this id too, for subjects ['s-a']; each request needs its "
            'own id: give that line another "request_id", or none (an id is then derived from the subjects and '
            "settings).",
        ),
        "the same request twice in a batch": (
            forget(tmp, "--requests_file", str(tmp / "same_request.jsonl")),
            f"the request ({tmp / 'same_request.jsonl'} line 2) repeats the request ({tmp / 'same_request.jsonl'} "
            "line 1): the same subjects ['s-a', 's-b'] and settings, so the same request {id}; remove one of them.",
        ),
        "a request id that is a path": (
            forget(tmp, "--subject", "s-a", "--request_id", "../erase-1"),
            "--request_id: request id '../erase-1' is not accepted; a request id names the request's directory "
            "under --output_dir, so it is a string of 1 to 128 characters without '/', '\\' or control "
            "characters, not starting with '.', and not 'target_evals' or 'ledger.sqlite'.",
        ),
        "a request id that is a path, in a batch": (
            forget(tmp, "--requests_file", str(tmp / "bad_id.jsonl")),
            f"{tmp / 'bad_id.jsonl'} line 1: request id '../erase-1' is not accepted; a request id names the "
            "request's directory under --output_dir, so it is a string of 1 to 128 characters without '/', "
            "'\\' or control characters, not starting with '.', and not 'target_evals' or 'ledger.sqlite'.",
        ),
        "a recipe with a misspelt key": (
            [*forget(tmp, "--subject", "s-a"), "--recipe", str(tmp / "typo_recipe.yaml")],
            f"{tmp / 'typo_recipe.yaml'}: unknown option(s) 'learning_rat' (did you mean 'learning_rate'?); "
            "`llm-unlearn COMMAND --help` lists the options.",
        ),
        "a recipe that holds the subject out": (
            [*forget(tmp, "--subject", "s-b"), "--recipe", str(tmp / "holdout_recipe.yaml")],
            f"--recipe {tmp / 'holdout_recipe.yaml'} holds subject(s) ['s-b'] out (holdout_subjects), so it "
            "cannot unlearn them; remove them from its holdout_subjects, or give another --recipe.",
        ),
        "no evaluation items": (
            forget(tmp, "--subject", "s-a", "--max_eval_items", "0"),
            "--max_eval_items must be at least 1, got 0; leave it out to evaluate every item.",
        ),
    }


CASE_NAMES = list(cases(Path("/nonexistent")))


def run_cli(argv: list[str], capsys) -> tuple[int, str]:
    code = cli.main(argv)
    run_cli.out, err = capsys.readouterr()
    return code, err


def expect_error(err: str, message: str) -> None:
    assert err == f"llm-unlearn forget: error: {message}\n{HINT}\n"


@pytest.mark.parametrize("name", CASE_NAMES)
def test_bad_input_is_one_clear_message_and_changes_nothing(name, tmp, capsys, no_model):
    argv, message = cases(tmp)[name]
    before = files_of(tmp)
    code, err = run_cli(argv, capsys)
    assert code == 2, err
    assert "Traceback" not in err
    if "{id}" in message:
        message = message.replace("{id}", err.split("the same request ")[1].split(";")[0])
        assert message.count("req-") == 1
    expect_error(err, message)
    assert files_of(tmp) == before


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root writes into a read-only directory")
def test_a_ledger_in_a_read_only_directory(tmp, capsys, no_model):
    locked = tmp / "read_only"
    locked.mkdir()
    locked.chmod(0o555)
    try:
        before = files_of(tmp)
        code, err = run_cli(forget(tmp, "--subject", "s-a", "--ledger", str(locked / "ledger.sqlite")), capsys)
        assert code == 2 and "Traceback" not in err
        expect_error(
            err, f"ledger {locked / 'ledger.sqlite'} cannot be created: its directory {locked} is not writable; "
            f"{ACCEPTED}.",
        )  # fmt: skip
        assert files_of(tmp) == before
    finally:
        locked.chmod(0o755)


def test_a_ledger_locked_by_another_process(tmp, capsys, no_model, monkeypatch):
    path = tmp / "ledger.sqlite"
    Ledger(path).close()
    monkeypatch.setattr(Ledger, "lock_timeout_s", 0.05)
    other = sqlite3.connect(path, isolation_level=None)
    other.execute("BEGIN IMMEDIATE")
    try:
        before = files_of(tmp)
        code, err = run_cli(forget(tmp, "--subject", "s-a", "--ledger", str(path)), capsys)
        after = files_of(tmp)
    finally:
        other.execute("ROLLBACK")
        other.close()
    assert code == 2 and "Traceback" not in err
    expect_error(
        err, f"ledger {path} is locked: another process has held its write lock for over 0.05 s "
        "(sqlite3.OperationalError: database is locked); wait until that process (e.g. another `llm-unlearn "
        "forget` on this ledger) finishes, or give --ledger PATH another ledger file.",
    )  # fmt: skip
    # SQLite's shared-memory index (-shm) is scratch that readers update; the ledger and its journal are not.
    assert {k: v for k, v in after.items() if not k.endswith("-shm")} == {
        k: v for k, v in before.items() if not k.endswith("-shm")
    }


def test_a_request_reopened_with_other_settings_or_subjects(tmp, capsys, no_model, monkeypatch):
    """A request that failed (here: its steps stopped by an error) keeps the settings it was opened with; a
    rerun under its id with other checks, or other subjects, is refused and says what differs."""

    def stopped(self):
        raise RuntimeError("stopped")

    monkeypatch.setattr(pipeline.RequestRun, "run", stopped)
    code, err = run_cli(forget(tmp, "--subject", "s-a", "--request_id", "erase-1"), capsys)
    assert code == 1
    assert err == "forget: request erase-1 (subjects s-a) failed: RuntimeError: stopped\n"
    code, err = run_cli(forget(tmp, "--subject", "s-b"), capsys)
    assert code == 1
    (derived,) = {line.split()[2] for line in err.splitlines()}
    assert derived.startswith("req-") and f"\n{derived} " in run_cli.out and "\n- " not in run_cli.out
    with Ledger(tmp / "requests" / "ledger.sqlite") as ledger:
        assert [(r.request_id, r.status) for r in ledger.requests()] == [("erase-1", "failed"), (derived, "failed")]

    before = files_of(tmp)
    ledger_path = tmp / "requests" / "ledger.sqlite"
    other_check = [*forget(tmp, "--subject", "s-a", "--request_id", "erase-1"), "--check", "retain/probability>=0"]
    code, err = run_cli(other_check, capsys)
    assert code == 2 and "Traceback" not in err
    expect_error(
        err, f"request erase-1 (--subject): it is in ledger {ledger_path} (failed), opened with other settings: "
        f"checks ['{CHECK}'] then, ['{CHECK}', 'retain/probability>=0'] now. A request keeps the settings it was "
        "opened with: give those to resume it, or give another --request_id, or none (an id is then derived "
        "from the subjects and settings).",
    )  # fmt: skip
    code, err = run_cli(forget(tmp, "--subject", "s-c", "--request_id", "erase-1"), capsys)
    assert code == 2 and "Traceback" not in err
    expect_error(
        err, f"request erase-1 (--subject): it is in ledger {ledger_path} for subjects ['s-a'], not ['s-c']; a "
        "request id names one request: give another --request_id, or none (an id is then derived from the "
        "subjects and settings).",
    )  # fmt: skip
    assert files_of(tmp) == before


def test_ledger_file_errors_name_the_file_and_keep_the_sqlite_cause(tmp):
    with pytest.raises(LedgerFileError, match=r"not_sqlite\.db is not an SQLite database") as raised:
        Ledger(tmp / "not_sqlite.db")
    assert isinstance(raised.value, LedgerError | ValueError)
    assert isinstance(raised.value.__cause__, sqlite3.DatabaseError)
    with pytest.raises(LedgerFileError, match=r"a_file is a file, not a directory"):
        Ledger(tmp / "a_file" / "sub" / "ledger.sqlite")
    assert not (tmp / "a_file").is_dir()
