"""The lineage and request ledger: what it records, what it refuses, and that it survives being reopened."""

from __future__ import annotations

import sqlite3
from datetime import datetime

import pytest
from datasets import Dataset

from llm_unlearn.data.loading import example_fingerprint, fingerprint
from llm_unlearn.deletion.ledger import Ledger, LedgerError, output_hash, request_id_for

ROWS = {
    "question": ["Where does Ann live?", "What does Ann do?", "Where does Bob live?", "What is the sky?"],
    "answer": ["In Oslo.", "She paints.", "In Lima.", "Blue."],
    "subject_id": ["ann", "ann", "bob", None],
}


@pytest.fixture
def data() -> Dataset:
    return Dataset.from_dict(ROWS)


@pytest.fixture
def ledger(tmp_path):
    with Ledger(tmp_path / "ledger.sqlite") as opened:
        yield opened


def test_lineage_records_fingerprints_and_subjects_never_text(ledger, data):
    dataset_fp = ledger.record_training_data(data, "people.jsonl", model_version="v1", model_path="/m/1")
    assert dataset_fp == fingerprint(data)
    examples = ledger.examples_of(["ann"])
    assert [e.row for e in examples] == [0, 1]
    expected = example_fingerprint({"question": ROWS["question"][1], "answer": ROWS["answer"][1]})
    assert examples[1].example_fingerprint == expected
    assert {(e.subject_id, e.source, e.dataset_fingerprint) for e in examples} == {
        ("ann", "people.jsonl", dataset_fp)
    }
    assert [e.row for e in ledger.examples_of(["bob", "ann"])] == [0, 1, 2]
    assert ledger.known_subjects() == ["ann", "bob"]
    assert ledger.model_versions_with(["bob"]) == {"v1": "/m/1"}
    # Recording the same data again (e.g. a rerun) adds nothing; another model trained on it is noted.
    ledger.record_training_data(data, "people.jsonl", model_version="v2")
    assert len(ledger.examples_of(["ann"])) == 2
    assert ledger.model_versions_with(["ann"]) == {"v1": "/m/1", "v2": None}
    raw = (ledger.path).read_bytes() + ledger.path.with_name("ledger.sqlite-wal").read_bytes()
    assert b"Oslo" not in raw and b"paints" not in raw


def test_unknown_subject_names_how_many_are_known(ledger, data):
    with pytest.raises(LedgerError, match=r"no subjects \(record the training data first"):
        ledger.examples_of(["ann"])
    ledger.record_training_data(data, "people.jsonl")
    with pytest.raises(
        LedgerError, match=r"unknown subject id\(s\) \['carl'\].*holds 2 subject\(s\), e\.g\. ann, bob"
    ):
        ledger.examples_of(["ann", "carl"])


def test_request_ids_are_deterministic_and_reopening_finds_the_request(ledger):
    first = ledger.open_request(["bob", "ann"], key="model-a")
    assert first.status == "received" and first.subjects == ["ann", "bob"]
    assert first.request_id == request_id_for(["ann", "bob"], "model-a")
    again = ledger.open_request(["ann", "bob", "ann"], key="model-a")
    assert again == first and len(ledger.requests()) == 1
    assert ledger.open_request(["ann", "bob"], key="model-b").request_id != first.request_id
    named = ledger.open_request(["ann"], "erase-42", settings={"recipe": "x.yaml"})
    assert named.request_id == "erase-42" and named.settings == {"recipe": "x.yaml"}
    with pytest.raises(LedgerError, match=r"request erase-42 exists with other subjects"):
        ledger.open_request(["bob"], "erase-42", settings={"recipe": "x.yaml"})
    with pytest.raises(LedgerError, match=r"exists with other settings"):
        ledger.open_request(["ann"], "erase-42", settings={"recipe": "y.yaml"})
    with pytest.raises(LedgerError, match=r"unknown request id 'nope'.*holds 3 request\(s\)"):
        ledger.request("nope")


def test_statuses_move_forward_with_utc_timestamps(ledger):
    request_id = ledger.open_request(["ann"]).request_id
    ledger.set_status(request_id, "running")
    failed = ledger.set_status(request_id, "failed", "checks failed: forget/probability<=0.5*target")
    assert failed.status == "failed" and failed.reason.startswith("checks failed")
    ledger.set_status(request_id, "running")
    done = ledger.set_status(request_id, "verified")
    assert done.reason is None
    statuses = [event for event in ledger.history(request_id) if event["kind"] == "status"]
    assert [event["status"] for event in statuses] == ["received", "running", "failed", "running", "verified"]
    assert statuses[2]["reason"] == "checks failed: forget/probability<=0.5*target"
    times = [datetime.fromisoformat(event["at"]) for event in statuses]
    assert all(time.utcoffset().total_seconds() == 0 for time in times)
    assert times == sorted(times) and done.updated_at == statuses[-1]["at"]
    with pytest.raises(
        LedgerError, match=r"is 'verified' and cannot become 'running'.*nothing \(it is final\)"
    ):
        ledger.set_status(request_id, "running")
    with pytest.raises(LedgerError, match=r"unknown request status 'done'; statuses are"):
        ledger.set_status(request_id, "done")
    fresh = ledger.open_request(["bob"]).request_id
    with pytest.raises(LedgerError, match=r"'received' and cannot become 'verified'.*\['running'\]"):
        ledger.set_status(fresh, "verified")


def test_steps_record_output_hashes_and_notice_a_changed_output(ledger, tmp_path):
    request_id = ledger.open_request(["ann"]).request_id
    assert ledger.step(request_id, "unlearn") is None
    model = tmp_path / "model"
    model.mkdir()
    (model / "weights.bin").write_bytes(b"\x00\x01")
    ledger.start_step(request_id, "unlearn")
    assert not ledger.step_is_done(request_id, "unlearn")
    record = ledger.finish_step(request_id, "unlearn", model, detail={"forget_examples": 2})
    assert record.status == "done" and record.output_hash == output_hash(model) and record.finished_at
    assert record.detail == {"forget_examples": 2}
    assert ledger.step_is_done(request_id, "unlearn")
    ledger.skip_step(request_id, "unlearn")
    (model / "weights.bin").write_bytes(b"\x00\x02")
    assert not ledger.step_is_done(request_id, "unlearn")
    with pytest.raises(LedgerError, match=r"step gate of req-\w+ is not done, so it cannot be skipped"):
        ledger.skip_step(request_id, "gate")
    with pytest.raises(LedgerError, match=r"its output .*missing does not exist"):
        ledger.finish_step(request_id, "gate", tmp_path / "missing")
    ledger.start_step(request_id, "gate")
    failed = ledger.fail_step(request_id, "gate", "eval.json is missing")
    assert failed.status == "failed" and failed.detail == {"error": "eval.json is missing"}
    steps = [(e["step"], e["status"]) for e in ledger.history(request_id) if e["kind"] == "step"]
    assert steps == [("unlearn", "running"), ("unlearn", "done"), ("unlearn", "skipped"), ("gate", "running"),
                     ("gate", "failed")]  # fmt: skip
    assert [step.step for step in ledger.steps(request_id)] == ["unlearn", "gate"]


def test_directory_hash_covers_names_and_contents(tmp_path):
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "x.txt").write_text("same")
    assert output_hash(tmp_path / "a") == output_hash(tmp_path / "b")
    (tmp_path / "b" / "x.txt").rename(tmp_path / "b" / "y.txt")
    assert output_hash(tmp_path / "a") != output_hash(tmp_path / "b")
    assert output_hash(tmp_path / "none") is None


def test_reopening_keeps_everything_and_creates_the_schema_once(tmp_path, data):
    path = tmp_path / "ledger.sqlite"
    with Ledger(path) as ledger:
        ledger.record_training_data(data, "people.jsonl")
        request_id = ledger.open_request(["ann"]).request_id
        ledger.set_status(request_id, "running")
    with Ledger(path) as ledger:
        assert ledger.request(request_id).status == "running"
        assert len(ledger.examples_of(["ann"])) == 2
    with sqlite3.connect(path) as db:
        assert db.execute("SELECT version FROM schema_version").fetchall() == [(1,)]
        assert db.execute("PRAGMA journal_mode").fetchone() == ("wal",)
        db.execute("UPDATE schema_version SET version = 99")
    with pytest.raises(LedgerError, match=r"schema version \[99\], but this llm_unlearn reads version 1"):
        Ledger(path)


def test_a_write_interrupted_midway_leaves_what_was_committed(tmp_path, data):
    path = tmp_path / "ledger.sqlite"
    with Ledger(path) as ledger:
        request_id = ledger.open_request(["ann"]).request_id
        ledger.record_training_data(data, "people.jsonl")
        with pytest.raises(KeyboardInterrupt), ledger._transaction() as db:
            db.execute("INSERT INTO datasets VALUES ('fp', 'half.jsonl', 1, 'now')")
            raise KeyboardInterrupt
    with Ledger(path) as ledger:
        assert ledger.request(request_id).status == "received"
        assert len(ledger.examples_of(["ann"])) == 2
        assert [tuple(row) for row in ledger._query("SELECT source FROM datasets")] == [("people.jsonl",)]
