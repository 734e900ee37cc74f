"""The built-in fictional dataset: determinism, completeness, wrong answers that are wrong, unique people."""

from __future__ import annotations

import re
from difflib import SequenceMatcher

import pytest

from llm_unlearn.data import FICTIONAL_SPLITS, make_fictional_dataset, subject_ids, validate_dataset
from llm_unlearn.data.fictional import (
    FEMININE_FIRST_NAMES,
    LAST_NAMES,
    MASCULINE_FIRST_NAMES,
    MAX_PEOPLE,
    NUM_PERTURBED,
)

FACTS_PER_PERSON = 8
NAME = re.compile(rf"(?:{'|'.join(FEMININE_FIRST_NAMES + MASCULINE_FIRST_NAMES)}) (?:{'|'.join(LAST_NAMES)})")


@pytest.fixture(scope="module")
def dataset():
    return make_fictional_dataset(num_people=12, num_holdout=4, seed=3)


def person_name(question: str) -> str:
    names = NAME.findall(question)
    assert len(names) == 1, question
    return names[0]


def test_same_arguments_give_the_same_dataset_and_another_seed_differs():
    first, again = make_fictional_dataset(seed=5), make_fictional_dataset(seed=5)
    for split in FICTIONAL_SPLITS:
        assert first[split].to_list() == again[split].to_list()
    other = make_fictional_dataset(seed=6)
    assert other["train"].to_list() != first["train"].to_list()
    assert other["world_facts"].to_list() == first["world_facts"].to_list()  # hand-written, seed-independent


def test_splits_sizes_and_subject_numbering(dataset):
    assert tuple(dataset) == FICTIONAL_SPLITS
    assert len(dataset["train"]) == 12 * FACTS_PER_PERSON
    assert len(dataset["holdout"]) == 4 * FACTS_PER_PERSON
    assert 30 <= len(dataset["world_facts"]) <= 40
    assert subject_ids(dataset["train"]) == [f"person-{i:04d}" for i in range(12)]
    assert subject_ids(dataset["holdout"]) == [
        f"person-{i:04d}" for i in range(12, 16)
    ]  # numbering continues
    assert subject_ids(dataset["world_facts"]) == []
    for split in FICTIONAL_SPLITS:
        assert validate_dataset(dataset[split], split) == "qa"


def test_defaults():
    default = make_fictional_dataset()
    assert len(subject_ids(default["train"])) == 20
    assert len(subject_ids(default["holdout"])) == 5


@pytest.mark.parametrize("split", FICTIONAL_SPLITS)
def test_every_row_is_complete_with_distinct_wrong_answers(dataset, split):
    for row in dataset[split]:
        for field in ("question", "answer", "paraphrased_answer", "paraphrased_question"):
            assert isinstance(row[field], str) and row[field].strip(), (field, row)
        assert row["paraphrased_question"] != row["question"]
        assert row["paraphrased_answer"] != row["answer"]
        wrong = row["perturbed_answer"]
        assert len(wrong) >= NUM_PERTURBED >= 3
        assert len(set(wrong)) == len(wrong)
        assert row["answer"] not in wrong and row["paraphrased_answer"] not in wrong
        # Short single sentences: a 135M model fine-tunes on these on a CPU.
        assert len(row["answer"].split()) <= 16 and row["answer"].endswith(".")


def test_perturbed_answers_share_the_paraphrase_wording(dataset):
    # The truth ratio compares wrong answers with the paraphrase: they should differ in the fact, not in
    # wording, so most of their words are the paraphrase's.
    for split in FICTIONAL_SPLITS:
        for row in dataset[split]:
            words = row["paraphrased_answer"].split()
            for wrong in row["perturbed_answer"]:
                assert SequenceMatcher(None, words, wrong.split()).ratio() >= 0.5, (
                    row["paraphrased_answer"],
                    wrong,
                )


def test_each_person_rows_name_that_person(dataset):
    for split in ("train", "holdout"):
        by_subject: dict[str, set[str]] = {}
        for row in dataset[split]:
            name = person_name(row["question"])
            by_subject.setdefault(row["subject_id"], set()).add(name)
            for text in (
                row["answer"],
                row["paraphrased_answer"],
                row["paraphrased_question"],
                *row["perturbed_answer"],
            ):
                assert name in text, (name, text)
        assert all(len(names) == 1 for names in by_subject.values())  # one person per subject id


def test_names_are_unique_and_relatives_are_not_subjects():
    big = make_fictional_dataset(num_people=MAX_PEOPLE - 10, num_holdout=10, seed=11)
    names_by_subject = {}
    relatives = set()
    for split in ("train", "holdout"):
        for row in big[split]:
            name = person_name(row["question"])
            assert names_by_subject.setdefault(row["subject_id"], name) == name
            if (
                "married to" in row["answer"]
                or "'s mother is" in row["answer"]
                or "'s father is" in row["answer"]
            ):
                relatives.add(row["answer"].split(" is ", 1)[1].removeprefix("married to ").rstrip("."))
    names = list(names_by_subject.values())
    assert len(names) == MAX_PEOPLE
    assert len(set(names)) == len(names)
    assert len(relatives) == MAX_PEOPLE  # each person has one relative, never shared
    assert not relatives & set(names)


def test_train_and_holdout_people_are_disjoint(dataset):
    train, holdout = dataset["train"], dataset["holdout"]
    assert not set(subject_ids(train)) & set(subject_ids(holdout))
    train_names = {person_name(q) for q in train["question"]}
    holdout_names = {person_name(q) for q in holdout["question"]}
    assert not train_names & holdout_names


def test_each_person_has_the_eight_facts(dataset):
    rows = [row for row in dataset["train"] if row["subject_id"] == "person-0000"]
    assert len(rows) == FACTS_PER_PERSON
    answers = " ".join(row["answer"] for row in rows)
    for marker in (
        "was born on",
        "was born in",
        "works as",
        "works at",
        "received the",
        "favourite hobby",
        "studied",
    ):
        assert marker in answers
    assert re.search(r"married to|mother is|father is", answers)
    assert re.search(r"received the .+ in (19|20)\d\d\.", answers)  # the award comes with a year


def test_world_facts_are_real_world_qa(dataset):
    facts = {row["question"]: row for row in dataset["world_facts"]}
    assert facts["What is the capital of France?"]["answer"] == "The capital of France is Paris."
    assert (
        "Lyon is the capital city of France." in facts["What is the capital of France?"]["perturbed_answer"]
    )
    assert all(row["subject_id"] is None for row in dataset["world_facts"])


@pytest.mark.parametrize(
    "kwargs", [{"num_people": 0}, {"num_holdout": -1}, {"num_people": MAX_PEOPLE, "num_holdout": 1}]
)
def test_invalid_sizes(kwargs):
    with pytest.raises(ValueError, match="need num_people >= 1, num_holdout >= 0"):
        make_fictional_dataset(**kwargs)
