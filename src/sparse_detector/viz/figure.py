"""What every figure shares: saving in PNG / PDF / SVG, boxes drawn on axes, images shown as the model saw them.

Figures are built with matplotlib's object-oriented API (``matplotlib.figure.Figure``, no pyplot state), so they
can be made in any thread and on machines without a display.
"""

from __future__ import annotations

import json
import logging
import textwrap
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import numpy as np
import torch
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import RendererAgg
from matplotlib.figure import Figure
from matplotlib.font_manager import FontProperties
from matplotlib.patches import Rectangle
from matplotlib.text import Text
from matplotlib.ticker import MaxNLocator
from torch import Tensor
from torchvision.ops import box_convert

from ..data.transforms import IMAGENET_MEAN, IMAGENET_STD
from ..files import write_atomically
from ..text import counted
from .boxes import label_spot

log = logging.getLogger(__name__)

FORMATS = ("png", "pdf", "svg")
DPI = 100
PREDICTION_COLOR = "red"  # predicted boxes and their classes
TRUTH_COLOR = "cyan"  # ground-truth boxes


#: In a figures folder: the files each figure kind drew there last ({kind: [file name, ...]}), so that drawing a kind
#: again removes the ones it no longer draws and no other file.
FIGURES_RECORD = ".figures.json"
_SAVED: ContextVar[list[Path] | None] = ContextVar("saved figures", default=None)  # see saved_figures()


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


#: A word of these signs alone ("≤" in "p ≤ 1e-06") binds its neighbours: wrapped text never breaks beside it.
EXPRESSION_SIGNS = frozenset("<>=≤≥≠≈±×+−")
_JOINED = "\N{NO-BREAK SPACE}"  # textwrap breaks only at ASCII whitespace


def _joined_expressions(line: str) -> str:
    """``line`` with the spaces beside a word of :data:`EXPRESSION_SIGNS` made unbreakable."""
    words = line.split(" ")
    sign = [bool(word) and set(word) <= EXPRESSION_SIGNS for word in words]
    spaces = [_JOINED if sign[i] or sign[i + 1] else " " for i in range(len(words) - 1)]
    return words[0] + "".join(space + word for space, word in zip(spaces, words[1:], strict=True))


def wrapped(text: str, width_inches: float, fontsize: float) -> str:
    """``text`` with each line wrapped to fit ``width_inches`` at ``fontsize`` (a character is about 0.6 em wide),
    so a long title (an annotation file's path) is not clipped at the figure's edges; an expression such as
    ``p ≤ 1e-06`` or ``1 − 1/N`` stays on one line."""
    columns = max(int(width_inches * 72 / (0.6 * fontsize)), 20)
    lines = (textwrap.fill(_joined_expressions(line), columns, break_on_hyphens=False) for line in text.splitlines())
    return "\n".join(lines).replace(_JOINED, " ")


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
    written = write_atomically(path, lambda file: figure.savefig(file, dpi=DPI, format=fmt))
    if (saved := _SAVED.get()) is not None:
        saved.append(written)
    return written


@contextmanager
def saved_figures() -> Iterator[list[Path]]:
    """The files :func:`save_figure` writes inside the block, in order: what a figure kind that fails halfway
    drew before failing."""
    saved: list[Path] = []
    token = _SAVED.set(saved)
    try:
        yield saved
    finally:
        _SAVED.reset(token)


def replace_previous_figures(folder: Path, kind: str, written: Sequence[Path], failed: bool = False) -> list[Path]:
    """Record ``written`` as what ``kind`` drew in ``folder`` and delete the files it drew there last time but not
    now (other images, queries, a format), which would otherwise look current; files it never drew (the user's,
    other kinds') stay. Returns the files deleted.

    ``failed``: the drawing stopped halfway after writing ``written``; they are added to the record and nothing is
    deleted (the next drawing of ``kind`` that completes, or one recorded with no files, removes what is stale)."""
    record_path = folder / FIGURES_RECORD
    try:
        record = json.loads(record_path.read_text())
        record = record if isinstance(record, dict) else {}
    except (OSError, ValueError):  # none yet, or unreadable: nothing of the kind's to remove
        record = {}
    previous = [name for name in record.get(kind, []) if isinstance(name, str)]
    if not previous and not written:
        return []
    names = [path.name for path in written if path.parent.resolve() == folder.resolve()]
    if failed:
        names = list(dict.fromkeys([*previous, *names]))
    stale = [folder / name for name in sorted(set(previous) - set(names)) if Path(name).name == name]
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
    axes: Axes,
    boxes: Sequence[LabelledBox],
    color: str,
    linewidth: float = 1.5,
    text_below: bool = False,
    zorder: float = 1.0,
) -> int:
    """Outline each box on ``axes`` (in data = pixel coordinates, the image already shown) and write its text on a
    patch of its colour where :func:`.boxes.label_spot` puts it: above the box's top-left corner (``text_below``:
    under its bottom-left corner), inside the box where the text would leave the image (so it never covers a panel's
    title or the next panel), at the right corner for a box starting in the image's right half.

    A text that would cover one already on ``axes`` (of this call or an earlier one: draw the boxes whose texts
    matter most first) goes to the box's other corners; where every corner is taken it is left out (the box is still
    outlined). ``zorder`` places the outlines over (higher) or under the others (matplotlib's patches: 1). Returns the
    number of texts left out, for the figure to say so (:func:`left_out_note`)."""
    height = max(axes.get_ylim())  # images are shown with y down: limits (height, 0)
    width = max(axes.get_xlim())
    pixels = _pixels_per_point(axes)
    taken = [_text_rect(text, pixels) for text in axes.texts]
    left_out = 0
    for item in boxes:
        x0, y0, x1, y1 = item.box
        outline = Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, edgecolor=color, linewidth=linewidth, zorder=zorder)
        axes.add_patch(outline)
        if not item.text:
            continue
        gap = LABEL_GAP * pixels  # the text's patch and a hair around it
        text_width, text_height = (side * pixels for side in _label_points(item.text))
        spot = label_spot(item.box, (text_width + 2 * gap, text_height + 2 * gap), taken, (width, height), text_below)
        if spot is None:
            left_out += 1
            continue
        taken.append(spot)
        x, y = spot[0] + gap, spot[1] + gap
        axes.text(
            x, y, item.text, color="black", fontsize=LABEL_FONTSIZE, ha="left", va="top", bbox=_label_patch(color)
        )
    return left_out


def left_out_note(count: int) -> str:
    """The words a figure adds where :func:`draw_labelled_boxes` left ``count`` box texts out ('' for none)."""
    return f"{counted(count, 'box label')} not written (would cover another)" if count else ""


LABEL_FONTSIZE = 6
LABEL_PAD = 0.5  # points of coloured patch around a box's text
LABEL_GAP = 1.0  # points kept around a text: its patch and a hair between two patches
LAYOUT_SHARE = 0.85  # of its cell of the figure's grid that an image panel is taken to fill before the layout is done


def _label_patch(color: str) -> dict:
    return {"facecolor": color, "edgecolor": "none", "pad": LABEL_PAD, "alpha": 0.85}


@cache
def _label_points(text: str, fontsize: float = LABEL_FONTSIZE) -> tuple[float, float]:
    """Width and height in points of ``text`` at ``fontsize``, as matplotlib's renderer sets it: a line is at least
    as tall as "lp" (room for ascenders and descenders), whatever its letters."""
    renderer, font = RendererAgg(1, 1, 72), FontProperties(size=fontsize)
    width, height, descent = renderer.get_text_width_height_descent(text, font, False)
    _, line_height, line_descent = renderer.get_text_width_height_descent("lp", font, False)
    return width, max(height - descent, line_height - line_descent) + max(descent, line_descent)


def _pixels_per_point(axes: Axes) -> float:
    """Data units (image pixels) per point of text on ``axes``: from its share of the figure's grid, a little less
    than the whole cell (titles, colour bars), so texts estimated apart are apart once the layout is done."""
    spec = axes.get_subplotspec()
    inches = axes.figure.get_size_inches()
    if spec is None:
        share = np.array([axes.get_position().width, axes.get_position().height])
    else:
        rows, columns = spec.get_gridspec().get_geometry()
        share = np.array([len(spec.colspan) / columns, len(spec.rowspan) / rows]) * LAYOUT_SHARE
    points = share * inches * 72
    spans = [abs(b - a) for a, b in (axes.get_xlim(), axes.get_ylim())]
    return 1 / min(points[0] / spans[0], points[1] / spans[1])


def _rect(
    x: float, y: float, ha: str, va: str, width: float, height: float, pad: float = 0.0
) -> tuple[float, float, float, float]:
    """(x0, y0, x1, y1) in data units, y down, of a text ``width`` × ``height`` anchored at (x, y), with ``pad`` of
    its patch around it."""
    left = x - width if ha == "right" else x - width / 2 if ha == "center" else x
    top = y if va == "top" else y - height if va in ("bottom", "baseline") else y - height / 2
    return left - pad, top - pad, left + width + pad, top + height + pad


def _text_rect(text: Text, pixels: float) -> tuple[float, float, float, float]:
    """Where a text already on image axes lies, in data units (y down)."""
    width, height = (side * pixels for side in _label_points(text.get_text(), text.get_fontsize()))
    x, y = text.get_position()
    return _rect(x, y, text.get_ha(), text.get_va(), width, height, LABEL_GAP * pixels)


def count_axis(axes: Axes, label: str) -> None:
    """An x axis of steps or epochs: whole-number ticks only, even for a run of one epoch or a few steps."""
    axes.set_xlabel(label)
    axes.xaxis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))


def hide_ticks(axes: Axes) -> None:
    """Remove both axes' ticks and tick labels (for image panels)."""
    axes.set_xticks([])
    axes.set_yticks([])
