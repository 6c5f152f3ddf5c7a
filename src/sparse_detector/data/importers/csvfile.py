"""CSV boxes (``file,x1,y1,x2,y2,label`` a row, absolute pixels) -> COCO JSON.

A header row is recognised by a non-numeric second field; its column names may order the columns differently
and add others (e.g. the ``filename,width,height,class,xmin,ymin,xmax,ymax`` of TensorFlow-style exports), or
give boxes by their size (``image,x,y,w,h,label``: x, y, width, height in pixels). Coordinates that are all
within [0, 1] are fractions of each image's width and height (normalised), scaled to pixels and reported. A row
with an image but empty box fields marks an image without boxes; an image of ``images_dir`` that no row names is
not imported, named in a warning and counted. Image paths are relative to ``images_dir`` (default: the CSV file's
folder) or absolute. Where a header names the image's own width and height beside the
box's corners (TensorFlow-style exports), a size that differs from the image file is handled as VOC's ``<size>``:
a photo labelled on its EXIF-turned view has its boxes turned, one resized after labelling its boxes scaled.
Fields may be separated by commas, semicolons or tabs (the one splitting the first line into the most fields);
with semicolons or tabs a number may have a decimal comma (``12,5``), as spreadsheets in many locales save them.
"""

from __future__ import annotations

import csv
import io
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..coco import DatasetError, file_in
from ..orientation import SWAPS_SIDES, box_to_stored
from .common import (
    CocoBuilder,
    image_file,
    labelled_frame,
    listing,
    read_text,
    warn_found_by_name,
    warn_images_left_out,
    warn_size_mismatches,
    write_coco,
)

logger = logging.getLogger(__name__)

# The columns, in the order of a file without a header, and the header names each is known by.
COLUMNS = {
    "file": ("file", "filename", "file_name", "image", "image_name", "image_path", "path"),
    "x1": ("x1", "xmin", "x_min", "left", "x"),
    "y1": ("y1", "ymin", "y_min", "top", "y"),
    "x2": ("x2", "xmax", "x_max", "right"),
    "y2": ("y2", "ymax", "y_max", "bottom"),
    "label": ("label", "class", "class_name", "category", "name"),
}
# A header naming a box's width and height instead of its far corner: rows are x, y, width, height (the box's
# names first: beside them, width and height are the image's).
SIZE_COLUMNS = {
    "x2": ("w", "box_width", "bbox_width", "width"),
    "y2": ("h", "box_height", "bbox_height", "height"),
}
# The image's width and height, named beside a box's corner columns.
IMAGE_SIZE_COLUMNS = (("width", "image_width", "img_width"), ("height", "image_height", "img_height"))


def _named(names: list[str], aliases: tuple[str, ...]) -> int:
    """The position of the first of ``aliases`` among ``names``, -1 if none is there."""
    return next((names.index(n) for n in aliases if n in names), -1)


def _image_size_positions(header: list[str], sizes: bool) -> tuple[int, int] | None:
    """Positions of the image's width and height in a header row naming a box's corners, if it names them."""
    names = [field.strip().lower() for field in header]
    width, height = (_named(names, aliases) for aliases in IMAGE_SIZE_COLUMNS)
    return None if sizes or width < 0 or height < 0 else (width, height)


def _labelled_size(row: list[str], at: tuple[int, int] | None) -> tuple[int, int] | None:
    """The image's width and height as a row gives them (whole numbers, e.g. '640' or '640.0'), if it does."""
    try:
        width, height = (float(row[i]) for i in at or ())
    except ValueError:
        return None
    return (int(width), int(height)) if width.is_integer() and height.is_integer() else None


def _column_positions(header: list[str], where: str) -> tuple[list[int], bool]:
    """Positions of file, x1, y1, x2, y2, label in a header row, and whether the x2, y2 columns hold the box's
    width and height (a header naming ``x,y,w,h``). By name; a header naming none of the known columns, in that
    order (6 columns)."""
    names = [field.strip().lower() for field in header]
    positions = [_named(names, aliases) for aliases in COLUMNS.values()]
    sizes = positions[3] < 0 and positions[4] < 0 and all(_named(names, a) >= 0 for a in SIZE_COLUMNS.values())
    if sizes:  # a width / height column beside corner columns is the image's size (TensorFlow-style exports)
        positions[3:5] = [_named(names, aliases) for aliases in SIZE_COLUMNS.values()]
    if -1 not in positions:
        return positions, sizes
    if len(names) == len(COLUMNS) and positions.count(-1) == len(positions):
        return list(range(len(COLUMNS))), False
    missing = [column for column, at in zip(COLUMNS, positions, strict=True) if at < 0]
    raise DatasetError(
        f"{where}: the header {header} names no column for {missing}; known names: "
        + "; ".join(f"{column}: {', '.join(aliases)}" for column, aliases in COLUMNS.items())
        + " (or, for a box given by its size, x2: w, width; y2: h, height)"
    )


def import_csv(
    csv_file: str | Path,
    out_file: str | Path,
    images_dir: str | Path | None = None,
    class_names: Sequence[str] | None = None,
) -> dict[str, Any]:
    """Rows ``file,x1,y1,x2,y2,label`` (or named in a header) -> COCO JSON at ``out_file``. Classes: ``class_names``
    (ids 1..C in that order; another label is an error), else sorted by name."""
    csv_file = Path(csv_file)
    if not csv_file.is_file():
        raise DatasetError(f"CSV file {csv_file} does not exist")
    images_dir = Path(images_dir) if images_dir else csv_file.parent
    builder = CocoBuilder(str(csv_file), class_names)
    image_ids: dict[Path, int] = {}  # by resolved path: "a.jpg" and "./a.jpg" are one image
    missing: dict[str, list[int]] = {}  # the name of an image that does not exist -> the lines naming it
    boxes: list[tuple[int, str, tuple[float, ...], str]] = []  # image id, label, x1 y1 x2 y2, where
    found_by_name: list[str] = []  # absolute paths of the labelling machine, found by name in images_dir
    labelled: dict[int, tuple[int, int]] = {}  # image id -> its width and height as the rows give them
    positions, width, sizes, size_at = list(range(len(COLUMNS))), len(COLUMNS), False, None
    text = read_text(csv_file)
    separator = _separator(text)
    if separator != ",":
        logger.info("%s: fields separated by %r, decimal commas allowed", csv_file, separator)
    for number, row in enumerate(csv.reader(io.StringIO(text, newline=""), delimiter=separator), start=1):
        if separator != ",":
            row = [field.replace(",", ".") if _is_number(field.replace(",", ".")) else field for field in row]
        where = f"{csv_file}:{number}"
        if not row:
            continue
        if number == 1 and len(row) > 1 and not _is_number(row[1]):
            (positions, sizes), width = _column_positions(row, where), len(row)
            size_at = _image_size_positions(row, sizes)
            continue
        if len(row) != width:
            raise DatasetError(
                f"{where}: expected {width} fields separated by {separator!r} (file,x1,y1,x2,y2,label, or the "
                f"columns of the header), got {len(row)}: {row}"
            )
        name, *coordinates, label = (row[at].strip() for at in positions)
        given = image_file(images_dir, name)
        path = given.resolve()
        if path not in image_ids:
            if not path.is_file():
                missing.setdefault(name, []).append(number)
                continue
            image_ids[path] = builder.add_image(given)
            if given != file_in(images_dir, name):
                found_by_name.append(f"{name} -> {given}")
        if (size := _labelled_size(row, size_at)) is not None:
            labelled.setdefault(image_ids[path], size)
        if not any(coordinates) and not label:
            continue  # an image without boxes
        try:
            box = tuple(float(v) for v in coordinates)
        except ValueError:
            raise DatasetError(f"{where}: x1,y1,x2,y2 must be numbers, got {coordinates}") from None
        if not label:
            raise DatasetError(f"{where}: the label is empty")
        if sizes:
            box = (box[0], box[1], box[0] + box[2], box[1] + box[3])
        boxes.append((image_ids[path], label, box, where))
    if missing:
        here = (
            "; they are there relative to the current folder: --images ." if any(map(os.path.isfile, missing)) else ""
        )
        raise DatasetError(
            f"{sum(map(len, missing.values()))} row(s) name {len(missing)} image(s) that do not exist (paths are "
            f"relative to {images_dir}; pass the folder they are relative to with --images DIR{here}): "
            + listing([f"{csv_file}:{lines[0]}: {image_file(images_dir, n)}" for n, lines in missing.items()])
        )
    if not image_ids:
        raise DatasetError(f"{csv_file} holds no rows; expected file,x1,y1,x2,y2,label")
    normalised = _normalised(boxes, builder)
    frames, mismatches = _labelled_frames(boxes, labelled, builder, normalised)
    for image_id, label, box, where in boxes:
        path, image_width, image_height = builder.image(image_id)
        orientation, (sx, sy), _ = frames.get(image_id, (1, (1.0, 1.0), ""))
        frame = (image_height, image_width) if orientation in SWAPS_SIDES else (image_width, image_height)
        if normalised:
            box = tuple(v * side for v, side in zip(box, frame * 2, strict=True))
        if image_id in frames and box[2] >= box[0] and box[3] >= box[1]:  # an inverted box stays one, to be dropped
            box = box_to_stored((box[0] * sx, box[1] * sy, box[2] * sx, box[3] * sy), orientation, *frame)
        builder.add_box(image_id, label, box, where)
    warn_size_mismatches(str(csv_file), "CSV width/height", mismatches)
    if normalised:
        logger.warning(
            "%s: every box coordinate is within [0, 1], so they are read as fractions of each image's width and "
            "height (normalised), not pixels",
            csv_file,
        )
    warn_found_by_name(csv_file, images_dir, found_by_name)
    fix = "a row naming the image with its box fields empty imports it without boxes"
    unlisted = warn_images_left_out(images_dir, image_ids, f"row in {csv_file.name}", fix)
    coco = builder.build(out_file)
    coco["info"]["stats"]["normalised_coordinates"] = normalised
    coco["info"]["stats"]["found_by_name"] = len(found_by_name)
    coco["info"]["stats"]["size_differs_from_csv"] = len(mismatches["differs"])
    coco["info"]["stats"]["scaled_to_resized_image"] = len(mismatches["scaled"])
    coco["info"]["stats"]["turned_from_exif"] = len(mismatches["turned"])
    coco["info"]["stats"]["images_without_row"] = len(unlisted)
    return write_coco(coco, out_file)


def _labelled_frames(
    boxes: list[tuple[int, str, tuple[float, ...], str]],
    labelled: dict[int, tuple[int, int]],
    builder: CocoBuilder,
    normalised: bool,
) -> tuple[dict[int, tuple[int, tuple[float, float], str]], dict[str, list[str]]]:
    """Per image whose width/height columns differ from its file: :func:`~.common.labelled_frame`'s (orientation,
    scale, kind), and the images listed by kind. Fractions of the image (``normalised``) need no scale."""
    of_image: dict[int, list[tuple[float, ...]]] = {}
    for image_id, _, box, _ in boxes:
        of_image.setdefault(image_id, []).append(box)
    frames, mismatches = {}, {"turned": [], "scaled": [], "differs": []}
    for image_id, size in labelled.items():
        path, width, height = builder.image(image_id)
        orientation, scale, kind = labelled_frame(path, size, (width, height), of_image.get(image_id, []))
        if normalised and kind != "turned":
            continue
        if kind:
            frames[image_id] = (orientation, scale, kind)
            turn = f" stored, EXIF orientation {orientation}" if kind == "turned" else ""
            mismatches[kind].append(f"{path}: width/height {size[0]}x{size[1]}, image {width}x{height}{turn}")
    return frames, mismatches


def _normalised(boxes: list[tuple[int, str, tuple[float, ...], str]], builder: CocoBuilder) -> bool:
    """Whether the boxes are fractions of their image's sides: every coordinate within [0, 1] (in pixels every
    box would fit in the image's first pixel) on images larger than a pixel."""
    return bool(boxes) and all(
        0.0 <= v <= 1.0 and min(builder.image(image_id)[1:]) > 1 for image_id, _, box, _ in boxes for v in box
    )


def _separator(text: str) -> str:
    """The field separator of a CSV text: of comma, semicolon and tab, the one that splits its first non-empty
    line into the most fields (a comma on a tie)."""
    first = next((line for line in text.splitlines() if line.strip()), "")
    return max(",;\t", key=lambda separator: len(next(csv.reader([first], delimiter=separator), [])))


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True
