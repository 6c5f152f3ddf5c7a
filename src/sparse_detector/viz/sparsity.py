"""Sparsity and PAIBB across runs, per layer, from ``analyze`` results (``analysis.json``'s ``attention`` entry).

Bars are the mean over all query maps (heads pooled; PAIBB: head-averaged maps of matched queries), error bars their
standard deviation; one colour per run.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from ..analysis.paibb import SIZE_BUCKETS
from .curves import run_colors

SPARSITY_METRICS = {"gini": "Gini (0 uniform, 1 one-hot)", "zeros_ratio": "zeros ratio"}


def _grouped_bars(
    axes: Axes, blocks: Mapping[str, Mapping | None], colors: Mapping[str, tuple], groups: Sequence[str]
) -> None:
    """One bar group per entry of ``groups``, one bar per run: ``blocks[run]`` is ``{"mean": [...], "std": [...]}``
    (None where the run lacks it)."""
    width = 0.8 / max(len(blocks), 1)
    for i, (label, block) in enumerate(blocks.items()):
        if block is None:
            continue
        mean = np.array([np.nan if v is None else v for v in block["mean"]], dtype=float)
        std = np.array([np.nan if v is None else v for v in block["std"]], dtype=float)
        x = np.arange(len(mean)) + (i - (len(blocks) - 1) / 2) * width
        axes.bar(x, mean, width, yerr=std, color=colors[label], label=label, capsize=2, error_kw={"linewidth": 0.8})
    axes.set_xticks(range(len(groups)), groups, fontsize=7)
    axes.set_ylim(0, 1.05)  # every reading here is a fraction in [0, 1]


def sparsity_figure(results: Mapping[str, Mapping], title: str = "") -> Figure:
    """Per site (columns): Gini and zeros ratio per layer (rows); then PAIBB per layer and, for the last layer, by
    COCO object size. ``results``: run label -> ``MetricAggregator.result()``."""
    if not results:
        raise ValueError("no analyses to plot")
    colors = run_colors(list(results))
    sites = list(dict.fromkeys(site for result in results.values() for site in result["sites"]))
    with_paibb = any(result.get("paibb") for result in results.values())
    columns = max(len(sites), 2 if with_paibb else 1)
    rows = len(SPARSITY_METRICS) + int(with_paibb)
    figure = Figure(figsize=(4.2 * columns, 2.8 * rows), layout="constrained")
    grid = figure.subplots(rows, columns, squeeze=False)
    for c, site in enumerate(sites):
        for r, (metric, name) in enumerate(SPARSITY_METRICS.items()):
            blocks = {
                label: result["sites"][site]["metrics"][metric]["per_layer"] if site in result["sites"] else None
                for label, result in results.items()
            }
            layers = max(len(b["mean"]) for b in blocks.values() if b is not None)
            _grouped_bars(grid[r][c], blocks, colors, [f"layer {i}" for i in range(layers)])
            if metric == "zeros_ratio":
                thresholds = sorted(
                    {result["sites"][site]["zero_threshold"] for result in results.values() if site in result["sites"]}
                )
                name += f" (p ≤ {', '.join(f'{t:g}' for t in thresholds)})"
            grid[r][c].set_title(f"{site}: {name}", fontsize=9)
    for axes in grid[: len(SPARSITY_METRICS), len(sites) :].flat:
        axes.set_axis_off()
    if with_paibb:
        _paibb_row(grid[-1], results, colors)
    grid[0][0].legend(fontsize=7)
    if title:
        figure.suptitle(title, fontsize=10)
    return figure


def _paibb_row(row: Sequence[Axes], results: Mapping[str, Mapping], colors: Mapping[str, tuple]) -> None:
    overall = {label: (r["paibb"] or {}).get("overall", {}).get("per_layer") for label, r in results.items()}
    layers = max(len(b["mean"]) for b in overall.values() if b is not None)
    _grouped_bars(row[0], overall, colors, [f"layer {i}" for i in range(layers)])
    row[0].set_title("PAIBB (attention mass inside the matched box)", fontsize=9)
    last_layer = {}
    for label, result in results.items():
        by_size = (result["paibb"] or {}).get("by_size", {})
        stats = [by_size.get(bucket, {}).get("per_layer") for bucket in SIZE_BUCKETS]
        last_layer[label] = {key: [s[key][-1] if s and s[key] else None for s in stats] for key in ("mean", "std")}
    _grouped_bars(row[1], last_layer, colors, list(SIZE_BUCKETS))
    row[1].set_title("PAIBB of the last layer by object size", fontsize=9)
    for axes in row[2:]:
        axes.set_axis_off()
