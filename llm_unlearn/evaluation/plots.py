"""Report figures as PNG bytes: truth-ratio distributions (what forget quality compares), membership-inference
ROC curves, forget quality against model utility across runs, and training curves from a run's log history.

Every function draws on its own `Figure` with matplotlib's Agg canvas rather than through pyplot, so nothing opens
a window, no figure outlives the call and the caller's pyplot backend (say, in a notebook) is left alone.
"""

from __future__ import annotations

import io
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator, NullFormatter

from llm_unlearn.evaluation.aggregate import roc_auc, roc_curve

# The p-value below which forget quality reads as "distinguishable from the retain model" (TOFU).
FORGET_QUALITY_THRESHOLD = 0.05
# Keys of the log history that are not curves: the x axis, and the end-of-training totals of the last entry.
_NOT_CURVES = {"step", "epoch", "total_flos"}
_DPI = 100


def finite(values: Sequence[Any]) -> np.ndarray:
    """The values that are finite numbers (None, NaN, infinities and non-numbers dropped), as a float array."""
    numbers = [float(v) for v in values if isinstance(v, int | float) and not isinstance(v, bool)]
    array = np.asarray(numbers, dtype=np.float64)
    return array[np.isfinite(array)]


def _new_figure(width: float, height: float) -> Figure:
    figure = Figure(figsize=(width, height), dpi=_DPI)
    FigureCanvasAgg(figure)
    return figure


def _to_png(figure: Figure) -> bytes:
    buffer = io.BytesIO()
    figure.tight_layout()
    figure.savefig(buffer, format="png")
    return buffer.getvalue()


def truth_ratio_figure(ratios: Mapping[str, Sequence[float]]) -> bytes:
    """Overlaid histograms and empirical CDFs of per-item forget truth ratios, one series per model; forget
    quality is the two-sample KS test between two of these ECDFs (TOFU, Maini et al. 2024; docs/metrics.md#forget_quality 2).

    R is a ratio of probabilities, so it is drawn on a log axis where R and 1/R sit symmetrically about 1;
    values that are not positive and finite cannot be placed there and are left out (the legend gives n).
    """
    series = {}
    for name, values in ratios.items():
        positive = finite(values)
        positive = positive[positive > 0]
        if positive.size:
            series[name] = positive
    if not series:
        raise ValueError("no model has a positive, finite truth ratio to plot.")
    everything = np.concatenate(list(series.values()))
    low, high = np.log10(everything.min()), np.log10(everything.max())
    if high - low < 1e-9:
        low, high = low - 0.5, high + 0.5
    bins = np.logspace(low, high, 21)
    figure = _new_figure(10, 4)
    histogram, ecdf = figure.subplots(1, 2)
    for name, values in series.items():
        label = f"{name} (n={values.size})"
        histogram.hist(values, bins=bins, alpha=0.45, label=label)
        ordered = np.sort(values)
        fraction = np.arange(1, ordered.size + 1) / ordered.size
        ecdf.step(
            np.concatenate([[ordered[0]], ordered]),
            np.concatenate([[0.0], fraction]),
            where="post",
            label=label,
        )
    for axis in (histogram, ecdf):
        axis.set_xscale("log")
        # Labelled minor ticks of a narrow log range overlap one another.
        axis.xaxis.set_minor_formatter(NullFormatter())
        axis.axvline(1.0, color="grey", linewidth=0.8, linestyle=":")
        axis.set_xlabel("truth ratio R (log scale)")
        axis.legend(fontsize="small")
    histogram.set_ylabel("forget items")
    histogram.set_title("Truth ratios on the forget split")
    ecdf.set_ylabel("fraction of items with ratio <= R")
    ecdf.set_title("Empirical CDF (compared by the KS test)")
    return _to_png(figure)


def mia_roc_figure(
    scores: Mapping[str, tuple[Sequence[float], Sequence[float]]],
    members: str,
    nonmembers: str,
    model: str | None = None,
) -> bytes:
    """ROC curves of membership-inference scores, one per score name mapped to (member values, nonmember
    values), with each AUC in the legend and `model` in the title; orientation as `aggregate.roc_curve`: nonmembers are the positives and
    a score says "nonmember" when high, so AUC near 1 means the members still look like training data
    (docs/metrics.md#auc)."""
    figure = _new_figure(5, 4.6)
    axis = figure.subplots()
    # Scores often give the same ranking (LOSS and zlib on short answers): line styles keep equal curves visible.
    styles = ("-", "--", "-.")
    drawn = 0
    for name, (member_values, nonmember_values) in scores.items():
        member, nonmember = finite(member_values), finite(nonmember_values)
        if not member.size or not nonmember.size:
            continue
        fpr, tpr, _ = roc_curve(member, nonmember)
        style = styles[drawn % len(styles)]
        axis.plot(fpr, tpr, linestyle=style, label=f"{name} (AUC {roc_auc(member, nonmember):.3f})")
        drawn += 1
    if not drawn:
        raise ValueError("no membership score has finite per-item values for both members and nonmembers.")
    axis.plot([0, 1], [0, 1], color="grey", linewidth=0.8, linestyle=":", label="chance (AUC 0.5)")
    axis.set_xlim(0, 1)
    axis.set_ylim(0, 1)
    axis.set_xlabel(f"false positive rate ({members} items called nonmembers)")
    axis.set_ylabel(f"true positive rate ({nonmembers} items called nonmembers)")
    axis.set_title(f"{model + ': ' if model else ''}membership, {members} vs {nonmembers}")
    axis.legend(fontsize="small", loc="lower right")
    return _to_png(figure)


def utility_forget_figure(points: Mapping[str, tuple[float | None, float | None]]) -> bytes:
    """Forget quality (log y) against model utility (x), one labelled point per run mapped to (model utility,
    forget quality), with the p = 0.05 line, as TOFU draws it (Maini et al. 2024); runs missing either number, or
    with a forget quality of 0, which a log axis cannot show, are left out."""
    kept = {
        name: (utility, quality)
        for name, (utility, quality) in points.items()
        if finite([utility]).size and finite([quality]).size and quality > 0
    }
    if not kept:
        raise ValueError("no run has both a model utility and a positive forget quality to plot.")
    figure = _new_figure(6, 4.5)
    axis = figure.subplots()
    for name, (utility, quality) in kept.items():
        axis.scatter([utility], [quality], s=40, zorder=3)
        axis.annotate(name, (utility, quality), textcoords="offset points", xytext=(6, 4), fontsize="small")
    axis.axhline(FORGET_QUALITY_THRESHOLD, color="grey", linewidth=0.8, linestyle="--", label="p = 0.05")
    axis.set_yscale("log")
    lowest = min(quality for _, quality in kept.values())
    axis.set_ylim(min(lowest, FORGET_QUALITY_THRESHOLD) / 3, 2.0)
    axis.set_xlabel("model utility")
    axis.set_ylabel("forget quality (KS-test p-value, log scale)")
    axis.set_title("Forget quality vs model utility")
    axis.legend(fontsize="small")
    return _to_png(figure)


def _family(key: str) -> str:
    """The panel a logged quantity goes in: every loss and NLL share one, anything else has its own."""
    return "loss" if key == "loss" or key.endswith(("_loss", "_nll")) else key


def training_curves(log_history: Sequence[Mapping[str, Any]]) -> dict[str, dict[str, tuple[list, list]]]:
    """The numeric curves of a Trainer log history, grouped by panel: {family: {key: (steps, values)}}; entries
    without a key (the final totals entry has no `loss`) contribute no point to that key's curve."""
    panels: dict[str, dict[str, tuple[list, list]]] = {}
    for entry in log_history:
        step = entry.get("step")
        if not finite([step]).size:
            continue
        for key, value in entry.items():
            if key in _NOT_CURVES or key.startswith("train_") or not finite([value]).size:
                continue
            steps, values = panels.setdefault(_family(key), {}).setdefault(key, ([], []))
            steps.append(step)
            values.append(float(value))
    return panels


def training_figure(log_history: Sequence[Mapping[str, Any]], model: str | None = None) -> bytes:
    """Training curves against the optimizer step, one panel per quantity family (losses together, then
    grad_norm, learning_rate, ...), from `run.json`'s `log_history`; `model` names the figure."""
    panels = training_curves(log_history)
    if not panels:
        raise ValueError("the log history has no entry with a step and a numeric quantity to plot.")
    # Losses first: they are what a reader looks at.
    names = sorted(panels, key=lambda family: (family != "loss", family))
    columns = min(3, len(names))
    rows = math.ceil(len(names) / columns)
    figure = _new_figure(4.2 * columns, 3.2 * rows)
    axes = figure.subplots(rows, columns, squeeze=False)
    for axis, family in zip(axes.flat, names, strict=False):
        for key, (steps, values) in panels[family].items():
            axis.plot(steps, values, marker="o", markersize=3, label=key)
        axis.set_title(f"{model}: {family}" if model else family)
        axis.set_xlabel("step")
        axis.xaxis.set_major_locator(MaxNLocator(integer=True))
        if len(panels[family]) > 1:
            axis.legend(fontsize="small")
    for axis in list(axes.flat)[len(names) :]:
        axis.set_visible(False)
    return _to_png(figure)
