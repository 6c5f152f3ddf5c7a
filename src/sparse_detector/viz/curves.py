"""Training curves of one or several runs from their ``metrics.jsonl`` records.

Panels: each loss term over training steps (the last decoder layer solid, the auxiliary layers ``_0``, ``_1``, ...
thin and faded in the same colour), class error (training steps, and validation at each evaluated epoch), and COCO AP,
AP50, AP75 and AP by object size over epochs. AP50 is called AP50 (the official DETR plot script calls it "mAP").
One colour per run, named in one legend under the panels (legends inside them covered the curves); each panel's
title says what its line styles and markers are.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence

from matplotlib import colormaps
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from .figure import count_axis

LOSS_TERMS = ("loss", "loss_ce", "loss_bbox", "loss_giou")
LOSS_TITLES = {
    "loss": "total loss (weighted sum)",
    "loss_ce": "classification loss",
    "loss_bbox": "box L1 loss",
    "loss_giou": "box GIoU loss",
}
# key -> (name, line style, marker): the markers tell the series apart where one evaluation draws no line
AP_OVERALL = {"AP": ("AP", "-", "o"), "AP50": ("AP50", "--", "^"), "AP75": ("AP75", ":", "s")}
EVALUATION_NOTE = "no evaluation recorded\n(see train.eval_every)"
TRAINING_NOTE = "no training step logged\n(see train.log_every)"  # runs shorter than one logging interval
WIDE_RANGE = 100  # a panel whose values span more than this factor gets a log y axis
AP_BY_SIZE = {"AP_small": ("APs", "-", "o"), "AP_medium": ("APm", "--", "^"), "AP_large": ("APl", ":", "s")}
STYLE_WORDS = {"-": "solid", "--": "dashed", ":": "dotted", "o": "circles", "^": "triangles", "s": "squares"}


def run_colors(labels: Sequence[str]) -> dict[str, tuple]:
    """A distinct colour per run, stable in the order given: tab10's colours first, then their light tab20 partners
    (runs 11 to 20); more runs than that are spread evenly over a continuous colour map, each its own colour."""
    if len(labels) > 20:
        spread = colormaps["turbo"]
        return {label: spread(i / (len(labels) - 1)) for i, label in enumerate(labels)}
    palette = colormaps["tab20"]  # pairs: even indices are tab10's colours, odd ones their light partners
    return {label: palette(2 * i if i < 10 else 2 * (i - 10) + 1) for i, label in enumerate(labels)}


def _series(records: Sequence[Mapping], kind: str, key: str, x: str = "") -> tuple[list[float], list[float]]:
    """(x, y) of ``key`` over the records of ``kind``; x is ``x`` or, by default, the step for ``train`` records and
    the epoch for ``epoch`` records. Missing or negative (COCO's -1 = no such objects) values are left out."""
    x = x or ("step" if kind == "train" else "epoch")
    xs, ys = [], []
    for record in records:
        value = record.get(key)
        if record.get("type") != kind or not isinstance(value, int | float) or value < 0 or not math.isfinite(value):
            continue
        xs.append(record[x])
        ys.append(float(value))
    return xs, ys


def _aux_keys(records: Sequence[Mapping], term: str) -> list[str]:
    """The auxiliary-layer keys ``term_0``, ``term_1``, ... present in the training records, in layer order."""
    pattern = re.compile(rf"^{term}_(\d+)$")
    found = {key for record in records if record.get("type") == "train" for key in record if pattern.match(key)}
    return sorted(found, key=lambda key: int(key.rsplit("_", 1)[1]))


def _plot_loss(axes: Axes, runs: Mapping[str, Sequence[Mapping]], term: str, colors: Mapping[str, tuple]) -> None:
    for label, records in runs.items():
        axes.plot(*_series(records, "train", term), color=colors[label], linewidth=1.2, label=label)
        for key in _aux_keys(records, term) if term != "loss" else []:
            axes.plot(*_series(records, "train", key), color=colors[label], linewidth=0.6, alpha=0.35)
    title = LOSS_TITLES[term] + ("" if term == "loss" else "\n(thin: auxiliary decoder layers)")
    title += _log_scale_if_wide(axes)
    if term == "loss" and _mark_skipped_steps(axes, runs, colors):
        title += "\n×: non-finite steps skipped (count, at epoch end)"
    axes.set_title(title, fontsize=9)
    count_axis(axes, "step")


def _log_scale_if_wide(axes: Axes) -> str:
    """A log y axis when the panel's values span more than ``WIDE_RANGE`` (a loss that blew up to 1e4 flattened the
    rest of the run to a line at 0); returns the note for the title."""
    values = [y for line in axes.lines for y in line.get_ydata() if math.isfinite(y)]
    if not values or min(values) <= 0 or max(values) <= WIDE_RANGE * min(values):
        return ""
    axes.set_yscale("log")
    return " (log scale)"


def _mark_skipped_steps(axes: Axes, runs: Mapping[str, Sequence[Mapping]], colors: Mapping[str, tuple]) -> bool:
    """Steps skipped for a non-finite loss (``train.on_nonfinite_loss=skip``) log no loss, so no curve shows them:
    a cross on the panel's top edge at the end of each epoch that skipped some, with their count. Whether any."""
    marked = False
    edge = axes.get_xaxis_transform()  # x in steps, y in the panel's height
    for label, records in runs.items():
        for record in records:
            skipped = record.get("train_skipped_nonfinite") if record.get("type") == "epoch" else None
            if isinstance(skipped, int) and skipped > 0:
                axes.plot([record["step"]], [0.97], marker="X", markersize=8, color=colors[label], transform=edge)
                axes.annotate(
                    str(skipped), (record["step"], 0.97), xycoords=edge, xytext=(5, -3), textcoords="offset points",
                    fontsize=7, color=colors[label], va="top",
                )  # fmt: skip
                marked = True
    return marked


def _plot_epochs(
    axes: Axes,
    runs: Mapping[str, Sequence[Mapping]],
    styles: Mapping[str, tuple[str, str, str]],
    colors: Mapping[str, tuple],
) -> None:
    for label, records in runs.items():
        for key, (name, style, marker) in styles.items():
            xs, ys = _series(records, "epoch", key)
            axes.plot(
                xs, ys, linestyle=style, marker=marker, markersize=4, color=colors[label], label=f"{label} {name}"
            )
    count_axis(axes, "epoch")
    axes.set_ylim(bottom=0)


def curves_figure(runs: Mapping[str, Sequence[Mapping]], title: str = "") -> Figure:
    """Loss terms, class error and AP of every run in ``runs`` (label -> its ``metrics.jsonl`` records)."""
    if not runs:
        raise ValueError("no runs to plot")
    colors = run_colors(list(runs))
    figure = Figure(figsize=(14, 6.5), layout="constrained")
    grid = figure.subplots(2, 4)
    for axes, term in zip(grid[0], LOSS_TERMS, strict=True):
        _plot_loss(axes, runs, term, colors)
    handles = [Line2D([], [], color=colors[label], linewidth=2, label=label) for label in runs]
    figure.legend(handles=handles, loc="outside lower center", ncols=min(len(runs), 6), fontsize=8, frameon=False)

    error = grid[1][0]
    for label, records in runs.items():
        error.plot(
            *_series(records, "train", "class_error"), color=colors[label], linewidth=0.8, label=f"{label} train"
        )
        xs, ys = _series(records, "epoch", "val_class_error", x="step")
        error.plot(xs, ys, marker="s", linestyle="none", color=colors[label], label=f"{label} val (evaluations)")
    error.set_title("class error (%) of matched queries:\ntrain (line), validation (squares)", fontsize=9)
    count_axis(error, "step")

    _plot_epochs(grid[1][1], runs, AP_OVERALL, colors)
    grid[1][1].set_title(_styles_named(AP_OVERALL, ("AP", "AP50", "AP75")), fontsize=9)
    _plot_epochs(grid[1][2], runs, AP_BY_SIZE, colors)
    by_size = "AP of " + _styles_named(AP_BY_SIZE, ("small", "medium", "large")) + " objects"
    if absent := _sizes_without_objects(runs):  # COCO's -1: drawn as nothing, with no word of why
        by_size += f"\n{' and '.join(absent)}: no such objects in the validation data"
    grid[1][2].set_title(by_size, fontsize=9)
    _plot_val_loss(grid[1][3], runs, colors)
    logged = any(record.get("type") == "train" for records in runs.values() for record in records)
    for axes in grid.flat:
        if not any(len(line.get_xdata()) for line in axes.lines):
            if axes in (grid[1][1], grid[1][2]):
                _mark_empty(axes, EVALUATION_NOTE)
            else:
                _mark_empty(axes, "not recorded in these runs" if logged else TRAINING_NOTE)
    if title:
        figure.suptitle(title, fontsize=10)
    return figure


def _styles_named(styles: Mapping[str, tuple[str, str, str]], names: Sequence[str]) -> str:
    """``names`` with the line style and marker of the matching ``styles`` entry, two to a line:
    "AP (solid, circles), AP50 (dashed, triangles),\nAP75 (dotted, squares)"."""
    parts = [
        f"{name} ({STYLE_WORDS[style]}, {STYLE_WORDS[marker]})"
        for name, (_, style, marker) in zip(names, styles.values(), strict=True)
    ]
    return ",\n".join(", ".join(parts[i : i + 2]) for i in range(0, len(parts), 2))


def _sizes_without_objects(runs: Mapping[str, Sequence[Mapping]]) -> list[str]:
    """The object sizes (small, medium, large) whose AP every evaluation of every run logged as COCO's -1: the
    validation data holds no objects of that size."""
    evaluated = [r for records in runs.values() for r in records if r.get("type") == "epoch" and "AP" in r]
    return [
        key.removeprefix("AP_")
        for key in AP_BY_SIZE
        if evaluated and all(isinstance(r.get(key), int | float) and r[key] < 0 for r in evaluated)
    ]


def _mark_empty(axes: Axes, note: str) -> None:
    """A panel with nothing to plot says so, instead of showing axes around nothing."""
    axes.set_xticks([])
    axes.set_yticks([])
    axes.set_xlabel("")
    axes.text(0.5, 0.5, note, transform=axes.transAxes, ha="center", va="center", fontsize=8, color="0.4")


def _plot_val_loss(axes: Axes, runs: Mapping[str, Sequence[Mapping]], colors: Mapping[str, tuple]) -> None:
    for label, records in runs.items():
        axes.plot(
            *_series(records, "epoch", "train_loss"),
            color=colors[label],
            marker="o",
            markersize=3,
            label=f"{label} train (epoch mean)",
        )
        axes.plot(
            *_series(records, "epoch", "val_loss"),
            color=colors[label],
            marker="s",
            markersize=3,
            linestyle="--",
            label=f"{label} val",
        )
    # three lines: on two, the panel's title was wider than the panel and ran past the figure's right edge
    title = "total loss per epoch:\ntrain mean (solid, circles),\nvalidation (dashed, squares)"
    title += _log_scale_if_wide(axes)
    axes.set_title(title, fontsize=9)
    count_axis(axes, "epoch")
