"""Command-line argument actions the commands share."""

from __future__ import annotations

import argparse
from typing import Any


class OptionalPositional(argparse.Action):
    """A positional argument that may also come as `--name` or from `--config`: when it is absent from the command
    line nothing is stored, so the flag's or the config's value stands (`llm-unlearn gate EVAL_JSON`,
    `llm-unlearn report RUN_DIR...`)."""

    # TrlParser gives every action whose dest is a config key the config's value as default, and argparse stores
    # an absent positional's default last, over the flag given on the command line. A default that is always
    # SUPPRESS makes argparse skip the absent positional.
    default = property(lambda self: argparse.SUPPRESS, lambda self, value: None)

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: Any,
        option_string: str | None = None,
    ) -> None:
        if values:
            setattr(namespace, self.dest, values)
