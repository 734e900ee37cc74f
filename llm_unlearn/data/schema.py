"""The two example schemas (QA pairs and raw texts) and their validation.

A QA dataset (the TOFU schema) has `question` and `answer`, and optionally `paraphrased_answer`,
`perturbed_answer` (a list of wrong answers) and `paraphrased_question`. A text dataset (MUSE-style
corpora) has `text`. Either may carry `subject_id`, the data subject an example belongs to. Other
columns are allowed and ignored.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from datasets import Dataset, Features, List, Value


class DataError(ValueError):
    """Bad input data: the message names the source, the field or row at fault and what is accepted."""


QA_REQUIRED = ("question", "answer")
QA_OPTIONAL_STRINGS = ("paraphrased_answer", "paraphrased_question")
PERTURBED_FIELD = "perturbed_answer"
TEXT_FIELD = "text"
SUBJECT_FIELD = "subject_id"
# The fields that decide what a model is trained on; two rows that agree on them are the same example.
CONTENT_FIELDS = {"qa": QA_REQUIRED, "text": (TEXT_FIELD,)}
QA_FEATURES = Features(
    {
        "question": Value("string"),
        "answer": Value("string"),
        "paraphrased_answer": Value("string"),
        PERTURBED_FIELD: List(Value("string")),
        "paraphrased_question": Value("string"),
        SUBJECT_FIELD: Value("string"),
    }
)
TEXT_FEATURES = Features({TEXT_FIELD: Value("string"), SUBJECT_FIELD: Value("string")})
_ACCEPTED = "a QA dataset needs 'question' and 'answer', a text dataset needs 'text'"


def dataset_kind(columns: Sequence[str], source: str) -> str:
    """Return "qa" or "text" from a dataset's column names, or raise DataError naming what is missing."""
    if "question" in columns or "answer" in columns:
        for field in QA_REQUIRED:
            if field not in columns:
                raise DataError(f"{source}: missing field {field!r}; {_ACCEPTED}.")
        return "qa"
    if TEXT_FIELD in columns:
        return "text"
    raise DataError(
        f"{source}: no field 'question', 'answer' or 'text' (it has {list(columns)}); {_ACCEPTED}."
    )


def _check_strings(source: str, field: str, values: Iterable[Any], required: bool) -> None:
    for index, value in enumerate(values):
        if value is None:
            if required:
                raise DataError(f"{source}: row {index}: required field {field!r} is empty (null).")
            continue
        if not isinstance(value, str):
            raise DataError(
                f"{source}: row {index}: field {field!r} must be a string, got {type(value).__name__}."
            )
        if not value.strip():
            what = "required field" if required else "field"
            hint = "" if required else "; leave it out (null) when there is none"
            raise DataError(f"{source}: row {index}: {what} {field!r} is an empty string{hint}.")


def _check_perturbed(source: str, values: Iterable[Any]) -> None:
    accepted = 'a non-empty list of strings such as ["wrong answer 1", "wrong answer 2"]'
    for index, value in enumerate(values):
        if value is None:
            continue
        if not isinstance(value, list):
            raise DataError(
                f"{source}: row {index}: field {PERTURBED_FIELD!r} must be {accepted}, got {type(value).__name__}."
            )
        if not value:
            raise DataError(
                f"{source}: row {index}: field {PERTURBED_FIELD!r} is an empty list; it must be {accepted}, "
                "or null when the row has no perturbed answers."
            )
        for item in value:
            if not isinstance(item, str) or not item.strip():
                raise DataError(
                    f"{source}: row {index}: field {PERTURBED_FIELD!r} holds {item!r}; it must be {accepted}."
                )


def check_columns(source: str, columns: Sequence[str], column_values: Any) -> str:
    """Check the known fields of a table given as `column_values[field] -> values`; return its kind."""
    kind = dataset_kind(columns, source)
    if kind == "qa":
        for field in QA_REQUIRED:
            _check_strings(source, field, column_values[field], required=True)
        for field in QA_OPTIONAL_STRINGS:
            if field in columns:
                _check_strings(source, field, column_values[field], required=False)
        if PERTURBED_FIELD in columns:
            _check_perturbed(source, column_values[PERTURBED_FIELD])
    else:
        _check_strings(source, TEXT_FIELD, column_values[TEXT_FIELD], required=True)
    if SUBJECT_FIELD in columns:
        _check_strings(source, SUBJECT_FIELD, column_values[SUBJECT_FIELD], required=False)
    return kind


def validate_dataset(dataset: Dataset, source: str) -> str:
    """Check that `dataset` follows the QA or the text schema row by row; return its kind, "qa" or "text"."""
    if len(dataset) == 0:
        raise DataError(f"{source}: the dataset has no rows.")
    return check_columns(source, dataset.column_names, dataset)
