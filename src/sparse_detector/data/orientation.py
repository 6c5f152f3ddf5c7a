"""EXIF orientation: photos stored one way and shown turned (or mirrored) by viewers and some labelling tools.

Training, evaluation and ``predict`` read the stored pixels as they are; boxes drawn on the turned view are brought
to the stored pixels with :func:`box_to_stored`.
"""

from __future__ import annotations

from pathlib import Path

from PIL import ExifTags, Image

# Orientations whose turned view has width and height swapped (a quarter turn, with or without a mirror).
SWAPS_SIDES = (5, 6, 7, 8)


def exif_orientation(path: str | Path) -> int:
    """The EXIF orientation tag of an image file (1: shown as stored, also when there is no tag)."""
    with Image.open(path) as image:
        orientation = image.getexif().get(ExifTags.Base.Orientation, 1)
    return orientation if orientation in range(1, 9) else 1


def turned_size(width: int, height: int, orientation: int) -> tuple[int, int]:
    """(width, height) of the view a viewer shows of a stored ``width`` x ``height`` image."""
    return (height, width) if orientation in SWAPS_SIDES else (width, height)


def box_to_stored(
    box: tuple[float, float, float, float], orientation: int, width: int, height: int
) -> tuple[float, float, float, float]:
    """An (x0, y0, x1, y1) box drawn on the turned view (``width`` x ``height``, as shown) in the stored pixels.

    The inverse of what ``PIL.ImageOps.exif_transpose`` does to the pixels: 2 mirrors, 3 turns half way round,
    4 flips, 5 transposes, 6 is shown a quarter turn clockwise, 7 transverses, 8 a quarter turn anticlockwise.
    """
    x0, y0, x1, y1 = box
    corners = {
        1: (x0, y0, x1, y1),
        2: (width - x1, y0, width - x0, y1),
        3: (width - x1, height - y1, width - x0, height - y0),
        4: (x0, height - y1, x1, height - y0),
        5: (y0, x0, y1, x1),
        6: (y0, width - x1, y1, width - x0),
        7: (height - y1, width - x1, height - y0, width - x0),
        8: (height - y1, x0, height - y0, x1),
    }
    return corners[orientation]
