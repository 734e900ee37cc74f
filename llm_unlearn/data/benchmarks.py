"""Load the TOFU and MUSE benchmark sets from the Hugging Face Hub, or from a local snapshot of the Hub repo,
into this package's schemas (docs/benchmarks.md).

`source` is a Hub dataset id, read with `datasets.load_dataset(source, config, split=split)`, or a local directory
laid out like the Hub repo (what `huggingface-cli download --repo-type dataset <id> --local-dir DIR` writes),
read without the network:

- TOFU (`locuslab/TOFU`): one JSON Lines file per config at the repo root, `<config>.json`, split "train".
  QA configs become QA rows (`llm_unlearn.data.schema`). Every fictitious author has 20 consecutive QA pairs;
  `full` holds the 200 authors in order, the forget sets forget01/05/10 are its last 2/10/20 authors and
  retain99/95/90 the rest, so the rows of those configs get `subject_id` "tofu-author-NNN" (the author's
  position in `full`, from a row's position in its file). The other sets (retain_perturbed, real authors, world
  facts, holdout authors) have no such known position: their `subject_id` is null.
- MUSE (`muse-bench/MUSE-News`, `muse-bench/MUSE-Books`): Parquet files `<config>/<split>-*.parquet`.
  `raw`, `train`, `privleak`, and News' `scal` and `sust` become text rows, `knowmem` QA rows, and `verbmem`
  completion rows: `prompt` and `answer` (the Hub's `gt`, the true continuation). `subject_id` is null: MUSE has
  no data subjects.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import datasets
import pyarrow as pa
import pyarrow.parquet as pq
from datasets import Dataset, Features, Value

from llm_unlearn.data.schema import (
    QA_FEATURES,
    SUBJECT_FIELD,
    TEXT_FEATURES,
    TEXT_FIELD,
    DataError,
    check_columns,
)

TOFU_HUB_ID = "locuslab/TOFU"
TOFU_SPLIT = "train"
TOFU_NUM_AUTHORS = 200
TOFU_QA_PER_AUTHOR = 20
_TOFU_QA = ("question", "answer")
_TOFU_PERTURBED = (*_TOFU_QA, "paraphrased_answer", "perturbed_answer", "paraphrased_question")
_TOFU_CHOICES = (*_TOFU_QA, "perturbed_answer")
# The Hub columns each TOFU config must have. The perturbed sets carry 5 wrong answers (3 for the real-author and
# world-fact sets); real_authors and world_facts also have option1..option4 columns, which are not used.
TOFU_CONFIGS: dict[str, tuple[str, ...]] = {
    "full": _TOFU_QA,
    "retain90": _TOFU_QA,
    "retain95": _TOFU_QA,
    "retain99": _TOFU_QA,
    "forget01": _TOFU_QA,
    "forget05": _TOFU_QA,
    "forget10": _TOFU_QA,
    "forget01_perturbed": _TOFU_PERTURBED,
    "forget05_perturbed": _TOFU_PERTURBED,
    "forget10_perturbed": _TOFU_PERTURBED,
    "retain_perturbed": _TOFU_PERTURBED,
    "real_authors": _TOFU_QA,
    "real_authors_perturbed": _TOFU_CHOICES,
    "world_facts": _TOFU_QA,
    "world_facts_perturbed": _TOFU_CHOICES,
    "holdout01": _TOFU_QA,
    "holdout05": _TOFU_QA,
    "holdout10": _TOFU_QA,
}


@dataclass(frozen=True)
class TofuForgetSet:
    """The configs that go with one TOFU forget set: its complement, its evaluation set and its holdout set."""

    retain: str
    perturbed: str
    holdout: str
    num_authors: int


TOFU_FORGET_SETS = {
    "forget01": TofuForgetSet(
        retain="retain99", perturbed="forget01_perturbed", holdout="holdout01", num_authors=2
    ),
    "forget05": TofuForgetSet(
        retain="retain95", perturbed="forget05_perturbed", holdout="holdout05", num_authors=10
    ),
    "forget10": TofuForgetSet(
        retain="retain90", perturbed="forget10_perturbed", holdout="holdout10", num_authors=20
    ),
}
# The three sets behind TOFU's model utility (docs/metrics.md#model_utility).
TOFU_UTILITY_SETS = ("retain_perturbed", "real_authors_perturbed", "world_facts_perturbed")

MUSE_SOURCES = {"news": "muse-bench/MUSE-News", "books": "muse-bench/MUSE-Books"}
MUSE_SPLITS: dict[str, tuple[str, ...]] = {
    "raw": ("forget", "retain1", "retain2", "holdout"),
    "train": ("forget", "retain1", "retain2"),
    "verbmem": ("forget",),
    "knowmem": ("forget_qa", "forget_qa_icl", "retain_qa", "retain_qa_icl"),
    "privleak": ("forget", "retain", "holdout"),
    # Scalability: forget sets of growing size, forget_k about k quarters of the forget texts (forget_4 is as
    # large as `train/forget`).
    "scal": ("forget_1", "forget_2", "forget_3", "forget_4"),
    # Sustainability: the forget texts in four parts of about a quarter each, for requests that come one after
    # another.
    "sust": ("forget_1", "forget_2", "forget_3", "forget_4"),
}
_MUSE_COLUMNS = {
    "raw": (TEXT_FIELD,),
    "train": (TEXT_FIELD,),
    "verbmem": ("prompt", "gt"),
    "knowmem": ("question", "answer"),
    "privleak": (TEXT_FIELD,),
    "scal": (TEXT_FIELD,),
    "sust": (TEXT_FIELD,),
}
# The configs that MUSE-News has and MUSE-Books lacks.
MUSE_NEWS_ONLY = ("scal", "sust")
# Each knowmem QA split is asked with the shots of its in-context-learning split.
MUSE_KNOWMEM_SHOTS = {"forget_qa": "forget_qa_icl", "retain_qa": "retain_qa_icl"}
MUSE_KNOWMEM_MAX_NEW_TOKENS = 32
MUSE_KNOWMEM_STOP = ("\n\n", "\nQuestion", "Question:")
COMPLETION_FEATURES = Features(
    {"prompt": Value("string"), "answer": Value("string"), SUBJECT_FIELD: Value("string")}
)

Table = dict[str, list[Any]]


def muse_fewshot_prompt(question: str, shots: Sequence[tuple[str, str]]) -> str:
    """MUSE's knowledge-memorization prompt: "Question: q\\nAnswer: a\\n\\n" per shot, then the question
    (docs/metrics.md#muse-knowledge-memorization)."""
    context = "".join(
        f"Question: {shot_question}\nAnswer: {shot_answer}\n\n" for shot_question, shot_answer in shots
    )
    return f"{context}Question: {question}\nAnswer: "


def _is_local(source: str) -> bool:
    path = Path(source).expanduser()
    if path.is_dir():
        return True
    accepted = (
        "give a local snapshot of the Hub dataset (a directory) or a Hub dataset id such as 'locuslab/TOFU'"
    )
    if path.exists():
        raise DataError(f"{source}: not a directory; {accepted}.")
    # A Hub id is "name" or "owner/name"; anything else that names a path is a snapshot directory that is missing.
    if source.startswith(("/", "./", "../", "~")) or source.count("/") > 1:
        raise DataError(f"{source}: no such directory; {accepted}.")
    return False


def _download_hint(hub_id: str, directory: str) -> str:
    return f"get it with `huggingface-cli download --repo-type dataset {hub_id} --local-dir {directory}`"


def _read_json_records(path: Path) -> list[dict[str, Any]]:
    # TOFU's files hold one JSON object per line; a file re-saved as one JSON list is read as well.
    text = path.read_text(encoding="utf-8-sig")
    try:
        if text.lstrip().startswith("["):
            records = json.loads(text)
        else:
            records = [json.loads(line) for line in text.splitlines() if line.strip()]
    except json.JSONDecodeError as error:
        raise DataError(f"{path}: not JSON Lines (one JSON object per line): {error}") from error
    if not records:
        raise DataError(f"{path}: the file holds no records.")
    for index, record in enumerate(records):
        if not isinstance(record, dict):
            raise DataError(f"{path}: record {index} is a {type(record).__name__}, not a JSON object.")
    return records


def _records_to_table(records: list[dict[str, Any]]) -> Table:
    columns = dict.fromkeys(key for record in records for key in record)
    return {column: [record.get(column) for record in records] for column in columns}


def _load_hub(source: str, config: str, split: str) -> Table:
    try:
        dataset = datasets.load_dataset(source, config, split=split)
    except Exception as error:  # the Hub client raises many unrelated types (network, auth, missing config)
        raise DataError(
            f"{source} (config {config!r}, split {split!r}) could not be loaded from the Hub: {error}. Offline, "
            f"pass a local snapshot directory as the source; {_download_hint(source, 'DIR')}."
        ) from error
    if not isinstance(dataset, Dataset):
        raise DataError(
            f"{source}: datasets.load_dataset returned a {type(dataset).__name__}, not a Dataset."
        )
    return dataset.to_dict()


def _require_columns(where: str, table: Table, required: Sequence[str], what: str) -> None:
    missing = [column for column in required if column not in table]
    if missing:
        raise DataError(
            f"{where}: missing column(s) {missing}; found {list(table)}; {what} needs {list(required)}."
        )


def _tofu_authors(config: str) -> range | None:
    # The positions in `full` of a config's authors, in file order, for the configs that are runs of `full`'s
    # authors: a forget set (and its perturbed copy) is the last ones, its retain set the others.
    if config == "full":
        return range(TOFU_NUM_AUTHORS)
    for name, forget_set in TOFU_FORGET_SETS.items():
        forgotten = range(TOFU_NUM_AUTHORS - forget_set.num_authors, TOFU_NUM_AUTHORS)
        if config in (name, forget_set.perturbed):
            return forgotten
        if config == forget_set.retain:
            return range(forgotten.start)
    return None


def _tofu_subjects(config: str, where: str, num_rows: int) -> list[str | None]:
    authors = _tofu_authors(config)
    if authors is None:
        return [None] * num_rows
    capacity = len(authors) * TOFU_QA_PER_AUTHOR
    if num_rows > capacity:
        raise DataError(
            f"{where}: {num_rows} rows, but TOFU config {config!r} holds {len(authors)} authors x "
            f"{TOFU_QA_PER_AUTHOR} QA pairs = {capacity} rows; is this the Hub's file?"
        )
    return [f"tofu-author-{authors[row // TOFU_QA_PER_AUTHOR]:03d}" for row in range(num_rows)]


def _check_values(where: str, columns: Table) -> None:
    # Checking the plain values before building the table turns a wrongly typed cell (which Arrow would refuse
    # with an opaque message) into an error naming its row and field.
    if not next(iter(columns.values())):
        raise DataError(f"{where}: no rows.")
    check_columns(where, list(columns), columns)


def _qa_dataset(where: str, table: Table, subjects: list[str | None]) -> Dataset:
    num_rows = len(table["question"])
    columns = {field: table.get(field, [None] * num_rows) for field in QA_FEATURES if field != SUBJECT_FIELD}
    columns[SUBJECT_FIELD] = subjects
    _check_values(where, columns)
    return Dataset.from_dict(columns, features=QA_FEATURES)


def load_tofu(config: str, *, source: str = TOFU_HUB_ID, split: str = TOFU_SPLIT) -> Dataset:
    """Load one TOFU config as QA rows: question, answer, paraphrased_answer, paraphrased_question,
    perturbed_answer and subject_id (null where the Hub file lacks the field)."""
    if config not in TOFU_CONFIGS:
        raise DataError(f"tofu: unknown config {config!r}; known configs: {', '.join(TOFU_CONFIGS)}.")
    if split != TOFU_SPLIT:
        raise DataError(f"tofu: config {config!r} has only the split {TOFU_SPLIT!r}, not {split!r}.")
    if _is_local(source):
        path = Path(source).expanduser() / f"{config}.json"
        if not path.is_file():
            raise DataError(
                f"{path}: no such file; a local TOFU snapshot holds config {config!r} in {config}.json at its "
                f"top level; {_download_hint(TOFU_HUB_ID, source)}."
            )
        where = str(path)
        table = _records_to_table(_read_json_records(path))
    else:
        where = f"{source} (config {config!r})"
        table = _load_hub(source, config, split)
    _require_columns(where, table, TOFU_CONFIGS[config], f"TOFU config {config!r}")
    return _qa_dataset(where, table, _tofu_subjects(config, where, len(table["question"])))


def _read_parquet_split(directory: Path, config: str, split: str) -> tuple[str, Table]:
    # The Hub names a split's shards "<split>-00000-of-00001.parquet"; the dash keeps "retain" from matching
    # "retain2" and "forget_qa" from matching "forget_qa_icl".
    files = sorted((directory / config).glob(f"{split}-*.parquet"))
    if not files:
        expected = directory / config / f"{split}-00000-of-00001.parquet"
        books = "" if config in MUSE_NEWS_ONLY else f" (or {MUSE_SOURCES['books']})"
        raise DataError(
            f"{expected}: no such file; a local MUSE snapshot holds config {config!r}, split {split!r} in "
            f"{config}/{split}-*.parquet; {_download_hint(MUSE_SOURCES['news'], str(directory))}{books}."
        )
    try:
        table = pa.concat_tables([pq.read_table(file) for file in files])
    except (pa.ArrowException, ValueError) as error:
        raise DataError(f"{files[0]}: cannot read the Parquet file(s): {error}") from error
    return ", ".join(str(file) for file in files), table.to_pydict()


def _completion_dataset(where: str, table: Table) -> Dataset:
    columns = {"prompt": table["prompt"], "answer": table["gt"], SUBJECT_FIELD: [None] * len(table["prompt"])}
    if not columns["prompt"]:
        raise DataError(f"{where}: no rows.")
    for field, hub_name in (("prompt", "prompt"), ("answer", "gt")):
        for index, value in enumerate(columns[field]):
            if not isinstance(value, str) or not value:
                raise DataError(
                    f"{where}: row {index}: {hub_name!r} must be a non-empty string, got {value!r}."
                )
    return Dataset.from_dict(columns, features=COMPLETION_FEATURES)


def _text_dataset(where: str, table: Table) -> Dataset:
    columns = {TEXT_FIELD: table[TEXT_FIELD], SUBJECT_FIELD: [None] * len(table[TEXT_FIELD])}
    _check_values(where, columns)
    return Dataset.from_dict(columns, features=TEXT_FEATURES)


def load_muse(config: str, split: str, *, source: str = MUSE_SOURCES["news"]) -> Dataset:
    """Load one MUSE config and split: text rows (raw, train, privleak, and News' scal and sust), QA rows
    (knowmem) or completion rows (verbmem: prompt and answer, the true continuation)."""
    if config not in MUSE_SPLITS:
        raise DataError(f"muse: unknown config {config!r}; known configs: {', '.join(MUSE_SPLITS)}.")
    if split not in MUSE_SPLITS[config]:
        raise DataError(
            f"muse: config {config!r} has no split {split!r}; its splits: {', '.join(MUSE_SPLITS[config])}."
        )
    if config in MUSE_NEWS_ONLY and source == MUSE_SOURCES["books"]:
        raise DataError(
            f"muse: config {config!r} exists in {MUSE_SOURCES['news']} only; {MUSE_SOURCES['books']} has "
            f"{', '.join(name for name in MUSE_SPLITS if name not in MUSE_NEWS_ONLY)}."
        )
    if _is_local(source):
        where, table = _read_parquet_split(Path(source).expanduser(), config, split)
    else:
        where, table = f"{source} (config {config!r}, split {split!r})", _load_hub(source, config, split)
    _require_columns(where, table, _MUSE_COLUMNS[config], f"MUSE {config}/{split}")
    if config == "verbmem":
        return _completion_dataset(where, table)
    if config == "knowmem":
        return _qa_dataset(where, table, [None] * len(table["question"]))
    return _text_dataset(where, table)


BENCHMARK_LOADERS: dict[str, Callable[..., Dataset]] = {"tofu": load_tofu, "muse": load_muse}


def load_benchmark(
    benchmark: str, config: str, split: str = TOFU_SPLIT, *, source: str | None = None
) -> Dataset:
    """Load `config`/`split` of a named benchmark ("tofu" or "muse") from `source` (its default Hub id if None)."""
    loader = BENCHMARK_LOADERS.get(benchmark)
    if loader is None:
        raise DataError(f"unknown benchmark {benchmark!r}; known benchmarks: {', '.join(BENCHMARK_LOADERS)}.")
    if source is None:
        return loader(config, split=split)
    return loader(config, split=split, source=source)
