"""List the registered unlearning methods, or show one method's `method_args`: types, defaults, meanings.

`llm-unlearn methods` prints every method with a short description; `llm-unlearn methods NAME` describes one.
"""

from __future__ import annotations

import argparse
import textwrap
from collections.abc import Sequence

from llm_unlearn.methods import METHODS, describe_method
from llm_unlearn.methods.base import DESCRIBE_WIDTH


class MethodsParser(argparse.ArgumentParser):
    """An argparse parser with the `parse_args_and_config` the `llm-unlearn` CLI calls; the command takes no
    --config, as it has nothing to configure."""

    def parse_args_and_config(self, args: Sequence[str] | None = None) -> tuple[argparse.Namespace]:
        """Parse `args` (default: sys.argv) into the 1-tuple that `main` takes."""
        return (self.parse_args(args),)


def method_list() -> str:
    """Every registered method, sorted by name, beside the first paragraph of its config's docstring."""
    width = max(len(name) for name in METHODS)
    lines = [
        textwrap.fill(
            METHODS[name].summary,
            DESCRIBE_WIDTH,
            initial_indent=f"  {name.ljust(width)}  ",
            subsequent_indent=" " * (width + 4),
        )
        for name in METHODS.names()
    ]
    header = "Unlearning methods (`method:` in a config, --method on the command line):"
    footer = "`llm-unlearn methods NAME` lists a method's method_args."
    return "\n".join([header, *lines, "", footer])


def main(args: argparse.Namespace) -> int:
    """Print the method list, or the description of `args.name` (an unknown name raises ValueError)."""
    print(method_list() if args.name is None else describe_method(args.name))
    return 0


def make_parser(prog: str | None = None) -> MethodsParser:
    """The `methods` parser: an optional method NAME."""
    parser = MethodsParser(prog=prog, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "name", nargs="?", default=None, metavar="NAME", help="A registered method; omit it to list them all."
    )
    return parser
