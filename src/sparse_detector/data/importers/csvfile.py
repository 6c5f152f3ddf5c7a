"""CSV boxes (``file,x1,y1,x2,y2,label`` a row, absolute pixels) -> COCO JSON.

A header row is recognised by a non-numeric ``x1``. A row with an image but empty box fields marks an image
without boxes. Image paths are relative to ``images_dir`` (default: the CSV file's folder) or absolute.
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

from ..coco import DatasetError
from .common import CocoBuilder


def import_csv(csv_file: str | Path, out_file: str | Path, images_dir: str | Path | None = None) -> dict[str, Any]:
    """Rows ``file,x1,y1,x2,y2,label`` -> COCO JSON at ``out_file``; classes sorted by name."""
    csv_file = Path(csv_file)
    if not csv_file.is_file():
        raise DatasetError(f"CSV file {csv_file} does not exist")
    images_dir = Path(images_dir) if images_dir else csv_file.parent
    builder = CocoBuilder(str(csv_file))
    image_ids: dict[str, int] = {}
    with open(csv_file, newline="", encoding="utf-8") as f:
        for number, row in enumerate(csv.reader(f), start=1):
            if not row or (number == 1 and not _is_number(row[1] if len(row) > 1 else "")):
                continue  # blank line or header
            where = f"{csv_file}:{number}"
            if len(row) != 6:
                raise DatasetError(f"{where}: expected 6 fields file,x1,y1,x2,y2,label, got {len(row)}: {row}")
            name, *coordinates, label = (field.strip() for field in row)
            if name not in image_ids:
                path = images_dir / name
                if not path.is_file():
                    raise DatasetError(f"{where}: image {path} does not exist (paths are relative to {images_dir})")
                image_ids[name] = builder.add_image(path)
            if not any(coordinates) and not label:
                continue  # an image without boxes
            try:
                box = tuple(float(v) for v in coordinates)
            except ValueError:
                raise DatasetError(f"{where}: x1,y1,x2,y2 must be numbers, got {coordinates}") from None
            if not label:
                raise DatasetError(f"{where}: the label is empty")
            builder.add_box(image_ids[name], label, box, where)
    if not image_ids:
        raise DatasetError(f"{csv_file} holds no rows; expected file,x1,y1,x2,y2,label")
    return builder.write(out_file)


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True
