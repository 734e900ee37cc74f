"""Forget / retain / holdout selection: by subject, by complement, by a separate forget set, and its errors."""

from __future__ import annotations

import pytest
from datasets import Dataset

from llm_unlearn.data import DataError, make_fictional_dataset, select_forget_retain, subject_ids


def qa(question: str, subject: str | None) -> dict:
    return {"question": question, "answer": f"answer to {question}", "subject_id": subject}


ROWS = [
    qa("a1", "a"),
    qa("b1", "b"),
    qa("a2", "a"),
    qa("c1", "c"),
    qa("n1", None),
    qa("b2", "b"),
    qa("c2", "c"),
]


@pytest.fixture
def data() -> Dataset:
    return Dataset.from_list(ROWS)


def questions(dataset: Dataset | None) -> list[str]:
    return list(dataset["question"])


def test_subject_ids_are_sorted_unique_without_none(data):
    assert subject_ids(data) == ["a", "b", "c"]
    assert subject_ids(data.remove_columns("subject_id")) == []


def test_forget_subjects(data):
    split = select_forget_retain(data, forget_subjects=["a"])
    assert questions(split.forget) == ["a1", "a2"]
    assert questions(split.retain) == ["b1", "c1", "n1", "b2", "c2"]  # order kept, subject-less rows retained
    assert split.holdout is None
    assert split.forget.column_names == data.column_names


def test_retain_subjects_forgets_every_other_subject(data):
    split = select_forget_retain(data, retain_subjects=["b"])
    assert questions(split.forget) == ["a1", "a2", "c1", "c2"]
    assert questions(split.retain) == ["b1", "n1", "b2"]


def test_subject_ids_given_as_numbers_match_string_ids():
    data = Dataset.from_list([qa("x", "1234"), qa("y", "99")])
    split = select_forget_retain(data, forget_subjects=[1234])
    assert questions(split.forget) == ["x"]


def test_holdout_subjects_are_removed_from_forget_and_retain(data):
    split = select_forget_retain(data, forget_subjects=["a"], holdout_subjects=["c"])
    assert questions(split.forget) == ["a1", "a2"]
    assert questions(split.retain) == ["b1", "n1", "b2"]
    assert questions(split.holdout) == ["c1", "c2"]

    split = select_forget_retain(data, retain_subjects=["b"], holdout_subjects=["c"])
    assert questions(split.forget) == ["a1", "a2"]
    assert questions(split.holdout) == ["c1", "c2"]


def test_forget_data_with_fewer_columns_matches_rows_by_content(data):
    # A forget file exported with only question/answer still identifies the training rows.
    forget = Dataset.from_list(
        [{k: r[k] for k in ("question", "answer")} for r in ROWS if r["subject_id"] == "c"]
    )
    split = select_forget_retain(data, forget_data=forget)
    assert split.forget is forget
    assert questions(split.retain) == ["a1", "b1", "a2", "n1", "b2"]


def test_forget_data_sharing_no_rows_leaves_data_as_retain(data):
    forget = Dataset.from_list([qa("z1", "z"), qa("z2", "z")])
    split = select_forget_retain(data, forget_data=forget)
    assert questions(split.forget) == ["z1", "z2"]
    assert questions(split.retain) == questions(data)


def test_holdout_data_rows_are_removed_from_retain(data):
    holdout = Dataset.from_list([qa("c1", "c"), qa("c2", "c"), qa("h1", "h")])
    split = select_forget_retain(data, forget_subjects=["a"], holdout_data=holdout)
    assert split.holdout is holdout
    assert questions(split.retain) == ["b1", "n1", "b2"]


def test_builtin_train_and_holdout_splits():
    builtin = make_fictional_dataset(num_people=5, num_holdout=2)
    split = select_forget_retain(
        builtin["train"], forget_subjects=["person-0001", "person-0003"], holdout_data=builtin["holdout"]
    )
    assert subject_ids(split.forget) == ["person-0001", "person-0003"]
    assert len(split.forget) == 16
    assert subject_ids(split.retain) == ["person-0000", "person-0002", "person-0004"]
    assert len(split.retain) == 24
    assert subject_ids(split.holdout) == ["person-0005", "person-0006"]


# ---------------------------------------------------------------- errors


@pytest.mark.parametrize(
    ("kwargs", "expected"),
    [
        ({}, r"give exactly one of forget_subjects, retain_subjects, forget_data .*; got none"),
        ({"forget_subjects": ["a"], "retain_subjects": ["b"]}, r"got forget_subjects, retain_subjects"),
    ],
)
def test_exactly_one_selector(data, kwargs, expected):
    with pytest.raises(DataError, match=expected):
        select_forget_retain(data, **kwargs)


def test_empty_forget_set(data):
    with pytest.raises(DataError, match="the forget set is empty: forget_subjects selects no rows"):
        select_forget_retain(data, forget_subjects=[])
    # Everything that would be forgotten is holdout.
    with pytest.raises(DataError, match="the forget set is empty: retain_subjects"):
        select_forget_retain(data, retain_subjects=["a", "b"], holdout_subjects=["c"])


def test_empty_retain_set():
    data = Dataset.from_list([qa("a1", "a"), qa("b1", "b")])
    with pytest.raises(DataError, match="the retain set is empty: forget_subjects leaves no rows"):
        select_forget_retain(data, forget_subjects=["a", "b"])
    with pytest.raises(DataError, match="the retain set is empty: forget_data"):
        select_forget_retain(data, forget_data=data)


def test_unknown_subjects_are_listed_with_known_ones(data):
    with pytest.raises(DataError) as error:
        select_forget_retain(data, forget_subjects=["a", "zz", "yy"])
    message = str(error.value)
    assert "forget_subjects: unknown subject id(s) ['yy', 'zz']" in message
    assert "3 subject(s), e.g. a, b, c" in message
    with pytest.raises(DataError, match=r"holdout_subjects: unknown subject id\(s\) \['q'\]"):
        select_forget_retain(data, forget_subjects=["a"], holdout_subjects=["q"])


def test_selection_by_subject_needs_a_subject_column(data):
    with pytest.raises(
        DataError, match=r"forget_subjects selects by subject, but the data has no 'subject_id' column"
    ):
        select_forget_retain(data.remove_columns("subject_id"), forget_subjects=["a"])


def test_a_string_is_not_a_list_of_subjects(data):
    with pytest.raises(
        DataError, match=r"forget_subjects must be a list of subject ids, got the string 'abc'"
    ):
        select_forget_retain(data, forget_subjects="abc")


def test_subject_both_forget_and_holdout(data):
    with pytest.raises(
        DataError, match=r"subject\(s\) \['b'\] are listed both in forget_subjects and in holdout"
    ):
        select_forget_retain(data, forget_subjects=["a", "b"], holdout_subjects=["b", "c"])
    holdout = Dataset.from_list([qa("a9", "a")])  # not a row of data, but of a forget subject
    with pytest.raises(
        DataError, match=r"subject\(s\) \['a'\] have rows in both the forget set and the holdout set"
    ):
        select_forget_retain(data, forget_subjects=["a"], holdout_data=holdout)


def test_holdout_subjects_and_holdout_data_together(data):
    with pytest.raises(DataError, match="holdout_subjects or holdout_data, not both"):
        select_forget_retain(data, forget_subjects=["a"], holdout_subjects=["c"], holdout_data=data)


def test_same_example_in_forget_and_retain(data):
    # The same QA pair recorded under two subjects would be trained on while being forgotten.
    duplicated = Dataset.from_list([*ROWS, {**ROWS[0], "subject_id": "b"}])
    with pytest.raises(
        DataError,
        match=r"1 example\(s\) are in both the forget set and the retain set .* data row 0 \(forget\) and data row 7 \(retain\)",
    ):
        select_forget_retain(duplicated, forget_subjects=["a"])


def test_forget_data_covering_part_of_a_subject(data):
    forget = Dataset.from_list([qa("a1", "a")])  # a2 of subject "a" would stay in retain
    with pytest.raises(
        DataError, match=r"subject\(s\) \['a'\] have rows in both the forget set and the retain set"
    ):
        select_forget_retain(data, forget_data=forget)


def test_forget_data_is_validated(data):
    with pytest.raises(DataError, match=r"^forget_data: missing field 'answer'"):
        select_forget_retain(data, forget_data=Dataset.from_dict({"question": ["a1"]}))


def test_forget_data_overlapping_holdout_data_points_at_their_rows(data):
    forget = Dataset.from_list([qa("a1", "a"), qa("a2", "a")])
    holdout = Dataset.from_list([qa("z1", "z"), qa("a1", "a")])
    with pytest.raises(
        DataError, match=r"e.g. forget_data row 0 \(forget\) and holdout_data row 1 \(holdout\)"
    ):
        select_forget_retain(data, forget_data=forget, holdout_data=holdout)
