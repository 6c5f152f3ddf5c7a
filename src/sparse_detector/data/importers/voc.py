"""Pascal VOC XML (one file per image) -> COCO JSON, in the standard layout or any other.

Standard: ``VOC_ROOT/Annotations/*.xml``, ``JPEGImages/``, ``ImageSets/Main/<split>.txt``. Any other: an
annotations folder and an images folder (the same one is fine), matched by the XML's ``<filename>`` or else by
file name stem, optionally restricted to the stems of a list file.

VOC boxes are 1-based inclusive pixel indices, so the COCO box is ``[xmin - 1, ymin - 1, xmax - xmin + 1,
ymax - ymin + 1]``. Every annotation carries ``difficult`` (0/1); with ``include_difficult=False`` difficult
objects get ``iscrowd = ignore = 1`` (out of the training targets, ignored by COCO evaluation, as in VOC eval).
"""

from __future__ import annotations

import logging
import xml.etree.ElementTree as ET
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..coco import MAX_EXAMPLES, DatasetError, in_other_case
from ..orientation import box_to_stored
from .common import (
    IMAGE_SUFFIXES,
    CocoBuilder,
    files_under,
    find_image,
    image_file,
    is_hidden,
    labelled_frame,
    listing,
    read_list_file,
    warn_images_left_out,
    warn_size_mismatches,
    write_coco,
)

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class VocObject:
    """One <object> of a VOC XML file."""

    name: str
    box: tuple[float, float, float, float]  # xmin, ymin, xmax, ymax: 1-based, inclusive
    difficult: bool


@dataclass(frozen=True)
class VocAnnotation:
    """What one VOC XML file says of its image and objects."""

    xml_file: Path
    file_name: str  # <filename>, "" when absent
    width: int  # 0 when <size> is absent
    height: int
    objects: tuple[VocObject, ...]


def _text(element: ET.Element, tag: str, where: str) -> str:
    child = element.find(tag)
    if child is None or child.text is None or not child.text.strip():
        raise DatasetError(f"{where} has no <{tag}>; every VOC object needs <name> and <bndbox>")
    return child.text.strip()


def _parse_object(obj: ET.Element, where: str) -> VocObject:
    name = _text(obj, "name", where)
    bndbox = obj.find("bndbox")
    if bndbox is None:
        raise DatasetError(f"{where} ({name}) has no <bndbox>")
    try:
        box = tuple(float(_text(bndbox, k, f"{where} ({name})")) for k in ("xmin", "ymin", "xmax", "ymax"))
    except ValueError as err:
        raise DatasetError(f"{where} ({name}) has a non-numeric box coordinate: {err}") from err
    return VocObject(name, box, obj.findtext("difficult", default="0").strip() == "1")


def parse_voc_xml(xml_file: Path) -> VocAnnotation:
    """Read one VOC XML file; errors name the file and the offending element."""
    try:
        root = ET.parse(xml_file).getroot()
    except ET.ParseError as err:
        line, column = err.position
        try:  # an undeclared encoding (Latin-1 names from an older tool) reads as 'not well-formed'
            xml_file.read_bytes().decode("utf-8")
            hint = ""
        except UnicodeDecodeError:
            hint = '; the file is not UTF-8: save it as UTF-8, or declare its encoding (<?xml version="1.0" '
            hint += 'encoding="ISO-8859-1"?> for Latin-1)'
        raise DatasetError(f"{xml_file}: malformed XML at line {line}, column {column}: {err}{hint}") from err
    try:  # '640.0', as some converters write it, is 640
        width, height = (round(float(root.findtext(f"size/{side}", "0"))) for side in ("width", "height"))
    except (ValueError, OverflowError) as err:
        raise DatasetError(f"{xml_file}: <size> width/height are not numbers: {err}") from err
    objects = tuple(_parse_object(obj, f"{xml_file}: object {i}") for i, obj in enumerate(root.iter("object")))
    return VocAnnotation(xml_file, root.findtext("filename", default="").strip(), width, height, objects)


def _image_of(annotation: VocAnnotation, images_dir: Path) -> Path:
    """The image an XML file describes: its <filename> in ``images_dir`` (:func:`image_file`: also in another letter
    case), else the image named like the XML."""
    if annotation.file_name and (named := image_file(images_dir, annotation.file_name)).is_file():
        return named
    found = find_image(images_dir, annotation.xml_file.stem)
    if found is None:
        named = f"<filename> {annotation.file_name!r} nor " if annotation.file_name else ""
        raise DatasetError(
            f"{annotation.xml_file}: no image for it in {images_dir} (neither {named}an image named "
            f"{annotation.xml_file.stem}.*); pass the images folder with --images"
        )
    return found


def _without_file_suffix(name: str) -> str:
    """A list file's entry without an image or ``.xml`` suffix, if it has one; dots inside a stem (``frame.001``)
    stay."""
    suffix = Path(name).suffix
    return name[: -len(suffix)] if suffix.lower() in (*IMAGE_SUFFIXES, ".xml") else name


def _xml_files_in(annotations_dir: Path) -> list[Path]:
    """The XML files of a folder (``.xml`` in any case: ``.XML`` as Windows tools may write it), hidden ones (a Mac's
    ``._name.xml`` resource forks) left out."""
    return sorted(f for f in annotations_dir.iterdir() if f.suffix.lower() == ".xml" and not is_hidden(f.name))


def _listed_xml(annotations_dir: Path, name: str) -> Path:
    """The XML file of a list file's entry: ``<stem>.xml``, or the one file of that name in another letter case."""
    path = annotations_dir / f"{_without_file_suffix(name)}.xml"
    return path if path.is_file() else in_other_case(path) or path


def _xml_files(annotations_dir: Path, list_file: Path | None) -> list[Path]:
    if not annotations_dir.is_dir():
        raise DatasetError(f"annotations folder {annotations_dir} does not exist")
    if list_file is None:
        files = _xml_files_in(annotations_dir)
        if not files:
            raise DatasetError(f"no .xml files in {annotations_dir}")
        if nested := [str(f) for f in files_under(annotations_dir, (".xml",)) if f.parent != annotations_dir]:
            logger.warning(
                "%s: %d XML file(s) in its subfolders are not read (pass such a folder with --annotations), e.g. %s",
                annotations_dir,
                len(nested),
                nested[:MAX_EXAMPLES],
            )
        return files
    files = [_listed_xml(annotations_dir, name) for name in read_list_file(list_file)]
    missing = [f.name for f in files if not f.is_file()]
    if missing:
        raise DatasetError(
            f"{list_file}: {len(missing)} listed image(s) have no XML in {annotations_dir}, e.g. {missing[:5]}"
        )
    return files


def _check_one_xml_per_image(parsed: Sequence[VocAnnotation], images: Sequence[Path]) -> None:
    """Fail naming them where several XML files describe one image (e.g. a copy ``a (1).xml`` of ``a.xml``):
    imported as they are, the image would be two entries, each with part of the boxes or with every box twice."""
    xml_files: dict[Path, list[str]] = {}
    for annotation, image in zip(parsed, images, strict=True):
        xml_files.setdefault(image.resolve(), []).append(annotation.xml_file.name)
    shared = [f"{image}: {', '.join(names)}" for image, names in xml_files.items() if len(names) > 1]
    if shared:
        raise DatasetError(
            f"{len(shared)} image(s) are described by more than one XML file: {listing(shared)}; keep one XML per "
            "image (merge their <object>s into it if they hold different boxes)"
        )


def import_voc(
    annotations_dir: str | Path,
    out_file: str | Path,
    images_dir: str | Path | None = None,
    list_file: str | Path | None = None,
    class_names: Sequence[str] | None = None,
    include_difficult: bool = True,
    already_parsed: Mapping[Path, VocAnnotation] | None = None,
) -> dict[str, Any]:
    """VOC XML files of ``annotations_dir`` (all, or the stems of ``list_file``) -> COCO JSON at ``out_file``.

    ``images_dir`` defaults to ``annotations_dir``. Classes: ``class_names`` (ids 1..C in that order), else
    sorted by name. Boxes with ``xmax <= xmin`` or ``ymax <= ymin`` (e.g. a single click) are dropped, counted
    in ``info["stats"]["dropped"]`` and logged. Image sizes are read from the image files; an XML ``<size>``
    that differs is counted in ``info["stats"]["size_differs_from_xml"]`` and logged, but for an EXIF-rotated
    photo labelled on its turned view (``<size>`` the stored one's sides swapped): its boxes are turned to the
    stored pixels, counted in ``info["stats"]["turned_from_exif"]`` and logged; for an image resized after
    labelling (see :func:`~.common.resized_scale`) its boxes are scaled to it, counted in
    ``info["stats"]["scaled_to_resized_image"]`` and logged. Returns the written COCO
    dict. ``already_parsed``: XML files the caller has parsed (by path), not read again.
    """
    annotations_dir = Path(annotations_dir)
    images_dir = Path(images_dir) if images_dir else annotations_dir
    if not images_dir.is_dir():
        raise DatasetError(f"images folder {images_dir} does not exist")
    known = already_parsed or {}
    files = _xml_files(annotations_dir, Path(list_file) if list_file else None)
    parsed = [known[f] if f in known else parse_voc_xml(f) for f in files]
    matched = [_image_of(annotation, images_dir) for annotation in parsed]
    _check_one_xml_per_image(parsed, matched)
    builder = CocoBuilder(str(annotations_dir), class_names)
    mismatches: dict[str, list[str]] = {"turned": [], "scaled": [], "differs": []}
    for annotation, image in zip(parsed, matched, strict=True):
        image_id = builder.add_image(image)
        _, width, height = builder.image(image_id)
        xml_size = (annotation.width, annotation.height)
        boxes = [obj.box for obj in annotation.objects]
        orientation, scale, kind = labelled_frame(image, xml_size, (width, height), boxes)
        if kind:
            sizes = f"{annotation.xml_file} <size> {annotation.width}x{annotation.height}, image {width}x{height}"
            mismatches[kind].append(f"{sizes} stored, EXIF orientation {orientation}" if kind == "turned" else sizes)
        for index, obj in enumerate(annotation.objects):
            xmin, ymin, xmax, ymax = obj.box
            where = f"{annotation.xml_file} object {index} ({obj.name})"
            if xmax <= xmin or ymax <= ymin:  # e.g. BCCD's point-like boxes: a single click, not an object
                builder.drop("zero_area", f"{where}: box {list(obj.box)}")
                continue
            ignore = int(obj.difficult and not include_difficult)
            builder.add_box(
                image_id,
                obj.name,
                box_to_stored(
                    ((xmin - 1) * scale[0], (ymin - 1) * scale[1], xmax * scale[0], ymax * scale[1]),
                    orientation,
                    *xml_size,
                ),
                where,
                difficult=int(obj.difficult),
                iscrowd=ignore,
                ignore=ignore,
            )
    unlabelled = warn_images_left_out(images_dir, matched, "XML") if list_file is None else []
    warn_size_mismatches(str(annotations_dir), "XML <size>", mismatches)
    coco = builder.build(out_file)
    coco["info"]["stats"]["size_differs_from_xml"] = len(mismatches["differs"])
    coco["info"]["stats"]["scaled_to_resized_image"] = len(mismatches["scaled"])
    coco["info"]["stats"]["turned_from_exif"] = len(mismatches["turned"])
    coco["info"]["stats"]["images_without_xml"] = len(unlabelled)
    return write_coco(coco, out_file)


def _voc_root_hint(root: Path, split_file: Path) -> str:
    """What to pass instead: the VOC roots inside ``root`` (``VOCdevkit/VOC2012``), the splits it has, or for a
    folder of XML files without ImageSets (as labelling tools export them) the options that import them all."""
    if split_file.parent.is_dir():
        # per-class files <class>_<split>.txt (cat_trainval.txt) list every image with a flag; the splits are the others
        stems = {f.stem for f in split_file.parent.glob("*.txt")}
        splits = sorted(stem for stem in stems if not any(stem.endswith(f"_{other}") for other in stems))
        return f"; its splits: {', '.join(splits)} (--split NAME)" if splits else ""
    for xml_dir, images in ((root / "Annotations", root / "JPEGImages"), (root, root)):
        if xml_dir.is_dir() and images.is_dir() and _xml_files_in(xml_dir):
            return f"; to import every XML file of {xml_dir}: --annotations {xml_dir} --images {images}"
    inside = sorted(str(d) for d in root.glob("*") if (d / "Annotations").is_dir())
    return f"; VOC roots inside it: {', '.join(inside)}" if inside else ""


def import_voc_root(
    voc_root: str | Path,
    out_file: str | Path,
    split: str = "trainval",
    class_names: Sequence[str] | None = None,
    include_difficult: bool = True,
) -> dict[str, Any]:
    """A standard VOC folder's ``ImageSets/Main/<split>.txt`` -> COCO JSON.

    Without ``class_names`` the classes are those of every XML in ``Annotations/`` (not only the split's), so
    every split of one data set gets the same category ids.
    """
    root = Path(voc_root)
    annotations_dir, split_file = root / "Annotations", root / "ImageSets" / "Main" / f"{split}.txt"
    for required in (annotations_dir, root / "JPEGImages", split_file):
        if not required.exists():
            raise DatasetError(
                f"{required} does not exist; a standard VOC root holds Annotations/, JPEGImages/ and "
                f"ImageSets/Main/{split}.txt{_voc_root_hint(root, split_file)} (for another layout use --images DIR "
                "--annotations DIR)"
            )
    every: dict[Path, VocAnnotation] = {}
    if class_names is None:  # each XML parsed once: the split's are most of them
        every = {f: parse_voc_xml(f) for f in _xml_files_in(annotations_dir)}
        class_names = sorted({o.name for annotation in every.values() for o in annotation.objects})
    images = root / "JPEGImages"
    return import_voc(annotations_dir, out_file, images, split_file, class_names, include_difficult, every)
