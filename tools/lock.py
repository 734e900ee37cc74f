"""Write requirements.lock: the versions `make demo`, `make test` and CI install, resolved from pyproject.toml.

    python tools/lock.py [--output requirements.lock]      (what `make lock` runs)

uv resolves the project with the extras `make test` installs (dev, harness) for every platform and every
Python the project supports (`uv pip compile --universal`); the result is used as a pip constraints file, so it
pins each package that gets installed and installs nothing by itself. torch is left out, and so is every
package that only torch needs (its CUDA libraries, triton, sympy, ...): the Makefile installs torch on its own
(`TORCH=`, a CPU build by default), and a pinned CUDA library would clash with any other torch build.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MINIMUM_PYTHON = "3.11"
LEFT_OUT = {"torch"}
EXTRAS = ("dev", "harness")
HEADER = """\
# The tested set: the exact versions that `make demo`, `make test` and `.ci/run` install, as pip constraints
# (`pip install -c requirements.lock ...`). Generated from pyproject.toml by `make lock` (tools/lock.py);
# do not edit by hand. torch and what only torch needs are left out: the Makefile installs torch itself.
"""
_PACKAGE = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==")
_VIA_ONE = re.compile(r"^\s+# via (\S+)")
_VIA_MANY = re.compile(r"^\s+#\s+(\S+)")


def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def parse_compiled(text: str) -> list[tuple[str, list[str], set[str]]]:
    """The entries of `uv pip compile` output: (package, its lines without annotations, the packages it is
    required by)."""
    entries: list[tuple[str, list[str], set[str]]] = []
    for line in text.splitlines():
        if match := _PACKAGE.match(line):
            entries.append((_canonical(match.group(1)), [line], set()))
        elif (
            entries
            and (match := _VIA_ONE.match(line) or _VIA_MANY.match(line))
            and match.group(1) != "via"
        ):
            entries[-1][2].add(_canonical(match.group(1)))
    # Several lines of one package (one per Python version or platform) share their parents.
    merged: dict[str, tuple[list[str], set[str]]] = {}
    for name, lines, parents in entries:
        kept_lines, kept_parents = merged.setdefault(name, ([], set()))
        kept_lines.extend(lines)
        kept_parents |= parents
    return [(name, lines, parents) for name, (lines, parents) in merged.items()]


def drop_exclusive_dependencies(
    entries: list[tuple[str, list[str], set[str]]], left_out: set[str]
) -> list[tuple[str, list[str], set[str]]]:
    """`entries` without the packages that only left-out packages require, transitively."""
    dropped = {_canonical(name) for name in left_out}
    changed = True
    while changed:
        changed = False
        for name, _, parents in entries:
            if name not in dropped and parents and parents <= dropped:
                dropped.add(name)
                changed = True
    return [entry for entry in entries if entry[0] not in dropped]


def compile_lock() -> str:
    """Resolve pyproject.toml (with EXTRAS) with uv and return the lock file's text."""
    command = [
        sys.executable, "-m", "uv", "pip", "compile", str(ROOT / "pyproject.toml"),
        *(argument for extra in EXTRAS for argument in ("--extra", extra)), "--universal",
        "--python-version", MINIMUM_PYTHON, "--no-header", "--quiet",
        *(argument for name in sorted(LEFT_OUT) for argument in ("--no-emit-package", name)),
    ]  # fmt: skip
    compiled = subprocess.run(command, check=True, capture_output=True, text=True, cwd=ROOT).stdout
    # The project itself is a parent, written "llm-unlearn (pyproject.toml)".
    entries = drop_exclusive_dependencies(parse_compiled(compiled), LEFT_OUT)
    return HEADER + "".join(line + "\n" for _, lines, _ in entries for line in lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", type=Path, default=ROOT / "requirements.lock")
    args = parser.parse_args()
    text = compile_lock()
    temporary = args.output.with_name(f".{args.output.name}.tmp")
    temporary.write_text(text)
    temporary.replace(args.output)
    print(f"wrote {args.output} ({text.count(chr(10)) - HEADER.count(chr(10))} pinned lines)", file=sys.stderr)


if __name__ == "__main__":
    main()
