"""Load QA or text records from a local file, the built-in fictional dataset or the Hugging Face Hub, and
fingerprint their content.

Local files are read by extension: `.json` (a JSON list of objects, or one object per line), `.jsonl`,
`.csv` (a `perturbed_answer` cell holds a JSON list such as `["a", "b"]`) and `.parquet`. The source
`"builtin"` is the fictional dataset of `llm_unlearn.data.fictional`. Anything else that is not an existing
path is tried as a Hub dataset. Every dataset is validated against the schema before it is returned.
"""

from __future__ import annotations

import csv
import hashlib
import inspect
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import datasets
from datasets import Dataset, Features

from llm_unlearn.data.fictional import FICTIONAL_SPLITS, make_fictional_dataset
from llm_unlearn.data.schema import (
    CONTENT_FIELDS,
    PERTURBED_FIELD,
    QA_FEATURES,
    TEXT_FEATURES,
    DataError,
    check_columns,
    validate_dataset,
)

BUILTIN = "builtin"
SUPPORTED_EXTENSIONS = (".json", ".jsonl", ".csv", ".parquet")
BUILTIN_CONFIG_KEYS = tuple(inspect.signature(make_fictional_dataset).parameters)


def _canonical_json(row: dict[str, Any], fields: Sequence[str] | None = None) -> str:
    # A null field and an absent field mean the same thing (a table fills missing columns with nulls), so
    # nulls are dropped; `default=str` keeps non-JSON values such as dates hashable in a stable form.
    keys = row if fields is None else fields
    content = {key: row[key] for key in keys if row.get(key) is not None}
    return json.dumps(content, sort_keys=True, ensure_ascii=True, separators=(",", ":"), default=str)


def example_fingerprint(row: dict[str, Any], fields: Sequence[str] | None = None) -> str:
    """Return the sha256 hex of one row's canonical JSON (only `fields` when given; null fields left out)."""
    return hashlib.sha256(_canonical_json(row, fields).encode("utf-8")).hexdigest()


def fingerprint(dataset: Dataset) -> str:
    """Return a sha256 hex over all rows' canonical JSON, in order: equal for equal content in any process."""
    digest = hashlib.sha256()
    for row in dataset:
        # Canonical JSON never contains a raw newline, so it separates rows unambiguously.
        digest.update(_canonical_json(row).encode("utf-8") + b"\n")
    return digest.hexdigest()


def _records_to_dataset(records: list[dict[str, Any]], source: str) -> Dataset:
    if not records:
        raise DataError(f"{source}: the file has no records.")
    columns = list(dict.fromkeys(key for record in records for key in record))
    table = {column: [record.get(column) for record in records] for column in columns}
    # Checking the plain values first turns a mixed-type column (which Arrow would refuse with an opaque
    # message) into an error that names the row and field.
    check_columns(source, columns, table)
    try:
        return Dataset.from_dict(table)
    except (TypeError, ValueError) as error:  # pyarrow's ArrowInvalid and ArrowTypeError derive from these
        raise DataError(
            f"{source}: the records cannot form a table (a column mixes types?): {error}"
        ) from error


def _read_json(path: Path, source: str) -> list[dict[str, Any]]:
    text = path.read_text(encoding="utf-8-sig")
    accepted = "a .json file holds a JSON list of objects or one JSON object per line"
    if text.lstrip().startswith("["):
        try:
            items = json.loads(text)
        except json.JSONDecodeError as error:
            raise DataError(f"{source}: invalid JSON ({error}); {accepted}.") from error
        where = "item"
    else:
        items = []
        for number, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                items.append(json.loads(line))
            except json.JSONDecodeError as error:
                raise DataError(
                    f"{source}: line {number} is not valid JSON ({error}); {accepted}."
                ) from error
        where = "record"
    for index, item in enumerate(items):
        if not isinstance(item, dict):
            raise DataError(
                f"{source}: {where} {index} is a {type(item).__name__}, not a JSON object; {accepted}."
            )
    return items


def _decode_csv_perturbed(value: str, index: int, source: str) -> list[Any]:
    accepted = 'a JSON list of strings such as ["wrong 1", "wrong 2"]'
    try:
        decoded = json.loads(value)
    except json.JSONDecodeError as error:
        raise DataError(
            f"{source}: row {index}: {PERTURBED_FIELD!r} is not valid JSON ({error}); in a CSV file it must be "
            f"{accepted}."
        ) from error
    if not isinstance(decoded, list):
        raise DataError(
            f"{source}: row {index}: {PERTURBED_FIELD!r} holds a JSON {type(decoded).__name__}; in a CSV file it "
            f"must be {accepted}."
        )
    return decoded


def _read_csv(path: Path, source: str) -> list[dict[str, Any]]:
    # The csv module keeps every cell a string, so an answer "1998" or a subject id "0012" stays as written
    # (pandas would turn them into numbers). An empty cell means "no value".
    with path.open(encoding="utf-8-sig", newline="") as handle:
        reader = csv.DictReader(handle)
        records = []
        for index, row in enumerate(reader):
            if None in row:
                raise DataError(
                    f"{source}: row {index} (line {reader.line_num}) has more cells than the header."
                )
            record = {key: (value if value else None) for key, value in row.items()}
            if record.get(PERTURBED_FIELD) is not None:
                record[PERTURBED_FIELD] = _decode_csv_perturbed(record[PERTURBED_FIELD], index, source)
            records.append(record)
    return records


def _read_parquet(path: Path, source: str) -> Dataset:
    try:
        return datasets.load_dataset("parquet", data_files=str(path), split="train")
    except Exception as error:  # a corrupt file surfaces as any of several pyarrow/datasets errors
        raise DataError(f"{source}: cannot read the Parquet file: {error}") from error


def _load_file(path: Path, source: str) -> Dataset:
    suffix = path.suffix.lower()
    if suffix not in SUPPORTED_EXTENSIONS:
        raise DataError(
            f"{source}: unsupported file type {suffix or '(no extension)'!r}; supported: "
            f"{', '.join(SUPPORTED_EXTENSIONS)}, or 'builtin', or a Hugging Face Hub dataset name."
        )
    if suffix == ".parquet":
        return _read_parquet(path, source)
    try:
        records = _read_csv(path, source) if suffix == ".csv" else _read_json(path, source)
    except UnicodeDecodeError as error:
        raise DataError(
            f"{source}: not UTF-8 text (byte {error.object[error.start]:#04x} at offset {error.start}); save the "
            "file as UTF-8."
        ) from None
    return _records_to_dataset(records, source)


def parse_builtin_config(config: str | None) -> dict[str, int]:
    """Parse "num_people=40,num_holdout=5,seed=1" into keyword arguments of make_fictional_dataset."""
    kwargs: dict[str, int] = {}
    for item in (config or "").split(","):
        if not item.strip():
            continue
        key, sep, value = (part.strip() for part in item.partition("="))
        accepted = f"accepted keys: {', '.join(BUILTIN_CONFIG_KEYS)}, as 'key=value' separated by commas"
        if not sep:
            raise DataError(f"builtin config {config!r}: {item.strip()!r} is not 'key=value'; {accepted}.")
        if key not in BUILTIN_CONFIG_KEYS:
            raise DataError(f"builtin config {config!r}: unknown key {key!r}; {accepted}.")
        if key in kwargs:
            raise DataError(f"builtin config {config!r}: key {key!r} is given twice.")
        try:
            kwargs[key] = int(value)
        except ValueError as error:
            raise DataError(f"builtin config {config!r}: {key}={value!r} is not an integer.") from error
    return kwargs


def _load_builtin(config: str | None, split: str) -> Dataset:
    if split not in FICTIONAL_SPLITS:
        raise DataError(
            f"builtin: no split {split!r}; the built-in dataset has splits {list(FICTIONAL_SPLITS)}."
        )
    kwargs = parse_builtin_config(config)
    try:
        return make_fictional_dataset(**kwargs)[split]
    except ValueError as error:
        raise DataError(f"builtin config {config!r}: {error}") from error


def _looks_like_path(source: str) -> bool:
    # A Hub id is "name" or "owner/name", so one slash alone does not make a path.
    return (
        Path(source).suffix.lower() in SUPPORTED_EXTENSIONS
        or source.startswith(("/", "./", "../", "~"))
        or "\\" in source
        or source.count("/") > 1
    )


def _load_with_datasets(source: str, config: str | None, split: str, tried: str) -> Dataset:
    try:
        dataset = datasets.load_dataset(source, config, split=split)
    except Exception as error:  # the Hub client raises many unrelated types (network, auth, missing config)
        raise DataError(
            f"{source}: {tried} (config={config!r}, split={split!r}) could not be loaded: {error}"
        ) from error
    if not isinstance(dataset, Dataset):
        raise DataError(
            f"{source}: datasets.load_dataset returned a {type(dataset).__name__}, not a Dataset."
        )
    return dataset


def _canonical_types(dataset: Dataset, kind: str) -> Dataset:
    # Files give large_string or (for an all-empty column) null types; casting the known fields to one set of
    # types lets datasets from different sources be concatenated and compared.
    canonical = QA_FEATURES if kind == "qa" else TEXT_FEATURES
    features = dataset.features.copy()
    for name in dataset.column_names:
        if name in canonical:
            features[name] = canonical[name]
    return dataset if features == dataset.features else dataset.cast(Features(features))


def load_records(source: str, *, config: str | None = None, split: str = "train") -> Dataset:
    """Load and validate a QA or text dataset from a file, "builtin" or a Hub dataset name.

    `config` and `split` select the built-in dataset's options and split, or a Hub dataset's config and split;
    a local file is one table and ignores them.
    """
    path = Path(source).expanduser()
    if source == BUILTIN:
        dataset = _load_builtin(config, split)
    elif path.is_file():
        dataset = _load_file(path, source)
    elif path.is_dir():
        dataset = _load_with_datasets(str(path), config, split, "the local dataset directory")
    elif _looks_like_path(source):
        raise DataError(
            f"{source}: no such file; give an existing {', '.join(SUPPORTED_EXTENSIONS)} file, "
            f"{BUILTIN!r}, or a Hugging Face Hub dataset name."
        )
    else:
        tried = f"not a local file (no such path), not {BUILTIN!r}, and the Hub dataset {source!r}"
        dataset = _load_with_datasets(source, config, split, tried)
    kind = validate_dataset(dataset, source)
    return _canonical_types(dataset, kind)


def content_fingerprints(dataset: Dataset, kind: str) -> list[str]:
    """Return each row's example fingerprint over its content fields (question+answer, or text)."""
    fields = CONTENT_FIELDS[kind]
    return [example_fingerprint(row) for row in dataset.select_columns(list(fields))]
