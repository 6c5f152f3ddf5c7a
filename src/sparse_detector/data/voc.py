"""Pascal VOC (XML per image) -> COCO instances JSON."""

from __future__ import annotations

import json
import logging
import xml.etree.ElementTree as ET
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image

from sparse_detector.data.coco import MAX_EXAMPLES, DatasetError

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class _VocObject:
    name: str
    box: tuple[float, float, float, float]  # xmin, ymin, xmax, ymax: 1-based, inclusive
    difficult: bool


@dataclass(frozen=True)
class _VocImage:
    file_name: str
    width: int
    height: int
    objects: tuple[_VocObject, ...]


def _text(element: ET.Element, tag: str, xml_file: Path, what: str) -> str:
    child = element.find(tag)
    if child is None or child.text is None or not child.text.strip():
        raise DatasetError(f"{xml_file}: {what} has no <{tag}>; every VOC object needs <name> and <bndbox>")
    return child.text.strip()


def _parse_annotation(xml_file: Path, images_dir: Path) -> _VocImage:
    """Read one VOC XML file; errors name the file and the offending element."""
    try:
        root = ET.parse(xml_file).getroot()
    except ET.ParseError as err:
        line, column = err.position
        raise DatasetError(f"{xml_file}: malformed XML at line {line}, column {column}: {err}") from err
    file_name = root.findtext("filename", default="").strip() or f"{xml_file.stem}.jpg"
    image_path = images_dir / file_name
    if not image_path.is_file():
        raise DatasetError(f"{xml_file}: image {image_path} does not exist; check <filename> and JPEGImages")
    try:
        width, height = int(root.findtext("size/width", "0")), int(root.findtext("size/height", "0"))
    except ValueError as err:
        raise DatasetError(f"{xml_file}: <size> width/height are not integers: {err}") from err
    if width <= 0 or height <= 0:
        with Image.open(image_path) as img:  # header only, no decoding
            width, height = img.size
    objects = []
    for index, obj in enumerate(root.iter("object")):
        what = f"object {index}"
        name = _text(obj, "name", xml_file, what)
        bndbox = obj.find("bndbox")
        if bndbox is None:
            raise DatasetError(f"{xml_file}: {what} ({name}) has no <bndbox>")
        try:
            box = tuple(float(_text(bndbox, k, xml_file, f"{what} ({name})")) for k in ("xmin", "ymin", "xmax", "ymax"))
        except ValueError as err:
            raise DatasetError(f"{xml_file}: {what} ({name}) has a non-numeric box coordinate: {err}") from err
        difficult = obj.findtext("difficult", default="0").strip() == "1"
        objects.append(_VocObject(name, box, difficult))
    return _VocImage(file_name, width, height, tuple(objects))


def voc_to_coco(
    voc_root: str | Path,
    split: str = "trainval",
    out_file: str | Path | None = None,
    include_difficult: bool = True,
    class_names: Sequence[str] | None = None,
) -> dict[str, Any]:
    """Convert the images of ``ImageSets/Main/{split}.txt`` to a COCO dict (written to ``out_file`` if given).

    Conventions:
    - VOC boxes are 1-based inclusive pixel indices, so COCO ``[x, y, w, h] = [xmin - 1, ymin - 1,
      xmax - xmin + 1, ymax - ymin + 1]``.
    - Categories get ids 1..C in ``class_names`` order, or sorted by name over all XML files in
      ``Annotations/`` (so every split of one dataset gets the same categories). Image ids are positions
      (1-based) in the sorted list of all XML files, so an image keeps its id across splits.
    - Every annotation carries ``difficult`` (0/1). With ``include_difficult=False`` difficult objects get
      ``iscrowd = ignore = 1``: left out of training targets and ignored by COCO evaluation (as in VOC eval).
    - Boxes with ``xmax <= xmin`` or ``ymax <= ymin`` in the XML (e.g. BCCD's two point-like boxes, a single
      click rather than an object) are dropped, counted and logged as a warning.

    The returned dict's ``info["stats"]`` holds: ``split``, ``images``, ``annotations``, ``per_class``
    (name -> kept boxes), ``difficult``, ``dropped`` (reason -> count) and ``dropped_examples``.
    """
    root = Path(voc_root)
    annotations_dir, images_dir = root / "Annotations", root / "JPEGImages"
    split_file = root / "ImageSets" / "Main" / f"{split}.txt"
    for required in (annotations_dir, images_dir, split_file):
        if not required.exists():
            raise DatasetError(
                f"{required} does not exist; a VOC root needs Annotations/, JPEGImages/ and {split_file}"
            )
    all_stems = sorted(p.stem for p in annotations_dir.glob("*.xml"))
    image_ids = {stem: i + 1 for i, stem in enumerate(all_stems)}
    split_stems = [line.split()[0] for line in split_file.read_text().splitlines() if line.strip()]
    unknown = [s for s in split_stems if s not in image_ids]
    if unknown:
        raise DatasetError(
            f"{split_file}: {len(unknown)} image(s) have no XML in {annotations_dir}, e.g. {unknown[:5]}"
        )
    parsed = {s: _parse_annotation(annotations_dir / f"{s}.xml", images_dir) for s in split_stems}

    if class_names is None:
        other = (_parse_annotation(annotations_dir / f"{s}.xml", images_dir) for s in all_stems if s not in parsed)
        class_names = sorted({o.name for img in (*parsed.values(), *other) for o in img.objects})
    category_ids = {name: i + 1 for i, name in enumerate(class_names)}

    images, annotations = [], []
    per_class: Counter[str] = Counter({name: 0 for name in class_names})
    dropped: Counter[str] = Counter()
    examples: list[str] = []
    for stem, image in parsed.items():
        image_id = image_ids[stem]
        images.append({"id": image_id, "file_name": image.file_name, "width": image.width, "height": image.height})
        for index, obj in enumerate(image.objects):
            if obj.name not in category_ids:
                raise DatasetError(
                    f"{annotations_dir / stem}.xml: object {index} has class {obj.name!r}, not in "
                    f"class_names {list(class_names)}; add it to class_names"
                )
            xmin, ymin, xmax, ymax = obj.box
            if xmax <= xmin or ymax <= ymin:
                dropped["zero_area"] += 1
                if len(examples) < MAX_EXAMPLES:
                    examples.append(f"{stem}.xml object {index} ({obj.name}) box {list(obj.box)}")
                continue
            w, h = xmax - xmin + 1, ymax - ymin + 1
            ignore = int(obj.difficult and not include_difficult)
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": image_id,
                    "category_id": category_ids[obj.name],
                    "bbox": [xmin - 1, ymin - 1, w, h],
                    "area": w * h,
                    "iscrowd": ignore,
                    "ignore": ignore,
                    "difficult": int(obj.difficult),
                }
            )
            per_class[obj.name] += 1
    if dropped:
        logger.warning(
            "%s split %s: dropped %d box(es) with zero or negative extent: %s",
            root,
            split,
            dropped.total(),
            examples,
        )
    stats = {
        "split": split,
        "images": len(images),
        "annotations": len(annotations),
        "per_class": dict(per_class),
        "difficult": sum(a["difficult"] for a in annotations),
        "dropped": dict(dropped),
        "dropped_examples": examples,
    }
    coco = {
        "info": {
            "description": f"Pascal VOC {root.name} split {split!r} converted to COCO format",
            "stats": stats,
        },
        "licenses": [],
        "images": images,
        "annotations": annotations,
        "categories": [{"id": i, "name": name, "supercategory": "none"} for name, i in category_ids.items()],
    }
    if out_file is not None:
        out_path = Path(out_file)
        out_path.parent.mkdir(parents=True, exist_ok=True)
        out_path.write_text(json.dumps(coco))
    return coco
