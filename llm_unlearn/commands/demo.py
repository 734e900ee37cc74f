"""The offline end-to-end run: fine-tune a target and a retain model, unlearn the forget subjects from the
target, evaluate all three with the built-in suite, print a table and write a comparison report."""

from __future__ import annotations

from typing import Any

from trl import TrlParser

from llm_unlearn.demo import DemoArguments, render, run_demo


def main(args: DemoArguments) -> dict[str, Any]:
    """Run the demo and print its table and checks."""
    summary = run_demo(args)
    print(render(summary))
    return summary


def make_parser(prog: str | None = None) -> TrlParser:
    """The demo's parser."""
    return TrlParser([DemoArguments], prog=prog)
