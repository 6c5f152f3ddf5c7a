"""Training diagnostics from ``diagnostics.jsonl`` (see ``engine/diagnostics.py``): gradient norm and std per layer
over steps, weight histograms per layer at chosen steps (initialisation included), attention entropy over steps.

Layers are rows in the model's order (input side first), so a gradient that fades before reaching the backbone shows
as a dark band at the top of the gradient maps.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
from matplotlib.colors import LogNorm
from matplotlib.figure import Figure

from ..engine.diagnostics import HISTOGRAM_RANGE
from .curves import run_colors
from .figure import count_axis, hide_ticks

#: DETR's first decoder self-attention gets an exactly zero gradient (its queries' content is zero), so a white row is
#: no sign of a recording fault; the title said "no gradient".
ZERO_GRADIENT_NOTE = "gradient exactly 0 or not recorded"
HISTOGRAM_PANELS = 3  # initialisation, the middle recorded step, the last
ABSOLUTE_MARK = "(*)"  # beside a layer whose weight histograms are in absolute units
NO_GRADIENTS_NOTE = "no gradients recorded yet:\nthe run stopped before step train.diagnostics_every"


def _layer_matrix(records: Sequence[Mapping], layers: Sequence[str], key: str) -> np.ndarray:
    """(layers, steps) of ``gradients[layer][key]`` (NaN where absent)."""
    return np.array(
        [[r["gradients"].get(layer, {}).get(key, np.nan) for r in records] for layer in layers], dtype=float
    )


def histogram_steps(steps: Sequence[int], count: int = HISTOGRAM_PANELS) -> list[int]:
    """Up to ``count`` recorded steps spread from the first (initialisation) to the last."""
    picks = np.linspace(0, len(steps) - 1, num=min(count, len(steps))).round().astype(int)
    return [steps[i] for i in dict.fromkeys(picks.tolist())]


def diagnostics_figure(records: Sequence[Mapping], title: str = "") -> Figure:
    """Gradient norm and std heat maps (layer × step, log colour), weight histograms (layer × value in units of the
    layer's initial std) at initialisation, mid-training and the last recorded step, and attention entropy curves."""
    if not records:
        raise ValueError("no diagnostics records")
    layers = list(records[0]["weights"])
    with_grads = [r for r in records if r.get("gradients")]
    steps = [r["step"] for r in with_grads]
    height = max(4.0, 0.11 * len(layers))
    figure = Figure(figsize=(16, 2 * height + 3.2), layout="constrained")
    top, middle, bottom = figure.subfigures(3, 1, height_ratios=[height, height, 3.2])

    gradient_axes = top.subplots(1, 2, sharey=True)
    for axes, key in zip(gradient_axes, ("norm", "std"), strict=True):
        if not with_grads:  # stopped before its first recorded step: no heat map, no colour bar of nothing
            axes.set_title(f"gradient {key} per layer", fontsize=9)
            axes.text(0.5, 0.5, NO_GRADIENTS_NOTE, transform=axes.transAxes, ha="center", va="center", color="0.4")
            hide_ticks(axes)
            continue
        matrix = _layer_matrix(with_grads, layers, key)
        positive = matrix[np.isfinite(matrix) & (matrix > 0)]
        norm = LogNorm(positive.min(), positive.max()) if positive.size else None
        image = axes.imshow(
            np.where(matrix > 0, matrix, np.nan), aspect="auto", cmap="viridis", norm=norm, interpolation="nearest"
        )
        axes.set_title(f"gradient {key} per layer (log colour; white: {ZERO_GRADIENT_NOTE})", fontsize=9)
        axes.set_xlabel("step")
        ticks = np.linspace(0, max(len(steps) - 1, 0), num=min(len(steps), 8)).round().astype(int)
        axes.set_xticks(ticks, [str(steps[i]) for i in ticks] if steps else [])
        top.colorbar(image, ax=axes, shrink=0.8)
    if with_grads:
        gradient_axes[0].set_yticks(range(len(layers)), layers, fontsize=5)

    chosen = histogram_steps([r["step"] for r in records])
    by_step = {r["step"]: r for r in records}
    histogram_axes = middle.subplots(1, HISTOGRAM_PANELS, sharey=True, squeeze=False)[0]
    for axes, step in zip(histogram_axes, chosen, strict=False):
        counts = np.array([by_step[step]["weights"][layer]["histogram"] for layer in layers], dtype=float)
        # each row scaled to its own peak: a layer whose weights all sit in one bin (Deformable DETR's sampling
        # offsets start at 0) would otherwise make every other layer's spread-out histogram black
        peaks = counts / np.maximum(counts.max(1, keepdims=True), 1)
        extent = (-HISTOGRAM_RANGE, HISTOGRAM_RANGE, len(layers) - 0.5, -0.5)
        axes.imshow(peaks, aspect="auto", cmap="magma", vmin=0, vmax=1, extent=extent, interpolation="nearest")
        when = f"weights at step {step}" + (" (initialisation)" if step == 0 else "")
        axes.set_title(f"{when}\n(each layer's histogram scaled to its peak)", fontsize=9)
        axes.set_xlabel("value / the layer's initial std (edge bins hold the tails)")
    for axes in histogram_axes[len(chosen) :]:
        axes.set_axis_off()
    # a layer initialised to one value (std 0: Deformable DETR's sampling offsets) is binned in absolute units; its
    # row read as if in units of a std it does not have
    absolute = {layer for layer, stats in records[0]["weights"].items() if records[0]["step"] == 0 and not stats["std"]}
    names = [f"{layer} {ABSOLUTE_MARK}" if layer in absolute else layer for layer in layers]
    histogram_axes[0].set_yticks(range(len(layers)), names, fontsize=5)
    if absolute:
        for axes in histogram_axes[: len(chosen)]:
            axes.set_xlabel(f"{axes.get_xlabel()};\n{ABSOLUTE_MARK}: initialised to one value, so in absolute units")

    entropy_axes = bottom.subplots()
    sites = list(records[0].get("entropy", {}))
    colors = run_colors(sites)
    for site in sites:
        per_step = np.array([r["entropy"][site] for r in records if site in r.get("entropy", {})], dtype=float)
        entropy_steps = [r["step"] for r in records if site in r.get("entropy", {})]
        for layer in range(per_step.shape[1]):
            entropy_axes.plot(
                entropy_steps,
                per_step[:, layer],
                color=colors[site],
                marker="o",
                markersize=2,
                alpha=0.4 + 0.6 * (layer + 1) / per_step.shape[1],
                label=f"{site} layer {layer}",
            )
    entropy_axes.set_title("mean attention entropy (nats) on fixed validation images (darker: later layer)", fontsize=9)
    count_axis(entropy_axes, "step")
    if sites:  # beside the curves, never over them
        entropy_axes.legend(fontsize=6, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)
    if title:
        figure.suptitle(title, fontsize=10)
    return figure
