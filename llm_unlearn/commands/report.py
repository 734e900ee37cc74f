"""Write report.md and a self-contained report.html, with plots, over the eval.json of one or more run directories.

Run directories are positional (`llm-unlearn report RUN_DIR [RUN_DIR ...] --output_dir DIR`), or `--run_dirs` /
`run_dirs:` in a `--config` file.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from trl import TrlParser

from llm_unlearn.commands.arguments import OptionalPositional
from llm_unlearn.evaluation.report import write_report


@dataclass
class ReportScriptArguments:
    """The run directories to report on, where to write the report, and its labels and title."""

    run_dirs: list[str] = field(
        default_factory=list,
        metadata={"help": "Run directories, each with an eval.json (and optionally run.json)."},
    )
    output_dir: str | None = field(
        default=None,
        metadata={
            "help": "Directory for report.md, report_files/ and report.html; default: the only run dir."
        },
    )
    labels: list[str] | None = field(
        default=None, metadata={"help": "One name per run directory; default: the directory names."}
    )
    title: str | None = field(default=None, metadata={"help": "Report title."})
    overwrite: bool = field(
        default=False, metadata={"help": "Replace a report already in the output directory (and its report_files/)."}
    )

    def __post_init__(self) -> None:
        if not self.run_dirs:
            raise ValueError(
                "report needs at least one run directory: llm-unlearn report RUN_DIR [RUN_DIR ...]."
            )
        if self.output_dir is None:
            if len(self.run_dirs) > 1:
                raise ValueError(
                    f"a report over {len(self.run_dirs)} run directories needs --output_dir DIR; only a single "
                    "run's report defaults to its own directory."
                )
            self.output_dir = self.run_dirs[0]


def main(script_args: ReportScriptArguments) -> tuple[Path, Path]:
    """Write the report; returns the paths of report.md and report.html."""
    paths = write_report(
        script_args.run_dirs, script_args.output_dir, labels=script_args.labels, title=script_args.title,
        overwrite=script_args.overwrite,
    )  # fmt: skip
    print(f"wrote {paths[0]} and {paths[1]}")
    return paths


def make_parser(prog: str | None = None) -> TrlParser:
    """The report parser: RUN_DIR positionals (or --run_dirs), --output_dir, --labels, --title, --config."""
    parser = TrlParser([ReportScriptArguments], prog=prog, description=__doc__)
    parser.add_argument(
        "run_dirs", nargs="*", action=OptionalPositional, metavar="RUN_DIR", help="Run directories."
    )
    return parser
