"""Evaluation reports: report.md tables and plot files, a self-contained report.html that headless Chromium renders
with every plot, several runs side by side, left-out sections, bad input, the training curves and the CLI."""

from __future__ import annotations

import base64
import json
import math
import re
import subprocess
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from conftest import require_program

from llm_unlearn import cli
from llm_unlearn.data.formatting import Truncation
from llm_unlearn.evaluation import plots, report
from llm_unlearn.evaluation.report import write_report
from llm_unlearn.evaluation.results import (
    EvalResult,
    EvalResultBuilder,
    Measurement,
    MembershipAuc,
    save_eval,
)

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
QUESTION = "Who wrote <script>alert('x')</script> & co | see https://example.com/a?"

LOG_HISTORY = [
    {"loss": 0.9, "grad_norm": 1.5, "learning_rate": 1e-4, "forget_nll": 2.0, "retain_nll": 1.0, "step": 1},
    {"loss": 0.5, "grad_norm": 1.2, "learning_rate": 1e-4, "forget_nll": 3.0, "retain_nll": 1.1, "step": 2},
    {"loss": 0.1, "grad_norm": 0.8, "learning_rate": 1e-4, "forget_nll": 4.0, "retain_nll": 1.2, "step": 3},
    {"train_runtime": 12.5, "train_loss": 0.5, "total_flos": 1e9, "epoch": 1.0, "step": 3},
]


def forget_items(ratios: list[float | None]) -> list[dict[str, Any]]:
    """Forget items with the given truth ratios; loss is 1, 2, 3, ... and min_k half of it."""
    return [
        {
            "index": i,
            "subject_id": "person-0000",
            "question": QUESTION if i == 0 else f"Question {i}?",
            "answer": f"Answer {i}.",
            "generation": None if i == 1 else f"Generated {i}.",
            "probability": 0.1 * (i + 1),
            "loss": float(i + 1),
            "min_k": (i + 1) / 2,
            "truth_ratio": ratio,
        }
        for i, ratio in enumerate(ratios)
    ]


def make_eval(
    *,
    ratios: list[float | None],
    forget_quality: float | None,
    model_utility: float,
    probability: float,
    reference_eval: str | None = None,
    privleak: dict[str, Any] | None = None,
) -> EvalResult:
    """A full eval result: forget/retain/holdout splits, summary, MIA and one attack, with hand-picked values."""
    holdout = [
        {"index": i, "question": f"Holdout {i}?", "answer": "A.", "loss": loss, "min_k": loss / 2}
        for i, loss in enumerate([2.5, 3.5, 4.5, 5.5])
    ]
    # P(holdout loss > forget loss) over the 16 pairs: 2 + 3 + 4 + 4 = 13, so AUC = 13/16.
    auc = MembershipAuc(0.8125, 0.5, 1.0, n_members=4, n_nonmembers=4)
    # No per-item gradnorm values: a table row, no curve.
    gradnorm = replace(auc, value=0.6, ci_low=0.3, ci_high=0.9)
    builder = (
        EvalResultBuilder(
            suite="builtin",
            model="outputs/demo/model",
            reference_eval=reference_eval,
            config={"metrics": ["probability", "truth_ratio"]},
            wall_time_s=2.0,
        )
        .split(
            "forget",
            {
                "probability": Measurement(probability, 0.2, 0.4),
                "rouge_l_recall": Measurement(math.nan, n=0),
                "loss": 2.5,
                "truth_ratio": Measurement(1.0, 0.5, 1.5),
                "truth_ratio_stat": 0.5625,
            },
            items=forget_items(ratios),
            truncation=Truncation(max_length=512, examples=4, truncated=1, tokens_dropped=37, longest=549),
        )
        .split(
            "retain",
            {"probability": Measurement(0.75, 0.7, 0.8)},
            items=[{"index": 0, "question": "R?", "answer": "R.", "probability": 0.75}],
            num_items=2,
        )
        .split("holdout", {"loss": 4.0}, items=holdout)
        .mia("forget", "holdout", {"loss": auc, "min_k": auc, "gradnorm": gradnorm})
        .attack(
            "quantize_4bit",
            {"forget": {"probability": Measurement(0.45, 0.35, 0.55)}},
            {"forget": {"probability": Measurement(0.3, 0.2, 0.4)}},
            description="Round-to-nearest 4-bit weights.",
            params={"bits": 4},
            n=4,
        )
        .summary("model_utility", model_utility, inputs={"retain/probability": 0.75})
    )
    if forget_quality is None:
        builder.summary("forget_quality", None, reason="no reference eval given")
    else:
        builder.summary("forget_quality", forget_quality, n=len(ratios))
    if privleak is None:
        builder.summary("privleak", None, reason="no reference AUC for min_k")
    else:
        builder.summary("privleak", **privleak)
    return builder.build()


def write_run(directory: Path, eval_result: EvalResult, log_history: list | None = LOG_HISTORY) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    save_eval(eval_result, directory / "eval.json")
    if log_history is not None:
        (directory / "run.json").write_text(
            json.dumps({"recipe": "unlearn", "method": "npo", "mode": "lora", "log_history": log_history})
        )
    return directory


def write_runs(root: Path) -> dict[str, Path]:
    """target, retain and unlearned run directories; the unlearned eval names the retain eval as reference."""
    retain = write_run(
        root / "retain",
        make_eval(ratios=[0.9, 1.0, 1.1, 0.8], forget_quality=1.0, model_utility=0.5, probability=0.35),
    )
    target = write_run(
        root / "target",
        make_eval(ratios=[0.1, 0.2, 0.15, 0.05], forget_quality=1e-4, model_utility=0.55, probability=0.9),
    )
    unlearned = write_run(
        root / "unlearned",
        make_eval(
            ratios=[0.5, 1.0, 2.0, None],
            forget_quality=0.0123,
            model_utility=0.456,
            probability=0.3,
            reference_eval=str(retain / "eval.json"),
            privleak={"value": -12.5, "score": "min_k", "auc": 0.35, "reference_auc": 0.4},
        ),
    )
    return {"target": target, "retain": retain, "unlearned": unlearned}


@pytest.fixture
def runs(tmp_path: Path) -> dict[str, Path]:
    return write_runs(tmp_path)


@pytest.fixture
def no_drawing(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every figure is a fixed PNG: for tests about anything but the plots, as drawing takes about a second."""
    for name in ("truth_ratio_figure", "mia_roc_figure", "utility_forget_figure", "training_figure"):
        monkeypatch.setattr(report.plots, name, lambda *args, **kwargs: PNG_MAGIC)


# The reports whose plots are really drawn are built once per module and shared by the tests that read them.
@pytest.fixture(scope="module")
def single_report(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """report.md and report.html of the unlearned run alone."""
    root = tmp_path_factory.mktemp("single")
    return write_report([write_runs(root)["unlearned"]], root / "out")


@pytest.fixture(scope="module")
def comparison_report(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """report.md and report.html of target, retain and unlearned (labelled npo) side by side."""
    root = tmp_path_factory.mktemp("comparison")
    return write_report(
        list(write_runs(root).values()),
        root / "out",
        labels=["target", "retain", "npo"],
        title="NPO vs baselines",
    )


def images(html_text: str) -> list[str]:
    return re.findall(r"<img\b[^>]*>", html_text)


def test_single_run_report_markdown(single_report: tuple[Path, Path]) -> None:
    md_path, html_path = single_report
    assert md_path.name == "report.md" and html_path == md_path.with_name("report.html")
    md = md_path.read_text()
    assert md.startswith("# Unlearning evaluation: unlearned\n")
    # Summary: suite numbers, then split means with interval and n; a null value is n/a with its reason.
    assert "| `forget_quality` | 0.0123 n=4 |" in md
    assert "| `model_utility` | 0.456 |" in md
    assert "| `privleak` | -12.5 |" in md
    assert "unlearned: PrivLeak -12.5 from the `min_k` AUC 0.35 against the reference's 0.4" in md
    assert "| `forget/probability` | 0.3 [0.2, 0.4] n=4 |" in md
    assert "| `forget/truth_ratio_stat` | 0.562 n=4 |" in md
    # Per-split table: a NaN mean is n/a, never a crash.
    assert "### Split forget" in md
    assert "Cut to max_length (scored on their first tokens only): unlearned: 1 of 4 items, 37 tokens." in md
    assert md.count("Cut to max_length") == 1  # the other splits had nothing cut
    assert "| `rouge_l_recall` | n/a n=0 |" in md
    # MIA: AUC with interval and counts; attacks: baseline, attacked and the change.
    assert "| `loss` | 0.812 [0.5, 1] (4 vs 4) |" in md
    assert "| `gradnorm` | 0.6 [0.3, 0.9] (4 vs 4) |" in md
    assert "| unlearned | `forget/probability` | 0.3 [0.2, 0.4] n=4 | 0.45 [0.35, 0.55] n=4 | +0.15 |" in md
    # Gate-ready: full precision, by the names the gate takes.
    assert "| `forget_quality` | 0.0123 |" in md
    assert "| `holdout/loss` | 4 |" in md
    assert "--check 'forget_quality>=0.05'" in md
    # Plots as PNG files beside report.md; no forget-vs-utility scatter for a single run.
    linked = re.findall(r"!\[[^\]]*\]\((report_files/[^)]+)\)", md)
    assert linked == [
        "report_files/truth_ratio.png",
        "report_files/mia_roc_unlearned.png",
        "report_files/training_unlearned.png",
    ]
    for name in linked:
        assert (md_path.parent / name).read_bytes().startswith(PNG_MAGIC)
    # Questions and answers stay out of the Markdown; they are in the HTML's item tables.
    assert "alert" not in md


@pytest.mark.usefixtures("no_drawing")
def test_single_run_adds_its_reference_to_the_truth_ratio_plot(
    runs: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    plotted: dict[str, list] = {}
    draw = plots.truth_ratio_figure
    monkeypatch.setattr(
        report.plots, "truth_ratio_figure", lambda series: plotted.update(series) or draw(series)
    )
    write_report([runs["unlearned"]], tmp_path / "out")
    assert plotted == {"unlearned": [0.5, 1.0, 2.0, None], "reference": [0.9, 1.0, 1.1, 0.8]}


@pytest.mark.usefixtures("no_drawing")
def test_unreadable_reference_is_noted_not_fatal(runs: dict[str, Path], tmp_path: Path) -> None:
    (runs["retain"] / "eval.json").unlink()
    md = write_report([runs["unlearned"]], tmp_path / "out")[0].read_text()
    assert "could not be read" in md
    assert "report_files/truth_ratio.png" in md


def test_html_is_self_contained_and_escaped(single_report: tuple[Path, Path]) -> None:
    html_text = single_report[1].read_text()
    assert not re.search(r"""(?:src|href)\s*=\s*["']?\s*(?:https?:)?//""", html_text, re.IGNORECASE)
    assert "<link" not in html_text and "<script" not in html_text
    tags = images(html_text)
    assert len(tags) == 3
    for tag in tags:
        data = re.search(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', tag)
        assert data is not None, tag
        assert base64.b64decode(data[1]).startswith(PNG_MAGIC)
    # User text is escaped, and the per-item forget table is collapsed.
    assert (
        "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt; &amp; co | see https://example.com/a?" in html_text
    )
    assert "<details><summary>unlearned: 4 forget items</summary>" in html_text
    assert "<td>Generated 2.</td>" in html_text


def test_chromium_renders_every_plot(comparison_report: tuple[Path, Path], tmp_path: Path) -> None:
    chromium = require_program(
        "chromium", "that a browser loads every plot of report.html (make test installs it)"
    )
    html_text = comparison_report[1].read_text()
    expected = len(images(html_text))
    assert expected == 1 + 1 + 3 + 3  # scatter, truth ratios, 3 ROC and 3 training plots
    # The test's copy only: after load, write each image's decoded width into the DOM that --dump-dom prints.
    probe = (
        "<script>window.addEventListener('load', () => { const out = document.createElement('pre');"
        " out.id = 'widths'; out.textContent = JSON.stringify([...document.images].map(i => i.naturalWidth));"
        " document.body.appendChild(out); });</script>"
    )
    page = tmp_path / "probe.html"
    page.write_text(html_text.replace("</body>", probe + "</body>"))
    command = [
        chromium,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--virtual-time-budget=5000",
        f"--user-data-dir={tmp_path / 'profile'}",
        "--dump-dom",
        page.as_uri(),
    ]
    dom = subprocess.run(command, capture_output=True, text=True, timeout=60, check=True).stdout
    widths = re.search(r'<pre id="widths">(.*?)</pre>', dom)
    assert widths is not None, dom[-2000:]
    widths = json.loads(widths[1])
    assert len(widths) == expected
    assert all(width > 0 for width in widths), widths


def test_several_runs_side_by_side(comparison_report: tuple[Path, Path]) -> None:
    md_path, html_path = comparison_report
    md = md_path.read_text()
    assert md.startswith("# NPO vs baselines\n")
    assert "|  | target | retain | npo |" in md
    assert "| `forget_quality` | 0.0001 n=4 | 1 n=4 | 0.0123 n=4 |" in md
    assert "| `privleak` | n/a | n/a | -12.5 |" in md
    assert "- target, `privleak`: no reference AUC for min_k\n" in md
    assert "| `forget/probability` | 0.9 [0.2, 0.4] n=4 | 0.35 [0.2, 0.4] n=4 | 0.3 [0.2, 0.4] n=4 |" in md
    for name in ("forget_quality_vs_utility", "truth_ratio", "mia_roc_npo", "training_target"):
        assert (md_path.parent / "report_files" / f"{name}.png").is_file()
    assert "<title>NPO vs baselines</title>" in html_path.read_text()


def test_missing_sections_are_left_out(tmp_path: Path) -> None:
    """An older eval.json: no summary, MIA, attacks or truth ratios, and no run.json."""
    old = {
        "model": "m",
        "splits": {
            "forget": {
                "num_items": 2,
                "aggregates": {"probability": {"mean": math.nan, "n": 2, "std": math.nan}},
                "items": [
                    {"index": 0, "question": "Q?", "answer": "A.", "generation": "G.", "probability": None}
                ],
            }
        },
    }
    run = write_run(tmp_path / "old", EvalResult(old), log_history=None)
    md_path, html_path = write_report([run], tmp_path / "out")
    md = md_path.read_text()
    assert "| `forget/probability` | n/a n=2 |" in md
    for section in ("Membership inference", "Attacks", "Truth ratios", "Training", "forget_quality"):
        assert section not in md
    assert not (tmp_path / "out" / "report_files").exists()
    assert images(html_path.read_text()) == []


def test_run_dir_without_eval_json_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match=r"empty/eval\.json does not exist.*`llm-unlearn eval"):
        write_report([tmp_path / "empty"], tmp_path / "out")


@pytest.mark.usefixtures("no_drawing")
def test_labels_must_match_and_differ(runs: dict[str, Path], tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"got 1 labels for 2 run directories"):
        write_report([runs["target"], runs["retain"]], tmp_path / "out", labels=["a"])
    with pytest.raises(ValueError, match=r"run labels must be distinct, but \['a'\]"):
        write_report([runs["target"], runs["retain"]], tmp_path / "out", labels=["a", "a"])


def test_training_curves_group_losses_and_skip_the_totals_entry() -> None:
    assert plots.training_curves(LOG_HISTORY) == {
        "loss": {
            "loss": ([1, 2, 3], [0.9, 0.5, 0.1]),
            "forget_nll": ([1, 2, 3], [2.0, 3.0, 4.0]),
            "retain_nll": ([1, 2, 3], [1.0, 1.1, 1.2]),
        },
        "grad_norm": {"grad_norm": ([1, 2, 3], [1.5, 1.2, 0.8])},
        "learning_rate": {"learning_rate": ([1, 2, 3], [1e-4, 1e-4, 1e-4])},
    }


@pytest.mark.usefixtures("no_drawing")
def test_cli_report(runs: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "report"
    argv = ["report", str(runs["target"]), str(runs["unlearned"]), "--output_dir", str(out)]
    assert cli.main([*argv, "--labels", "before", "after", "--title", "Demo"]) == 0
    md = (out / "report.md").read_text()
    assert md.startswith("# Demo\n")
    assert "|  | before | after |" in md
    assert (out / "report.html").is_file()


@pytest.mark.usefixtures("no_drawing")
def test_cli_single_run_writes_into_its_directory(runs: dict[str, Path]) -> None:
    assert cli.main(["report", str(runs["retain"])]) == 0
    assert (runs["retain"] / "report.md").is_file()
    assert (runs["retain"] / "report_files" / "training_retain.png").is_file()


@pytest.mark.usefixtures("no_drawing")
def test_a_report_is_not_written_over_without_overwrite(runs: dict[str, Path], tmp_path: Path, capsys) -> None:
    out = tmp_path / "report"
    argv = ["report", str(runs["target"]), str(runs["unlearned"]), "--output_dir", str(out)]
    assert cli.main(argv) == 0
    mine = out / "report_files" / "my_plot.png"
    mine.write_bytes(b"a user's own plot")
    before = {path: path.read_bytes() for path in out.rglob("*") if path.is_file()}
    assert cli.main([*argv, "--title", "Again"]) == 2
    assert "already holds a report (report.md, report.html, report_files); pass --overwrite" in capsys.readouterr().err
    assert {path: path.read_bytes() for path in out.rglob("*") if path.is_file()} == before
    assert cli.main([*argv, "--title", "Again", "--overwrite", "true"]) == 0
    assert (out / "report.md").read_text().startswith("# Again\n") and not mine.exists()


def test_cli_several_runs_need_an_output_dir(runs: dict[str, Path], capsys) -> None:
    assert cli.main(["report", str(runs["target"]), str(runs["retain"])]) == 2
    assert "report over 2 run directories needs --output_dir" in capsys.readouterr().err


def test_cli_error_for_a_dir_without_eval_json(tmp_path: Path, capsys) -> None:
    assert cli.main(["report", str(tmp_path / "nowhere")]) == 2
    assert "does not exist; a report needs each run directory's eval.json" in capsys.readouterr().err


@pytest.mark.usefixtures("no_drawing")
def test_markup_in_labels_and_titles_is_escaped(runs: dict[str, Path], tmp_path: Path) -> None:
    md_path, html_path = write_report(
        [runs["unlearned"]], tmp_path / "out", labels=["a|b"], title="Report <b>*bold*</b>"
    )
    md = md_path.read_text()
    assert md.startswith("# Report \\<b\\>\\*bold\\*\\</b\\>\n")
    assert "|  | a\\|b |" in md  # the pipe does not split the table's cells
    assert "<title>Report &lt;b&gt;*bold*&lt;/b&gt;</title>" in html_path.read_text()
