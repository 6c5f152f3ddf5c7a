"""COCO JSON -> COCO JSON that works from anywhere: ids checked and remapped where needed, image paths made
absolute or relative to the output file."""

from __future__ import annotations

import logging
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from pycocotools import mask as mask_utils

from ..coco import MAX_EXAMPLES, DatasetError, dataset_name_category, file_in, lacks_extent, load_json
from ..orientation import STORED_FROM_TURNED, box_to_stored, labelled_turned, point_to_stored
from .common import image_file, image_size, json_image_path, listing, warn_found_by_name, write_coco

logger = logging.getLogger(__name__)


def _needs_new_ids(entries: list[dict]) -> bool:
    """Ids must be unique positive integers; anything else (strings, 0, repeats, absent) is renumbered."""
    ids = [entry.get("id") for entry in entries]
    return not all(type(i) is int and i > 0 for i in ids) or len(set(ids)) != len(ids)


def _check_unique_ids(entries: list[dict], key: str, json_file: Path) -> None:
    """Images and categories are what annotations point to: a repeated id makes the pointer ambiguous."""
    shown = "file_name" if key == "images" else "name"
    by_id: dict[str, list[dict]] = defaultdict(list)
    for entry in entries:
        by_id[repr(entry.get("id"))].append(entry)  # repr: ids of any JSON type, 1 and "1" apart
    repeated = [f"id {group[0].get('id')}: {[e.get(shown) for e in group]}" for group in by_id.values() if group[1:]]
    if repeated:
        raise DatasetError(
            f"{json_file}: {len(repeated)} id(s) appear more than once in '{key}' "
            f"({listing(repeated)}); the annotations that point to such an id cannot be told "
            f"apart, so give each of the {key} its own id"
        )


def _segmentation_bbox(segmentation: Any) -> list[float] | None:
    """[x, y, w, h] around a polygon list or an RLE (pycocotools), or None when there is none to read."""
    if isinstance(segmentation, list) and segmentation and all(isinstance(p, list) for p in segmentation):
        xs = [float(v) for polygon in segmentation for v in polygon[0::2]]
        ys = [float(v) for polygon in segmentation for v in polygon[1::2]]
        return [min(xs), min(ys), max(xs) - min(xs), max(ys) - min(ys)] if xs and ys else None
    if isinstance(segmentation, dict) and "counts" in segmentation and "size" in segmentation:
        height, width = segmentation["size"]
        rle = mask_utils.frPyObjects(segmentation, height, width) if isinstance(segmentation["counts"], list) else None
        return [float(v) for v in mask_utils.toBbox(rle or segmentation)]
    return None


def _add_missing_bboxes(data: dict, json_file: Path) -> int:
    """Give annotations with a segmentation but no ``bbox`` the box around it; returns how many."""
    added = 0
    for ann in data["annotations"]:
        if "bbox" in ann:
            continue
        bbox = _segmentation_bbox(ann.get("segmentation"))
        if bbox is None:
            raise DatasetError(
                f"{json_file}: annotation {ann.get('id', '?')} has neither a 'bbox' nor a polygon or RLE "
                "'segmentation' to take one from"
            )
        ann["bbox"] = bbox
        added += 1
    return added


def _without_extent(bbox: Any) -> bool:
    """Whether a COCO [x, y, w, h] has no positive width or height (a click, not a box; 1e-9 counts as none,
    :func:`lacks_extent`); a malformed one is left to data check."""
    try:
        x, y, w, h = (float(v) for v in bbox[:4])
        return lacks_extent(x, y, x + w, y + h)
    except (TypeError, ValueError, KeyError):
        return False


def _labelled_turned(image: dict, path: Path) -> int:
    """The EXIF orientation of the image file when the JSON's size is its turned view's (see
    :func:`~sparse_detector.data.orientation.labelled_turned`); 1 for an unreadable image (data check lists it)."""
    try:
        return labelled_turned(path, (image["width"], image["height"]), image_size(path))
    except DatasetError:
        return 1


def _turn_to_stored(ann: dict, orientation: int, width: int, height: int) -> None:
    """Bring an annotation drawn on the turned view (``width`` x ``height``) to the stored pixels: its bbox, polygon
    points and RLE mask."""
    try:
        x, y, w, h = (float(v) for v in ann["bbox"])
    except (TypeError, ValueError):
        return  # a malformed bbox: data check names it
    x0, y0, x1, y1 = box_to_stored((x, y, x + w, y + h), orientation, width, height)
    ann["bbox"] = [x0, y0, x1 - x0, y1 - y0]
    segmentation = ann.get("segmentation")
    if isinstance(segmentation, list):
        ann["segmentation"] = [
            [
                v
                for i in range(0, len(polygon) - 1, 2)
                for v in point_to_stored(*polygon[i : i + 2], orientation, width, height)
            ]
            for polygon in segmentation
            if isinstance(polygon, list)
        ]
    elif isinstance(segmentation, dict) and "counts" in segmentation:
        rle = (
            mask_utils.frPyObjects(segmentation, height, width)
            if isinstance(segmentation["counts"], list)
            else segmentation
        )
        mask = Image.fromarray(mask_utils.decode(rle)).transpose(STORED_FROM_TURNED[orientation])
        stored = mask_utils.encode(np.asfortranarray(np.asarray(mask)))
        ann["segmentation"] = {"size": stored["size"], "counts": stored["counts"].decode("ascii")}


def import_coco(json_file: str | Path, out_file: str | Path, images_dir: str | Path | None = None) -> dict[str, Any]:
    """Re-write a COCO instances JSON for this project: a Roboflow export's category named like the dataset left out
    (:func:`~sparse_detector.data.coco.dataset_name_category`), image, category and annotation ids renumbered 1..N
    where they are not unique positive integers (references follow; a repeated image or category id is an
    error), ``file_name`` made absolute or relative to ``out_file``, a missing ``bbox`` taken from the
    segmentation, a missing ``width`` / ``height`` from the image file; an EXIF-rotated photo whose ``width`` /
    ``height`` are its turned view's (labelled as a viewer shows it) has its annotations turned to the stored
    pixels. Boxes and images are checked by
    :func:`~sparse_detector.data.check.check_dataset` (``data import`` and ``data check`` run it).
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
    _check_unique_ids(data["images"], "images", json_file)
    _check_unique_ids(data["categories"], "categories", json_file)
    boxes_from_segmentation = _add_missing_bboxes(data, json_file)
    if left_out := dataset_name_category(data["categories"], data["annotations"]):  # a Roboflow export's, not a class
        data["categories"] = [category for category in data["categories"] if category is not left_out]
    remapped, dropped, renumbered_categories = [], {}, {}
    for key, reference in (("images", "image_id"), ("categories", "category_id")):
        if _needs_new_ids(data[key]):
            new_ids = {}
            for number, entry in enumerate(data[key], start=1):
                new_ids.setdefault(str(entry.get("id")), number)
                entry["id"] = number
            # an id pointing to no entry would, kept, point to a renumbered one (another image or class)
            unknown = [ann for ann in data["annotations"] if str(ann.get(reference)) not in new_ids]
            if unknown:
                dropped[f"unknown_{reference.removesuffix('_id')}"] = len(unknown)
                logger.warning(
                    "%s: dropped %d annotation(s) whose %s is not in '%s' (ids renumbered, it would point to another "
                    "one), e.g. %s",
                    json_file,
                    len(unknown),
                    reference,
                    key,
                    listing([f"annotation {ann.get('id')}: {reference} {ann.get(reference)!r}" for ann in unknown]),
                )
                data["annotations"] = [ann for ann in data["annotations"] if str(ann.get(reference)) in new_ids]
            for ann in data["annotations"]:
                ann[reference] = new_ids[str(ann.get(reference))]
            remapped.append(key)
            if key == "categories":
                renumbered_categories = {old_id: new_id for old_id, new_id in new_ids.items() if old_id != str(new_id)}
        else:  # a reference written as a string ("3") as the id it names, which other tools match by type
            ids = {str(entry["id"]): entry["id"] for entry in data[key]}
            for ann in data["annotations"]:
                if reference in ann:
                    ann[reference] = ids.get(str(ann[reference]), ann[reference])
    if without_extent := [ann for ann in data["annotations"] if _without_extent(ann.get("bbox"))]:
        dropped["zero_area"] = len(without_extent)
        logger.warning(
            "%s: dropped %d annotation(s) whose bbox has no positive width or height (as the other importers and "
            "official DETR drop them), e.g. %s",
            json_file,
            len(without_extent),
            listing([f"annotation {ann.get('id')}: bbox {ann.get('bbox')}" for ann in without_extent]),
        )
        data["annotations"] = [ann for ann in data["annotations"] if not _without_extent(ann.get("bbox"))]
    if _needs_new_ids(data["annotations"]):
        for number, ann in enumerate(data["annotations"], start=1):
            ann["id"] = number
        remapped.append("annotations")
    for image in data["images"]:
        if "file_name" not in image:
            raise DatasetError(f"{json_file}: image {image.get('id')} has no file_name")
    paths = {id(image): image_file(images_dir, image["file_name"]) for image in data["images"]}
    if data["images"] and not any(path.is_file() for path in paths.values()):
        raise DatasetError(
            f"none of the {len(data['images'])} images of {json_file} is in {images_dir} (e.g. "
            f"{data['images'][0]['file_name']}); pass the folder its file names are relative to with --images DIR"
        )
    sizes_read = 0
    turned: list[str] = []
    relocated: list[str] = []  # absolute paths of the labeller's machine, found by name in images_dir
    annotations_of = defaultdict(list)
    for ann in data["annotations"]:
        annotations_of[ann.get("image_id")].append(ann)
    for image in data["images"]:
        path = paths[id(image)]
        if path != file_in(images_dir, image["file_name"]):
            relocated.append(f"{image['file_name']} -> {path}")
        if not (image.get("width") and image.get("height")) and path.is_file():  # a missing file: data check lists it
            image["width"], image["height"] = image_size(path)
            sizes_read += 1
        elif path.is_file() and (orientation := _labelled_turned(image, path)) != 1:
            for ann in annotations_of[image["id"]]:
                _turn_to_stored(ann, orientation, image["width"], image["height"])
            turned.append(f"{image['file_name']} (EXIF orientation {orientation}, {image['width']}x{image['height']})")
            image["width"], image["height"] = image["height"], image["width"]
        image["file_name"] = json_image_path(path, Path(out_file))
    warn_found_by_name(json_file, images_dir, relocated)
    if turned:
        logger.warning(
            "%s: %d image(s) were labelled on their EXIF-turned view (the JSON's width and height are the turned "
            "image's): their boxes and segmentations are turned to the stored pixels, which training and predict "
            "read, e.g. %s",
            json_file,
            len(turned),
            turned[:MAX_EXAMPLES],
        )
    data.setdefault("info", {})["stats"] = {
        "images": len(data["images"]),
        "annotations": len(data["annotations"]),
        "remapped_ids": remapped,
        "renumbered_categories": renumbered_categories,  # old id -> new id, where they differ
        "dataset_name_category": left_out and {"id": left_out.get("id"), "name": left_out.get("name")},
        "dropped": dropped,
        "boxes_from_segmentation": boxes_from_segmentation,
        "sizes_from_files": sizes_read,
        "turned_from_exif": len(turned),
        "found_by_name": len(relocated),
        "source": str(json_file),
    }
    return write_coco(data, out_file)
