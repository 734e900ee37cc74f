"""The recipe configs (`configs/builtin`, `configs/tofu`, `configs/accelerate`) and eval suites (`eval/*.yaml`)
that ship with the package, so that `llm-unlearn demo` and the documented commands work from a wheel.

There is one copy of each file: the repository's `configs/` and `eval/*.yaml`. This package's `configs` and
`eval` are symbolic links to them, so a checkout (and an editable install) reads the repository's files, and a
wheel holds the copies that setuptools made from them at build time (pyproject.toml's package-data).
"""

from __future__ import annotations

import os
import sys
from importlib.resources import files
from pathlib import Path, PurePath

# The top-level directories of the repository that the package ships, and the kind of file it ships from them.
SHIPPED_DIRS = ("configs", "eval")
SHIPPED_SUFFIX = ".yaml"


def packaged_path(relative: str | os.PathLike[str]) -> Path:
    """The packaged file or directory at `relative`, a path as in the repository: 'configs/builtin',
    'configs/builtin/finetune.yaml' or 'eval/builtin.yaml'. Raises FileNotFoundError when the package ships
    nothing there."""
    parts = PurePath(relative).parts
    if not parts or parts[0] not in SHIPPED_DIRS or ".." in parts:
        raise FileNotFoundError(
            f"{relative}: the package ships only paths under {' and '.join(d + '/' for d in SHIPPED_DIRS)}."
        )
    resource = files(__name__)
    for part in parts:
        resource = resource / part
    if not isinstance(resource, Path):
        raise FileNotFoundError(f"{relative}: llm_unlearn is not installed as files on disk ({resource}).")
    # A checkout's `eval` link also reaches eval/run.py and eval/gate.py, which a wheel does not hold.
    if not (resource.is_dir() or (resource.is_file() and resource.suffix == SHIPPED_SUFFIX)):
        raise FileNotFoundError(f"{relative}: not a config or suite shipped with llm_unlearn.")
    return resource.resolve()


def config_path(path: str) -> str:
    """`path` when it exists, or the packaged file of the same relative path when only that exists: a user who
    installed the package can pass `--config configs/builtin/graddiff_lora.yaml` or `eval/builtin.yaml` from any
    directory. Anything else (an absolute path, a directory, a missing file the package does not ship) is
    returned unchanged, for the code that opens it to report."""
    if not path.endswith(SHIPPED_SUFFIX) or Path(path).exists():
        return path
    try:
        packaged = packaged_path(path)
    except FileNotFoundError:
        return path
    if not packaged.is_file():
        return path
    print(f"llm-unlearn: {path} is not in {Path.cwd()}; using the packaged {packaged}", file=sys.stderr)
    return str(packaged)
