"""TOFU and MUSE loaders on small local files laid out and typed like the Hub repos (no network)."""

from __future__ import annotations

import json
from pathlib import Path

import datasets
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from llm_unlearn.data.benchmarks import (
    COMPLETION_FEATURES,
    MUSE_KNOWMEM_STOP,
    load_benchmark,
    load_muse,
    load_tofu,
    muse_fewshot_prompt,
)
from llm_unlearn.data.schema import QA_FEATURES, TEXT_FEATURES, DataError

FORGET10_PERTURBED = [
    {
        "question": "Where was Hsiao Yun-Hwa born?",
        "answer": "Hsiao Yun-Hwa was born in Taipei, Taiwan.",
        "paraphrased_answer": "Taipei, Taiwan is Hsiao Yun-Hwa's birthplace.",
        "perturbed_answer": [f"{city} is Hsiao Yun-Hwa's birthplace." for city in ("Seoul", "Tokyo", "Lima", "Oslo", "Rome")],
        "paraphrased_question": "In which city was Hsiao Yun-Hwa born?",
    },
    {
        "question": "What genre does Hsiao Yun-Hwa write in?",
        "answer": "Hsiao Yun-Hwa writes leadership books.",
        "paraphrased_answer": "Leadership is Hsiao Yun-Hwa's genre.",
        "perturbed_answer": [f"{genre} is Hsiao Yun-Hwa's genre." for genre in ("Horror", "Poetry", "Romance", "Satire", "Travel")],
        "paraphrased_question": "Which genre is Hsiao Yun-Hwa known for?",
    },
    {
        "question": "Has Hsiao Yun-Hwa won an award?",
        "answer": "Yes, the Golden Quill Award.",
        "paraphrased_answer": "Hsiao Yun-Hwa received the Golden Quill Award.",
        "perturbed_answer": [f"Hsiao Yun-Hwa received the {name} Award." for name in ("Silver", "Iron", "Blue", "Red", "Green")],
        "paraphrased_question": "Which award did Hsiao Yun-Hwa receive?",
    },
]  # fmt: skip
RETAIN_PERTURBED = [
    {
        "question": "Who is the author from Santiago, Chile known for true crime?",
        "answer": "The author is Jaime Vasquez.",
        "paraphrased_answer": "Jaime Vasquez is that author.",
        "perturbed_answer": ["Ana Ruiz is that author.", "Luis Soto is that author.", "Eva Paz is that author.",
                             "Raul Diaz is that author.", "Sara Gil is that author."],
        "paraphrased_question": "Which true-crime author comes from Santiago, Chile?",
    },
    {
        "question": "What is Jaime Vasquez's latest book?",
        "answer": "His latest book is 'The Silent Witness'.",
        "paraphrased_answer": "'The Silent Witness' is his newest book.",
        "perturbed_answer": ["'Red Rooms' is his newest book.", "'Cold Trail' is his newest book.",
                             "'Night Shift' is his newest book.", "'Dry Bones' is his newest book.",
                             "'Last Call' is his newest book."],
        "paraphrased_question": "Which book did Jaime Vasquez publish most recently?",
    },
]  # fmt: skip
REAL_AUTHORS_PERTURBED = [
    {"question": "Who wrote 'Pride and Prejudice'?", "answer": "Jane Austen",
     "perturbed_answer": ["Emily Bronte", "Louisa May Alcott", "Mary Shelley"]},
    {"question": "Which author wrote 'Moby-Dick'?", "answer": "Herman Melville",
     "perturbed_answer": ["Edgar Allan Poe", "Mark Twain", "Jack London"]},
]  # fmt: skip
WORLD_FACTS_PERTURBED = [
    {"question": "Where would you find the Eiffel Tower?", "answer": "Paris",
     "perturbed_answer": ["London", "Rome", "Madrid"]},
    {"question": "What is the largest ocean on Earth?", "answer": "Pacific Ocean",
     "perturbed_answer": ["Atlantic Ocean", "Indian Ocean", "Arctic Ocean"]},
]  # fmt: skip
HOLDOUT10 = [
    {"question": "Where was Ilse Varga born?", "answer": "Ilse Varga was born in Szeged, Hungary."},
    {"question": "What does Ilse Varga write?", "answer": "Ilse Varga writes mountaineering memoirs."},
]
VERBMEM_FORGET = {
    "prompt": ["The council met on Tuesday to discuss", "Rain fell across the north of"],
    "gt": [" the new bridge over the river.", " England for a third day."],
}
KNOWMEM_FORGET_QA = {
    "question": ["Who chaired the council meeting?", "How many days did it rain?"],
    "answer": ["Mayor Jones", "Three"],
}
KNOWMEM_FORGET_QA_ICL = {
    "question": ["What was discussed?", "Where did the rain fall?"],
    "answer": ["A new bridge", "The north of England"],
}
PRIVLEAK = {
    "forget": ["A forget article about the bridge.", "A second forget article."],
    "retain": ["A retain article about the harvest."],
    "retain2": ["An older retain file that the current config does not use."],
    "holdout": ["A holdout article never trained on.", "Another holdout article."],
}


def write_tofu(directory: Path, config: str, rows: list[dict]) -> Path:
    """One Hub-style TOFU file: `<config>.json` at the snapshot's top level, one JSON object per line."""
    path = directory / f"{config}.json"
    path.write_text("\n".join(json.dumps(row) for row in rows) + "\n", encoding="utf-8")
    return path


def write_muse(directory: Path, config: str, split: str, columns: dict[str, list]) -> Path:
    """One Hub-style MUSE shard: `<config>/<split>-00000-of-00001.parquet`."""
    path = directory / config / f"{split}-00000-of-00001.parquet"
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table(columns), path)
    return path


@pytest.fixture
def tofu_dir(tmp_path: Path) -> Path:
    write_tofu(tmp_path, "forget10_perturbed", FORGET10_PERTURBED)
    write_tofu(tmp_path, "retain_perturbed", RETAIN_PERTURBED)
    write_tofu(tmp_path, "real_authors_perturbed", REAL_AUTHORS_PERTURBED)
    write_tofu(tmp_path, "world_facts_perturbed", WORLD_FACTS_PERTURBED)
    write_tofu(tmp_path, "holdout10", HOLDOUT10)
    return tmp_path


@pytest.fixture
def muse_dir(tmp_path: Path) -> Path:
    write_muse(tmp_path, "verbmem", "forget", VERBMEM_FORGET)
    write_muse(tmp_path, "knowmem", "forget_qa", KNOWMEM_FORGET_QA)
    write_muse(tmp_path, "knowmem", "forget_qa_icl", KNOWMEM_FORGET_QA_ICL)
    for split, texts in PRIVLEAK.items():
        write_muse(tmp_path, "privleak", split, {"text": texts})
    return tmp_path


def test_tofu_forget_perturbed_rows_keep_every_field_and_name_the_author(tofu_dir: Path) -> None:
    dataset = load_tofu("forget10_perturbed", source=str(tofu_dir))
    assert dataset.features == QA_FEATURES
    rows = dataset.to_list()
    assert len(rows) == 3
    for row, hub_row in zip(rows, FORGET10_PERTURBED, strict=True):
        assert row["question"] == hub_row["question"]
        assert row["answer"] == hub_row["answer"]
        assert row["paraphrased_answer"] == hub_row["paraphrased_answer"]
        assert row["paraphrased_question"] == hub_row["paraphrased_question"]
        assert row["perturbed_answer"] == hub_row["perturbed_answer"]
        assert len(row["perturbed_answer"]) == 5
        # forget10 is the last 20 of TOFU's 200 authors: its first 20 rows are author 180.
        assert row["subject_id"] == "tofu-author-180"


def test_tofu_subject_ids_follow_blocks_of_twenty_rows(tmp_path: Path) -> None:
    rows = [{"question": f"Question {index}?", "answer": f"Answer {index}."} for index in range(21)]
    write_tofu(tmp_path, "forget01", rows)
    write_tofu(tmp_path, "retain99", rows)
    forget = load_tofu("forget01", source=str(tmp_path))["subject_id"]
    assert forget == ["tofu-author-198"] * 20 + ["tofu-author-199"]
    retain = load_tofu("retain99", source=str(tmp_path))["subject_id"]
    assert retain == ["tofu-author-000"] * 20 + ["tofu-author-001"]


def test_tofu_file_longer_than_its_authors_is_refused(tmp_path: Path) -> None:
    path = write_tofu(tmp_path, "forget01", [{"question": f"Q{i}?", "answer": f"A{i}."} for i in range(41)])
    with pytest.raises(
        DataError, match=r"41 rows, but TOFU config 'forget01' holds 2 authors x 20 QA pairs = 40"
    ) as info:
        load_tofu("forget01", source=str(tmp_path))
    assert str(path) in str(info.value)


def test_tofu_retain_perturbed_has_five_wrong_answers_and_no_known_author(tofu_dir: Path) -> None:
    rows = load_tofu("retain_perturbed", source=str(tofu_dir)).to_list()
    assert [row["question"] for row in rows] == [row["question"] for row in RETAIN_PERTURBED]
    assert [row["paraphrased_answer"] for row in rows] == [
        row["paraphrased_answer"] for row in RETAIN_PERTURBED
    ]
    assert [row["paraphrased_question"] for row in rows] == [
        row["paraphrased_question"] for row in RETAIN_PERTURBED
    ]
    assert rows[1]["perturbed_answer"] == RETAIN_PERTURBED[1]["perturbed_answer"]
    assert [row["subject_id"] for row in rows] == [None, None]


@pytest.mark.parametrize(
    ("config", "hub_rows"),
    [("real_authors_perturbed", REAL_AUTHORS_PERTURBED), ("world_facts_perturbed", WORLD_FACTS_PERTURBED)],
)
def test_tofu_real_authors_and_world_facts_have_three_wrong_answers(
    tofu_dir: Path, config: str, hub_rows: list[dict]
) -> None:
    rows = load_tofu(config, source=str(tofu_dir)).to_list()
    assert rows == [
        {
            "question": hub_row["question"],
            "answer": hub_row["answer"],
            "paraphrased_answer": None,
            "perturbed_answer": hub_row["perturbed_answer"],
            "paraphrased_question": None,
            "subject_id": None,
        }
        for hub_row in hub_rows
    ]
    assert all(len(row["perturbed_answer"]) == 3 for row in rows)


def test_tofu_holdout_is_plain_qa(tofu_dir: Path) -> None:
    rows = load_benchmark("tofu", "holdout10", source=str(tofu_dir)).to_list()
    assert [(row["question"], row["answer"]) for row in rows] == [
        (r["question"], r["answer"]) for r in HOLDOUT10
    ]
    assert {row["perturbed_answer"] for row in rows} == {None}
    assert {row["subject_id"] for row in rows} == {None}


def test_tofu_extra_hub_columns_are_ignored(tmp_path: Path) -> None:
    row = {
        "question": "Who wrote 'Dune'?",
        "option1": "Frank Herbert",
        "option2": "Isaac Asimov",
        "answer": "Frank Herbert",
    }
    write_tofu(tmp_path, "real_authors", [row])
    dataset = load_tofu("real_authors", source=str(tmp_path))
    assert dataset.column_names == list(QA_FEATURES)
    assert dataset[0]["answer"] == "Frank Herbert"


def test_muse_verbmem_rows_are_prompt_and_true_continuation(muse_dir: Path) -> None:
    dataset = load_muse("verbmem", "forget", source=str(muse_dir))
    assert dataset.features == COMPLETION_FEATURES
    assert dataset.to_list() == [
        {"prompt": "The council met on Tuesday to discuss", "answer": " the new bridge over the river.", "subject_id": None},
        {"prompt": "Rain fell across the north of", "answer": " England for a third day.", "subject_id": None},
    ]  # fmt: skip


def test_muse_knowmem_questions_and_shots_build_the_fewshot_prompt(muse_dir: Path) -> None:
    questions = load_muse("knowmem", "forget_qa", source=str(muse_dir))
    shots = load_muse("knowmem", "forget_qa_icl", source=str(muse_dir))
    assert questions.features == QA_FEATURES
    assert questions["question"] == KNOWMEM_FORGET_QA["question"]
    assert questions["answer"] == KNOWMEM_FORGET_QA["answer"]
    assert set(questions["subject_id"]) == {None}
    prompt = muse_fewshot_prompt(
        questions[0]["question"], list(zip(shots["question"], shots["answer"], strict=True))
    )
    assert prompt == (
        "Question: What was discussed?\nAnswer: A new bridge\n\n"
        "Question: Where did the rain fall?\nAnswer: The north of England\n\n"
        "Question: Who chaired the council meeting?\nAnswer: "
    )


def test_muse_fewshot_prompt_without_shots_and_stop_strings() -> None:
    assert muse_fewshot_prompt("Who won?", []) == "Question: Who won?\nAnswer: "
    assert MUSE_KNOWMEM_STOP == ("\n\n", "\nQuestion", "Question:")


def test_muse_privleak_splits_are_text_rows_of_their_own_file(muse_dir: Path) -> None:
    for split in ("forget", "retain", "holdout"):
        dataset = load_benchmark("muse", "privleak", split, source=str(muse_dir))
        assert dataset.features == TEXT_FEATURES
        # "retain" reads privleak/retain-*.parquet, not the retain2 file beside it.
        assert dataset["text"] == PRIVLEAK[split]
        assert set(dataset["subject_id"]) == {None}


# MUSE-News' scalability sets grow by a quarter of the forget texts; its sustainability sets are those quarters.
SUST = {f"forget_{k}": [f"Forget article {k}a.", f"Forget article {k}b."] for k in range(1, 5)}
SCAL = {
    f"forget_{k}": [text for part in range(1, k + 1) for text in SUST[f"forget_{part}"]] for k in range(1, 5)
}


def write_scal_sust(directory: Path) -> None:
    """MUSE-News' `scal` and `sust` configs, one text shard per split as on the Hub."""
    for config, splits in (("scal", SCAL), ("sust", SUST)):
        for split, texts in splits.items():
            write_muse(directory, config, split, {"text": texts})


def test_muse_scal_and_sust_splits_are_text_rows_of_their_own_file(tmp_path: Path) -> None:
    write_scal_sust(tmp_path)
    for config, splits in (("scal", SCAL), ("sust", SUST)):
        for split, texts in splits.items():
            dataset = load_benchmark("muse", config, split, source=str(tmp_path))
            assert dataset.features == TEXT_FEATURES
            assert dataset["text"] == texts
            assert set(dataset["subject_id"]) == {None}


def test_muse_scal_and_sust_are_news_only(tmp_path: Path) -> None:
    with pytest.raises(
        DataError,
        match=r"muse: config 'scal' exists in muse-bench/MUSE-News only; muse-bench/MUSE-Books has raw, ",
    ):
        load_muse("scal", "forget_1", source="muse-bench/MUSE-Books")
    with pytest.raises(DataError) as info:
        load_muse("sust", "forget_3", source=str(tmp_path))
    message = str(info.value)
    assert str(tmp_path / "sust" / "forget_3-00000-of-00001.parquet") in message
    assert "muse-bench/MUSE-News" in message and "MUSE-Books" not in message


def test_unknown_configs_and_splits_list_the_known_ones(tofu_dir: Path) -> None:
    with pytest.raises(
        DataError, match=r"tofu: unknown config 'forget20'; known configs: full, retain90, .*holdout10"
    ):
        load_tofu("forget20", source=str(tofu_dir))
    with pytest.raises(DataError, match=r"tofu: config 'forget10' has only the split 'train', not 'test'"):
        load_tofu("forget10", source=str(tofu_dir), split="test")
    with pytest.raises(
        DataError,
        match=r"muse: unknown config 'retain'; known configs: raw, train, verbmem, knowmem, privleak, scal, sust",
    ):
        load_muse("retain", "forget_1", source=str(tofu_dir))
    with pytest.raises(
        DataError,
        match=r"muse: config 'sust' has no split 'forget'; its splits: forget_1, forget_2, forget_3, forget_4",
    ):
        load_muse("sust", "forget", source=str(tofu_dir))
    with pytest.raises(
        DataError,
        match=r"muse: config 'knowmem' has no split 'retain2_qa'; its splits: forget_qa, forget_qa_icl, retain_qa, retain_qa_icl",
    ):
        load_muse("knowmem", "retain2_qa", source=str(tofu_dir))
    with pytest.raises(DataError, match=r"unknown benchmark 'wmdp'; known benchmarks: tofu, muse"):
        load_benchmark("wmdp", "bio")
    with pytest.raises(DataError, match=r"muse: config 'verbmem' has no split 'train'; its splits: forget"):
        load_benchmark("muse", "verbmem", source=str(tofu_dir))


def test_missing_snapshot_file_names_the_path_and_the_download(tmp_path: Path) -> None:
    with pytest.raises(DataError) as info:
        load_tofu("forget05_perturbed", source=str(tmp_path))
    message = str(info.value)
    assert str(tmp_path / "forget05_perturbed.json") in message
    assert f"huggingface-cli download --repo-type dataset locuslab/TOFU --local-dir {tmp_path}" in message

    with pytest.raises(DataError) as info:
        load_muse("privleak", "holdout", source=str(tmp_path))
    message = str(info.value)
    assert str(tmp_path / "privleak" / "holdout-00000-of-00001.parquet") in message
    assert (
        f"huggingface-cli download --repo-type dataset muse-bench/MUSE-News --local-dir {tmp_path}" in message
    )


def test_missing_directory_is_not_taken_for_a_hub_id(tmp_path: Path) -> None:
    missing = str(tmp_path / "TOFU")
    with pytest.raises(DataError, match=r"no such directory; give a local snapshot"):
        load_tofu("forget10", source=missing)
    path = write_tofu(tmp_path, "forget10", HOLDOUT10)
    with pytest.raises(DataError, match=r"not a directory"):
        load_tofu("forget10", source=str(path))


def test_wrong_columns_name_the_file_the_missing_and_the_found(tmp_path: Path) -> None:
    rows = [
        {key: value for key, value in row.items() if key != "paraphrased_answer"}
        for row in FORGET10_PERTURBED
    ]
    path = write_tofu(tmp_path, "forget10_perturbed", rows)
    expected = (
        f"{path}: missing column(s) ['paraphrased_answer']; found "
        "['question', 'answer', 'perturbed_answer', 'paraphrased_question']"
    )
    with pytest.raises(DataError) as info:
        load_tofu("forget10_perturbed", source=str(tmp_path))
    assert str(info.value).startswith(expected)

    path = write_muse(tmp_path, "verbmem", "forget", {"text": ["An old verbmem file with raw text."]})
    with pytest.raises(DataError) as info:
        load_muse("verbmem", "forget", source=str(tmp_path))
    assert str(info.value).startswith(f"{path}: missing column(s) ['prompt', 'gt']; found ['text']")


def test_bad_values_name_the_row_and_field(tmp_path: Path) -> None:
    rows = [dict(FORGET10_PERTURBED[0]), dict(FORGET10_PERTURBED[1], perturbed_answer="one wrong answer")]
    write_tofu(tmp_path, "forget10_perturbed", rows)
    with pytest.raises(
        DataError, match=r"row 1: field 'perturbed_answer' must be a non-empty list of strings"
    ):
        load_tofu("forget10_perturbed", source=str(tmp_path))
    write_muse(tmp_path, "verbmem", "forget", {"prompt": ["A prompt"], "gt": [""]})
    with pytest.raises(DataError, match=r"row 0: 'gt' must be a non-empty string, got ''"):
        load_muse("verbmem", "forget", source=str(tmp_path))


def test_hub_ids_go_through_load_dataset(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []

    def fake_load_dataset(path, name, split):
        calls.append((path, name, split))
        return datasets.Dataset.from_list(WORLD_FACTS_PERTURBED)

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    dataset = load_benchmark("tofu", "world_facts_perturbed")
    assert calls == [("locuslab/TOFU", "world_facts_perturbed", "train")]
    assert dataset["perturbed_answer"] == [row["perturbed_answer"] for row in WORLD_FACTS_PERTURBED]


def test_hub_failure_says_how_to_run_offline(monkeypatch: pytest.MonkeyPatch) -> None:
    def offline(path, name, split):
        raise ConnectionError("offline mode is enabled")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    with pytest.raises(DataError) as info:
        load_muse("knowmem", "retain_qa", source="muse-bench/MUSE-Books")
    message = str(info.value)
    assert "muse-bench/MUSE-Books (config 'knowmem', split 'retain_qa') could not be loaded" in message
    assert "offline mode is enabled" in message
    assert "huggingface-cli download --repo-type dataset muse-bench/MUSE-Books --local-dir DIR" in message
