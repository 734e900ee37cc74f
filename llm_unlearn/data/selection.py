"""Split training data into the forget set, the retain set and a holdout set never trained on.

The forget set is chosen by subject (`forget_subjects`), by the complement of subjects (`retain_subjects`)
or given as a separate dataset (`forget_data`). Rows of holdout subjects (or rows equal to `holdout_data`)
are taken out of both forget and retain. The three sets must be disjoint, by example and by subject.
Two rows are the same example when their content fields agree (question and answer, or text), so a forget
file exported with fewer columns than the training data still matches it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from itertools import combinations

from datasets import Dataset

from llm_unlearn.data.loading import content_fingerprints
from llm_unlearn.data.schema import SUBJECT_FIELD, DataError, validate_dataset

_SELECTORS = ("forget_subjects", "retain_subjects", "forget_data")


@dataclass
class UnlearnSplit:
    """The forget set, the retain set and the holdout set (None when none was asked for)."""

    forget: Dataset
    retain: Dataset
    holdout: Dataset | None


def subject_ids(dataset: Dataset) -> list[str]:
    """Return the sorted unique subject ids of `dataset` (none when it has no `subject_id` column)."""
    if SUBJECT_FIELD not in dataset.column_names:
        return []
    return sorted({subject for subject in dataset[SUBJECT_FIELD] if subject is not None})


def _row_subjects(dataset: Dataset) -> list[str | None]:
    if SUBJECT_FIELD not in dataset.column_names:
        return [None] * len(dataset)
    return list(dataset[SUBJECT_FIELD])


def _check_subjects(data: Dataset, listed: Sequence[str], argument: str) -> set[str]:
    if isinstance(listed, str):
        raise DataError(
            f"{argument} must be a list of subject ids, got the string {listed!r}; write [{listed!r}]."
        )
    if SUBJECT_FIELD not in data.column_names:
        raise DataError(
            f"{argument} selects by subject, but the data has no {SUBJECT_FIELD!r} column (it has "
            f"{data.column_names}); add one, or give the forget set as forget_data."
        )
    # YAML and command lines turn an id like 1234 into an int; subject ids are strings.
    listed = {str(subject) for subject in listed}
    known = subject_ids(data)
    unknown = sorted(listed - set(known))
    if unknown:
        if known:
            having = f"{len(known)} subject(s), e.g. {', '.join(known[:5])}" + (
                ", ..." if len(known) > 5 else ""
            )
        else:
            having = "no subject ids (every subject_id is null)"
        raise DataError(f"{argument}: unknown subject id(s) {unknown}; the data has {having}.")
    return listed


@dataclass
class _Part:
    """One of the three sets, with where its rows came from, so errors point at rows the user can find."""

    name: str
    dataset: Dataset
    fingerprints: list[str]
    origin: str
    origin_rows: Sequence[int]

    def row(self, index: int) -> str:
        return f"{self.origin} row {self.origin_rows[index]} ({self.name})"


def _check_disjoint(a: _Part, b: _Part) -> None:
    first_in_b: dict[str, int] = {}
    for index, fp in enumerate(b.fingerprints):
        first_in_b.setdefault(fp, index)
    shared = [(index, first_in_b[fp]) for index, fp in enumerate(a.fingerprints) if fp in first_in_b]
    if shared:
        index_a, index_b = shared[0]
        raise DataError(
            f"{len(shared)} example(s) are in both the {a.name} set and the {b.name} set (same content), e.g. "
            f"{a.row(index_a)} and {b.row(index_b)}; an example can be in only one of them."
        )
    both = sorted(set(subject_ids(a.dataset)) & set(subject_ids(b.dataset)))
    if both:
        raise DataError(
            f"subject(s) {both[:10]} have rows in both the {a.name} set and the {b.name} set; a subject's data "
            "must be all in one set (to forget a whole subject, select it with forget_subjects)."
        )


def select_forget_retain(
    data: Dataset,
    *,
    forget_subjects: Sequence[str] | None = None,
    retain_subjects: Sequence[str] | None = None,
    forget_data: Dataset | None = None,
    holdout_subjects: Sequence[str] | None = None,
    holdout_data: Dataset | None = None,
) -> UnlearnSplit:
    """Split `data` into forget, retain and holdout sets by exactly one of the three forget selectors."""
    given = [
        name
        for name, value in zip(_SELECTORS, (forget_subjects, retain_subjects, forget_data), strict=True)
        if value is not None
    ]
    if len(given) != 1:
        raise DataError(
            f"give exactly one of {', '.join(_SELECTORS)} to choose the forget set; got "
            f"{', '.join(given) if given else 'none'}."
        )
    if holdout_subjects is not None and holdout_data is not None:
        raise DataError("give holdout_subjects or holdout_data, not both.")
    fps = content_fingerprints(data, validate_dataset(data, "data"))
    subjects = _row_subjects(data)
    rows = range(len(data))

    holdout_set = _check_subjects(data, holdout_subjects, "holdout_subjects") if holdout_subjects else set()
    given_holdout_fps: list[str] = []
    if holdout_data is not None:
        given_holdout_fps = content_fingerprints(holdout_data, validate_dataset(holdout_data, "holdout_data"))
    holdout_fp_set = set(given_holdout_fps)
    is_holdout = [subjects[i] in holdout_set or fps[i] in holdout_fp_set for i in rows]

    if forget_data is None:
        argument = "forget_subjects" if forget_subjects is not None else "retain_subjects"
        listed = _check_subjects(
            data, forget_subjects if forget_subjects is not None else retain_subjects, argument
        )
        conflict = sorted(listed & holdout_set)
        if conflict:
            raise DataError(f"subject(s) {conflict} are listed both in {argument} and in holdout_subjects.")
        if forget_subjects is not None:
            in_forget = [subject in listed for subject in subjects]
        else:
            # Rows without a subject belong to nobody whose data was asked to be removed, so they stay.
            in_forget = [subject is not None and subject not in listed for subject in subjects]
        forget_rows = [i for i in rows if in_forget[i] and not is_holdout[i]]
        forget = _Part("forget", data.select(forget_rows), [fps[i] for i in forget_rows], "data", forget_rows)
    else:
        forget_fps = content_fingerprints(forget_data, validate_dataset(forget_data, "forget_data"))
        forget = _Part("forget", forget_data, forget_fps, "forget_data", range(len(forget_data)))
        forget_fp_set = set(forget_fps)
        in_forget = [fp in forget_fp_set for fp in fps]
    retain_rows = [i for i in rows if not in_forget[i] and not is_holdout[i]]
    retain = _Part("retain", data.select(retain_rows), [fps[i] for i in retain_rows], "data", retain_rows)

    if len(forget.dataset) == 0:
        raise DataError(f"the forget set is empty: {given[0]} selects no rows outside the holdout set.")
    if len(retain.dataset) == 0:
        raise DataError(f"the retain set is empty: {given[0]} leaves no rows of the data to retain.")

    parts = [forget, retain]
    holdout = None
    if holdout_subjects:
        holdout_rows = [i for i in rows if is_holdout[i]]
        holdout = data.select(holdout_rows)
        parts.append(_Part("holdout", holdout, [fps[i] for i in holdout_rows], "data", holdout_rows))
    elif holdout_data is not None:
        holdout = holdout_data
        parts.append(_Part("holdout", holdout, given_holdout_fps, "holdout_data", range(len(holdout))))
    for part_a, part_b in combinations(parts, 2):
        _check_disjoint(part_a, part_b)
    return UnlearnSplit(forget=forget.dataset, retain=retain.dataset, holdout=holdout)
