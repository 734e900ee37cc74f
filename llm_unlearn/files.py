"""Atomic output: a file or directory appears complete or not at all, and nothing existing is overwritten
unless asked."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any


def write_text_atomic(text: str, path: str | os.PathLike) -> Path:
    """Write `text` to `path` through a temporary file in the same directory: a reader sees the old file or the
    whole new one, never a part."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    return path


def read_json_object(path: str | os.PathLike, error: type[ValueError] = ValueError) -> dict[str, Any]:
    """The JSON object in `path`; `error` (a ValueError type) names the file when it is not valid JSON or not an
    object."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except ValueError as exc:
        raise error(f"{path} is not valid JSON: {exc}.") from exc
    if not isinstance(data, dict):
        raise error(f"{path} holds a JSON {type(data).__name__}; expected an object.")
    return data


def write_json_atomic(obj: Any, path: str | os.PathLike) -> Path:
    """Write `obj` as indented JSON to `path` atomically (`write_text_atomic`)."""
    return write_text_atomic(json.dumps(obj, indent=2, sort_keys=False, allow_nan=True) + "\n", path)


def check_writable_dir(path: str | os.PathLike) -> Path:
    """Raise, naming the path, when the directory `path` could not be created or written into: checked before
    any expensive work, so that its results are not lost to a bad output path."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise FileExistsError(f"output_dir {str(path)!r} exists and is a file; give a directory path.")
    existing = path
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise NotADirectoryError(
            f"output_dir {str(path)!r} cannot be created: {str(existing)!r} is a file; give a directory path."
        )
    if not os.access(existing, os.W_OK | os.X_OK):
        raise PermissionError(f"output_dir {str(path)!r} cannot be written: {str(existing)!r} is not writable.")
    return path


def check_output_dir(path: str | os.PathLike, overwrite: bool) -> Path:
    """Refuse to reuse a non-empty output directory unless `overwrite` is set, and one that cannot be written."""
    path = check_writable_dir(path)
    if path.is_dir() and any(path.iterdir()) and not overwrite:
        raise FileExistsError(
            f"output_dir {str(path)!r} exists and is not empty; pass --overwrite (overwrite=True) to replace it "
            "or choose another directory."
        )
    return path


@contextlib.contextmanager
def atomic_directory(path: str | os.PathLike, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary sibling directory; on success it replaces `path`, on failure it is removed."""
    path = check_output_dir(path, overwrite)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".partial", dir=path.parent))
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if path.exists():
        old = path.with_name(f".{path.name}.old")
        shutil.rmtree(old, ignore_errors=True)
        os.replace(path, old)
        os.replace(tmp, path)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, path)
