"""COCO JSON -> COCO JSON that works from anywhere: ids checked and remapped where needed, image paths made
absolute or relative to the output file."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..coco import DatasetError, load_json
from .common import json_image_path, write_coco


def _needs_new_ids(entries: list[dict]) -> bool:
    """Ids must be unique positive integers; anything else (strings, 0, repeats, absent) is renumbered."""
    ids = [entry.get("id") for entry in entries]
    return not all(type(i) is int and i > 0 for i in ids) or len(set(ids)) != len(ids)


def import_coco(json_file: str | Path, out_file: str | Path, images_dir: str | Path | None = None) -> dict[str, Any]:
    """Re-write a COCO instances JSON for this project: image, category and annotation ids renumbered 1..N
    where they are not unique positive integers (references follow), ``file_name`` made absolute or relative to
    ``out_file``. Boxes and images are checked by :func:`~sparse_detector.data.check.check_dataset`
    (``data import`` and ``data check`` run it).
    """
    json_file = Path(json_file)
    if not json_file.is_file():
        raise DatasetError(f"COCO file {json_file} does not exist")
    data = load_json(json_file)
    missing = [key for key in ("images", "annotations", "categories") if not isinstance(data.get(key), list)]
    if missing:
        raise DatasetError(
            f"{json_file}: lacks the list(s) {missing}; a COCO instances file has images, annotations, categories"
        )
    images_dir = Path(images_dir) if images_dir else json_file.parent
    remapped = []
    for key, reference in (("images", "image_id"), ("categories", "category_id")):
        if _needs_new_ids(data[key]):
            new_ids = {}
            for number, entry in enumerate(data[key], start=1):
                new_ids.setdefault(entry.get("id"), number)
                entry["id"] = number
            for ann in data["annotations"]:
                ann[reference] = new_ids.get(ann.get(reference), ann.get(reference))
            remapped.append(key)
    if _needs_new_ids(data["annotations"]):
        for number, ann in enumerate(data["annotations"], start=1):
            ann["id"] = number
        remapped.append("annotations")
    for image in data["images"]:
        if "file_name" not in image:
            raise DatasetError(f"{json_file}: image {image.get('id')} has no file_name")
        image["file_name"] = json_image_path(images_dir / image["file_name"], Path(out_file))
    data.setdefault("info", {})["stats"] = {
        "images": len(data["images"]),
        "annotations": len(data["annotations"]),
        "remapped_ids": remapped,
        "source": str(json_file),
    }
    return write_coco(data, out_file)
