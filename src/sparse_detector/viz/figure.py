"""What every figure shares: saving in PNG / PDF / SVG, boxes drawn on axes, images shown as the model saw them.

Figures are built with matplotlib's object-oriented API (``matplotlib.figure.Figure``, no pyplot state), so they
can be made in any thread and on machines without a display.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle
from matplotlib.ticker import MaxNLocator
from torch import Tensor

from ..data.transforms import IMAGENET_MEAN, IMAGENET_STD

FORMATS = ("png", "pdf", "svg")
DPI = 100
PREDICTION_COLOR = "red"  # predicted boxes and their classes
TRUTH_COLOR = "cyan"  # ground-truth boxes


def box_legend(colors: Iterable[str] = (PREDICTION_COLOR, TRUTH_COLOR)) -> str:
    """What the box colours mean, for the colours a figure draws ("" when it draws none)."""
    meanings, colors = {PREDICTION_COLOR: "prediction", TRUTH_COLOR: "ground truth"}, set(colors)
    drawn = [f"{meaning} ({color})" for color, meaning in meanings.items() if color in colors]
    return f"boxes: {', '.join(drawn)}" if drawn else ""


BOX_LEGEND = box_legend()


@dataclass(frozen=True)
class LabelledBox:
    """An absolute (x0, y0, x1, y1) box in image pixels with the text written at its top-left corner."""

    box: tuple[float, float, float, float]
    text: str = ""


def save_figure(figure: Figure, path: str | Path, fmt: str = "png") -> Path:
    """Write ``figure`` to ``path`` with the suffix of ``fmt`` (png, pdf or svg); returns the file written."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown figure format {fmt!r}; choose from {list(FORMATS)}")
    path = Path(path).with_suffix(f".{fmt}")
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=DPI, format=fmt)
    return path


def display_image(image: Tensor, normalized: bool = True) -> np.ndarray:
    """A (C, H, W) model input as an (H, W, 3) float array in [0, 1]: ImageNet normalisation undone if applied."""
    image = image.detach().float().cpu()
    if normalized:
        image = image * torch.tensor(IMAGENET_STD)[:, None, None] + torch.tensor(IMAGENET_MEAN)[:, None, None]
    return image.clamp(0, 1).permute(1, 2, 0).numpy()


def cxcywh_to_pixels(boxes: Tensor, height: float, width: float) -> list[tuple[float, float, float, float]]:
    """Normalised (cx, cy, w, h) boxes as absolute (x0, y0, x1, y1) in an image of ``height`` × ``width``."""
    scale = torch.tensor([width, height, width, height], dtype=torch.float64)
    cx, cy, w, h = boxes.detach().double().cpu().unbind(-1)
    xyxy = torch.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], -1) * scale
    return [tuple(float(v) for v in box) for box in xyxy]


def draw_labelled_boxes(
    axes: Axes, boxes: Sequence[LabelledBox], color: str, linewidth: float = 1.5, text_below: bool = False
) -> None:
    """Outline each box on ``axes`` (in data = pixel coordinates) and write its text on a patch of its colour,
    above the box's top-left corner (``text_below``: under its bottom-left corner)."""
    for item in boxes:
        x0, y0, x1, y1 = item.box
        axes.add_patch(Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, edgecolor=color, linewidth=linewidth))
        if item.text:
            axes.text(
                x0,
                y1 if text_below else y0,
                item.text,
                color="black",
                fontsize=6,
                ha="left",
                va="top" if text_below else "bottom",
                bbox={"facecolor": color, "edgecolor": "none", "pad": 0.5, "alpha": 0.85},
            )


def count_axis(axes: Axes, label: str) -> None:
    """An x axis of steps or epochs: whole-number ticks only, even for a run of one epoch or a few steps."""
    axes.set_xlabel(label)
    axes.xaxis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))


def hide_ticks(axes: Axes) -> None:
    axes.set_xticks([])
    axes.set_yticks([])
