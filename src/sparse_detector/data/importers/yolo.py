"""YOLO txt labels -> COCO JSON.

One ``<stem>.txt`` per image with lines ``class x_center y_center width height`` (normalised to [0, 1]), or
``class x1 y1 x2 y2 ...`` (a segmentation polygon, imported as its bounding box, as Ultralytics does); class names
from ``classes.txt`` (one a line) or a ``data.yaml`` (``names:`` as a list or an index -> name mapping). Images are
found in subfolders too, their labels at the same place under the labels folder (given an export's root, each
``images`` folder's labels in the ``labels`` folder beside it). Images without a label file are
kept as images without boxes (as Ultralytics reads them), counted and logged; label files without an image are
counted and logged. The labels of a photo with an
EXIF orientation are fractions of its turned view, the one a viewer shows, as Ultralytics reads such images (and
browser-based labelling tools show them); they are turned to the stored pixels, which training reads.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from ..coco import MAX_EXAMPLES, DatasetError
from ..orientation import SWAPS_SIDES, box_to_stored, exif_orientation
from .common import IMAGE_SUFFIXES, CocoBuilder, files_under, image_files_under, read_text, write_coco

logger = logging.getLogger(__name__)

# Normalised coordinates a little past [0, 1] are rounding; further out they are pixels or another format.
COORDINATE_TOLERANCE = 1e-3


def _yaml_names(path: Path) -> list[str] | dict[str, str] | None:
    """The ``names:`` of a ``data.yaml`` as written: every name as its text (YAML would read a class named ``no``,
    ``on`` or ``null`` as false, true or nothing), a list or an index -> name mapping; None without one. An ``nc:``
    that is not their number is an error, as in Ultralytics."""
    try:
        root = yaml.compose(read_text(path))
    except yaml.YAMLError as err:
        raise DatasetError(f"{path}: not valid YAML: {err}") from None
    pairs = root.value if isinstance(root, yaml.MappingNode) else []
    top = {key.value: value for key, value in pairs if isinstance(key, yaml.ScalarNode)}
    node = top.get("names")
    if node is None:
        return None
    names: list[str] | dict[str, str]
    if isinstance(node, yaml.SequenceNode) and all(isinstance(item, yaml.ScalarNode) for item in node.value):
        names = [item.value for item in node.value]
    elif isinstance(node, yaml.MappingNode) and all(isinstance(n, yaml.ScalarNode) for kv in node.value for n in kv):
        names = {key.value: value.value for key, value in node.value}
    else:
        given = node.value if isinstance(node, yaml.ScalarNode) else "lists or mappings inside it"
        raise DatasetError(f"{path}: expected 'names:' as a list or an index -> name mapping of names, got {given!r}")
    count = top.get("nc")
    if count is not None and not (isinstance(count, yaml.ScalarNode) and count.value.strip() == str(len(names))):
        given = count.value if isinstance(count, yaml.ScalarNode) else "a list or mapping"
        raise DatasetError(
            f"{path}: 'nc: {given}' but 'names:' has {len(names)} names; give every class a name and nc their number "
            "(Ultralytics refuses it too)"
        )
    return names


def read_class_names(path: str | Path) -> list[str]:
    """Class names by index from ``classes.txt`` / ``*.names`` (one a line) or a YOLO ``data.yaml``; a name given
    twice is an error (its two indices would become one class)."""
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"class names file {path} does not exist")
    if path.suffix in (".yaml", ".yml"):
        names = _yaml_names(path)
        if isinstance(names, dict):
            if not all(key.strip().isdigit() for key in names):
                raise DatasetError(
                    f"{path}: the keys of 'names:' {list(names)} are not class indices; write it as "
                    "'0: first_name', '1: second_name', ... (or as a list)"
                )
            if sorted(map(int, names)) != list(range(len(names))):
                raise DatasetError(
                    f"{path}: the class indices of 'names:' {sorted(map(int, names))} are not 0..{len(names) - 1}; "
                    "a label's class index is its position, so give every index from 0 up a name"
                )
            names = [names[k] for k in sorted(names, key=int)]
        if names is None:
            raise DatasetError(f"{path}: no 'names:' (the class names, as a list or an index -> name mapping)")
    else:
        names = [line.strip() for line in read_text(path).splitlines() if line.strip()]
    repeated = {name: [i for i, n in enumerate(names) if n == name] for name in names if names.count(name) > 1}
    if repeated:
        raise DatasetError(
            f"{path}: class names repeat ({'; '.join(f'{n!r} at indices {i}' for n, i in repeated.items())}); each "
            "index is its own class, so give each its own name (or relabel the boxes to one index)"
        )
    return names


def _yolo_box(fields: list[str], where: str) -> tuple[int, tuple[float, float, float, float]]:
    """(class index, normalised xyxy box) of one label line: a box (5 fields) or a polygon (class + >= 3 points)."""
    usage = (
        f"{where}: expected 'class x_center y_center width height' or a polygon 'class x1 y1 x2 y2 x3 y3 ...' "
        f"(normalised to [0, 1]), got {len(fields)} fields: {' '.join(fields)!r}"
    )
    if len(fields) != 5 and (len(fields) < 7 or len(fields) % 2 == 0):
        scored = "; a 6th field is a confidence, as detections saved with their scores carry: labels have none"
        raise DatasetError(usage + (scored if len(fields) == 6 else ""))
    try:
        index, values = float(fields[0]), [float(v) for v in fields[1:]]
    except ValueError:
        raise DatasetError(usage) from None
    if not index.is_integer():  # "1.0" is class 1, as Ultralytics reads it (some converters write floats)
        raise DatasetError(f"{where}: the class index {fields[0]!r} is not a whole number; {usage.split(': ', 1)[1]}")
    if not all(-COORDINATE_TOLERANCE <= v <= 1 + COORDINATE_TOLERANCE for v in values):
        raise DatasetError(
            f"{where}: coordinates {fields[1:]} are not all in [0, 1]; YOLO labels are normalised by the image "
            "width and height (pixels are not)"
        )
    if len(fields) == 5:
        cx, cy, w, h = values
        box = (cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2)
    else:
        xs, ys = values[0::2], values[1::2]
        box = (min(xs), min(ys), max(xs), max(ys))
    # an edge past the border by rounding only (labels written with few decimals) is on the border
    return int(index), tuple(
        min(max(v, 0.0), 1.0) if -COORDINATE_TOLERANCE <= v <= 1 + COORDINATE_TOLERANCE else v for v in box
    )


def _yolo_boxes(label_file: Path, width: int, height: int, names: Sequence[str]) -> list[tuple[str, tuple, str]]:
    """(class name, absolute xyxy box, where) of every line of a label file."""
    boxes = []
    for number, line in enumerate(read_text(label_file).splitlines(), start=1):
        fields = line.split()
        if not fields:
            continue
        where = f"{label_file}:{number}"
        index, (x0, y0, x1, y1) = _yolo_box(fields, where)
        if not 0 <= index < len(names):
            raise DatasetError(f"{where}: class index {index} is outside the {len(names)} class names")
        boxes.append((names[index], (x0 * width, y0 * height, x1 * width, y1 * height), where))
    return boxes


def _turned_view(image: Path, width: int, height: int) -> tuple[int, int, int]:
    """(EXIF orientation, width, height of the view a viewer shows) of an image stored ``width`` x ``height``."""
    orientation = exif_orientation(image) if width else 1  # an unreadable image (size 0) is named by the builder
    return (orientation, height, width) if orientation in SWAPS_SIDES else (orientation, width, height)


def _labels_folder(folder: Path) -> Path | None:
    """``folder`` with its last ``images`` part as ``labels`` (YOLO's pairing of folders), or None without one."""
    parts = folder.parts
    if "images" not in parts:
        return None
    at = len(parts) - 1 - parts[::-1].index("images")
    return Path(*parts[:at], "labels", *parts[at + 1 :])


def _default_labels_dir(images_dir: Path) -> Path:
    """YOLO exports put ``.../images/<split>/x.jpg`` beside ``.../labels/<split>/x.txt``; else labels sit with
    the images."""
    labels = _labels_folder(images_dir)
    return labels if labels is not None and labels.is_dir() else images_dir


def _label_file(labels_dir: Path, image: Path, beside: bool) -> Path:
    """The label file of ``image`` (relative to the folder given) in ``labels_dir``: in the same place, or with
    ``beside`` (labels among the images) in the ``labels`` folder paired with an ``images`` folder of its path when
    there is one, as given an export's root (``train/images/x.jpg`` -> ``train/labels/x.txt``)."""
    same_place = labels_dir / image.with_suffix(".txt")
    paired = _labels_folder(image.parent) if beside else None
    if paired is None or not (labels_dir / paired / same_place.name).is_file():
        return same_place
    return labels_dir / paired / same_place.name


def import_yolo(
    images_dir: str | Path,
    out_file: str | Path,
    classes: str | Path,
    labels_dir: str | Path | None = None,
) -> dict[str, Any]:
    """The images of ``images_dir`` (and its subfolders) with their ``labels_dir/<stem>.txt`` (in the same
    subfolder) -> COCO JSON at ``out_file``.

    ``labels_dir`` defaults to the ``labels`` counterpart of an ``images`` folder when there is one, else to
    ``images_dir`` itself, where an image in an ``images`` subfolder has its labels in the paired ``labels`` one
    (an export's root with ``train/images``, ``train/labels``, ``valid/images``, ...).
    ``classes``: ``classes.txt`` or ``data.yaml``; category ids are 1..C in its order.
    """
    images_dir = Path(images_dir)
    if not images_dir.is_dir():
        raise DatasetError(f"images folder {images_dir} does not exist")
    labels_dir = Path(labels_dir) if labels_dir else _default_labels_dir(images_dir)
    if not labels_dir.is_dir():
        raise DatasetError(f"labels folder {labels_dir} does not exist")
    names = read_class_names(classes)
    images = image_files_under(images_dir)
    if not images:
        raise DatasetError(f"no images ({', '.join(IMAGE_SUFFIXES)}) in {images_dir} or its subfolders")
    builder = CocoBuilder(str(images_dir), names)
    beside = labels_dir.resolve() == images_dir.resolve()  # also given so: --labels EXPORT beside --images EXPORT
    label_files = [_label_file(labels_dir, image.relative_to(images_dir), beside) for image in images]
    turned: list[str] = []
    for image, label_file in zip(images, label_files, strict=True):
        image_id = builder.add_image(image)
        if label_file.is_file():
            orientation, width, height = _turned_view(*builder.image(image_id))
            if orientation != 1:
                turned.append(f"{image} (EXIF orientation {orientation})")
            for name, box, where in _yolo_boxes(label_file, width, height, names):
                builder.add_box(image_id, name, box_to_stored(box, orientation, width, height), where)
    if not any(label_file.is_file() for label_file in label_files):
        raise DatasetError(
            f"none of the {len(images)} images of {images_dir} has a label file in {labels_dir} (e.g. "
            f"{label_files[0]}); pass the folder of the .txt labels with --labels DIR"
        )
    coco = builder.build(out_file)
    expected, classes_file = set(label_files), Path(classes).resolve()
    image_folders = {image.parent for image in images}
    unmatched = sorted(
        f
        for f in files_under(labels_dir, (".txt",))
        if f not in expected
        and f.resolve() != classes_file
        # among the images, only .txt files with images or in a labels/ folder are labels (not README.roboflow.txt)
        and (not beside or f.parent in image_folders or "labels" in f.relative_to(labels_dir).parts[:-1])
    )
    if unlabelled := [str(image) for image, f in zip(images, label_files, strict=True) if not f.is_file()]:
        logger.warning(
            "%s: %d image(s) have no label file, so they are imported without boxes (as Ultralytics reads them), "
            "e.g. %s; if their labels are elsewhere, pass that folder with --labels DIR",
            images_dir,
            len(unlabelled),
            unlabelled[:MAX_EXAMPLES],
        )
    if unmatched:
        logger.warning(
            "%s: %d label file(s) have no image %s, e.g. %s; their boxes are not imported",
            labels_dir,
            len(unmatched),
            IMAGE_SUFFIXES,
            [str(f) for f in unmatched[:MAX_EXAMPLES]],
        )
    if turned:
        logger.warning(
            "%s: %d image(s) carry an EXIF orientation, so their labels are read as fractions of the turned view a "
            "viewer shows (as Ultralytics reads these images) and turned to the stored pixels, which training and "
            "predict read, e.g. %s; if the labels were drawn on the stored pixels (darknet reads them so), remove "
            "the orientation tags (e.g. exiftool -Orientation= -overwrite_original FILES) and import again",
            images_dir,
            len(turned),
            turned[:MAX_EXAMPLES],
        )
    coco["info"]["stats"]["label_files_without_image"] = len(unmatched)
    coco["info"]["stats"]["images_without_label_file"] = len(unlabelled)
    coco["info"]["stats"]["turned_from_exif"] = len(turned)
    return write_coco(coco, out_file)
