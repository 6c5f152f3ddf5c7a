"""Drawing boxes with labels and scores on images."""

from __future__ import annotations

from collections.abc import Sequence
from functools import cache

from matplotlib import colormaps, font_manager
from PIL import Image, ImageDraw, ImageFont

CAPTION_SIZE = 10  # pixels, as PIL's default font


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
    """A copy of ``image`` with absolute (x0, y0, x1, y1) boxes, each captioned ``name score``."""
    canvas = image.convert("RGB")
    draw = ImageDraw.Draw(canvas)
    for i, (box, label, name) in enumerate(zip(boxes, labels, names, strict=True)):
        color = label_color(label)
        x0, y0, x1, y1 = (float(v) for v in box)
        draw.rectangle([x0, y0, x1, y1], outline=color, width=width)
        caption = name if scores is None else f"{name} {scores[i]:.2f}"
        left, top, right, bottom = draw.textbbox((x0, y0), caption, font=caption_font())
        text_y = y0 - (bottom - top) - 2 if y0 >= bottom - top + 2 else y0
        draw.rectangle([x0, text_y, x0 + right - left + 2, text_y + bottom - top + 2], fill=color)
        draw.text((x0 + 1, text_y + 1 - (top - y0)), caption, fill=caption_color(color), font=caption_font())
    return canvas
