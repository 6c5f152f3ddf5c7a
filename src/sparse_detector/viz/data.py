"""Training samples as the model sees them: after the transforms, with boxes, labels and the padding shown."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from matplotlib.figure import Figure

from .figure import TRUTH_COLOR, LabelledBox, draw_labelled_boxes, hide_ticks, left_out_note, panel_inches, wrapped

PADDING_RGBA = (1.0, 0.0, 1.0, 0.45)  # translucent magenta over padded pixels
MIN_WIDTH = 6.5  # inches: room for the title and the legend line
PANEL_INCHES = 3.0  # side of a square image's panel; other shapes keep about its area
TITLE_INCHES = 0.4  # a panel's two title lines


@dataclass
class Sample:
    """One transformed image (H, W, 3) in [0, 1] of the padded batch, its padding mask (H, W; True = padding) and
    its target boxes in pixels."""

    image: np.ndarray
    padding: np.ndarray
    boxes: Sequence[LabelledBox]
    title: str = ""


def data_figure(samples: Sequence[Sample], title: str = "", columns: int = 4) -> Figure:
    """A grid of samples: boxes and class names in the ground-truth colour, padding tinted magenta."""
    if not samples:
        raise ValueError("no samples to draw")
    columns = min(columns, len(samples))
    rows = math.ceil(len(samples) / columns)
    # panels take the padded batch's shape (BCCD's 4:3 images in square panels left a band of white between rows)
    panel_width, panel_height = panel_inches(*samples[0].padding.shape, PANEL_INCHES)
    width = max(panel_width * columns, MIN_WIDTH)  # one sample is narrower than the title
    figure = Figure(figsize=(width, (panel_height + TITLE_INCHES) * rows + 0.7), layout="constrained")
    grid = figure.subplots(rows, columns, squeeze=False)
    for axes in grid.flat[len(samples) :]:
        axes.set_axis_off()
    left_out = 0
    for axes, sample in zip(grid.flat, samples, strict=False):
        axes.imshow(sample.image, interpolation="nearest")
        overlay = np.zeros((*sample.padding.shape, 4))
        overlay[sample.padding] = PADDING_RGBA
        axes.imshow(overlay, interpolation="nearest")
        left_out += draw_labelled_boxes(axes, sample.boxes, TRUTH_COLOR)
        name = wrapped(sample.title, panel_width - 0.3, 8)  # a long file name ran into its neighbours' titles
        axes.set_title(f"{name}\n{_size_text(sample.padding)}", fontsize=8)
        hide_ticks(axes)
    legend = f"after the training transforms: boxes and labels ({TRUTH_COLOR}), padding (magenta)"
    legend += f"; {left_out_note(left_out)}" if left_out else ""
    figure.suptitle(wrapped(f"{title}\n{legend}" if title else legend, width, 9), fontsize=9)
    return figure


def _size_text(padding: np.ndarray) -> str:
    """The image's own size after the transforms and, where the batch pads it, the padded size: "170×128 px,
    padded to 170×185" (the batch's size alone read as the image's)."""
    height, width = padding.shape
    valid = ~padding
    image_height, image_width = int(valid.any(axis=1).sum()), int(valid.any(axis=0).sum())
    size = f"{image_width}×{image_height} px"
    return size if (image_height, image_width) == (height, width) else f"{size}, padded to {width}×{height}"
