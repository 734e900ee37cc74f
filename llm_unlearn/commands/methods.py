"""List the registered unlearning methods, or show one method's `method_args`: types, defaults, meanings.

`llm-unlearn methods` prints every method with a short description; `llm-unlearn methods NAME` describes one.
"""

from __future__ import annotations

import argparse
import sys
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
    """Print the method list, or the description of `args.name`; exit code 2 for an unknown name."""
    if args.name is None:
        print(method_list())
        return 0
    try:
        print(describe_method(args.name))
    except ValueError as error:
        print(f"llm-unlearn methods: {error}", file=sys.stderr)
        return 2
    return 0


def make_parser(prog: str | None = None) -> MethodsParser:
    """The `methods` parser: an optional method NAME."""
    parser = MethodsParser(prog=prog, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "name", nargs="?", default=None, metavar="NAME", help="A registered method; omit it to list them all."
    )
    return parser


if __name__ == "__main__":
    sys.exit(main(*make_parser().parse_args_and_config()))
