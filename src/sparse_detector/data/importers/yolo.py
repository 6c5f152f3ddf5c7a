"""YOLO txt labels -> COCO JSON.

One ``<stem>.txt`` per image with lines ``class x_center y_center width height`` (normalised to [0, 1]); class
names from ``classes.txt`` (one a line) or a ``data.yaml`` (``names:`` as a list or an index -> name mapping).
Images without a label file are kept as images without boxes.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from ..coco import DatasetError
from .common import IMAGE_SUFFIXES, CocoBuilder


def read_class_names(path: str | Path) -> list[str]:
    """Class names by index from ``classes.txt`` / ``*.names`` (one a line) or a YOLO ``data.yaml``."""
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"class names file {path} does not exist")
    if path.suffix in (".yaml", ".yml"):
        names = (yaml.safe_load(path.read_text()) or {}).get("names")
        if isinstance(names, dict):
            return [str(names[k]) for k in sorted(names, key=int)]
        if not isinstance(names, list):
            raise DatasetError(f"{path}: expected 'names:' as a list or an index -> name mapping, got {names!r}")
        return [str(n) for n in names]
    return [line.strip() for line in path.read_text().splitlines() if line.strip()]


def _yolo_boxes(label_file: Path, width: int, height: int, names: Sequence[str]) -> list[tuple[str, tuple, str]]:
    """(class name, absolute xyxy box, where) of every line of a label file."""
    boxes = []
    for number, line in enumerate(label_file.read_text().splitlines(), start=1):
        fields = line.split()
        if not fields:
            continue
        where = f"{label_file}:{number}"
        try:
            index = int(fields[0])
            cx, cy, w, h = (float(v) for v in fields[1:5])
        except (ValueError, IndexError):
            raise DatasetError(f"{where}: expected 'class x_center y_center width height', got {line!r}") from None
        if not 0 <= index < len(names):
            raise DatasetError(f"{where}: class index {index} is outside the {len(names)} class names")
        box = ((cx - w / 2) * width, (cy - h / 2) * height, (cx + w / 2) * width, (cy + h / 2) * height)
        boxes.append((names[index], box, where))
    return boxes


def _default_labels_dir(images_dir: Path) -> Path:
    """YOLO exports put ``.../images/<split>/x.jpg`` beside ``.../labels/<split>/x.txt``; else labels sit with
    the images."""
    parts = images_dir.parts
    if "images" in parts:
        at = len(parts) - 1 - parts[::-1].index("images")
        labels = Path(*parts[:at], "labels", *parts[at + 1 :])
        if labels.is_dir():
            return labels
    return images_dir


def import_yolo(
    images_dir: str | Path,
    out_file: str | Path,
    classes: str | Path,
    labels_dir: str | Path | None = None,
) -> dict[str, Any]:
    """The images of ``images_dir`` with their ``labels_dir/<stem>.txt`` -> COCO JSON at ``out_file``.

    ``labels_dir`` defaults to the ``labels`` counterpart of an ``images`` folder when there is one, else to
    ``images_dir`` itself. ``classes``: ``classes.txt`` or ``data.yaml``; category ids are 1..C in its order.
    """
    images_dir = Path(images_dir)
    if not images_dir.is_dir():
        raise DatasetError(f"images folder {images_dir} does not exist")
    labels_dir = Path(labels_dir) if labels_dir else _default_labels_dir(images_dir)
    names = read_class_names(classes)
    images = sorted(p for p in images_dir.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not images:
        raise DatasetError(f"no images ({', '.join(IMAGE_SUFFIXES)}) in {images_dir}")
    builder = CocoBuilder(str(images_dir), names)
    for image in images:
        image_id = builder.add_image(image)
        label_file = labels_dir / f"{image.stem}.txt"
        if label_file.is_file():
            _, width, height = builder.image(image_id)
            for name, box, where in _yolo_boxes(label_file, width, height, names):
                builder.add_box(image_id, name, box, where)
    return builder.write(out_file)
