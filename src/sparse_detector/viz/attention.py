"""Attention maps drawn over the image: per layer (rows) × head (columns) plus the head average, or any grid of panels.

A map lives on the image's valid (unpadded) feature grid of h × w cells; with the grid's stride s (pixels of the
shown image, which is the model input, per cell) cell (i, j) covers pixels [j·s, (j+1)·s] × [i·s, (i+1)·s] — the
geometry PAIBB uses — so when a side of the image is not a multiple of s its last cells reach past the image and are
cut at its border (the grid is never stretched over the image). Without a stride the grid is stretched over the
image. The image is shown in grey and the weights in colour on top; exact zeros are left uncoloured (sparse maps
are the point), so the smallest positive weight is always distinguishable from 0.
"""

from __future__ import annotations

import textwrap
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from matplotlib import colormaps
from matplotlib.axes import Axes
from matplotlib.cm import ScalarMappable
from matplotlib.colors import Normalize
from matplotlib.figure import Figure

from .figure import (
    PREDICTION_COLOR,
    TRUTH_COLOR,
    LabelledBox,
    box_legend,
    draw_labelled_boxes,
    hide_ticks,
    left_out_note,
    panel_inches,
    wrapped,
)

COLORMAP = "viridis"
OVERLAY_ALPHA = 0.75
PANEL_INCHES = 1.5  # the side of a square image's panel; other shapes keep about its area
ZERO_LEGEND = "uncoloured cells: weight exactly 0"
TITLE_FONTSIZE = 8  # of the panels' titles and row labels
MAX_TRUTH_TEXTS = 8  # a panel with more ground-truth boxes outlines them without their class names


@dataclass
class AttentionPanel:
    """One map on the valid grid (h, w), with the boxes and points drawn on its panel."""

    weights: np.ndarray
    predictions: Sequence[LabelledBox] = ()
    ground_truth: Sequence[LabelledBox] = ()
    points: Sequence[tuple[float, float]] = field(default_factory=tuple)  # (x, y) in image pixels, e.g. a query cell
    stride: float | None = None  # image pixels per grid cell (None: the grid is stretched over the image)
    title: str = ""  # the panel's own title (else its column's label, over the first row)


def grey(image: np.ndarray) -> np.ndarray:
    """(H, W, 3) in [0, 1] -> (H, W) luminance, lightened so that coloured weights stand out."""
    return 0.35 + 0.55 * (image[..., :3] @ np.array([0.299, 0.587, 0.114]))


def draw_attention(
    axes: Axes, image: np.ndarray, weights: np.ndarray, norm: Normalize, stride: float | None = None
) -> None:
    """``image`` (H, W, 3) of the valid area in grey, ``weights`` (h, w) on it, cells of ``stride`` pixels (None:
    stretched over the image); zeros uncoloured."""
    height, width = image.shape[:2]
    extent = (0, width, height, 0)
    axes.imshow(grey(image), cmap="gray", vmin=0, vmax=1, extent=extent, interpolation="nearest")
    cmap = colormaps[COLORMAP].with_extremes(bad=(0, 0, 0, 0))
    masked = np.ma.masked_equal(np.asarray(weights, dtype=np.float64), 0.0)
    if stride is not None:
        extent = (0, masked.shape[1] * stride, masked.shape[0] * stride, 0)
    axes.imshow(masked, cmap=cmap, norm=norm, alpha=OVERLAY_ALPHA, extent=extent, interpolation="nearest")
    axes.set_xlim(0, width)
    axes.set_ylim(height, 0)


def text_inches(text: str, fontsize: float) -> float:
    """About how long ``text`` is written at ``fontsize`` (a character is about 0.6 em wide), in inches."""
    return len(text) * 0.6 * fontsize / 72


def row_label(text: str, height_inches: float, fontsize: float) -> str:
    """``text`` broken into lines (between words) that fit beside a panel ``height_inches`` tall, so the labels of
    neighbouring rows do not run into each other; lines of even length ("decoder_cross" / "layer 0", not
    "decoder_cross layer" / "0")."""
    options = {"break_long_words": False, "break_on_hyphens": False}
    lines = textwrap.wrap(text, max(int(height_inches * 72 / (0.6 * fontsize)), 1), **options)
    if len(lines) > 1:
        lines = textwrap.wrap(text, -(-len(text) // len(lines)), **options)
    return "\n".join(lines)


def attention_panels_figure(
    image: np.ndarray,
    panels: Sequence[Sequence[AttentionPanel | None]],
    row_labels: Sequence[str],
    column_labels: Sequence[str],
    title: str = "",
    empty_note: str = "",
) -> Figure:
    """A grid of attention panels over the same ``image`` (H, W, 3 in [0, 1], the valid area) with one colour bar
    (0 to the largest weight shown). ``None`` leaves a panel empty but for ``empty_note`` (e.g. a run where no
    query matched the row's object); it keeps its row's label and its column's title."""
    rows, columns = len(panels), max(len(row) for row in panels)
    panel_width, panel_height = panel_inches(*image.shape[:2], PANEL_INCHES)
    # a cell of the grid is at least as wide as its panel's title and as tall as the longest word of its row's
    # label: a 1:4 image's panels wrote 'head 7' into 'mean of heads', a 10:1 image's rows their labels into each other
    titles = [*column_labels, *(p.title for row in panels for p in row if p is not None)]
    cell_width = max([panel_width, *(text_inches(title, TITLE_FONTSIZE) + 0.1 for title in titles)])
    words = [word for label in row_labels for word in label.split()]
    cell_height = max([panel_height, *(text_inches(word, TITLE_FONTSIZE) for word in words)])
    width = max(cell_width * columns + 1.4, 6.0)  # room for the row labels, the colour bar and the title
    figure = Figure(figsize=(width, (cell_height + 0.15) * rows + 0.9), layout="constrained")
    grid = figure.subplots(rows, columns, squeeze=False)
    largest = max((float(np.max(p.weights)) for row in panels for p in row if p is not None), default=1.0)
    norm = Normalize(vmin=0.0, vmax=largest if largest > 0 else 1.0)
    left_out = 0
    for r, row in enumerate(panels):
        for c in range(columns):
            axes = grid[r][c]
            hide_ticks(axes)
            panel = row[c] if c < len(row) else None
            own_title = panel.title if panel is not None else ""
            if own_title or r == 0:
                axes.set_title(own_title or column_labels[c], fontsize=TITLE_FONTSIZE)
            if c == 0:
                axes.set_ylabel(row_label(row_labels[r], cell_height, TITLE_FONTSIZE), fontsize=TITLE_FONTSIZE)
            if panel is None:  # a frameless panel, not set_axis_off: that would hide its row label and title
                axes.spines[:].set_visible(False)
                axes.text(0.5, 0.5, empty_note, transform=axes.transAxes, ha="center", va="center", fontsize=7)
                continue
            draw_attention(axes, image, panel.weights, norm, panel.stride)
            truth = panel.ground_truth
            if len(truth) > MAX_TRUTH_TEXTS:  # 1.5-inch panels: a class name per box would bury the map
                truth = [LabelledBox(box.box) for box in truth]
            # the query's text first, so that ground-truth names never take its place; its box still on top
            left_out += draw_labelled_boxes(axes, panel.predictions, PREDICTION_COLOR, zorder=1.1)
            left_out += draw_labelled_boxes(axes, truth, TRUTH_COLOR, text_below=True)
            for x, y in panel.points:
                axes.plot([x], [y], marker="x", color=PREDICTION_COLOR, markersize=7, markeredgewidth=2)
    colorbar = figure.colorbar(ScalarMappable(norm, colormaps[COLORMAP]), ax=grid, shrink=0.8, pad=0.01)
    colorbar.set_label("attention weight", fontsize=8)
    drawn = [panel for row in panels for panel in row if panel is not None]
    boxes = box_legend(any(p.predictions for p in drawn), any(p.ground_truth for p in drawn))
    crowded = max((len(p.ground_truth) for p in drawn), default=0) > MAX_TRUTH_TEXTS
    unnamed = f"ground-truth classes not written where a panel has over {MAX_TRUTH_TEXTS} boxes" if crowded else ""
    legend = "; ".join(part for part in (boxes, unnamed, left_out_note(left_out), ZERO_LEGEND) if part)
    figure.suptitle(wrapped(f"{title}\n{legend}" if title else legend, width, 9), fontsize=9)
    return figure


def attention_figure(
    image: np.ndarray,
    maps: np.ndarray,
    layer_labels: Sequence[str] | None = None,
    predictions: Sequence[LabelledBox] = (),
    ground_truth: Sequence[LabelledBox] = (),
    points: Sequence[tuple[float, float]] = (),
    title: str = "",
    stride: float | None = None,
) -> Figure:
    """One query's maps: ``maps`` (layers, heads, h, w) drawn as layer rows × head columns, plus the head average.

    ``image`` (H, W, 3) in [0, 1] is the valid (unpadded) area the grid covers; boxes are in its pixels; ``stride``
    its pixels per grid cell (None: the grid is stretched over it).
    """
    maps = np.asarray(maps)
    if maps.ndim != 4:
        raise ValueError(f"expected maps of shape (layers, heads, h, w), got {maps.shape}")
    layers, heads = maps.shape[:2]
    labels = list(layer_labels) if layer_labels is not None else [f"layer {i}" for i in range(layers)]
    panels = [
        [
            AttentionPanel(weights, predictions, ground_truth, points, stride)
            for weights in [*maps[layer], maps[layer].mean(axis=0)]
        ]
        for layer in range(layers)
    ]
    columns = [f"head {h}" for h in range(heads)] + ["mean of heads"]
    return attention_panels_figure(image, panels, labels, columns, title)
