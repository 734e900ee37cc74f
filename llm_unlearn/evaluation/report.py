"""Evaluation reports: one Markdown file (report.md, plots beside it in report_files/) and one self-contained HTML
file (report.html, plots inline) over the eval.json of one or more run directories.

A report is built once as a list of blocks (headings, paragraphs, tables, images, collapsed item tables) and then
rendered twice, so both files carry the same content. All text from eval.json is user data: the Markdown renderer
escapes it for GitHub and the HTML renderer with `html.escape`.
"""

from __future__ import annotations

import base64
import html
import json
import math
import os
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from llm_unlearn.evaluation import plots
from llm_unlearn.evaluation.reference_logs import load_reference
from llm_unlearn.evaluation.results import AttackResult, EvalResult, Measurement, load_eval
from llm_unlearn.files import atomic_directory, read_json_object, write_text_atomic

FILES_DIR = "report_files"
# Summary values shown first, in this order; other summary keys follow.
SUMMARY_KEYS = ("forget_quality", "model_utility", "privleak")
# Per-split aggregates worth a row in the summary table; the per-split tables list every aggregate.
# What a report writes into its output directory.
REPORT_OUTPUTS = ("report.md", "report.html", FILES_DIR)
MAIN_METRICS = (
    "probability",
    "probability_mc",
    "rouge_l_recall",
    "rouge_l_f1",
    "truth_ratio_stat",
    "exact_memorization",
    "extraction_strength",
)
NOT_RECORDED = "—"


@dataclass
class Run:
    """One run directory: its label, its eval.json and, when present, its run.json training record."""

    label: str
    path: Path
    eval: EvalResult
    record: dict[str, Any] | None = None


def load_run(run_dir: str | os.PathLike, label: str) -> Run:
    """Read a run directory's eval.json (required) and run.json (optional)."""
    path = Path(run_dir)
    eval_path = path / "eval.json"
    if not eval_path.is_file():
        raise FileNotFoundError(
            f"{eval_path} does not exist; a report needs each run directory's eval.json, which "
            f"`llm-unlearn eval --output_dir {path}` writes."
        )
    record_path = path / "run.json"
    record = read_json_object(record_path) if record_path.is_file() else None
    return Run(label, path, load_eval(eval_path), record)


class Code(str):
    """Text shown as code: an identifier, a path or a command."""


Cell = str  # plain text, or Code


@dataclass
class Heading:
    level: int
    text: str


@dataclass
class Paragraph:
    parts: tuple[Cell, ...]


@dataclass
class Bullets:
    items: list[tuple[Cell, ...]]


@dataclass
class Table:
    header: list[Cell]
    rows: list[list[Cell]]


@dataclass
class Image:
    name: str
    caption: str
    png: bytes


@dataclass
class Details:
    """A collapsed table: rendered in HTML only, where it stays readable however many items there are."""

    summary: str
    table: Table


Block = Heading | Paragraph | Bullets | Table | Image | Details


def _number(value: Any) -> float | None:
    """`value` as a float when it is a finite number, else None (null, NaN, infinities, strings)."""
    if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
        return float(value)
    return None


def _fmt(value: Any, digits: int = 3) -> str:
    number = _number(value)
    return "n/a" if number is None else f"{number:.{digits}g}"


def _cell(measurement: Measurement | None) -> str:
    """A table cell for a summary value or aggregate that a run may not have."""
    return NOT_RECORDED if measurement is None else measurement.text()


def _summary_number(run: Run, name: str) -> float | None:
    """The run's summary value `name` when it is a finite number."""
    measurement = run.eval.summary(name)
    return None if measurement is None else _number(measurement.value)


def _in_order(groups: Iterable[Iterable[str]], first: Sequence[str] = ()) -> list[str]:
    """The distinct names of `groups`, those in `first` leading in its order, the rest as first seen."""
    seen = dict.fromkeys(name for group in groups for name in group)
    return [name for name in first if name in seen] + [name for name in seen if name not in first]


def _runs_section(runs: Sequence[Run]) -> list[Block]:
    rows = []
    for run in runs:
        record = run.record or {}
        method = " ".join(str(record[key]) for key in ("recipe", "method", "mode") if record.get(key))
        method = method or NOT_RECORDED
        rows.append([run.label, Code(str(run.eval.model or NOT_RECORDED)), method, Code(str(run.path))])
    return [Heading(2, "Runs"), Table(["run", "model", "training", "directory"], rows)]


def _summary_section(runs: Sequence[Run]) -> list[Block]:
    rows: list[list[Cell]] = [
        [Code(key), *(_cell(run.eval.summary(key)) for run in runs)]
        for key in _in_order((run.eval.summary_names() for run in runs), SUMMARY_KEYS)
    ]
    for split in _in_order(run.eval.split_names() for run in runs):
        recorded = {name for run in runs for name in run.eval.metric_names(split)}
        for metric in (name for name in MAIN_METRICS if name in recorded):
            rows.append([Code(f"{split}/{metric}"), *(_cell(run.eval.metric(split, metric)) for run in runs)])
    if not rows:
        return []
    blocks: list[Block] = [
        Heading(2, "Summary"),
        Paragraph(
            ("Each value with its 95% bootstrap interval and sample size n where eval.json gives them.",)
        ),
        Table(["", *(run.label for run in runs)], rows),
    ]
    reasons = [
        (f"{run.label}, ", Code(key), f": {measurement.reason}")
        for run in runs
        for key in run.eval.summary_names()
        if (measurement := run.eval.summary(key)).reason and _number(measurement.value) is None
    ]
    if reasons:
        blocks += [Paragraph(("Why a value is n/a:",)), Bullets(reasons)]
    return blocks


def _utility_forget_section(runs: Sequence[Run]) -> list[Block]:
    points = {
        run.label: (_summary_number(run, "model_utility"), _summary_number(run, "forget_quality"))
        for run in runs
    }
    plottable = any(utility is not None and (quality or 0) > 0 for utility, quality in points.values())
    if len(runs) < 2 or not plottable:
        return []
    caption = (
        "Forget quality (KS-test p-value against the retain model, higher = closer to never having seen the "
        "forget set) against model utility; the dashed line is p = 0.05."
    )
    return [
        Heading(2, "Forget quality vs model utility"),
        Image("forget_quality_vs_utility", caption, plots.utility_forget_figure(points)),
    ]


def _forget_ratios(eval_result: EvalResult) -> list[Any]:
    return [item.get("truth_ratio") for item in eval_result.split_items(eval_result.forget_split)]


def _reference_ratios(run: Run) -> tuple[list[Any] | None, str | None]:
    """The forget truth ratios of a run's recorded reference eval, or a note on why there are none."""
    reference = run.eval.reference_eval
    if not isinstance(reference, str):
        return None, None
    try:
        return _forget_ratios(load_reference(reference)), None
    except (OSError, ValueError) as error:
        return None, f"The reference eval {reference} recorded in eval.json could not be read ({error})."


def _truth_ratio_section(runs: Sequence[Run]) -> list[Block]:
    series = {run.label: _forget_ratios(run.eval) for run in runs}
    note = None
    if len(runs) == 1:
        reference, note = _reference_ratios(runs[0])
        if reference is not None:
            series["reference" if runs[0].label != "reference" else "reference eval"] = reference
    series = {label: ratios for label, ratios in series.items() if (plots.finite(ratios) > 0).any()}
    blocks: list[Block] = []
    if series:
        caption = (
            "Per-item truth ratios R on the forget split (R near 1: the true answer is no likelier than wrong "
            "ones). Forget quality is the KS test between the unlearned and the retain model's distributions."
        )
        blocks += [
            Heading(2, "Truth ratios on the forget split"),
            Image("truth_ratio", caption, plots.truth_ratio_figure(series)),
        ]
    if note is not None:
        blocks.append(Paragraph((note,)))
    return blocks


def _split_sections(runs: Sequence[Run]) -> list[Block]:
    blocks: list[Block] = []
    for split in _in_order(run.eval.split_names() for run in runs):
        rows = [
            [Code(metric), *(_cell(run.eval.metric(split, metric)) for run in runs)]
            for metric in _in_order(run.eval.metric_names(split) for run in runs)
        ]
        counts = {run.label: run.eval.num_items(split) for run in runs if split in run.eval.split_names()}
        sizes = ", ".join(f"{label}: {'n/a' if n is None else n}" for label, n in counts.items())
        blocks += [Heading(3, f"Split {split}"), Paragraph((f"Items per run: {sizes}.",))]
        cuts = [
            f"{run.label}: {cut.truncated} of {cut.examples} items, {cut.tokens_dropped} tokens"
            for run in runs
            if (cut := run.eval.truncation(split)) is not None and cut.truncated
        ]
        if cuts:
            blocks.append(Paragraph((f"Cut to max_length (scored on their first tokens only): {'; '.join(cuts)}.",)))
        blocks.append(Table(["metric", *(run.label for run in runs)], rows))
    return [Heading(2, "Metrics per split"), *blocks] if blocks else []


def _harness_rows(runs: Sequence[Run], tasks: Iterable[str]) -> list[list[Cell]]:
    """One row per task/metric with each run's score."""
    return [
        [Code(f"{task}/{metric}"), *(_cell(run.eval.harness_metrics(task).get(metric)) for run in runs)]
        for task in tasks
        for metric in _in_order(run.eval.harness_metrics(task) for run in runs)
    ]


def _harness_section(runs: Sequence[Run]) -> list[Block]:
    with_harness = [run for run in runs if run.eval.harness_tasks()]
    if not with_harness:
        return []
    labels = [run.label for run in with_harness]
    requested = _in_order(run.eval.harness_requested() for run in with_harness)
    reported = _in_order(run.eval.harness_tasks() for run in with_harness)
    rest = [task for task in reported if task not in requested]
    settings = {}
    for run in with_harness:
        section = run.eval["harness"]
        recorded = {"lm_eval": section.get("lm_eval_version"), **section.get("args", {})}
        settings[run.label] = json.dumps(recorded)
    blocks: list[Block] = [
        Heading(2, "Benchmarks (lm-evaluation-harness)"),
        Paragraph(
            (
                "Each metric of the suite's lm-eval tasks as lm-eval computes it, with its standard error and the "
                "number of items n; the gate reads them as ",
                Code("harness/TASK/METRIC"),
                ".",
            )
        ),
    ]
    if len(set(settings.values())) == 1:
        blocks.append(Paragraph(("Settings: ", Code(next(iter(settings.values()))))))
    else:
        blocks += [Paragraph((f"{label} settings: ", Code(text))) for label, text in settings.items()]
    blocks.append(Table(["task/metric", *labels], _harness_rows(with_harness, requested)))
    if rest:
        summary = f"{len(rest)} subtasks and groups of the requested tasks"
        blocks.append(Details(summary, Table(["task/metric", *labels], _harness_rows(with_harness, rest))))
    return blocks


def _mia_section(runs: Sequence[Run]) -> list[Block]:
    with_mia = [run for run in runs if run.eval.mia_splits is not None]
    if not with_mia:
        return []
    rows = []
    for score in _in_order(run.eval.mia_aucs() for run in with_mia):
        cells = []
        for run in with_mia:
            auc = run.eval.mia_aucs().get(score)
            if auc is None:
                cells.append(NOT_RECORDED)
                continue
            members, nonmembers = ("?" if n is None else n for n in (auc.n_members, auc.n_nonmembers))
            cells.append(f"{auc.text()} ({members} vs {nonmembers})")
        rows.append([Code(score), *cells])
    blocks: list[Block] = [
        Heading(2, "Membership inference"),
        Paragraph(
            (
                "ROC AUC of each membership score, members labelled 0 and nonmembers 1, with its 95% bootstrap "
                "interval and (members vs nonmembers) counts: near 1, the members still look like training "
                "data; 0.5, they are indistinguishable from the nonmembers.",
            )
        ),
        Table(["score", *(run.label for run in with_mia)], rows),
    ]
    for run in with_mia:
        members, nonmembers = run.eval.mia_splits
        privleak = _summary_number(run, "privleak")
        if privleak is not None:
            fields = run.eval.summary_fields("privleak")
            # No retrained model was evaluated: the number compares with a published one, on other hardware and data.
            against = (
                "a published retrained model's AUC"
                if fields.get("reference") == "published"
                else "the reference's"
            )
            blocks.append(
                Paragraph(
                    (
                        f"{run.label}: PrivLeak {_fmt(privleak)} from the ",
                        Code(str(fields.get("score", "min_k"))),
                        f" AUC {_fmt(fields.get('auc'))} against {against} "
                        f"{_fmt(fields.get('reference_auc'))} (near 0 is good).",
                    )
                )
            )
        member_items, nonmember_items = run.eval.split_items(members), run.eval.split_items(nonmembers)
        curves = {
            score: ([item.get(score) for item in member_items], [item.get(score) for item in nonmember_items])
            for score in run.eval.mia_aucs()
        }
        try:
            png = plots.mia_roc_figure(curves, members, nonmembers, model=run.label)
        except ValueError:
            continue  # no per-item scores stored: the AUC table above is all there is
        caption = f"{run.label}: ROC curves of the membership scores, {members} vs {nonmembers}."
        blocks.append(Image(f"mia_roc_{run.label}", caption, png))
    return blocks


def _attack_rows(label: str, attack: AttackResult) -> list[list[Cell]]:
    """One row per split/metric of an attack on a run: baseline, attacked and the change of the mean."""
    attacked, baseline = attack.attacked, attack.baseline
    rows: list[list[Cell]] = []
    for split in _in_order([attacked, baseline]):
        for metric in _in_order([attacked.get(split, {}), baseline.get(split, {})]):
            before, after = baseline.get(split, {}).get(metric), attacked.get(split, {}).get(metric)
            before_mean = None if before is None else _number(before.value)
            after_mean = None if after is None else _number(after.value)
            change = (
                "n/a" if before_mean is None or after_mean is None else f"{after_mean - before_mean:+.3g}"
            )
            rows.append([label, Code(f"{split}/{metric}"), _cell(before), _cell(after), change])
    return rows


def _attack_section(runs: Sequence[Run]) -> list[Block]:
    blocks: list[Block] = []
    for name in _in_order(run.eval.attacks() for run in runs):
        attacks = {run.label: run.eval.attacks()[name] for run in runs if name in run.eval.attacks()}
        blocks.append(Heading(3, name))
        description = next((a.description for a in attacks.values() if a.description), None)
        if description:
            blocks.append(Paragraph((description,)))
        params = {label: json.dumps(attack.params) for label, attack in attacks.items()}
        if len(set(params.values())) == 1:
            blocks.append(Paragraph(("Parameters: ", Code(next(iter(params.values()))))))
        else:
            blocks += [Paragraph((f"{label} parameters: ", Code(p))) for label, p in params.items()]
        rows = [row for label, attack in attacks.items() for row in _attack_rows(label, attack)]
        blocks.append(Table(["run", "metric", "baseline", "attacked", "change"], rows))
    if not blocks:
        return []
    intro = Paragraph(("Each attack's numbers next to the unattacked baseline on the same items.",))
    return [Heading(2, "Attacks"), intro, *blocks]


def _gate_section(runs: Sequence[Run]) -> list[Block]:
    columns = [{name: run.eval.measure(name).value for name in run.eval.names()} for run in runs]
    names = _in_order(columns, SUMMARY_KEYS)
    if not names:
        return []
    rows = [
        [Code(name), *(_fmt(c[name], 6) if name in c else NOT_RECORDED for c in columns)] for name in names
    ]
    intro: tuple[Cell, ...] = (
        "The names ",
        Code("llm-unlearn gate EVAL_JSON --check 'NAME OP VALUE'"),
        " accepts, with each run's value (gate uses full precision).",
    )
    if "forget_quality" in names:
        command = f"llm-unlearn gate {runs[-1].path / 'eval.json'} --check 'forget_quality>=0.05'"
        intro += (" For example: ", Code(command))
    return [
        Heading(2, "Gate-ready numbers"),
        Paragraph(intro),
        Table(["name", *(run.label for run in runs)], rows),
    ]


def _training_section(runs: Sequence[Run]) -> list[Block]:
    blocks: list[Block] = []
    for run in runs:
        history = (run.record or {}).get("log_history") or []
        if not plots.training_curves(history):
            continue
        recipe = " ".join(str(run.record[key]) for key in ("recipe", "method") if run.record.get(key))
        caption = f"{run.label}: training curves from run.json ({recipe or 'log history'})."
        blocks.append(
            Image(f"training_{run.label}", caption, plots.training_figure(history, model=run.label))
        )
    return [Heading(2, "Training"), *blocks] if blocks else []


def _items_section(runs: Sequence[Run]) -> list[Block]:
    blocks: list[Block] = []
    for run in runs:
        forget = run.eval.forget_split
        items = run.eval.split_items(forget)
        if not items:
            continue
        metrics = [
            name
            for name in _in_order([run.eval.metric_names(forget)], ("truth_ratio",))
            if any(name in item for item in items)
        ]
        rows = [
            [
                str(item.get("index", "")),
                str(item.get("question", "")),
                str(item.get("answer", "")),
                NOT_RECORDED if item.get("generation") is None else str(item["generation"]),
                *(_fmt(item.get(name)) for name in metrics),
            ]
            for item in items
        ]
        header = ["#", "question", "answer", "generation", *(Code(name) for name in metrics)]
        blocks.append(Details(f"{run.label}: {len(items)} forget items", Table(header, rows)))
    return [Heading(2, "Forget items"), *blocks] if blocks else []


def build_report(runs: Sequence[Run], title: str) -> list[Block]:
    """The report's blocks, in reading order; a section whose data no run has is left out."""
    sections: list[Callable[[Sequence[Run]], list[Block]]] = [
        _runs_section,
        _summary_section,
        _utility_forget_section,
        _truth_ratio_section,
        _split_sections,
        _harness_section,
        _mia_section,
        _attack_section,
        _gate_section,
        _training_section,
        _items_section,
    ]
    return [Heading(1, title), *(block for section in sections for block in section(runs))]


# Characters that can start markup. An underscore inside a word and a bracket that opens no link are left alone,
# so that raw report.md stays readable: `min_k`, "0.3 [0.2, 0.4]".
_MD_SPECIAL = re.compile(r"[\\`*<>|&#~]|(?<![0-9A-Za-z])_|_(?![0-9A-Za-z])|\[(?=[^\]]*\][(\[:])")


def _md_text(text: str) -> str:
    """Plain text for GitHub Markdown: markup characters backslash-escaped, line breaks as spaces."""
    return _MD_SPECIAL.sub(lambda match: "\\" + match[0], re.sub(r"\s+", " ", str(text)))


def _md_code(text: str, in_table: bool) -> str:
    text = re.sub(r"\s+", " ", text)
    fence = "`" * (max((len(run) for run in re.findall(r"`+", text)), default=0) + 1)
    padding = " " if text.startswith("`") or text.endswith("`") else ""
    # Inside a table GitHub splits cells at every unescaped pipe, code spans included.
    body = text.replace("|", "\\|") if in_table else text
    return f"{fence}{padding}{body}{padding}{fence}"


def _md_inline(parts: Iterable[Cell], in_table: bool = False) -> str:
    return "".join(_md_code(p, in_table) if isinstance(p, Code) else _md_text(p) for p in parts)


def _md_table(table: Table) -> list[str]:
    lines = [
        "| " + " | ".join(_md_inline([cell], in_table=True) for cell in table.header) + " |",
        "|" + "---|" * len(table.header),
    ]
    lines += [
        "| " + " | ".join(_md_inline([cell], in_table=True) for cell in row) + " |" for row in table.rows
    ]
    return lines


def render_markdown(blocks: Sequence[Block], files: Mapping[int, str]) -> str:
    """The report as GitHub Markdown; `files` maps the index of each Image block to its path relative to
    report.md. Collapsed item tables are left to report.html."""
    out: list[str] = []
    has_details = False
    for index, block in enumerate(blocks):
        if isinstance(block, Heading):
            out += ["#" * block.level + " " + _md_text(block.text), ""]
        elif isinstance(block, Paragraph):
            out += [_md_inline(block.parts), ""]
        elif isinstance(block, Bullets):
            out += [*("- " + _md_inline(item) for item in block.items), ""]
        elif isinstance(block, Table):
            out += [*_md_table(block), ""]
        elif isinstance(block, Image):
            out += [f"![{_md_text(block.caption)}]({files[index]})", "", f"*{_md_text(block.caption)}*", ""]
        elif isinstance(block, Details) and not has_details:
            has_details = True
            out += ["Per-item tables (question, answer, generation and metrics) are in report.html.", ""]
    return "\n".join(out).rstrip("\n") + "\n"


_CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 2rem auto; max-width: 72rem;
       padding: 0 1rem; color: #1f2328; line-height: 1.45; }
h1 { border-bottom: 1px solid #d0d7de; padding-bottom: .3rem; }
h2 { border-bottom: 1px solid #d0d7de; padding-bottom: .2rem; margin-top: 2rem; }
table { border-collapse: collapse; margin: .5rem 0 1rem; font-size: .9rem; }
th, td { border: 1px solid #d0d7de; padding: .3rem .6rem; text-align: left; vertical-align: top; }
th { background: #f6f8fa; }
td { font-variant-numeric: tabular-nums; }
code { font-family: ui-monospace, SFMono-Regular, Menlo, Consolas, monospace; font-size: .85em;
       background: #f6f8fa; padding: .1em .3em; border-radius: 4px; overflow-wrap: anywhere; }
figure { display: inline-block; vertical-align: top; max-width: 100%; margin: .5rem 1.5rem 1rem 0; }
img { max-width: 100%; height: auto; }
figcaption { color: #59636e; font-size: .9rem; max-width: 32rem; }
details { margin: .5rem 0; }
summary { cursor: pointer; font-weight: 600; }
details table { width: 100%; }
details td { overflow-wrap: anywhere; }
details th, details th code, details td:nth-child(n+5) { white-space: nowrap; overflow-wrap: normal; }
details td:nth-child(2), details td:nth-child(3) { min-width: 12rem; }
"""


def _html_inline(parts: Iterable[Cell]) -> str:
    return "".join(
        f"<code>{html.escape(p)}</code>" if isinstance(p, Code) else html.escape(str(p)) for p in parts
    )


def _html_table(table: Table) -> str:
    header = "".join(f"<th>{_html_inline([cell])}</th>" for cell in table.header)
    rows = "".join(
        "<tr>" + "".join(f"<td>{_html_inline([cell])}</td>" for cell in row) + "</tr>\n" for row in table.rows
    )
    return f"<table>\n<thead><tr>{header}</tr></thead>\n<tbody>\n{rows}</tbody>\n</table>"


def render_html(blocks: Sequence[Block], title: str) -> str:
    """The report as one HTML page with inline CSS and every image as a data URI: nothing is fetched."""
    body: list[str] = []
    for block in blocks:
        if isinstance(block, Heading):
            body.append(f"<h{block.level}>{html.escape(block.text)}</h{block.level}>")
        elif isinstance(block, Paragraph):
            body.append(f"<p>{_html_inline(block.parts)}</p>")
        elif isinstance(block, Bullets):
            body.append("<ul>" + "".join(f"<li>{_html_inline(item)}</li>" for item in block.items) + "</ul>")
        elif isinstance(block, Table):
            body.append(_html_table(block))
        elif isinstance(block, Image):
            data = base64.b64encode(block.png).decode("ascii")
            caption = html.escape(block.caption)
            body.append(
                f'<figure><img src="data:image/png;base64,{data}" alt="{caption}">'
                f"<figcaption>{caption}</figcaption></figure>"
            )
        elif isinstance(block, Details):
            body.append(
                f"<details><summary>{html.escape(block.summary)}</summary>\n{_html_table(block.table)}\n</details>"
            )
    return (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        f"<title>{html.escape(title)}</title>\n<style>{_CSS}</style>\n</head>\n<body>\n"
        + "\n".join(body)
        + "\n</body>\n</html>\n"
    )


def _file_names(blocks: Sequence[Block]) -> dict[int, str]:
    """A distinct, filesystem-safe PNG name for each Image block, by block index."""
    names: dict[int, str] = {}
    for index, block in enumerate(blocks):
        if isinstance(block, Image):
            stem = re.sub(r"[^A-Za-z0-9_.-]+", "_", block.name).strip("._") or "figure"
            name, count = f"{stem}.png", 1
            while name in names.values():
                count += 1
                name = f"{stem}_{count}.png"
            names[index] = name
    return names


def _labels(run_dirs: Sequence[Path], given: Sequence[str] | None) -> list[str]:
    """One distinct label per run directory: `given`, or the directory names."""
    if given is not None and len(given) != len(run_dirs):
        raise ValueError(
            f"got {len(given)} labels for {len(run_dirs)} run directories; give one label per run directory, "
            "in the same order."
        )
    labels = [str(label) for label in given] if given is not None else [p.resolve().name for p in run_dirs]
    duplicates = sorted({label for label in labels if labels.count(label) > 1})
    if duplicates:
        raise ValueError(
            f"run labels must be distinct, but {duplicates} name several runs; pass --labels (labels=) with one "
            "distinct name per run directory."
        )
    return labels


def check_report_output(output_dir: str | os.PathLike, overwrite: bool) -> None:
    """Refuse to write a report over one already in `output_dir` (report.md, report.html, report_files/) unless
    `overwrite`: a user's own files in report_files/ would go with it."""
    existing = [name for name in REPORT_OUTPUTS if (Path(output_dir) / name).exists()]
    if existing and not overwrite:
        raise FileExistsError(
            f"{output_dir} already holds a report ({', '.join(existing)}); pass --overwrite to replace it, or "
            "choose another --output_dir."
        )


def write_report(
    run_dirs: Sequence[str | os.PathLike],
    output_dir: str | os.PathLike,
    *,
    labels: Sequence[str] | None = None,
    title: str | None = None,
    overwrite: bool = False,
) -> tuple[Path, Path]:
    """Write report.md (with its plots in report_files/) and a self-contained report.html into `output_dir`
    over the eval.json (and run.json) of each run directory; returns the two paths. Labels default to the
    directory names; a single run's recorded reference eval, when readable, joins the truth-ratio plot. A
    report already there is replaced only with `overwrite`."""
    if not run_dirs:
        raise ValueError("a report needs at least one run directory holding an eval.json.")
    check_report_output(output_dir, overwrite)
    paths = [Path(run_dir) for run_dir in run_dirs]
    names = _labels(paths, labels)
    runs = [load_run(path, label) for path, label in zip(paths, names, strict=True)]
    title = title or "Unlearning evaluation: " + ", ".join(names)
    blocks = build_report(runs, title)

    output = Path(output_dir)
    output.mkdir(parents=True, exist_ok=True)
    files = _file_names(blocks)
    if files:
        # The whole folder is replaced, so plots of an earlier report over other runs do not linger.
        with atomic_directory(output / FILES_DIR, overwrite=True) as folder:
            for index, name in files.items():
                (folder / name).write_bytes(blocks[index].png)
    markdown = render_markdown(blocks, {index: f"{FILES_DIR}/{name}" for index, name in files.items()})
    markdown_path = write_text_atomic(markdown, output / "report.md")
    html_path = write_text_atomic(render_html(blocks, title), output / "report.html")
    return markdown_path, html_path
