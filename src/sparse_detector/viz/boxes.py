"""Drawing boxes with labels and scores on images."""

from __future__ import annotations

from collections.abc import Sequence
from functools import cache

from matplotlib import colormaps, font_manager
from PIL import Image, ImageDraw, ImageFont

from ..data.coco import to_rgb

CAPTION_SIZE = 10  # pixels, as PIL's default font

Rect = tuple[float, float, float, float]  # (x0, y0, x1, y1) in image pixels, y down


def label_spot(
    box: Sequence[float],
    size: tuple[float, float],
    taken: Sequence[Rect],
    bounds: tuple[float, float],
    below: bool = False,
) -> Rect | None:
    """Where the label of ``box`` (x0, y0, x1, y1), ``size`` (width, height) in the same pixels, goes in an image of
    ``bounds`` (width, height): on the box's top edge, outside it (``below``: the bottom edge), inside where it would
    leave the image; at the box's left corner, the right one for a box starting in the image's right half; else the
    other corners; always shifted onto the image (a label wider than the image starts at its left edge). The first
    spot that covers none of ``taken`` (the labels placed already); None where every spot covers one: the label is
    left out, so that labels never pile up into an unreadable block."""
    x0, y0, x1, y1 = (float(v) for v in box)
    width, height = bounds
    label_width, label_height = size
    spots = []
    for bottom in (below, not below):
        edge = min(max(y1 if bottom else y0, 0), height)  # a predicted box may reach past the image
        if bottom:
            top = edge if edge + label_height <= height else edge - label_height
        else:
            top = edge - label_height if edge - label_height >= 0 else edge
        for right in (x0 > width / 2, x0 <= width / 2):
            left = max(min(x1 - label_width if right else x0, width - label_width), 0)
            spots.append((left, top, left + label_width, top + label_height))
    return next((spot for spot in spots if not any(_overlap(spot, other) for other in taken)), None)


def _overlap(a: Rect, b: Rect) -> bool:
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


@cache
def caption_font(size: int = CAPTION_SIZE) -> ImageFont.FreeTypeFont:
    """DejaVu Sans (shipped with matplotlib, so always there): PIL's default font has no accented letters, so a
    class named "crème brûlée" was drawn "cr□me br□l□e"."""
    return ImageFont.truetype(font_manager.findfont("DejaVu Sans"), size)


def label_color(label: int) -> tuple[int, int, int]:
    """A stable, distinct colour per label: tab10's colours for labels 0-9, then their light tab20 partners (in
    tab20's own order labels 0 and 1 were blue and light blue, 2 and 3 orange and light orange)."""
    index = label % 20
    r, g, b, _ = colormaps["tab20"](2 * index if index < 10 else 2 * (index - 10) + 1)
    return int(r * 255), int(g * 255), int(b * 255)


def caption_color(background: tuple[int, int, int]) -> tuple[int, int, int]:
    """Black or white, whichever reads on ``background`` (white on tab20's light blue could not be read)."""
    r, g, b = background
    return (0, 0, 0) if 0.299 * r + 0.587 * g + 0.114 * b > 140 else (255, 255, 255)


def draw_boxes(
    image: Image.Image,
    boxes: Sequence[Sequence[float]],
    labels: Sequence[int],
    names: Sequence[str],
    scores: Sequence[float] | None = None,
    width: int = 2,
) -> Image.Image:
    """A copy of ``image`` with absolute (x0, y0, x1, y1) boxes, each captioned ``name score`` (see
    :func:`label_spot`: a caption that would cover another is left out)."""
    canvas = to_rgb(image)
    draw = ImageDraw.Draw(canvas)
    colors = [label_color(label) for label in labels]
    for box, color in zip(boxes, colors, strict=True):  # every box before any caption, which no outline may cross
        draw.rectangle([float(v) for v in box], outline=color, width=width)
    taken: list[Rect] = []
    for i, (box, color, name) in enumerate(zip(boxes, colors, names, strict=True)):
        caption = name if scores is None else f"{name} {scores[i]:.2f}"
        left, top, right, bottom = draw.textbbox((0, 0), caption, font=caption_font())
        spot = label_spot(box, (right - left + 2, bottom - top + 2), taken, canvas.size)
        if spot is None:  # every corner covered by another caption: the box alone (predictions.json has them all)
            continue
        taken.append(spot)
        draw.rectangle(spot, fill=color)
        draw.text((spot[0] + 1 - left, spot[1] + 1 - top), caption, fill=caption_color(color), font=caption_font())
    return canvas
