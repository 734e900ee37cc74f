"""Recipe and suite YAML files read into typed argument dataclasses, for code that runs a recipe without a
command line (the demo, the deletion pipeline, evaluation during unlearning).

The commands read the same files through `trl.TrlParser` (`--config FILE`), which gives each key to the dataclass
that has a field of that name; `arguments_from_config` does the same with Python values. YAML reads `1e-4` as a
string (YAML 1.1 needs a dot: `1.0e-4`) and argparse converts such strings by the field's type, so the numeric
and boolean strings are converted here in the same way.
"""

from __future__ import annotations

import dataclasses
import difflib
import os
import types
import typing
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from llm_unlearn.resources import config_path

TRUE_WORDS = ("true", "yes", "1", "t", "y")
FALSE_WORDS = ("false", "no", "0", "f", "n")


class ConfigError(ValueError):
    """A config file that cannot be read, or a key or value no argument dataclass accepts."""


def read_config(path: str | os.PathLike) -> dict[str, Any]:
    """The mapping in the YAML file at `path` (a relative configs/ or eval/ path missing here is read from the
    packaged copy, as the commands do)."""
    resolved = Path(config_path(str(path)))
    if not resolved.is_file():
        raise ConfigError(f"config {str(path)!r} does not exist; give a recipe or suite YAML file.")
    try:
        values = yaml.safe_load(resolved.read_text(encoding="utf-8"))
    except yaml.YAMLError as error:
        raise ConfigError(f"config {str(path)!r} is not valid YAML: {error}") from None
    if values is None:
        return {}
    if not isinstance(values, dict):
        raise ConfigError(f"config {str(path)!r} must hold a mapping of option: value, got {type(values).__name__}.")
    return values


def _scalar(value: str, kind: type) -> Any:
    if kind is bool:
        if value.lower() in TRUE_WORDS:
            return True
        if value.lower() in FALSE_WORDS:
            return False
        raise ValueError(f"not a boolean (accepted: {TRUE_WORDS + FALSE_WORDS})")
    return kind(value)


def _convert(value: Any, annotation: Any) -> Any:
    """`value` converted as argparse converts a string default: to the field's int, float or bool type."""
    if not isinstance(value, str):
        return value
    options = typing.get_args(annotation) if typing.get_origin(annotation) in (typing.Union, types.UnionType) else ()
    kinds = [kind for kind in (options or (annotation,)) if kind in (bool, int, float)]
    if not kinds or str in options:
        return value
    return _scalar(value, kinds[0])


def arguments_from_config(
    dataclass_types: tuple[type, ...], values: Mapping[str, Any], source: str = "config"
) -> tuple[Any, ...]:
    """One instance of each dataclass type, each built from the keys of `values` that are its init fields (a key
    goes to every dataclass that has it, as with TrlParser). A key no dataclass has is an error naming it."""
    built, used = [], set()
    for kind in dataclass_types:
        hints = typing.get_type_hints(kind)
        kwargs = {}
        for item in dataclasses.fields(kind):
            if item.init and item.name in values:
                try:
                    kwargs[item.name] = _convert(values[item.name], hints[item.name])
                except ValueError as error:
                    raise ConfigError(
                        f"{source}: {item.name}={values[item.name]!r} is not a valid {hints[item.name]}: {error}."
                    ) from None
                used.add(item.name)
        built.append(kind(**kwargs))
    check_known_options(values, dataclass_types, source)
    return tuple(built)


def check_known_options(
    values: Mapping[str, Any], dataclass_types: tuple[type, ...], source: str, also: tuple[str, ...] = ()
) -> None:
    """Raise ConfigError naming every option of `values` that no dataclass has (nor `also`), each with the
    closest known option when there is one."""
    known = _option_names(dataclass_types) | set(also)
    unknown = sorted(set(values) - known)
    if unknown:
        raise ConfigError(
            f"{source}: unknown option(s) {_with_closest(unknown, known)}; `llm-unlearn COMMAND --help` lists the "
            "options."
        )


def check_no_unknown_flags(remaining: Sequence[str], dataclass_types: tuple[type, ...], command: str) -> None:
    """Raise ConfigError naming the command-line arguments that no option of `command` took (`remaining`, as
    TrlParser returns them), each flag with the closest flag the command does take."""
    if not remaining:
        return
    flags = [arg.split("=", 1)[0] for arg in remaining if arg.startswith("-")]
    if not flags:
        raise ConfigError(
            f"unexpected argument(s) {list(remaining)}; `llm-unlearn {command} --help` lists what it takes."
        )
    known = {f"--{name}" for name in _option_names(dataclass_types)}
    raise ConfigError(
        f"unknown option(s) {_with_closest(flags, known)} (an option is spelled in full); `llm-unlearn {command} "
        "--help` lists the options."
    )


def _option_names(dataclass_types: tuple[type, ...]) -> set[str]:
    return {item.name for kind in dataclass_types for item in dataclasses.fields(kind) if item.init}


def _with_closest(names: Sequence[str], known: set[str]) -> str:
    """`names` quoted, each followed by the closest of `known` when one is close."""
    hints = []
    for name in names:
        close = difflib.get_close_matches(name, sorted(known), n=1)
        hints.append(f"{name!r} (did you mean {close[0]!r}?)" if close else repr(name))
    return ", ".join(hints)


def load_arguments(
    dataclass_types: tuple[type, ...], path: str | os.PathLike, **overrides: Any
) -> tuple[Any, ...]:
    """The argument dataclasses of a recipe or suite YAML, with `overrides` replacing (or adding) options as
    flags after `--config` do on the command line."""
    return arguments_from_config(dataclass_types, {**read_config(path), **overrides}, source=str(path))
