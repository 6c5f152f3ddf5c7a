"""Sparsity and PAIBB across runs, per layer, from ``analyze`` results (``analysis.json``'s ``attention`` entry).

Bars are the mean over all query maps (heads pooled; PAIBB: head-averaged maps of matched queries), error bars their
standard deviation (population), each bar's value written above it (turned upright beyond a few runs); one colour per
run, every run named in one legend under the panels, and the figure's title says what bars and error bars are. Panels
widen with the number of bars, so 20 runs stay as readable as 2.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.patches import Patch

from ..analysis.aggregate import keys_differ, runs_by_keys
from ..analysis.paibb import GRID_PAIBB, POINTS_PAIBB, SIZE_BUCKETS, mixed_paibb_meaning
from ..text import counted, decimals
from .curves import run_colors
from .figure import wrapped

PANEL_WIDTH = 4.2  # inches, at least
# inches of a panel that its y tick labels take: a title as wide as the whole panel, centred over the bars, ran off the
# figure's right edge
TICK_LABELS_WIDTH = 0.5
BAR_WIDTH = 0.13  # inches a bar takes at the least (room for its upright value)
UPRIGHT_VALUES_FROM = 5  # runs: from this many, each bar's value is written upright (side by side they overlap)
SPARSITY_METRICS = {"gini": "Gini (0 uniform, 1 − 1/N one-hot over N keys)", "zeros_ratio": "zeros ratio"}
BARS_NOTE = (
    "bars: mean over all query maps, heads pooled (PAIBB: head-averaged maps of Hungarian-matched queries); "
    "error bars: their standard deviation (population)"
)


def _grouped_bars(
    axes: Axes, blocks: Mapping[str, Mapping | None], colors: Mapping[str, tuple], groups: Sequence[str]
) -> None:
    """One bar group per entry of ``groups``, one bar per run: ``blocks[run]`` is ``{"mean": [...], "std": [...]}``
    (None where the run lacks it)."""
    width = 0.8 / max(len(blocks), 1)
    upright = len(blocks) >= UPRIGHT_VALUES_FROM
    for i, (label, block) in enumerate(blocks.items()):
        if block is None:
            continue
        mean = np.array([np.nan if v is None else v for v in block["mean"]], dtype=float)
        std = np.array([np.nan if v is None else v for v in block["std"]], dtype=float)
        x = np.arange(len(mean)) + (i - (len(blocks) - 1) / 2) * width
        axes.bar(x, mean, width, yerr=std, color=colors[label], label=label, capsize=2, error_kw={"linewidth": 0.8})
        # the value above every bar and its error bar, so a reading of 0 is not mistaken for a missing one ("n/a":
        # nothing measured)
        for position, value, spread in zip(x, mean, std, strict=True):
            top = value + spread if np.isfinite(spread) else value
            axes.annotate(
                decimals(value, 2) if np.isfinite(value) else "n/a",
                (position, top if np.isfinite(top) else 0.0),
                xytext=(0, 1.5),
                textcoords="offset points",
                ha="center",
                va="bottom",
                rotation=90 if upright else 0,
                fontsize=6,
            )
    measured = [
        any(block and i < len(block["mean"]) and block["mean"][i] is not None for block in blocks.values())
        for i in range(len(groups))
    ]
    names = [name if ok else f"{name}\n(nothing measured)" for name, ok in zip(groups, measured, strict=True)]
    axes.set_xticks(range(len(groups)), names, fontsize=7)
    axes.set_xlim(-0.5, len(groups) - 0.5)  # every group's slots, also a run's "n/a" where no bar sets the limits
    axes.set_ylim(0, 1.2 if upright else 1.1)  # every reading here is a fraction in [0, 1]; room for the values


def _site_paibb(result: Mapping, site: str) -> Mapping | None:
    return (result["sites"].get(site) or {}).get("paibb")


def sparsity_figure(results: Mapping[str, Mapping], title: str = "") -> Figure:
    """Per site (columns): Gini and zeros ratio per layer; at sites with PAIBB (object queries over the feature
    grid), PAIBB per layer and, for the last layer, by COCO object size. ``results``: run label ->
    ``MetricAggregator.result()``."""
    if not results:
        raise ValueError("no analyses to plot")
    colors = run_colors(list(results))
    sites = list(dict.fromkeys(site for result in results.values() for site in result["sites"]))
    with_paibb = any(_site_paibb(result, site) for result in results.values() for site in sites)
    rows = len(SPARSITY_METRICS) + 2 * int(with_paibb)
    panel_width = max(PANEL_WIDTH, 0.8 + BAR_WIDTH * len(results) * _most_groups(results, sites, with_paibb))
    figure = Figure(figsize=(panel_width * max(len(sites), 2), 2.8 * rows), layout="constrained")
    grid = figure.subplots(rows, max(len(sites), 2), squeeze=False)
    for axes in grid[:, len(sites) :].flat:
        axes.set_axis_off()
    for c, site in enumerate(sites):
        for r, (metric, name) in enumerate(SPARSITY_METRICS.items()):
            blocks = {
                label: result["sites"][site]["metrics"][metric]["per_layer"] if site in result["sites"] else None
                for label, result in results.items()
            }
            if metric == "zeros_ratio":
                name += f" ({_zero_thresholds(results, site)})"
            name += _keys_note(results, site)
            _grouped_bars(grid[r][c], blocks, colors, _layer_names(blocks))
            _panel_title(grid[r][c], f"{site}: {name}", panel_width)
        if with_paibb:
            _paibb_axes(grid[-2][c], grid[-1][c], site, results, colors, panel_width)
    handles = [Patch(color=colors[label], label=label) for label in results]
    columns = max(1, min(len(results), int(panel_width * max(len(sites), 2) / _legend_entry_width(results))))
    figure.legend(handles=handles, loc="outside lower center", ncols=columns, fontsize=8, frameon=False)
    width = panel_width * max(len(sites), 2)
    figure.suptitle(wrapped(f"{title}\n{BARS_NOTE}" if title else BARS_NOTE, width, 9), fontsize=9)
    return figure


def _panel_title(axes: Axes, title: str, panel_width: float) -> None:
    """``title`` over a panel ``panel_width`` inches wide, wrapped to the width of its bars."""
    axes.set_title(wrapped(title, panel_width - TICK_LABELS_WIDTH, 9), fontsize=9)


def _most_groups(results: Mapping[str, Mapping], sites: Sequence[str], with_paibb: bool) -> int:
    """The most bar groups one panel has: layers of any site, or the object sizes of the PAIBB panel."""
    layers = [
        len(result["sites"][site]["metrics"][metric]["per_layer"]["mean"])
        for result in results.values()
        for site in sites
        if site in result["sites"]
        for metric in SPARSITY_METRICS
    ]
    return max([*layers, len(SIZE_BUCKETS) if with_paibb else 1])


def _legend_entry_width(results: Mapping[str, Mapping]) -> float:
    """Inches one legend entry takes at 8 pt: its patch and the longest run label."""
    return 0.6 + 0.07 * max(len(label) for label in results)


def _zero_thresholds(results: Mapping[str, Mapping], site: str) -> str:
    """The threshold under which a weight counts as zero at ``site``: one for all runs, or which runs use which (dense
    maps are read with a small threshold, sparse ones with 0); the runs of the most common one, when there are more
    than a few, as 'the other N runs'."""
    runs: dict[float, list[str]] = {}
    for label, result in results.items():
        if site in result["sites"]:
            runs.setdefault(result["sites"][site]["zero_threshold"], []).append(label)
    if len(runs) == 1:
        return f"p ≤ {next(iter(runs)):g}"
    most = max(runs, key=lambda threshold: len(runs[threshold]))
    named = {
        threshold: "the other " + counted(len(labels), "run")
        if threshold == most and len(labels) > 3
        else ", ".join(labels)
        for threshold, labels in runs.items()
    }
    order = sorted(runs, key=lambda threshold: (named[threshold].startswith("the other "), threshold))
    return "; ".join(f"p ≤ {threshold:g}: {named[threshold]}" for threshold in order)


def _keys_note(results: Mapping[str, Mapping], site: str) -> str:
    """A warning where the runs' ``site`` attends over different keys (:func:`keys_differ`); empty otherwise."""
    kinds = keys_differ(results, site)
    return f" — NOT comparable across runs, keys differ ({kinds})" if kinds else ""


def _layer_names(blocks: Mapping[str, Mapping | None]) -> list[str]:
    return [f"layer {i}" for i in range(max(len(b["mean"]) for b in blocks.values() if b is not None))]


def _paibb_meaning(results: Mapping[str, Mapping], site: str) -> str:
    """What PAIBB of ``site`` measures in these runs: attention mass inside the matched box over the feature grid, the
    weight of the sampling points inside it, or (runs of both) the note that the two are not comparable."""
    measured = [label for label, result in results.items() if _site_paibb(result, site)]
    points = [label for label in runs_by_keys(results, site).get("points", []) if label in measured]
    if not points:
        return GRID_PAIBB
    if len(points) == len(measured):
        return POINTS_PAIBB
    return mixed_paibb_meaning(points)


def _paibb_axes(
    per_layer: Axes,
    by_size: Axes,
    site: str,
    results: Mapping[str, Mapping],
    colors: Mapping[str, tuple],
    panel_width: float,
) -> None:
    """PAIBB of ``site`` per layer, and by object size for the last layer (axes left empty without PAIBB); both
    titles say what it measures (:func:`_paibb_meaning`)."""
    paibb = {label: _site_paibb(result, site) for label, result in results.items()}
    if not any(paibb.values()):
        per_layer.set_axis_off()
        by_size.set_axis_off()
        return
    meaning = _paibb_meaning(results, site)
    overall = {label: p["overall"]["per_layer"] if p else None for label, p in paibb.items()}
    _grouped_bars(per_layer, overall, colors, _layer_names(overall))
    _panel_title(per_layer, f"{site}: PAIBB ({meaning})", panel_width)
    last_layer = {}
    for label, p in paibb.items():
        stats = [p["by_size"].get(bucket, {}).get("per_layer") if p else None for bucket in SIZE_BUCKETS]
        last_layer[label] = {key: [s[key][-1] if s and s[key] else None for s in stats] for key in ("mean", "std")}
    _grouped_bars(by_size, last_layer, colors, list(SIZE_BUCKETS))
    _panel_title(by_size, f"{site}: PAIBB of the last layer by object size ({meaning})", panel_width)
