"""EXIF orientation: photos stored one way and shown turned (or mirrored) by viewers and some labelling tools.

Training, evaluation and ``predict`` read the stored pixels as they are; boxes drawn on the turned view are brought
to the stored pixels with :func:`box_to_stored`.
"""

from __future__ import annotations

from pathlib import Path

from PIL import ExifTags, Image

from . import heif

# Orientations whose turned view has width and height swapped (a quarter turn, with or without a mirror).
SWAPS_SIDES = (5, 6, 7, 8)


def exif_orientation(path: str | Path) -> int:
    """The EXIF orientation tag of an image file (1: shown as stored, also when there is no tag)."""
    heif.register()
    with Image.open(path) as image:
        orientation = image.getexif().get(ExifTags.Base.Orientation, 1)
    return orientation if orientation in range(1, 9) else 1


def labelled_turned(path: str | Path, labelled: tuple[int, int], stored: tuple[int, int]) -> int:
    """The EXIF orientation of the image at ``path`` when the size its labels give (``labelled``, width x height)
    is its turned view's: the ``stored`` sides swapped by a quarter turn, so the boxes were drawn on that view; else
    1 (nothing to turn)."""
    if labelled == stored or labelled != stored[::-1]:
        return 1
    orientation = exif_orientation(path)
    return orientation if orientation in SWAPS_SIDES else 1


# The transpose that takes the turned view back to the stored pixels, per orientation (the inverse of
# ``PIL.ImageOps.exif_transpose``'s).
STORED_FROM_TURNED = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_90,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_270,
}


def point_to_stored(x: float, y: float, orientation: int, width: int, height: int) -> tuple[float, float]:
    """A point of the turned view (``width`` x ``height``, as shown) in the stored pixels: 2 mirrors, 3 turns half
    way round, 4 flips, 5 transposes, 6 is shown a quarter turn clockwise, 7 transverses, 8 a quarter turn
    anticlockwise."""
    return {
        1: (x, y),
        2: (width - x, y),
        3: (width - x, height - y),
        4: (x, height - y),
        5: (y, x),
        6: (y, width - x),
        7: (height - y, width - x),
        8: (height - y, x),
    }[orientation]


def box_to_stored(
    box: tuple[float, float, float, float], orientation: int, width: int, height: int
) -> tuple[float, float, float, float]:
    """An (x0, y0, x1, y1) box drawn on the turned view (``width`` x ``height``, as shown) in the stored pixels."""
    (ax, ay), (bx, by) = (point_to_stored(x, y, orientation, width, height) for x, y in (box[:2], box[2:]))
    return min(ax, bx), min(ay, by), max(ax, bx), max(ay, by)
