"""COCO-format detection dataset (any number of categories) with validation at construction time."""

from __future__ import annotations

import contextlib
import functools
import gc
import io
import json
import logging
import math
import os
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from PIL import Image
from pycocotools.coco import COCO
from torch import Tensor
from torch.utils.data import Dataset

from ..config import OnInvalid
from ..files import file_kind
from ..logs import RANK_SPECIFIC
from . import heif
from .labels import LabelMap, LabelMode
from .orientation import labelled_turned

if TYPE_CHECKING:
    from .transforms import Transform

logger = logging.getLogger(__name__)

MAX_EXAMPLES = 5


# Grayscale deeper than 8 bits: 16-bit PNG and TIFF (``I;16*``), 32-bit integer (``I``) and float (``F``) TIFF;
# PIL's own RGB conversion clips them.
HIGH_BIT_DEPTH_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I", "F")
# Bit depths that sensors and scientific formats store (10-, 12- and 14-bit data are saved in 16-bit files).
COMMON_BIT_DEPTHS = (8, 10, 12, 14, 16, 24, 32)


def full_scale(pixels: np.ndarray, floating: bool, bit_depth: int = 0) -> float:
    """The value that is white in deep grayscale ``pixels`` (non-negative): ``2**bit_depth - 1`` when a
    ``bit_depth`` is given (``data.bit_depth``, one for the whole data set); else, found per image, 1 for a
    ``floating`` image within [0, 1], or ``2**bits - 1`` for the least of :data:`COMMON_BIT_DEPTHS` that holds its
    brightest pixel. A file does not say that its 16 bits hold 12-bit data, so 12-bit data in a 16-bit PNG fills
    0-255 and 8-bit values in a 32-bit TIFF stay as they are."""
    if bit_depth:
        return float(2**bit_depth - 1)
    brightest = float(pixels.max(initial=0))
    if floating and brightest <= 1:
        return 1.0
    bits = next((b for b in COMMON_BIT_DEPTHS if brightest <= 2**b - 1), 64)
    return float(2**bits - 1)


@functools.cache
def _warn_brighter(name: str, brightest: float, bit_depth: int) -> None:
    """Once a process per image: its pixels above ``data.bit_depth``'s white are read as white."""
    logger.warning(
        "%s has pixels up to %g, above data.bit_depth=%d's white (%d): they are read as white; set data.bit_depth to "
        "the depth the images were recorded at, or 0 to find it per image",
        name or "an image",
        brightest,
        bit_depth,
        2**bit_depth - 1,
    )


def to_rgb(image: Image.Image, bit_depth: int = 0) -> Image.Image:
    """An image as 8-bit RGB; deeper grayscale (:data:`HIGH_BIT_DEPTH_MODES`) is scaled from its :func:`full_scale`
    to 0-255 (negative values and NaN black), the same for training, evaluation, predict and figures."""
    if image.mode in HIGH_BIT_DEPTH_MODES:
        pixels = np.array(image, dtype=np.float32)  # in place from here: a drone mosaic's copies would add up
        np.nan_to_num(pixels, copy=False, nan=0.0, posinf=0.0, neginf=0.0)
        np.clip(pixels, 0, None, out=pixels)
        white = full_scale(pixels, floating=image.mode == "F", bit_depth=bit_depth)
        if bit_depth and (brightest := float(pixels.max(initial=0))) > white:
            _warn_brighter(getattr(image, "filename", ""), brightest, bit_depth)
        pixels *= 255 / white
        image = Image.fromarray(np.rint(np.clip(pixels, 0, 255, out=pixels)).astype(np.uint8))
    return image.convert("RGB")


# What PIL raises for a file it cannot read as an image: truncated, corrupt, not an image, or too many pixels.
UNREADABLE_IMAGE_ERRORS = (OSError, SyntaxError, Image.DecompressionBombError)


@contextlib.contextmanager
def open_image(path: Path) -> Iterator[Image.Image]:
    """``Image.open``, with what to do added to Pillow's refusal of an image above its decompression-bomb limit (a
    genuine one: a drone mosaic, a slide scan); HEIC photos too where pillow-heif is installed."""
    heif.register()
    try:
        with Image.open(path) as image:
            yield image
    except Image.DecompressionBombError as err:
        raise Image.DecompressionBombError(
            f"{err} Pillow refuses images this large; tile a genuine one into parts (training and predict shrink "
            "every image to data.max_size pixels on its longer side, so its small objects would vanish anyway)"
        ) from None


def _decoded_from_high_bytes(image: Image.Image) -> bool:
    """Whether Pillow decodes ``image`` (opened, not yet loaded) from 16 bits a channel to 8 by keeping each value's
    high byte: colour, or grayscale with alpha, PNG and TIFF (it has no mode for them at 16 bits)."""
    args = image.tile[0].args if image.tile else None
    rawmode = args[0] if isinstance(args, tuple) and args else args
    return isinstance(rawmode, str) and ";16" in rawmode and image.mode not in HIGH_BIT_DEPTH_MODES


@functools.cache
def _warn_high_bytes(name: str, brightest: int) -> None:
    """Once a process per image: a 16-bit colour image that its high bytes leave dark."""
    logger.warning(
        "%s has 16 bits a colour channel, which Pillow reads by their high byte: its brightest value is %d of 255, "
        "as data of fewer bits (a 12-bit camera's) in a 16-bit file reads; convert such images to 8 bits scaled by "
        "their depth",
        name,
        brightest,
    )


def read_rgb(path: Path, bit_depth: int = 0) -> Image.Image:
    """Decode the image file ``path`` as 8-bit RGB (:func:`to_rgb`, deep grayscale's white from ``bit_depth``, 0: per
    image); one of ``UNREADABLE_IMAGE_ERRORS`` when it cannot be read. A 16-bit colour image is decoded by Pillow
    from its high bytes (:func:`_decoded_from_high_bytes`); one whose top bit is unused, darker by half or more than
    the grayscale rule would read it, is named in a warning."""
    with open_image(path) as image:
        high_bytes = _decoded_from_high_bytes(image)
        rgb = to_rgb(image, bit_depth)
    if high_bytes and (brightest := max(most for _, most in rgb.getextrema())) < 128:
        _warn_high_bytes(str(path), brightest)
    return rgb


class DatasetError(ValueError):
    """A dataset file or annotation is missing or invalid; the message names it and says what to do."""


@dataclass
class _ImageRecord:
    """One image and its non-crowd training annotations (boxes absolute xyxy, clipped to the image)."""

    image_id: int
    file_name: str
    width: int
    height: int
    boxes: np.ndarray  # (N, 4) float32
    labels: np.ndarray  # (N,) int64
    area: np.ndarray  # (N,) float32


@contextlib.contextmanager
def gc_paused() -> Iterator[None]:
    """Python's cyclic garbage collector paused (as it was, after): reading a large annotation file makes millions
    of objects and no reference cycles, and the collections they set off took most of the reading time."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def check_annotation_file(path: Path, fix: str = "check the path") -> None:
    """A ``DatasetError`` naming ``path`` unless it is a file: absent (``fix`` says what to do), or a folder given
    where its JSON was meant."""
    if path.is_dir():
        inside = sorted(p.name for p in path.glob("*.json"))
        example = f" (it holds {', '.join(inside[:3])})" if inside else ""
        raise DatasetError(f"annotation file {path} is a folder; give the COCO JSON file{example}")
    if not path.is_file():
        raise DatasetError(f"annotation file {path} does not exist; {fix}")


def load_json(path: Path) -> dict[str, Any]:
    """Parse a JSON object file, raising ``DatasetError`` naming it when it is absent or (with the error position)
    malformed."""
    check_annotation_file(Path(path))
    try:
        with open(path, encoding="utf-8-sig") as f, gc_paused():  # -sig: a BOM, as some Windows tools write
            data = json.load(f)
    except UnicodeDecodeError as err:
        with open(path, "rb") as f:
            kind = file_kind(f.read(8))
        if kind:
            raise DatasetError(f"{path} is not a JSON file but {kind}: give the annotation file (COCO JSON)") from err
        raise DatasetError(
            f"{path}: not UTF-8 text (byte {err.object[err.start]:#x} at offset {err.start}); JSON files are UTF-8, "
            "so convert it (e.g. iconv -f latin1 -t utf-8)"
        ) from err
    except json.JSONDecodeError as err:
        raise DatasetError(
            f"{path}: not valid JSON at line {err.lineno}, column {err.colno} (char {err.pos}): {err.msg}. "
            "Fix the file or regenerate it."
        ) from err
    if not isinstance(data, dict):
        raise DatasetError(f"{path}: expected a JSON object at the top level, found {type(data).__name__}")
    return data


def file_in(folder: Path, name: str) -> Path:
    """The file ``name`` (relative to ``folder``, or absolute) names; a name written on Windows (``train\\a.jpg``)
    is read with '/' where only that spelling exists."""
    path = folder / name
    if "\\" in name and os.sep == "/" and not path.exists():
        other = folder / name.replace("\\", "/")
        return other if other.exists() else path
    return path


@functools.lru_cache(maxsize=8)  # a few folders' listings, not every folder's ever read
def _names_by_case(folder: Path, modified: int) -> dict[str, list[str]]:
    """The names in ``folder`` by their lower case (``modified``, its mtime, keeps the cache current)."""
    by_case: dict[str, list[str]] = {}
    for name in os.listdir(folder):
        by_case.setdefault(name.lower(), []).append(name)
    return by_case


def in_other_case(path: Path) -> Path | None:
    """The one file whose name differs from missing ``path``'s only in letter case (``IMG_0001.JPG`` for a JSON's
    ``IMG_0001.jpg``: Windows, where the labelling was done, does not tell them apart), or None."""
    try:
        names = _names_by_case(path.parent, path.parent.stat().st_mtime_ns).get(path.name.lower(), [])
    except OSError:  # no such folder (or its name differs in case too)
        return None
    return path.parent / names[0] if len(names) == 1 and (path.parent / names[0]).is_file() else None


def _case_hint(path: Path, annotation_file: Path, images_dir: Path) -> str:
    """What to do about missing ``path`` when a file of its name in another letter case exists; else ''."""
    if (other := in_other_case(path)) is None:
        return ""
    return (
        f" ({other.name} there differs only in letter case; `sparse-detector data import coco {annotation_file} "
        f"--images {images_dir} --out NEW.json` writes the names as the files are)"
    )


def require_keys(entry: dict, keys: Sequence[str], what: str, path: Path) -> None:
    """A ``DatasetError`` naming ``what`` in ``path`` and the keys it lacks of ``keys``."""
    missing = [k for k in keys if k not in entry]
    if missing:
        raise DatasetError(f"{path}: {what} lacks required key(s) {missing}; COCO format needs {list(keys)}")


def lacks_extent(x0: float, y0: float, x1: float, y1: float) -> bool:
    """Whether the corners x0, y0, x1, y1 enclose no area at the float32 precision of the training targets (a width
    of 0 or 1e-9; x1 < x0 too); NaN is not judged here (it is malformed)."""
    return bool(np.float32(x1) <= np.float32(x0) or np.float32(y1) <= np.float32(y0))


def _clip_box(bbox: Any, width: int, height: int) -> tuple[list[float] | None, str]:
    """COCO [x, y, w, h] -> clipped xyxy, or (None, reason) for a degenerate or fully outside box."""
    if not isinstance(bbox, list | tuple) or len(bbox) != 4:
        return None, "malformed_bbox"
    try:
        x, y, w, h = (float(v) for v in bbox)
    except (TypeError, ValueError):
        return None, "malformed_bbox"
    if not all(math.isfinite(v) for v in (x, y, w, h)):
        return None, "malformed_bbox"
    if w <= 0 or h <= 0:
        return None, "non_positive_size"
    x0, y0 = min(max(x, 0.0), width), min(max(y, 0.0), height)
    x1, y1 = min(max(x + w, 0.0), width), min(max(y + h, 0.0), height)
    if x1 <= x0 or y1 <= y0:
        return None, "outside_image"
    if lacks_extent(x0, y0, x1, y1):
        return None, "non_positive_size"
    return [x0, y0, x1, y1], ""


def whole_number(value: Any, what: str, path: Path) -> int:
    """An id as an int (also written as a string, '3'); another value is an error saying how to renumber the ids."""
    try:
        return int(value)
    except (TypeError, ValueError):
        raise DatasetError(
            f"{path}: {what} {value!r} is not a whole number, as COCO ids are; `sparse-detector data import coco "
            f"{path} --out NEW.json` renumbers the ids (and what points to them)"
        ) from None


def id_or_none(value: Any) -> int | None:
    """An annotation's reference as an int, or None when it is no whole number (it points to nothing)."""
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def _read_categories(categories: list[dict], path: Path) -> dict[int, str]:
    """Category id -> name; ids must be unique and there must be at least one."""
    for cat in categories:
        require_keys(cat, ("id", "name"), f"category {cat}", path)
    names = {whole_number(c["id"], "category id", path): str(c["name"]) for c in categories}
    if len(names) != len(categories):
        raise DatasetError(f"{path}: duplicate category ids in 'categories'")
    if not names:
        raise DatasetError(f"{path}: 'categories' is empty; add at least one category")
    if min(names) < 0:
        raise DatasetError(f"{path}: category id {min(names)} is negative; category ids must be >= 0")
    return names


def dataset_name_category(categories: list[dict], annotations: list[dict]) -> dict | None:
    """The category a Roboflow COCO export adds for the dataset itself (id 0, named like the dataset, supercategory
    "none"), not a class: the one category that no annotation uses and that every other category names as its
    supercategory; ``None`` when there is none."""
    used: set[str] | None = None  # the category ids the annotations use, read only for a candidate
    for category in categories:
        others = [other for other in categories if other is not category]
        if others and all(other.get("supercategory") == category.get("name") for other in others):
            used = used or {str(i) for i in {ann.get("category_id") for ann in annotations}}
            if str(category.get("id")) not in used:
                return category
    return None


def _annotation_problem(ann: dict, reason: str, image: dict | None) -> str:
    on_file = f" on {image['file_name']}" if image is not None else ""
    return (
        f"annotation id {ann.get('id', '?')} (image_id {ann['image_id']}{on_file}, category_id {ann['category_id']}, "
        f"bbox {ann['bbox']}): {_REASON_HELP[reason]}"
    )


_Box = tuple[list[float], int, float]  # clipped xyxy, label, area


_REASON_HELP = {
    "malformed_bbox": "bbox must be a list of 4 finite numbers [x, y, width, height]",
    "non_positive_size": "bbox width and height must be > 0",
    "outside_image": "bbox lies entirely outside the image",
    "unknown_category": "category_id is not in 'categories'",
    "unknown_image": "image_id is not in 'images'",
}


class CocoDetection(Dataset):
    """Images + COCO instances JSON -> ``(image, target)`` pairs for DETR training.

    ``images_dir`` is the folder ``file_name`` entries are relative to (default: the JSON's folder; absolute
    ``file_name`` entries, as ``data import`` writes for images outside it, ignore it). Labels follow
    ``label_mode`` (see :mod:`sparse_detector.data.labels`). Crowd annotations (``iscrowd=1``) are left out of the
    targets (``num_crowd`` counts them); images without annotations are kept with empty targets. Boxes reaching
    past the image border are clipped to it, here and in the evaluation ground truth (:attr:`coco`), and counted
    in ``num_clipped`` (one warning). Invalid annotations (malformed / zero-size / fully outside boxes, unknown
    category or image) raise ``DatasetError``, or with ``on_invalid="skip"`` are dropped and counted in
    ``skipped`` (reason -> count). With ``check_images`` every image is decoded up front; an unreadable one is an
    error, or with ``on_invalid="skip"`` is left out (counted in ``skipped["bad_image"]``). Without it, an
    image that fails to decode while loading raises, or under ``skip`` yields ``None`` (logged), which
    :func:`~sparse_detector.data.batching.collate_detection` drops from its batch. ``bit_depth``: deep grayscale's
    white, ``2**bit_depth - 1`` for every image, or 0 to find it per image (:func:`full_scale`).

    The target holds ``boxes`` (absolute xyxy pixels before ``transforms``; the transforms end by converting
    them to normalised cxcywh), ``labels``, ``image_id``, ``area``, ``iscrowd``, ``orig_size``, ``size`` (h, w).
    Without ``transforms`` the image becomes a [0, 1] float tensor and boxes normalised cxcywh all the same.
    """

    def __init__(
        self,
        images_dir: str | Path | None,
        annotation_file: str | Path,
        transforms: Transform | None = None,
        label_mode: LabelMode = "contiguous",
        on_invalid: OnInvalid = "error",
        check_images: bool = False,
        bit_depth: int = 0,
    ) -> None:
        if on_invalid not in ("error", "skip"):
            raise ValueError(f"on_invalid must be 'error' or 'skip', got {on_invalid!r}")
        self.annotation_file = Path(annotation_file)
        check_annotation_file(self.annotation_file, "check the dataset path")
        self.images_dir = Path(images_dir) if images_dir else self.annotation_file.parent
        if not self.images_dir.is_dir():
            raise DatasetError(f"images directory {self.images_dir} does not exist; check the dataset path")
        if transforms is not None:
            self.transforms = transforms
        self.on_invalid = on_invalid
        self.bit_depth = bit_depth
        self.skipped: Counter[str] = Counter()
        self.num_crowd = 0
        self.num_clipped = 0
        self.boxes_left_out = 0  # non-crowd boxes of images left out (missing or unreadable), gone with them
        self.problems: list[str] = []  # every skipped annotation / image, described with its ids
        self._skipped_positions: set[int] = set()
        self._clipped_bboxes: dict[int, list[float]] = {}  # annotation position -> clipped COCO [x, y, w, h]
        with gc_paused():
            data = load_json(self.annotation_file)
            require_keys(data, ("images", "annotations", "categories"), "the file", self.annotation_file)
            categories = _read_categories(data["categories"], self.annotation_file)
            self.labels = LabelMap.from_categories(categories, label_mode)
            self.dataset_name_category = dataset_name_category(data["categories"], data["annotations"])
            images = self._read_images(data["images"])
            per_image = self._read_annotations(data["annotations"], images)
            self._records = [_record(img, per_image[image_id]) for image_id, img in images.items()]
        if check_images:
            self._check_images()

    def _read_images(self, entries: list[dict]) -> dict[int, dict]:
        """Image id -> entry; every listed file must exist."""
        path = self.annotation_file
        images: dict[int, dict] = {}
        for img in entries:
            require_keys(img, ("id", "file_name", "width", "height"), f"image entry {img.get('id', img)}", path)
            if (image_id := whole_number(img["id"], "image id", path)) in images:
                raise DatasetError(f"{path}: image id {img['id']} appears twice in 'images'")
            images[image_id] = img
            name = str(img["file_name"])
            if "\\" in name and file_in(self.images_dir, name) != self.images_dir / name:  # written on Windows
                img["file_name"] = name.replace("\\", "/")
        missing = {i: img for i, img in images.items() if not (self.images_dir / img["file_name"]).is_file()}
        if missing and self.on_invalid == "error":
            names = [str(img["file_name"]) for img in missing.values()]
            if all(Path(name).is_absolute() for name in names):  # as data import writes images outside its folder
                where, fix = "do not exist", "restore them or remove them from the JSON"
            else:
                where = f"are missing from {self.images_dir}"
                fix = (
                    "check the folder the file names are relative to: data.<split>.images (evaluate, analyze: --images)"
                )
            hint = next(filter(None, (_case_hint(self.images_dir / n, path, self.images_dir) for n in names)), "")
            raise DatasetError(
                f"{len(missing)} image file(s) listed in {path} {where}, e.g. {names[:MAX_EXAMPLES]}{hint}; {fix}, or "
                "set data.on_invalid=skip to leave them out"
            )
        self._missing_images = set(missing)
        if missing:
            self.skipped["missing_image"] += len(missing)
            self.problems += [
                f"image id {i}: file {self.images_dir / img['file_name']} is missing"
                + _case_hint(self.images_dir / img["file_name"], path, self.images_dir)
                for i, img in missing.items()
            ]
            logger.warning("%s: left out %d missing image file(s)", path, len(missing))
        return {i: img for i, img in images.items() if i not in missing}

    def _read_annotations(self, annotations: list[dict], images: dict[int, dict]) -> dict[int, list[_Box]]:
        """Image id -> its valid non-crowd boxes; invalid ones raise or are skipped (``on_invalid``). The boxes of
        images left out as missing go with them (counted with the image)."""
        path = self.annotation_file
        category_to_label = self.labels.category_to_label
        per_image: dict[int, list[_Box]] = {i: [] for i in images}
        kept: list[tuple[int, list[float], list[float]]] = []  # (position, clipped xywh, given bbox) of valid boxes
        for position, ann in enumerate(annotations):
            if "bbox" not in ann and "segmentation" in ann:  # a segmentation data set's: its box is around it
                raise DatasetError(
                    f"{path}: annotation {ann.get('id', '?')} has a segmentation but no 'bbox'; `sparse-detector data "
                    f"import coco {path} --out NEW.json` takes each missing box from its segmentation"
                )
            require_keys(ann, ("bbox", "category_id", "image_id"), f"annotation {ann.get('id', '?')}", path)
            image_id, category_id = id_or_none(ann["image_id"]), id_or_none(ann["category_id"])
            img = images.get(image_id)
            reason = ""
            if image_id in self._missing_images:
                self.boxes_left_out += not ann.get("iscrowd", 0)
                continue  # its image was left out as missing; the evaluation ground truth drops both
            if img is None:
                reason = "unknown_image"
            elif category_id not in category_to_label:
                reason = "unknown_category"
            else:
                box, reason = _clip_box(ann["bbox"], int(img["width"]), int(img["height"]))
            if reason:
                detail = _annotation_problem(ann, reason, img)
                if self.on_invalid == "error":
                    raise DatasetError(
                        f"{path}: {detail}. Fix or remove the annotation, or set data.on_invalid=skip to drop "
                        "invalid annotations"
                    )
                self.skipped[reason] += 1
                self._skipped_positions.add(position)
                self.problems.append(detail)
                continue
            xywh = [box[0], box[1], box[2] - box[0], box[3] - box[1]]
            kept.append((position, xywh, [float(v) for v in ann["bbox"]]))
            if ann.get("iscrowd", 0):
                self.num_crowd += 1
                continue
            area = float(ann.get("area", xywh[2] * xywh[3]))
            per_image[image_id].append((box, category_to_label[category_id], area))
        self._find_clipped(kept)
        if self.skipped:
            with_boxes = f" and the {self.boxes_left_out} box(es) on the missing images" if self.boxes_left_out else ""
            logger.warning(
                "%s: skipped %d invalid annotation(s) or missing image(s) %s%s; first examples: %s",
                path,
                sum(self.skipped.values()),
                dict(self.skipped),
                with_boxes,
                "; ".join(self.problems[:MAX_EXAMPLES]),
            )
        if self.num_clipped:
            logger.warning(
                "%s: %d box(es) reach past their image border; clipped to it in training and evaluation",
                path,
                self.num_clipped,
            )
        return per_image

    def _find_clipped(self, kept: list[tuple[int, list[float], list[float]]]) -> None:
        """Count the boxes that clipping changed and keep their clipped [x, y, w, h] for the evaluation ground truth:
        one ``np.isclose`` over all boxes (called per box, its overhead was half the time of reading the file)."""
        if not kept:
            return
        positions, clipped, given = zip(*kept, strict=True)
        unchanged = np.isclose(np.array(clipped), np.array(given)).all(axis=1)
        changed = zip(positions, clipped, ~unchanged, strict=True)
        self._clipped_bboxes = {position: xywh for position, xywh, was_clipped in changed if was_clipped}
        self.num_clipped = len(self._clipped_bboxes)

    def _check_images(self) -> None:
        """Decode every image; unreadable ones raise or (``on_invalid="skip"``) are left out with their boxes,
        counted and logged."""
        good, bad, bad_boxes = [], [], 0
        for index, record in enumerate(self._records):
            try:
                self.load_image(index)
                good.append(record)
            except DatasetError as err:
                if self.on_invalid == "error":
                    raise DatasetError(f"{err}, or set data.on_invalid=skip to leave such images out") from err
                bad.append(record.file_name)
                bad_boxes += len(record.labels)
                self.problems.append(str(err))
        if bad:
            self.skipped["bad_image"] += len(bad)
            self.boxes_left_out += bad_boxes
            logger.warning(
                "%s: left out %d unreadable or mis-sized image(s) and the %d box(es) on them: %s",
                self.annotation_file,
                len(bad),
                bad_boxes,
                bad,
            )
        self._records = good

    @cached_property
    def transforms(self) -> Transform:
        """The transforms given, or by default image to tensor and boxes to normalised cxcywh (made on first use:
        reading and checking a data set needs no torchvision)."""
        from .transforms import Compose, ToModelTarget, ToTensor

        return Compose([ToTensor(), ToModelTarget()])

    @property
    def num_classes(self) -> int:
        return self.labels.num_classes

    @property
    def category_names(self) -> list[str]:
        return self.labels.category_names

    @property
    def label_map(self) -> dict[str, Any]:
        """Plain-data description of the labels, for checkpoints (``torch.load(weights_only=True)``-safe)."""
        return self.labels.to_dict()

    @cached_property
    def coco(self) -> COCO:
        """pycocotools ``COCO`` index of the annotation file for ``COCOeval``: skipped annotations and images
        removed, boxes clipped to their image exactly as in the training targets, ids as ints (an id written as a
        string, "3", is read as 3 for training, and the index matches ids by type).

        Built on first use by re-reading the file, so the dataset stays small in ``DataLoader`` workers.
        """
        with gc_paused():
            data = load_json(self.annotation_file)
            image_ids = set(self.image_ids)
            data["images"] = [{**img, "id": int(img["id"])} for img in data["images"] if int(img["id"]) in image_ids]
            data["categories"] = [{**category, "id": int(category["id"])} for category in data["categories"]]
            data["annotations"] = [
                {
                    **ann,
                    "image_id": int(ann["image_id"]),
                    "category_id": int(ann["category_id"]),
                    "bbox": self._clipped_bboxes.get(position, ann["bbox"]),
                }
                for position, ann in enumerate(data["annotations"])
                if position not in self._skipped_positions and int(ann["image_id"]) in image_ids
            ]
            coco = COCO()
            coco.dataset = data
            with contextlib.redirect_stdout(io.StringIO()):
                coco.createIndex()
        return coco

    @property
    def num_boxes(self) -> int:
        """Number of (non-crowd, valid) boxes in the targets."""
        return sum(self.boxes_per_image())

    def boxes_per_image(self) -> list[int]:
        """Number of (non-crowd, valid) target boxes of every image, in index order."""
        return [len(r.labels) for r in self._records]

    @property
    def image_ids(self) -> list[int]:
        """The id of every image, in the data set's order (index ``i`` is ``self[i]``'s)."""
        return [r.image_id for r in self._records]

    def __len__(self) -> int:
        return len(self._records)

    def image_path(self, index: int) -> Path:
        """The file of image ``index``."""
        return self.images_dir / self._records[index].file_name

    def load_image(self, index: int) -> Image.Image:
        """Decode image ``index`` as RGB, raising ``DatasetError`` naming the file if it is unreadable or not the size
        the JSON says."""
        record = self._records[index]
        path = self.image_path(index)
        try:
            image = read_rgb(path, self.bit_depth)
        except UNREADABLE_IMAGE_ERRORS as err:
            raise DatasetError(
                f"cannot read image {path} (image id {record.image_id}): {err}; replace the file"
            ) from err
        return self._sized(index, image)

    def _sized(self, index: int, image: Image.Image) -> Image.Image:
        """``image``, the decoded file of image ``index``, if it is the size the JSON says, else a ``DatasetError``."""
        record = self._records[index]
        path = self.image_path(index)
        if image.size != (record.width, record.height):
            fix = "fix the JSON width/height"
            if (orientation := labelled_turned(path, (record.width, record.height), image.size)) != 1:
                fix = (
                    f"that is its EXIF-turned view's size (orientation {orientation}), so its boxes were drawn on "
                    f"the turned image: `sparse-detector data import coco {self.annotation_file} --out NEW.json` "
                    "turns them to the stored pixels"
                )
            raise DatasetError(
                f"image {path} (image id {record.image_id}) is {image.width}x{image.height} but "
                f"{self.annotation_file} says {record.width}x{record.height}; {fix}"
            )
        return image

    def raw_target(self, index: int) -> dict[str, Tensor]:
        """Target before transforms: absolute xyxy pixel boxes clipped to the image."""
        r = self._records[index]
        hw = torch.tensor([r.height, r.width], dtype=torch.int64)
        return {
            "boxes": torch.from_numpy(r.boxes.copy()),
            "labels": torch.from_numpy(r.labels.copy()),
            "image_id": torch.tensor(r.image_id, dtype=torch.int64),
            "area": torch.from_numpy(r.area.copy()),
            "iscrowd": torch.zeros(len(r.labels), dtype=torch.int64),
            "orig_size": hw,
            "size": hw.clone(),
        }

    def image_sizes(self) -> list[tuple[int, int]]:
        """(height, width) of every image, in index order, from the JSON (no decoding)."""
        return [(r.height, r.width) for r in self._records]

    def __getitem__(self, index: int) -> tuple[Tensor, dict[str, Tensor]] | None:
        return self.sample(index)

    def sample(self, index: int, image: Image.Image | None = None) -> tuple[Tensor, dict[str, Tensor]] | None:
        """Image ``index`` and its target after the transforms, from ``image`` where the caller has decoded its file
        (as :func:`read_rgb` does; decoded here when None); None when ``data.on_invalid=skip`` skips it as unreadable
        or not the size the JSON says."""
        try:
            image = self.load_image(index) if image is None else self._sized(index, image)
        except DatasetError as err:
            if self.on_invalid == "error":
                raise DatasetError(
                    f"{err}; or set data.on_invalid=skip to skip unreadable images (data.check_images=true finds "
                    "them all before training starts)"
                ) from err
            logger.warning("skipped an unreadable image: %s", err, extra=RANK_SPECIFIC)  # in this rank's share
            return None
        image, target = self.transforms(image, self.raw_target(index))
        if not isinstance(image, Tensor):
            raise TypeError(
                f"transforms returned a {type(image).__name__}; they must end with ToTensor and Normalize "
                "(or ToModelTarget) so the image is a tensor and boxes are normalised cxcywh"
            )
        return image, target

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(images={len(self)}, boxes={self.num_boxes}, classes={self.num_classes}, "
            f"label_mode={self.label_mode!r}, crowd_excluded={self.num_crowd}, skipped={dict(self.skipped)})"
        )


def _record(img: dict, annotations: list[_Box]) -> _ImageRecord:
    boxes = np.array([a[0] for a in annotations], dtype=np.float32).reshape(-1, 4)
    return _ImageRecord(
        image_id=int(img["id"]),
        file_name=str(img["file_name"]),
        width=int(img["width"]),
        height=int(img["height"]),
        boxes=boxes,
        labels=np.array([a[1] for a in annotations], dtype=np.int64),
        area=np.array([a[2] for a in annotations], dtype=np.float32),
    )
