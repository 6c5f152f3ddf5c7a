"""COCO-format detection dataset (any number of categories) with validation at construction time."""

from __future__ import annotations

import contextlib
import io
import json
import logging
import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from PIL import Image
from pycocotools.coco import COCO
from torch import Tensor
from torch.utils.data import Dataset

from sparse_detector.data.transforms import Compose, ToModelTarget, ToTensor, Transform

logger = logging.getLogger(__name__)

LabelMode = Literal["contiguous", "coco_ids"]
OnInvalid = Literal["error", "skip"]
MAX_EXAMPLES = 5


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


def load_json(path: Path) -> dict[str, Any]:
    """Parse a JSON object file, raising ``DatasetError`` with the error position on malformed input."""
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except json.JSONDecodeError as err:
        raise DatasetError(
            f"{path}: not valid JSON at line {err.lineno}, column {err.colno} (char {err.pos}): {err.msg}. "
            "Fix the file or regenerate it."
        ) from err
    if not isinstance(data, dict):
        raise DatasetError(f"{path}: expected a JSON object at the top level, found {type(data).__name__}")
    return data


def _require(entry: dict, keys: Sequence[str], what: str, path: Path) -> None:
    missing = [k for k in keys if k not in entry]
    if missing:
        raise DatasetError(f"{path}: {what} lacks required key(s) {missing}; COCO format needs {list(keys)}")


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
    return [x0, y0, x1, y1], ""


_REASON_HELP = {
    "malformed_bbox": "bbox must be a list of 4 finite numbers [x, y, width, height]",
    "non_positive_size": "bbox width and height must be > 0",
    "outside_image": "bbox lies entirely outside the image",
    "unknown_category": "category_id is not in 'categories'",
    "unknown_image": "image_id is not in 'images'",
}


class CocoDetection(Dataset):
    """Images + COCO instances JSON -> ``(image, target)`` pairs for DETR training.

    ``label_mode="contiguous"``: labels 0..C-1 follow sorted category ids. ``label_mode="coco_ids"``
    (official-compat): label = raw category id and ``num_classes = max id + 1`` (91 for COCO).
    Crowd annotations (``iscrowd=1``) are left out of the targets (``num_crowd`` counts them); images without
    annotations are kept with empty targets. Boxes reaching past the image border are clipped to it.
    Invalid annotations (malformed / zero-size / fully outside boxes, unknown category or image) raise
    ``DatasetError``, or with ``on_invalid="skip"`` are dropped and counted in ``skipped`` (reason -> count).

    The target holds ``boxes`` (absolute xyxy pixels before ``transforms``; the transforms end by converting
    them to normalised cxcywh), ``labels``, ``image_id``, ``area``, ``iscrowd``, ``orig_size``, ``size`` (h, w).
    Without ``transforms`` the image becomes a [0, 1] float tensor and boxes normalised cxcywh all the same.
    """

    def __init__(
        self,
        images_dir: str | Path,
        annotation_file: str | Path,
        transforms: Transform | None = None,
        label_mode: LabelMode = "contiguous",
        on_invalid: OnInvalid = "error",
    ) -> None:
        if label_mode not in ("contiguous", "coco_ids"):
            raise ValueError(f"label_mode must be 'contiguous' or 'coco_ids', got {label_mode!r}")
        if on_invalid not in ("error", "skip"):
            raise ValueError(f"on_invalid must be 'error' or 'skip', got {on_invalid!r}")
        self.images_dir = Path(images_dir)
        self.annotation_file = Path(annotation_file)
        if not self.images_dir.is_dir():
            raise DatasetError(f"images directory {self.images_dir} does not exist; check the dataset path")
        if not self.annotation_file.is_file():
            raise DatasetError(f"annotation file {self.annotation_file} does not exist; check the dataset path")
        self.transforms = transforms if transforms is not None else Compose([ToTensor(), ToModelTarget()])
        self.label_mode = label_mode
        self.on_invalid = on_invalid
        self.skipped: Counter[str] = Counter()
        self.num_crowd = 0
        self._skipped_positions: set[int] = set()
        self._build(load_json(self.annotation_file))

    def _build(self, data: dict[str, Any]) -> None:
        path = self.annotation_file
        _require(data, ("images", "annotations", "categories"), "the file", path)
        categories = data["categories"]
        for cat in categories:
            _require(cat, ("id", "name"), f"category {cat}", path)
        names = {int(c["id"]): str(c["name"]) for c in categories}
        if len(names) != len(categories):
            raise DatasetError(f"{path}: duplicate category ids in 'categories'")
        if not names:
            raise DatasetError(f"{path}: 'categories' is empty; add at least one category")
        cat_ids = sorted(names)
        if self.label_mode == "contiguous":
            self.label_to_category_id = dict(enumerate(cat_ids))
            self.category_names = [names[c] for c in cat_ids]
        else:
            if cat_ids[0] < 0:
                raise DatasetError(
                    f"{path}: category id {cat_ids[0]} is negative; label_mode='coco_ids' needs ids >= 0"
                )
            self.label_to_category_id = {c: c for c in cat_ids}
            self.category_names = [names.get(i, "N/A") for i in range(cat_ids[-1] + 1)]
        self.num_classes = len(self.category_names)
        category_to_label = {c: lbl for lbl, c in self.label_to_category_id.items()}

        images: dict[int, dict] = {}
        for img in data["images"]:
            _require(img, ("id", "file_name", "width", "height"), f"image entry {img.get('id', img)}", path)
            if int(img["id"]) in images:
                raise DatasetError(f"{path}: image id {img['id']} appears twice in 'images'")
            images[int(img["id"])] = img
        missing = [img["file_name"] for img in images.values() if not (self.images_dir / img["file_name"]).is_file()]
        if missing:
            raise DatasetError(
                f"{len(missing)} image file(s) listed in {path} are missing from {self.images_dir}, "
                f"e.g. {missing[:MAX_EXAMPLES]}; check images_dir or remove them from the JSON"
            )

        per_image: dict[int, list[tuple[list[float], int, float]]] = {i: [] for i in images}
        examples: list[str] = []
        for position, ann in enumerate(data["annotations"]):
            _require(ann, ("bbox", "category_id", "image_id"), f"annotation {ann.get('id', '?')}", path)
            img = images.get(int(ann["image_id"]))
            reason = ""
            if img is None:
                reason = "unknown_image"
            elif int(ann["category_id"]) not in category_to_label:
                reason = "unknown_category"
            else:
                box, reason = _clip_box(ann["bbox"], int(img["width"]), int(img["height"]))
            if reason:
                detail = (
                    f"annotation id {ann.get('id', '?')} (image_id {ann['image_id']}, category_id "
                    f"{ann['category_id']}, bbox {ann['bbox']}): {_REASON_HELP[reason]}"
                )
                if self.on_invalid == "error":
                    raise DatasetError(
                        f"{path}: {detail}. Fix or remove the annotation, or pass on_invalid='skip' to drop "
                        "invalid annotations"
                    )
                self.skipped[reason] += 1
                self._skipped_positions.add(position)
                if len(examples) < MAX_EXAMPLES:
                    examples.append(detail)
                continue
            if ann.get("iscrowd", 0):
                self.num_crowd += 1
                continue
            area = float(ann.get("area", (box[2] - box[0]) * (box[3] - box[1])))
            per_image[int(ann["image_id"])].append((box, category_to_label[int(ann["category_id"])], area))
        if self.skipped:
            logger.warning(
                "%s: skipped %d invalid annotation(s) %s; first examples: %s",
                path,
                sum(self.skipped.values()),
                dict(self.skipped),
                "; ".join(examples),
            )

        self._records = [_record(img, per_image[image_id]) for image_id, img in images.items()]

    @property
    def label_map(self) -> dict[str, Any]:
        """Plain-data description of the labels, for checkpoints (``torch.load(weights_only=True)``-safe)."""
        return {
            "label_mode": self.label_mode,
            "num_classes": self.num_classes,
            "label_to_category_id": dict(self.label_to_category_id),
            "category_names": list(self.category_names),
        }

    def category_ids(self, labels: Tensor) -> Tensor:
        """Map predicted labels (int tensor) to COCO category ids, for evaluation."""
        lookup = torch.zeros(self.num_classes, dtype=torch.int64)
        for label, cat_id in self.label_to_category_id.items():
            lookup[label] = cat_id
        return lookup.to(labels.device)[labels]

    @cached_property
    def coco(self) -> COCO:
        """pycocotools ``COCO`` index of the annotation file (skipped annotations removed), for ``COCOeval``.

        Built on first use by re-reading the file, so the dataset stays small in ``DataLoader`` workers.
        """
        data = load_json(self.annotation_file)
        annotations = data["annotations"]
        data["annotations"] = [a for i, a in enumerate(annotations) if i not in self._skipped_positions]
        coco = COCO()
        coco.dataset = data
        with contextlib.redirect_stdout(io.StringIO()):
            coco.createIndex()
        return coco

    @property
    def image_ids(self) -> list[int]:
        """Image ids in dataset index order."""
        return [r.image_id for r in self._records]

    @property
    def num_boxes(self) -> int:
        """Number of (non-crowd, valid) boxes in the targets."""
        return sum(len(r.labels) for r in self._records)

    def __len__(self) -> int:
        return len(self._records)

    def load_image(self, index: int) -> Image.Image:
        """Decode image ``index`` as RGB, raising ``DatasetError`` naming the file if it is unreadable."""
        record = self._records[index]
        path = self.images_dir / record.file_name
        try:
            with Image.open(path) as img:
                image = img.convert("RGB")
        except (OSError, SyntaxError, Image.DecompressionBombError) as err:
            raise DatasetError(
                f"cannot read image {path} (image id {record.image_id}): {err}; replace the file"
            ) from err
        if image.size != (record.width, record.height):
            raise DatasetError(
                f"image {path} (image id {record.image_id}) is {image.width}x{image.height} but "
                f"{self.annotation_file} says {record.width}x{record.height}; fix the JSON width/height"
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

    def __getitem__(self, index: int) -> tuple[Tensor, dict[str, Tensor]]:
        image, target = self.transforms(self.load_image(index), self.raw_target(index))
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


def _record(img: dict, annotations: list[tuple[list[float], int, float]]) -> _ImageRecord:
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
