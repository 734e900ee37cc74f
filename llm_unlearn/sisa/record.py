"""The SISA directory and its record, sisa.json (Bourtoule et al. 2021, arXiv 1912.03817): where each shard's
checkpoints lie, their content hashes, and the base model every shard was trained on. A SISA directory holds:

    sisa.json                     the plan, the base model (with its revision), the checkpoints' content hashes,
                                  the training costs, the deletions
    shards/shard-<i>/init/        shard i's adapter before any training
    shards/shard-<i>/slice-<j>/   shard i's adapter after training on slices 0..j (the last one is served)
    tokenizer files               the base model's tokenizer
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from llm_unlearn.manifest import sha256_file

SISA_FILE = "sisa.json"
# Still 1: the base's revision and trust_remote_code came as added keys, so an older reader still reads a new
# sisa.json, and `base_model_kwargs` reads an old one.
SISA_FORMAT = "llm_unlearn.sisa/1"
# What a deletion from a SISA run guarantees, as its log in sisa.json and the unlearning report state it.
EXACT_GUARANTEE = (
    "Exact unlearning (SISA, Bourtoule et al. 2021): the served model is the ensemble of shard models none "
    "of which was trained on the subject's examples after the deletion. The shard that held them was "
    "retrained from the checkpoint taken before its first slice containing them, on its remaining data, and "
    "the other shards never saw them; the result is a model that could have been trained had the examples "
    "never been in the training data."
)
SHARDS_DIR = "shards"
INIT_CHECKPOINT = "init"
# The files that make an adapter checkpoint; PEFT's README.md beside them is a generated card, not weights.
ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors")


def shard_dir(root: str | os.PathLike, shard: int) -> Path:
    """The directory of shard `shard`'s checkpoints."""
    return Path(root) / SHARDS_DIR / f"shard-{shard}"


def checkpoint_name(slice_index: int) -> str:
    """The name of the checkpoint taken after training on slices 0..`slice_index` (-1: before any slice)."""
    return INIT_CHECKPOINT if slice_index < 0 else f"slice-{slice_index}"


def adapter_sha256(directory: str | os.PathLike) -> str:
    """A content hash of the adapter checkpoint in `directory`: sha256 over the lines "<name>\\0<sha256 of the
    file>" of its config and weight files."""
    digest = hashlib.sha256()
    for name in ADAPTER_FILES:
        digest.update(f"{name}\0{sha256_file(Path(directory) / name)}\n".encode())
    return digest.hexdigest()


def ensemble_sha256(shard_hashes: Iterable[str]) -> str:
    """A content id of a served ensemble: sha256 over its shards' adapter hashes, in shard order."""
    return hashlib.sha256("\n".join(shard_hashes).encode()).hexdigest()


def is_sisa_dir(path: str | os.PathLike) -> bool:
    """Whether `path` is a SISA directory (it holds sisa.json)."""
    return (Path(path) / SISA_FILE).is_file()


def read_sisa_record(path: str | os.PathLike) -> dict[str, Any]:
    """Read a SISA directory's sisa.json, checking that it is one."""
    file = Path(path) / SISA_FILE
    if not file.is_file():
        raise FileNotFoundError(
            f"{str(path)!r} is not a SISA directory: it has no {SISA_FILE}; train one with "
            "`llm-unlearn sisa`."
        )
    record = json.loads(file.read_text(encoding="utf-8"))
    if record.get("format") != SISA_FORMAT:
        raise ValueError(f"{file}: format {record.get('format')!r} is not {SISA_FORMAT!r}.")
    return record


def base_model_kwargs(record: Mapping[str, Any]) -> dict[str, Any]:
    """The arguments of `llm_unlearn.models.load_model_and_tokenizer` (name_or_path, revision,
    trust_remote_code) that load the base every shard of a SISA run was trained on: a Hub base at the commit
    it was trained on, not at its branch's head."""
    # A run recorded before the pin lacks the keys; its base loads as it did then: by name, no remote code.
    return {
        "name_or_path": record["base_model"],
        "revision": record.get("base_commit") or record.get("base_revision"),
        "trust_remote_code": record.get("trust_remote_code", False),
    }


def served_checkpoints(path: str | os.PathLike, record: Mapping[str, Any]) -> list[Path]:
    """The checkpoint each shard serves (after its last slice), after checking it against sisa.json's hash."""
    last = checkpoint_name(record["num_slices"] - 1)
    directories = []
    for shard in record["shards"]:
        directory = shard_dir(path, shard["index"]) / last
        found = adapter_sha256(directory) if all((directory / n).is_file() for n in ADAPTER_FILES) else None
        if found != shard["checkpoints"][last]:
            raise ValueError(
                f"shard {shard['index']}'s served adapter {str(directory)!r} does not match the hash in "
                f"{SISA_FILE} (found {found}); a deletion was interrupted or the files were changed. Run the "
                "deletion again (`llm-unlearn sisa --output_dir DIR --delete_subjects ...`) to finish it."
            )
        directories.append(directory)
    return directories
