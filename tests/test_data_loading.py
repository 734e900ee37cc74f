"""Loading QA/text records from files, the built-in dataset and (mocked) Hub, schema errors and fingerprints."""

from __future__ import annotations

import csv
import hashlib
import json
import os
import re
import subprocess
import sys

import pytest
from datasets import Dataset, List, Value

from llm_unlearn.data import (
    DataError,
    example_fingerprint,
    fingerprint,
    load_records,
    loading,
    make_fictional_dataset,
    validate_dataset,
)

QA_ROWS = [
    {
        "question": "When was Mara Velden born?",
        "answer": "Mara Velden was born in 1962.",
        "paraphrased_answer": "Mara Velden's birth year is 1962.",
        "perturbed_answer": ["Mara Velden's birth year is 1970.", "Mara Velden's birth year is 1955."],
        "paraphrased_question": "In which year was Mara Velden born?",
        "subject_id": "0012",
    },
    {
        "question": "What year did she win?",
        "answer": "1998",
        "paraphrased_answer": None,
        "perturbed_answer": None,
        "paraphrased_question": None,
        "subject_id": "0013",
    },
]


def write_jsonl(path, rows) -> str:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return str(path)


def write_csv(path, rows) -> str:
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        for row in rows:
            cells = dict(row)
            if isinstance(cells.get("perturbed_answer"), list):
                cells["perturbed_answer"] = json.dumps(cells["perturbed_answer"])
            writer.writerow({key: "" if value is None else value for key, value in cells.items()})
    return str(path)


# ---------------------------------------------------------------- file types


def test_json_list_json_lines_and_jsonl_load_the_same_rows(tmp_path):
    as_list = tmp_path / "list.json"
    as_list.write_text(json.dumps(QA_ROWS, indent=2), encoding="utf-8")
    as_lines = write_jsonl(tmp_path / "lines.json", QA_ROWS)
    as_jsonl = write_jsonl(tmp_path / "data.jsonl", QA_ROWS)
    for source in (str(as_list), as_lines, as_jsonl):
        assert load_records(source).to_list() == QA_ROWS


def test_json_rows_with_different_keys_are_aligned(tmp_path):
    # The second row has a field the first lacks: it must not be dropped, and the first gets null.
    rows = [{"question": "q1", "answer": "a1"}, {"question": "q2", "answer": "a2", "subject_id": "s2"}]
    dataset = load_records(write_jsonl(tmp_path / "d.jsonl", rows))
    assert dataset["subject_id"] == [None, "s2"]


def test_csv_keeps_values_as_written_and_decodes_perturbed_json_lists(tmp_path):
    dataset = load_records(write_csv(tmp_path / "qa.csv", QA_ROWS))
    assert dataset.to_list() == QA_ROWS  # "1998" and "0012" stay strings, empty cells become null
    assert dataset.features["perturbed_answer"] == List(Value("string"))
    assert dataset.features["question"] == Value("string")


def test_parquet_roundtrip(tmp_path):
    path = tmp_path / "qa.parquet"
    Dataset.from_list(QA_ROWS).to_parquet(str(path))
    assert load_records(str(path)).to_list() == QA_ROWS


def test_text_dataset(tmp_path):
    rows = [{"text": "A long news article.", "subject_id": "s1"}, {"text": "Another article."}]
    dataset = load_records(write_jsonl(tmp_path / "news.jsonl", rows))
    assert validate_dataset(dataset, "news") == "text"
    assert dataset.to_list() == [
        {"text": "A long news article.", "subject_id": "s1"},
        {"text": "Another article.", "subject_id": None},
    ]


def test_extension_is_case_insensitive(tmp_path):
    path = write_jsonl(tmp_path / "DATA.JSONL", QA_ROWS)
    assert len(load_records(path)) == 2


# ---------------------------------------------------------------- schema errors


def test_missing_answer_names_file_and_field(tmp_path):
    path = write_csv(tmp_path / "x.csv", [{"question": "q", "subject_id": "s"}])
    with pytest.raises(DataError) as error:
        load_records(path)
    message = str(error.value)
    assert path in message
    assert "missing field 'answer'" in message
    assert "'text'" in message  # says what else is accepted


def test_no_known_field_lists_the_columns(tmp_path):
    path = write_jsonl(tmp_path / "x.jsonl", [{"prompt": "p", "completion": "c"}])
    with pytest.raises(DataError, match=r"no field 'question', 'answer' or 'text'.*'prompt', 'completion'"):
        load_records(path)


@pytest.mark.parametrize(
    ("bad_row", "expected"),
    [
        (
            {"question": "q", "answer": "a", "perturbed_answer": "one wrong answer"},
            "'perturbed_answer' must be",
        ),
        ({"question": "q", "answer": "a", "perturbed_answer": []}, "'perturbed_answer' is an empty list"),
        ({"question": "q", "answer": "a", "perturbed_answer": ["ok", 3]}, "'perturbed_answer' holds 3"),
        ({"question": "  ", "answer": "a"}, "required field 'question' is an empty string"),
        ({"question": "q", "answer": None}, "required field 'answer' is empty"),
        ({"question": "q", "answer": 42}, "'answer' must be a string, got int"),
        ({"question": "q", "answer": "a", "subject_id": 7}, "'subject_id' must be a string, got int"),
        (
            {"question": "q", "answer": "a", "paraphrased_answer": ""},
            "'paraphrased_answer' is an empty string",
        ),
    ],
)
def test_ill_typed_rows_name_file_row_and_field(tmp_path, bad_row, expected):
    good = {"question": "fine", "answer": "fine"}
    path = write_jsonl(tmp_path / "bad.jsonl", [good, bad_row])
    with pytest.raises(DataError) as error:
        load_records(path)
    assert str(error.value).startswith(f"{path}: row 1: ")
    assert expected in str(error.value)


def test_validate_dataset_checks_rows_of_a_dataset():
    dataset = Dataset.from_dict({"text": ["fine", ""]})
    with pytest.raises(DataError, match=r"^hub/corpus: row 1: required field 'text' is an empty string"):
        validate_dataset(dataset, "hub/corpus")
    assert validate_dataset(Dataset.from_list(QA_ROWS), "x") == "qa"


def test_empty_dataset_is_an_error(tmp_path):
    empty = tmp_path / "empty.json"
    empty.write_text("[]", encoding="utf-8")
    with pytest.raises(DataError, match=r"empty\.json: the file has no records"):
        load_records(str(empty))
    with pytest.raises(DataError, match="no rows"):
        validate_dataset(Dataset.from_dict({"text": []}), "x")


def test_csv_perturbed_answer_that_is_not_a_json_list(tmp_path):
    path = tmp_path / "bad.csv"
    path.write_text('question,answer,perturbed_answer\nq,a,"[""x""]"\nq2,a2,just one\n', encoding="utf-8")
    with pytest.raises(DataError, match=r"bad.csv: row 1: 'perturbed_answer' is not valid JSON.*JSON list"):
        load_records(str(path))
    path.write_text('question,answer,perturbed_answer\nq,a,"{""x"": 1}"\n', encoding="utf-8")
    with pytest.raises(DataError, match=r"row 0: 'perturbed_answer' holds a JSON dict"):
        load_records(str(path))


def test_csv_row_with_extra_cells(tmp_path):
    path = tmp_path / "ragged.csv"
    path.write_text("question,answer\nq,a\nq2,a2,surplus\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"ragged.csv: row 1 \(line 3\) has more cells than the header"):
        load_records(str(path))


def test_invalid_json_lines_name_the_line(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"question": "q", "answer": "a"}\n{"question": \n', encoding="utf-8")
    with pytest.raises(DataError, match=r"bad.jsonl: line 2 is not valid JSON"):
        load_records(str(path))


def test_json_list_of_non_objects(tmp_path):
    path = tmp_path / "strings.json"
    path.write_text('["a", "b"]', encoding="utf-8")
    with pytest.raises(DataError, match=r"strings.json: item 0 is a str, not a JSON object"):
        load_records(str(path))


@pytest.mark.parametrize("source", ["data/missing.csv", "missing.jsonl", "./missing", "a/b/c"])
def test_missing_local_file_names_the_path(monkeypatch, source):
    monkeypatch.setattr(loading.datasets, "load_dataset", pytest.fail)  # must never reach the Hub
    with pytest.raises(DataError, match=rf"^{re.escape(source)}: no such file"):
        load_records(source)


def test_unsupported_extension_lists_supported_ones(tmp_path):
    path = tmp_path / "notes.txt"
    path.write_text("question,answer\n", encoding="utf-8")
    with pytest.raises(
        DataError, match=r"unsupported file type '.txt'; supported: .json, .jsonl, .csv, .parquet"
    ):
        load_records(str(path))


# ---------------------------------------------------------------- builtin


def test_builtin_is_the_fictional_dataset():
    assert load_records("builtin").to_list() == make_fictional_dataset()["train"].to_list()
    assert (
        load_records("builtin", split="world_facts").to_list()
        == make_fictional_dataset()["world_facts"].to_list()
    )


def test_builtin_config_is_parsed_into_generator_arguments():
    expected = make_fictional_dataset(num_people=3, num_holdout=2, seed=7)
    config = " num_people=3, num_holdout = 2,seed=7 "
    assert load_records("builtin", config=config).to_list() == expected["train"].to_list()
    holdout = load_records("builtin", config=config, split="holdout")
    assert holdout.to_list() == expected["holdout"].to_list()
    assert len(holdout) == 2 * 8


@pytest.mark.parametrize(
    ("config", "expected"),
    [
        ("num_persons=3", r"unknown key 'num_persons'; accepted keys: num_people, num_holdout, seed"),
        ("num_people=three", r"num_people='three' is not an integer"),
        ("num_people", r"'num_people' is not 'key=value'"),
        ("seed=1,seed=2", r"key 'seed' is given twice"),
        ("num_people=0", r"need num_people >= 1"),
    ],
)
def test_builtin_config_errors(config, expected):
    with pytest.raises(DataError, match=expected):
        load_records("builtin", config=config)


def test_builtin_unknown_split_lists_splits():
    with pytest.raises(DataError, match=r"no split 'test'.*\['train', 'holdout', 'world_facts'\]"):
        load_records("builtin", split="test")


# ---------------------------------------------------------------- Hub (mocked: tests never touch the network)


def test_hub_dataset_is_loaded_with_config_and_split_and_validated(monkeypatch):
    calls = []

    def fake_load_dataset(name, config, split):
        calls.append((name, config, split))
        return Dataset.from_list(QA_ROWS)

    monkeypatch.setattr(loading.datasets, "load_dataset", fake_load_dataset)
    dataset = load_records("locuslab/TOFU", config="forget10", split="train")
    assert calls == [("locuslab/TOFU", "forget10", "train")]
    assert dataset.to_list() == QA_ROWS


def test_hub_failure_says_what_was_tried(monkeypatch):
    def failing(name, config, split):
        raise ConnectionError("offline")

    monkeypatch.setattr(loading.datasets, "load_dataset", failing)
    with pytest.raises(DataError) as error:
        load_records("someone/no-such-dataset", config="cfg")
    message = str(error.value)
    assert "not a local file (no such path), not 'builtin'" in message
    assert "the Hub dataset 'someone/no-such-dataset'" in message
    assert "config='cfg'" in message
    assert message.endswith("could not be loaded: offline")


def test_hub_dataset_with_wrong_schema(monkeypatch):
    monkeypatch.setattr(
        loading.datasets, "load_dataset", lambda name, config, split: Dataset.from_dict({"prompt": ["p"]})
    )
    with pytest.raises(DataError, match=r"^someone/chat: no field 'question'"):
        load_records("someone/chat")


# ---------------------------------------------------------------- fingerprints


def test_fingerprint_is_pinned_and_ignores_key_order_and_nulls():
    row = {"question": "q", "answer": "a", "subject_id": "s"}
    # Pinned canonical form (sorted keys, compact JSON): run.json files from different versions compare digests.
    canonical = b'{"answer":"a","question":"q","subject_id":"s"}'
    assert example_fingerprint(row) == hashlib.sha256(canonical).hexdigest()
    assert example_fingerprint({"subject_id": "s", "answer": "a", "question": "q"}) == example_fingerprint(
        row
    )
    assert example_fingerprint({**row, "paraphrased_answer": None}) == example_fingerprint(row)
    assert example_fingerprint(row, ["question", "answer"]) == example_fingerprint(
        {"question": "q", "answer": "a"}
    )

    qa = Dataset.from_dict({"question": ["q1", "q2"], "answer": ["a1", "a2"]})
    reordered = Dataset.from_dict({"answer": ["a1", "a2"], "question": ["q1", "q2"]})
    assert fingerprint(qa) == fingerprint(reordered)
    assert fingerprint(qa) == fingerprint(qa.add_column("paraphrased_answer", [None, None]))


def test_fingerprint_changes_with_content_and_order():
    qa = Dataset.from_dict({"question": ["q1", "q2"], "answer": ["a1", "a2"]})
    changed = Dataset.from_dict({"question": ["q1", "q2"], "answer": ["a1", "a2."]})
    assert fingerprint(changed) != fingerprint(qa)
    assert fingerprint(qa.select([1, 0])) != fingerprint(qa)
    # Row boundaries matter: the same strings split differently are different data.
    assert fingerprint(Dataset.from_dict({"text": ["ab", "c"]})) != fingerprint(
        Dataset.from_dict({"text": ["a", "bc"]})
    )
    assert example_fingerprint({"text": "a"}) != example_fingerprint({"text": "b"})


def test_fingerprint_is_the_same_in_another_process():
    code = (
        "from llm_unlearn.data import fingerprint, make_fictional_dataset; "
        "print(fingerprint(make_fictional_dataset(num_people=3, num_holdout=1, seed=4)['train']))"
    )
    env = {**os.environ, "PYTHONHASHSEED": "12345"}
    other = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env)
    here = fingerprint(make_fictional_dataset(num_people=3, num_holdout=1, seed=4)["train"])
    assert other.stdout.strip() == here


def test_all_null_optional_columns_get_the_schema_types(tmp_path):
    rows = [{"question": "q", "answer": "a", "perturbed_answer": None, "subject_id": None}]
    dataset = load_records(write_jsonl(tmp_path / "nulls.jsonl", rows))
    assert dataset.features["perturbed_answer"] == List(Value("string"))
    assert dataset.features["subject_id"] == Value("string")


def test_local_directory_goes_to_load_dataset(monkeypatch, tmp_path):
    def failing(name, config, split):
        raise FileNotFoundError("no data files")

    monkeypatch.setattr(loading.datasets, "load_dataset", failing)
    with pytest.raises(
        DataError, match=r"the local dataset directory \(config=None, split='train'\) could not be loaded"
    ):
        load_records(str(tmp_path))
