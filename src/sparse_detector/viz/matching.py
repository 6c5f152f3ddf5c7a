"""The Hungarian assignment of queries to ground-truth boxes on one image."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from matplotlib.figure import Figure

from ..text import counted
from .figure import (
    PREDICTION_COLOR,
    TRUTH_COLOR,
    LabelledBox,
    box_legend,
    draw_labelled_boxes,
    hide_ticks,
    left_out_note,
)

UNMATCHED_COLOR = "0.6"
PANEL_WIDTH = 4.6  # inches of image in each of the two panels


def _centre(box: LabelledBox) -> tuple[float, float]:
    x0, y0, x1, y1 = box.box
    return (x0 + x1) / 2, (y0 + y1) / 2


def matching_figure(
    image: np.ndarray,
    predictions: Sequence[LabelledBox],
    ground_truth: Sequence[LabelledBox],
    pairs: Sequence[tuple[int, int]],
    title: str = "",
) -> Figure:
    """Left: every query's predicted box (unmatched ones grey) and the ground truth. Right: the matched pairs only,
    each query joined to its ground-truth box by a line and named in that box's label (``RBC ← q12``), which stays
    readable where the queries' boxes pile up. ``pairs``: (query index, ground-truth index). Texts that would cover
    others are left out, the panel's title says how many (matched queries' and ground truth's texts go first)."""
    height, width = image.shape[:2]  # the figure takes the image's shape: a wide one left half of it blank
    figure = Figure(figsize=(10, min(PANEL_WIDTH * height / width + 0.8, 9.0)), layout="constrained")
    every, matched = figure.subplots(1, 2)
    for axes in (every, matched):
        axes.imshow(image, interpolation="nearest")
        axes.set_xlim(0, width)
        axes.set_ylim(height, 0)
        hide_ticks(axes)
    matched_queries = sorted({q for q, _ in pairs})
    unmatched = [box for q, box in enumerate(predictions) if q not in matched_queries]
    left_out = draw_labelled_boxes(every, ground_truth, TRUTH_COLOR, text_below=True)
    left_out += draw_labelled_boxes(every, [predictions[q] for q in matched_queries], PREDICTION_COLOR)
    left_out += draw_labelled_boxes(every, unmatched, UNMATCHED_COLOR, linewidth=0.8, zorder=0.9)  # under the rest
    every.set_title(_with_note(f"all {len(predictions)} queries (grey: not matched)", left_out), fontsize=9)
    query_of = {t: q for q, t in pairs}
    named = [
        LabelledBox(box.box, f"{box.text} ← q{query_of[t]}" if t in query_of else box.text)
        for t, box in enumerate(ground_truth)
    ]
    left_out = draw_labelled_boxes(matched, named, TRUTH_COLOR, text_below=True)
    left_out += draw_labelled_boxes(matched, [predictions[q] for q, _ in pairs], PREDICTION_COLOR)
    for q, t in pairs:
        (px, py), (tx, ty) = _centre(predictions[q]), _centre(ground_truth[t])
        matched.plot([px, tx], [py, ty], color="yellow", linewidth=1.5)
        matched.plot([tx], [ty], marker="o", color=TRUTH_COLOR, markersize=4)
    pair_title = f"{counted(len(pairs), 'matched pair')} (query → ground truth, named in its label)"
    matched.set_title(_with_note(pair_title, left_out), fontsize=9)
    legend = box_legend()
    figure.suptitle(f"{title}\n{legend}" if title else legend, fontsize=9)
    return figure


def _with_note(title: str, left_out: int) -> str:
    return f"{title}\n{left_out_note(left_out)}" if left_out else title
