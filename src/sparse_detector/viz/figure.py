"""What every figure shares: saving in PNG / PDF / SVG, boxes drawn on axes, images shown as the model saw them.

Figures are built with matplotlib's object-oriented API (``matplotlib.figure.Figure``, no pyplot state), so they
can be made in any thread and on machines without a display.
"""

from __future__ import annotations

import json
import logging
import textwrap
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle
from matplotlib.ticker import MaxNLocator
from torch import Tensor
from torchvision.ops import box_convert

from ..data.transforms import IMAGENET_MEAN, IMAGENET_STD
from ..files import write_atomically
from ..text import counted

log = logging.getLogger(__name__)

FORMATS = ("png", "pdf", "svg")
DPI = 100
PREDICTION_COLOR = "red"  # predicted boxes and their classes
TRUTH_COLOR = "cyan"  # ground-truth boxes


#: In a figures folder: the files each figure kind drew there last ({kind: [file name, ...]}), so that drawing a kind
#: again removes the ones it no longer draws and no other file.
FIGURES_RECORD = ".figures.json"

TEXT_MARGIN = 0.07  # a box's text is drawn inside the box when it is this fraction of the image height from an edge


@dataclass(frozen=True)
class LabelledBox:
    """An absolute (x0, y0, x1, y1) box in image pixels with the text written at its top-left corner."""

    box: tuple[float, float, float, float]
    text: str = ""


def box_legend(predictions: bool = True, ground_truth: bool = True) -> str:
    """What the box colours mean, naming only the kinds of box a figure draws ('' when it draws none)."""
    kinds = [f"prediction ({PREDICTION_COLOR})"] * predictions + [f"ground truth ({TRUTH_COLOR})"] * ground_truth
    return f"boxes: {', '.join(kinds)}" if kinds else ""


MAX_PANEL_STRETCH = 1.5  # a wide (tall) image's panel is at most this much wider (taller) than a square one's


def panel_inches(height: float, width: float, side: float) -> tuple[float, float]:
    """(width, height) in inches of a panel showing an image of ``height`` × ``width`` pixels: the image's shape with
    about the area of a square panel of ``side`` inches (a 3:1 COCO image in a square panel was a thin strip in
    white)."""
    aspect = width / height
    longer = side * min(max(aspect, 1 / aspect) ** 0.5, MAX_PANEL_STRETCH)
    return (longer, longer / aspect) if aspect >= 1 else (longer * aspect, longer)


def wrapped(text: str, width_inches: float, fontsize: float) -> str:
    """``text`` with each line wrapped to fit ``width_inches`` at ``fontsize`` (a character is about 0.6 em wide),
    so a long title (an annotation file's path) is not clipped at the figure's edges."""
    columns = max(int(width_inches * 72 / (0.6 * fontsize)), 20)
    return "\n".join(textwrap.fill(line, columns, break_on_hyphens=False) for line in text.splitlines())


def save_figure(figure: Figure, path: str | Path, fmt: str = "png") -> Path:
    """Write ``figure`` to ``path`` with the suffix of ``fmt`` (png, pdf or svg); returns the file written. Written
    whole or not at all (:func:`.files.write_atomically`): a kill mid-write leaves the figure there before, never
    half a PNG.

    A figure suffix on ``path`` is replaced; anything else after a dot stays part of the name (a figure of
    Roboflow's ``img_jpg.rf.3f2a`` is ``..._img_jpg.rf.3f2a_q0.png``, not ``..._img_jpg.rf.png``)."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown figure format {fmt!r}; choose from {list(FORMATS)}")
    path = Path(path)
    path = path.with_suffix(f".{fmt}") if path.suffix.lower()[1:] in FORMATS else path.with_name(f"{path.name}.{fmt}")
    path.parent.mkdir(parents=True, exist_ok=True)
    return write_atomically(path, lambda file: figure.savefig(file, dpi=DPI, format=fmt))


def replace_previous_figures(folder: Path, kind: str, written: Sequence[Path]) -> list[Path]:
    """Record ``written`` as what ``kind`` drew in ``folder`` and delete the files it drew there last time but not
    now (other images, queries, a format), which would otherwise look current; files it never drew (the user's,
    other kinds') stay. Returns the files deleted."""
    record_path = folder / FIGURES_RECORD
    try:
        record = json.loads(record_path.read_text())
        record = record if isinstance(record, dict) else {}
    except (OSError, ValueError):  # none yet, or unreadable: nothing of the kind's to remove
        record = {}
    previous = {name for name in record.get(kind, []) if isinstance(name, str)}
    if not previous and not written:
        return []
    names = [path.name for path in written if path.parent.resolve() == folder.resolve()]
    stale = [folder / name for name in sorted(previous - set(names)) if Path(name).name == name]
    removed = [path for path in stale if path.is_file()]
    for path in removed:
        path.unlink()
    record[kind] = names
    write_atomically(record_path, json.dumps(record, indent=1))
    if removed:
        log.info(
            "removed %s of the last %s drawing in %s (not drawn again)", counted(len(removed), "figure"), kind, folder
        )
    return removed


def display_image(image: Tensor, normalized: bool = True) -> np.ndarray:
    """A (C, H, W) model input as an (H, W, 3) float array in [0, 1]: ImageNet normalisation undone if applied."""
    image = image.detach().float().cpu()
    if normalized:
        image = image * torch.tensor(IMAGENET_STD)[:, None, None] + torch.tensor(IMAGENET_MEAN)[:, None, None]
    return image.clamp(0, 1).permute(1, 2, 0).numpy()


def cxcywh_to_pixels(boxes: Tensor, height: float, width: float) -> list[tuple[float, float, float, float]]:
    """Normalised (cx, cy, w, h) boxes as absolute (x0, y0, x1, y1) in an image of ``height`` × ``width``."""
    scale = torch.tensor([width, height, width, height], dtype=torch.float64)
    xyxy = box_convert(boxes.detach().double().cpu(), "cxcywh", "xyxy") * scale
    return [tuple(float(v) for v in box) for box in xyxy]


def draw_labelled_boxes(
    axes: Axes, boxes: Sequence[LabelledBox], color: str, linewidth: float = 1.5, text_below: bool = False
) -> None:
    """Outline each box on ``axes`` (in data = pixel coordinates, the image already shown) and write its text on a
    patch of its colour, above the box's top-left corner (``text_below``: under its bottom-left corner); inside the
    box where the text would leave the image, so it never covers a panel's title or the panel below. A box starting
    in the image's right half has its text end at its right edge, so the text does not run off the image into the
    next panel."""
    height = max(axes.get_ylim())  # images are shown with y down: limits (height, 0)
    width = max(axes.get_xlim())
    margin = TEXT_MARGIN * height
    for item in boxes:
        x0, y0, x1, y1 = item.box
        axes.add_patch(Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, edgecolor=color, linewidth=linewidth))
        if item.text:
            below = y1 < height - margin if text_below else y0 < margin  # the text goes down from its anchor
            right = x0 > width / 2
            axes.text(
                min(x1, width) if right else x0,
                y1 if text_below else y0,
                item.text,
                color="black",
                fontsize=6,
                ha="right" if right else "left",
                va="top" if below else "bottom",
                bbox={"facecolor": color, "edgecolor": "none", "pad": 0.5, "alpha": 0.85},
            )


def count_axis(axes: Axes, label: str) -> None:
    """An x axis of steps or epochs: whole-number ticks only, even for a run of one epoch or a few steps."""
    axes.set_xlabel(label)
    axes.xaxis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))


def hide_ticks(axes: Axes) -> None:
    """Remove both axes' ticks and tick labels (for image panels)."""
    axes.set_xticks([])
    axes.set_yticks([])
