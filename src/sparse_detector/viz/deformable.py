"""Where Deformable DETR samples: a query's reference point and sampling points over the image.

Points are coloured by feature level and sized by weight; points of exactly zero weight (sparse maps) are drawn
hollow, so what a sparse map switched off stays visible. Points of several levels that look like one (with box
references every level's points start at the same places, with equal weights under softmax) are one circle cut into
a slice per level, so no level hides another. One panel with every head, then one per head. Inputs are
the :class:`~sparse_detector.attention.sites.PointsRecord` of one layer, whose locations are in [0, 1] of each
level's valid cells (ceil(side / stride) cells of the level's stride, which reach past the image when its side is
not a multiple of the stride): with the site's level strides a location u of a level is drawn at pixel
u · cells · stride of the model input, as the model samples it (without them, at u · image side).
"""

from __future__ import annotations

from collections.abc import Sequence
from itertools import groupby, pairwise

import numpy as np
import torch
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.markers import MarkerStyle
from matplotlib.path import Path
from matplotlib.transforms import Affine2D

from ..analysis.paibb import valid_area_scale
from ..attention.sites import PointsRecord
from .boxes import Rect
from .figure import PREDICTION_COLOR, TRUTH_COLOR, LabelledBox, box_legend, draw_labelled_boxes, panel_inches

#: Marker area (points²) of a weight-1 sampling point; a point's area grows linearly with its weight.
FULL_WEIGHT_AREA = 400.0
MIN_AREA = 20.0
LEGEND_WEIGHTS = (0.1, 0.5, 1.0)
PANEL_INCHES = 3.0  # the side of a square image's panel; other shapes keep about its area
MIN_PANEL_WIDTH = 2.6  # inches: a panel's title ("head 3 (2 zero, 11 outside the image)") fits above it
#: One colour per feature level: visible on the white legend and apart from the box colours (red, cyan).
REFERENCES_INCHES = 5.0  # the width of the reference-points figure
LABEL_ROOM_POINTS = 12.0  # a layer label's size (9 pt text, its box): points closer share one label
LEVEL_COLORS = ("tab:blue", "magenta", "lime", "orange", "tab:purple", "tab:brown")
#: Points whose centres and diameters differ by at most this fraction of their radius look like one point: they are
#: drawn as one circle cut into a slice per level, so no level's colour hides another's.
COINCIDE_FRACTION = 0.25


def marker_size(weight: float) -> float:
    """The diameter (points) of a sampling point of ``weight``, as the legend draws it: scatter sizes are areas."""
    return float(np.sqrt(MIN_AREA + FULL_WEIGHT_AREA * weight))


def level_pixels(
    record: PointsRecord, image_index: int, width: int, height: int, level_strides: Sequence[int] | None
) -> np.ndarray:
    """(L, 2): the (w, h) in pixels of each level's valid cells, what a location in [0, 1] of them is scaled by, for
    an image of ``width`` x ``height`` model-input pixels (without ``level_strides``: the image's own size)."""
    levels = record.level_shapes.shape[0]
    if level_strides is None:
        return np.tile(np.array([width, height], dtype=np.float64), (levels, 1))
    index, size = torch.tensor([image_index]), torch.tensor([[height, width]])
    scale = valid_area_scale(record, index, size, level_strides)[0].detach().cpu().double().numpy()
    return scale * np.array([width, height], dtype=np.float64)


def _coinciding(where: np.ndarray, diameters: np.ndarray) -> list[list[int]]:
    """Groups of the points at ``where`` (n, 2) of ``diameters`` (n,), both in points on the figure, that look like one:
    centres and diameters within ``COINCIDE_FRACTION`` of the first member's radius."""
    groups: list[list[int]] = []
    for index, (place, diameter) in enumerate(zip(where, diameters, strict=True)):
        for group in groups:
            room = COINCIDE_FRACTION * diameters[group[0]] / 2
            if np.hypot(*(place - where[group[0]])) <= room and abs(diameter - diameters[group[0]]) <= room:
                group.append(index)
                break
        else:
            groups.append([index])
    return groups


def _slice_marker(part: int, parts: int, hollow: bool) -> MarkerStyle | str:
    """Slice ``part`` of a circle marker cut in ``parts`` from the top (a wedge, or for hollow points an arc), as wide
    as the circle marker of the same scatter size; the whole circle when ``parts`` is 1."""
    if parts == 1:
        return "o"
    start = 90 + 360 * part / parts
    path = (Path.arc if hollow else Path.wedge)(start, start + 360 / parts)
    # Matplotlib scales a path marker by its largest coordinate; scaling it back keeps the circle marker's radius.
    return MarkerStyle(path, transform=Affine2D().scale(np.abs(path.vertices).max()))


def _draw_points(ax, locations: np.ndarray, weights: np.ndarray, pixels: np.ndarray, points_per_pixel: float) -> None:
    """``locations`` (heads, L, P, 2) in [0, 1] of each level's valid cells, ``pixels`` (L, 2) their size in pixels,
    ``weights`` (heads, L, P): coloured by level, sized by weight (``points_per_pixel``: the image's scale on the
    figure). Points of several levels that look like one (same place, same weight: with box references every level's
    points start at the same places) are one circle cut into a slice per level. Larger points are drawn first, so a
    smaller one at the same place stays visible on top, and the hollow zero-weight points last."""
    where = (locations * pixels[None, :, None, :]).reshape(-1, 2)
    levels = np.broadcast_to(np.arange(locations.shape[1])[None, :, None], weights.shape).ravel()
    w = weights.ravel()
    sizes = MIN_AREA + FULL_WEIGHT_AREA * w
    slices = []  # (hollow, -size, parts, part, x, y, size, level): one per level of each group of coinciding points
    for hollow in (False, True):
        chosen = np.flatnonzero((w == 0) == hollow)
        for group in _coinciding(where[chosen] * points_per_pixel, np.sqrt(sizes[chosen])):
            members = chosen[group]
            shown = sorted(set(levels[members].tolist()))
            x, y = where[members].mean(axis=0)
            size = sizes[members].mean()
            slices += [(hollow, -size, len(shown), part, x, y, size, level) for part, level in enumerate(shown)]
    slices.sort(key=lambda item: item[:4])
    for (hollow, parts, part), run in groupby(slices, key=lambda item: (item[0], item[2], item[3])):
        _, _, _, _, x, y, size, level = zip(*run, strict=True)
        colors = [LEVEL_COLORS[index % len(LEVEL_COLORS)] for index in level]
        marker = _slice_marker(part, parts, hollow)
        if hollow:
            ax.scatter(x, y, s=size, marker=marker, facecolors="none", edgecolors=colors, linewidths=1.3)
        else:
            ax.scatter(x, y, s=size, marker=marker, c=colors, alpha=0.8, edgecolors="white", linewidths=0.5)


def _reference_pixels(
    record: PointsRecord, image_index: int, query_index: int, pixels: np.ndarray
) -> tuple[float, float]:
    """The query's reference point (first level; its centre for box references) in pixels of the valid image, with
    ``pixels`` as in ``_draw_points``."""
    x, y = record.reference_points[image_index, query_index, 0, :2].detach().cpu().double().tolist()
    return x * pixels[0, 0], y * pixels[0, 1]


def _draw_boxes(ax: Axes, boxes: Sequence[tuple[Rect, str]]) -> None:
    """Outline each (box, colour) of ``boxes``, without text."""
    for box, color in boxes:
        draw_labelled_boxes(ax, [LabelledBox(box)], color)


def _title(figure: Figure, title: str, boxes: Sequence) -> None:
    """The figure's title, with what the colours of the boxes it draws mean."""
    colors = {color for _, color in boxes}
    lines = [line for line in (title, box_legend(PREDICTION_COLOR in colors, TRUTH_COLOR in colors)) if line]
    if lines:
        figure.suptitle("\n".join(lines), fontsize=10)


def sampling_figure(
    image: np.ndarray,
    record: PointsRecord,
    image_index: int,
    query_index: int,
    boxes: Sequence[tuple[Rect, str]] = (),
    title: str = "",
    level_strides: Sequence[int] | None = None,
) -> Figure:
    """The sampling of query ``query_index`` of image ``image_index`` in one layer's ``record``.

    ``image`` (h, w, 3) in [0, 1]: the image's valid area as the model saw it (any size without ``level_strides``,
    the model-input pixels of every level's cells; see the module docstring).
    ``boxes``: (x0, y0, x1, y1) in that image's pixels with their colour (e.g. ground truth and prediction).
    Returns a figure with one panel for all heads, then one per head.
    """
    height, width = image.shape[:2]
    pixels = level_pixels(record, image_index, width, height, level_strides)
    weights = record.weights[image_index, query_index].detach().cpu().double().numpy()  # (heads, L, P)
    locations = record.sampling_locations[image_index, query_index].detach().cpu().double().numpy()
    reference = _reference_pixels(record, image_index, query_index, pixels)
    heads, levels = weights.shape[:2]
    columns = min(heads + 1, 5)
    rows = -(-(heads + 1) // columns)
    panel_width, panel_height = panel_inches(height, width, PANEL_INCHES)
    points_per_pixel = 72 * panel_width / width  # about: the panel's image is a little smaller in the layout
    panel_width = max(panel_width, MIN_PANEL_WIDTH)  # room for a panel's title
    figure = Figure(figsize=(panel_width * columns, (panel_height + 0.3) * rows + 0.9), layout="constrained")
    axes = figure.subplots(rows, columns, squeeze=False).ravel()
    panels = [("all heads", range(heads))] + [(f"head {h}", [h]) for h in range(heads)]
    for ax, (name, selected) in zip(axes, panels, strict=False):
        ax.imshow(image, extent=(0, width, height, 0))
        _draw_points(ax, locations[list(selected)], weights[list(selected)], pixels, points_per_pixel)
        _draw_boxes(ax, boxes)
        ax.plot(*reference, marker="x", color="black", markersize=9, mew=2.5)
        ax.plot(*reference, marker="x", color="white", markersize=7, mew=1.2)
        zeros = int((weights[list(selected)] == 0).sum())
        where = locations[list(selected)] * pixels[None, :, None, :]  # in pixels; those outside fall off the panel
        outside = int(((where < 0) | (where > (width, height))).any(axis=-1).sum())
        notes = [f"{zeros} zero"] * bool(zeros) + [f"{outside} outside the image"] * bool(outside)
        ax.set_title(name + (f" ({', '.join(notes)})" if notes else ""), fontsize=9)
        ax.set_xlim(0, width)
        ax.set_ylim(height, 0)
        ax.set_axis_off()
    for ax in axes[len(panels) :]:
        ax.set_axis_off()
    legend = [
        Line2D([], [], marker="o", linestyle="", color=LEVEL_COLORS[level % len(LEVEL_COLORS)], label=f"level {level}")
        for level in range(levels)
    ]
    legend += [  # the size scale: a point's area grows with its weight
        Line2D([], [], marker="o", linestyle="", color="gray", markersize=marker_size(w), label=f"weight {w:g}")
        for w in LEGEND_WEIGHTS
    ]
    legend += [
        Line2D([], [], marker="o", linestyle="", markerfacecolor="none", color="gray", label="zero weight"),
        Line2D([], [], marker="x", linestyle="", color="black", label="reference point"),
    ]
    figure.legend(handles=legend, loc="outside lower center", ncols=len(legend), fontsize=8, frameon=False)
    _title(figure, title, boxes)
    return figure


def _label_spots(points: Sequence[tuple[float, float]], room: float) -> list[tuple[float, float]]:
    """Each point's spot: the first earlier point closer than ``room`` (image pixels, the size of a layer label on
    the figure) in both x and y, else its own place, so layers whose points (nearly) coincide share one label
    instead of labels drawn over each other."""
    spots: list[tuple[float, float]] = []
    for x, y in points:
        near = (spot for spot in dict.fromkeys(spots) if abs(spot[0] - x) < room and abs(spot[1] - y) < room)
        spots.append(next(near, (x, y)))
    return spots


def references_figure(
    image: np.ndarray,
    records: Sequence[PointsRecord],
    image_index: int,
    query_index: int,
    boxes: Sequence[tuple[Rect, str]] = (),
    title: str = "",
    level_strides: Sequence[int] | None = None,
) -> Figure:
    """The reference point of query ``query_index`` in every decoder layer (``records`` in layer order), joined by
    arrows from each layer to the next and labelled by layer, over ``image`` with ``boxes`` and ``level_strides`` as
    in :func:`sampling_figure`."""
    height, width = image.shape[:2]
    pixels = level_pixels(records[0], image_index, width, height, level_strides)
    points = [_reference_pixels(record, image_index, query_index, pixels) for record in records]
    figure = Figure(figsize=(REFERENCES_INCHES, REFERENCES_INCHES * height / width + 0.6), layout="constrained")
    ax = figure.subplots()
    ax.imshow(image, extent=(0, width, height, 0))
    _draw_boxes(ax, boxes)
    spots = _label_spots(points, LABEL_ROOM_POINTS * width / (REFERENCES_INCHES * 72))
    for (start, end), (here, there) in zip(pairwise(points), pairwise(spots), strict=True):
        if here != there:  # layers at one spot get no arrow (a tiny one drew a stray arrowhead), only their label
            ax.annotate("", xy=end, xytext=start, arrowprops={"arrowstyle": "->", "color": "yellow", "lw": 1.5})
    labels: dict[tuple[float, float], list[str]] = {}  # one label per spot, naming its layers
    for layer, spot in enumerate(spots):
        labels.setdefault(spot, []).append(str(layer))
    for (x, y), layers in labels.items():
        ax.plot(x, y, marker="o", color="black", markersize=7, markeredgecolor="white")
        ax.annotate(
            ",".join(layers),
            (x, y),
            xytext=(5, 5),
            textcoords="offset points",
            color="white",
            fontsize=9,
            bbox={"boxstyle": "round,pad=0.15", "facecolor": "black", "alpha": 0.6, "linewidth": 0},
        )
    ax.set_xlim(0, width)
    ax.set_ylim(height, 0)
    ax.set_axis_off()
    ax.set_title("reference point per decoder layer (layer number beside it)", fontsize=9)
    _title(figure, title, boxes)
    return figure
