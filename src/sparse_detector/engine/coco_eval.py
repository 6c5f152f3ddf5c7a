"""COCO box evaluation (the 12 AP / AR numbers) of accumulated detections.

Matching and AP / AR are computed by faster-coco-eval or pycocotools; this module only converts predictions
(absolute xyxy boxes in original-image pixels, model labels) into COCO results (x, y, w, h, category id),
accumulates them per image and runs one evaluation over everything at the end, so the numbers do not depend
on the evaluation batch size or order.

Conventions:
- The evaluated images are those passed to :meth:`CocoEvaluator.update` (an image given with zero boxes
  counts: its ground truth are misses); ``summarize(img_ids=...)`` evaluates an explicit set instead, e.g.
  every ground-truth image.
- Each image keeps its ``MAX_DETECTIONS`` (100) highest-scoring detections, COCO's limit per image: COCOeval
  applies its maxDets per image and category, so a DETR with more queries would otherwise be scored on up to
  one list of 100 per class (official Deformable DETR keeps its top 100 for the same reason).
- A metric is -1 where the evaluated images hold no ground truth in its area range (the COCO convention),
  also with no detections at all (then the others are 0.0, as COCOeval gives); with no images, every one is -1.
- Under ``torch.distributed``, :meth:`CocoEvaluator.summarize` is a collective (every rank must call it): the
  detections of all ranks are gathered with ``all_gather_object`` and every rank returns the same numbers.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib.util
import io
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor

from ..data.coco import gc_paused, load_json
from ..files import write_atomically
from ..text import decimals

BACKENDS = ("auto", "faster_coco_eval", "pycocotools")
MAX_DETECTIONS = 100  # COCO's limit of detections per image (COCOeval applies its maxDets per image and category)

# (IoU thresholds, area range, max detections per image) of each number, in COCOeval's ``stats`` order.
_STAT_SETTINGS: dict[str, tuple[str, str, str]] = {
    "AP": ("0.50:0.95", "all", "100"),
    "AP50": ("0.50", "all", "100"),
    "AP75": ("0.75", "all", "100"),
    "AP_small": ("0.50:0.95", "small", "100"),
    "AP_medium": ("0.50:0.95", "medium", "100"),
    "AP_large": ("0.50:0.95", "large", "100"),
    "AR1": ("0.50:0.95", "all", "1"),
    "AR10": ("0.50:0.95", "all", "10"),
    "AR100": ("0.50:0.95", "all", "100"),
    "AR_small": ("0.50:0.95", "small", "100"),
    "AR_medium": ("0.50:0.95", "medium", "100"),
    "AR_large": ("0.50:0.95", "large", "100"),
}
STAT_NAMES: tuple[str, ...] = tuple(_STAT_SETTINGS)


def resolve_backend(backend: str) -> str:
    """Return the concrete backend name; "auto" picks faster-coco-eval when it is installed."""
    if backend not in BACKENDS:
        raise ValueError(f"unknown COCO evaluation backend {backend!r}; choose one of {BACKENDS}")
    if backend != "auto":
        return backend
    return "faster_coco_eval" if importlib.util.find_spec("faster_coco_eval") else "pycocotools"


class _CocoLike(Protocol):
    """A pycocotools / faster-coco-eval ``COCO`` object."""

    dataset: dict[str, Any]


GroundTruth = str | os.PathLike[str] | Mapping[str, Any] | _CocoLike


def _gt_dataset(coco_gt: GroundTruth) -> dict[str, Any]:
    """The COCO-format dict behind a path, a dict or a COCO object.

    Annotations are copied (shallowly) because the libraries write an ``ignore`` flag into them.
    """
    if isinstance(coco_gt, (str, os.PathLike)):
        return load_json(Path(coco_gt))
    dataset = coco_gt if isinstance(coco_gt, Mapping) else getattr(coco_gt, "dataset", None)
    if isinstance(dataset, Mapping):
        return {**dataset, "annotations": [dict(ann) for ann in dataset.get("annotations", [])]}
    raise TypeError(f"coco_gt must be a path, a COCO-format dict or a COCO object, not {type(coco_gt).__name__}")


class CocoEvaluator:
    """Accumulates detections image by image and computes the COCO box metrics over all of them at once.

    Args:
        coco_gt: ground truth: path to an instances JSON, a COCO-format dict, or a pycocotools /
            faster-coco-eval ``COCO`` object (its ``dataset`` is read, never modified).
        label_to_category_id: model label -> dataset category id (contiguous labels of user datasets);
            None when labels already are category ids (official-compat mode with raw COCO ids).
        backend: "faster_coco_eval", "pycocotools", or "auto" (faster-coco-eval if installed).
        verbose: let the library print its progress and summary.
    """

    def __init__(
        self,
        coco_gt: GroundTruth,
        label_to_category_id: Mapping[int, int] | None = None,
        backend: str = "auto",
        verbose: bool = False,
    ) -> None:
        self.backend = resolve_backend(backend)
        self.verbose = verbose
        if self.backend == "faster_coco_eval":
            from faster_coco_eval import COCO, COCOeval_faster

            self._coco_cls, self._eval_cls = COCO, COCOeval_faster
            self._library_kwargs: dict[str, Any] = {"print_function": print}
        else:
            from pycocotools.coco import COCO
            from pycocotools.cocoeval import COCOeval

            self._coco_cls, self._eval_cls = COCO, COCOeval
            self._library_kwargs = {}
        with self._quiet(), gc_paused():
            self.coco_gt = self._coco_cls(**self._library_kwargs)
            self.coco_gt.dataset = _gt_dataset(coco_gt)
            self.coco_gt.createIndex()
        self._gt_img_ids = set(self.coco_gt.getImgIds())
        self.label_to_category_id: dict[int, int] | None = None
        if label_to_category_id is not None:
            self.label_to_category_id = {int(k): int(v) for k, v in label_to_category_id.items()}
            unknown = sorted(set(self.label_to_category_id.values()) - set(self.coco_gt.getCatIds()))
            if unknown:
                raise ValueError(f"label_to_category_id maps to category ids {unknown} not in the ground truth")
        # image id -> (N, 6) float64 rows (x, y, w, h, score, category_id)
        self._detections: dict[int, np.ndarray] = {}

    def _quiet(self) -> contextlib.AbstractContextManager[Any]:
        """Swallow the libraries' prints unless ``verbose``."""
        return contextlib.nullcontext() if self.verbose else contextlib.redirect_stdout(io.StringIO())

    def update(self, predictions: Mapping[int, Mapping[str, Tensor]]) -> None:
        """Add predictions: image id -> {"scores" (N,), "labels" (N,), "boxes" (N, 4) absolute xyxy}."""
        new: dict[int, np.ndarray] = {}
        for key, prediction in predictions.items():
            image_id = int(key)
            if image_id in self._detections or image_id in new:
                raise ValueError(
                    f"predictions for image id {image_id} were given twice; pass each image to update() once"
                )
            if image_id not in self._gt_img_ids:
                raise ValueError(f"image id {image_id} is not in the ground-truth annotations")
            new[image_id] = self._to_rows(image_id, prediction)
        self._detections.update(new)

    def _to_rows(self, image_id: int, prediction: Mapping[str, Tensor]) -> np.ndarray:
        """(N, 6) rows (x, y, w, h, score, category_id) in float64: the ``MAX_DETECTIONS`` highest-scoring."""
        scores = prediction["scores"].detach().to("cpu", torch.float64)
        labels = prediction["labels"].detach().cpu()
        boxes = prediction["boxes"].detach().to("cpu", torch.float64)
        n = scores.shape[0] if scores.ndim == 1 else -1
        if n < 0 or labels.shape != (n,) or boxes.shape != (n, 4):
            raise ValueError(
                f"image id {image_id}: expected scores (N,), labels (N,) and boxes (N, 4), got "
                f"{tuple(scores.shape)}, {tuple(labels.shape)} and {tuple(boxes.shape)}"
            )
        if n > MAX_DETECTIONS:  # ties keep the earlier query, as COCOeval's stable sort does
            keep = torch.sort(scores, descending=True, stable=True).indices[:MAX_DETECTIONS].sort().values
            scores, labels, boxes = scores[keep], labels[keep], boxes[keep]
        xywh = torch.cat([boxes[:, :2], boxes[:, 2:] - boxes[:, :2]], dim=1)
        return torch.cat([xywh, scores[:, None], self._category_ids(labels)[:, None]], dim=1).numpy()

    def _category_ids(self, labels: Tensor) -> Tensor:
        """Dataset category ids of model labels, as float64."""
        mapping = self.label_to_category_id
        if mapping is None:
            return labels.to(torch.float64)
        missing = sorted(set(labels.unique().tolist()) - mapping.keys())
        if missing:
            raise ValueError(
                f"labels {missing} have no category id in label_to_category_id ({len(mapping)} mapped); "
                "pass the dataset's label map (stored in the checkpoint as 'label_map') or drop predictions "
                "with those labels (e.g. the no-object class) before update()"
            )
        return torch.tensor([mapping[label] for label in labels.tolist()], dtype=torch.float64)

    def state(self) -> dict[int, np.ndarray]:
        """The accumulated detections (picklable), for :meth:`merge` in another evaluator."""
        return dict(self._detections)

    def merge(self, state: Mapping[int, np.ndarray]) -> None:
        """Add another evaluator's :meth:`state`.

        An image already present keeps its detections: duplicates across ranks come from
        ``DistributedSampler`` padding, which repeats samples.
        """
        for image_id, rows in state.items():
            self._detections.setdefault(int(image_id), rows)

    def synchronize(self) -> None:
        """Gather every rank's detections onto every rank (collective); no-op without torch.distributed."""
        if not (dist.is_available() and dist.is_initialized()):
            return
        states: list[dict[int, np.ndarray] | None] = [None] * dist.get_world_size()
        dist.all_gather_object(states, self.state())
        self._detections = {}
        for state in states:
            self.merge(state or {})

    def results(self) -> list[dict[str, Any]]:
        """The accumulated detections in the COCO results format (``image_id``, ``category_id``, ``bbox`` as
        [x, y, w, h] in original-image pixels, ``score``), ordered by image id: what ``COCO.loadRes`` reads."""
        with gc_paused():  # half a million small dicts for COCO val2017: the collector's passes tripled the time
            return [
                {"image_id": image_id, "category_id": int(category_id), "bbox": [x, y, w, h], "score": score}
                for image_id, rows in sorted(self._detections.items())
                for x, y, w, h, score, category_id in rows.tolist()
            ]

    def summarize(self, img_ids: Iterable[int] | None = None) -> dict[str, float]:
        """Evaluate every accumulated detection at once; returns :data:`STAT_NAMES` -> value (see :meth:`evaluate`)."""
        return self.evaluate(img_ids).stats

    def evaluate(self, img_ids: Iterable[int] | None = None) -> CocoResult:
        """Evaluate every accumulated detection at once: the 12 numbers, per-class AP and precision arrays.

        Args:
            img_ids: images to evaluate (default: those passed to :meth:`update`); ground-truth images
                without predictions count as misses.
        """
        self.synchronize()
        eval_ids = sorted(self._detections if img_ids is None else {int(i) for i in img_ids})
        unknown = [i for i in eval_ids if i not in self._gt_img_ids]
        if unknown:
            raise ValueError(f"img_ids {unknown[:10]} are not in the ground-truth annotations")
        # Sorted by image id so annotation ids (score tie-breaks) do not depend on the update order.
        rows = [
            np.column_stack([np.full(len(det), image_id, dtype=np.float64), det])
            for image_id, det in sorted(self._detections.items())
        ]
        results = np.concatenate([np.zeros((0, 7)), *rows])
        if not eval_ids:  # COCOeval would read an empty imgIds as every image
            return CocoResult(dict.fromkeys(STAT_NAMES, -1.0), {}, None, 0)
        # the libraries make a Python object per detection and match: without the garbage collector's passes over
        # them COCO val2017 (5000 images x 100 detections) evaluated in 20 s instead of 35 s (benchmarks/RESULTS.md)
        with self._quiet(), gc_paused():
            coco_dt = self._load_results(results)
            evaluator = self._eval_cls(self.coco_gt, coco_dt, iouType="bbox", **self._library_kwargs)
            evaluator.params.imgIds = eval_ids
            evaluator.evaluate()
            evaluator.accumulate()
            evaluator.summarize()
            per_class = self._per_class(evaluator, eval_ids)
        stats = {name: float(value) for name, value in zip(STAT_NAMES, evaluator.stats[:12], strict=True)}
        return CocoResult(stats, per_class, PrecisionArrays.of(evaluator), len(eval_ids))

    def _load_results(self, results: np.ndarray) -> Any:
        """The library's COCO object of (N, 7) result rows; with none, an empty one (pycocotools' ``loadRes``
        fails on zero results), so that zero detections are scored as COCOeval scores them."""
        if len(results):
            return self.coco_gt.loadRes(results)
        coco_dt = self._coco_cls(**self._library_kwargs)
        coco_dt.dataset = {**self.coco_gt.dataset, "annotations": []}
        coco_dt.createIndex()
        return coco_dt

    def _per_class(self, evaluator: Any, eval_ids: list[int]) -> dict[str, dict[str, float]]:
        """Category name -> AP, AP50, AP75 (all areas, 100 detections) and ground-truth box count."""
        precision = np.asarray(evaluator.eval["precision"])  # (IoU, recall, category, area, max dets)
        iou_thresholds = np.asarray(evaluator.params.iouThrs)
        per_class = {}
        for k, category_id in enumerate(evaluator.params.catIds):
            name = self.coco_gt.cats[category_id].get("name", str(category_id))
            curve = precision[:, :, k, 0, -1]
            gt = self.coco_gt.getAnnIds(imgIds=eval_ids, catIds=[category_id], iscrowd=False)
            per_class[name] = {
                "category_id": int(category_id),
                "AP": _mean_valid(curve),
                "AP50": _mean_valid(curve[np.isclose(iou_thresholds, 0.5)]),
                "AP75": _mean_valid(curve[np.isclose(iou_thresholds, 0.75)]),
                "boxes": len(gt),
            }
        return per_class


def _mean_valid(precision: np.ndarray) -> float:
    """COCOeval's average over the entries that are not -1 (-1 where the category has no ground truth)."""
    valid = precision[precision > -1]
    return float(valid.mean()) if valid.size else -1.0


@dataclass
class PrecisionArrays:
    """COCOeval's interpolated precision at each (IoU threshold, recall threshold, category), all areas,
    100 detections per image; -1 where a category has no ground truth."""

    precision: np.ndarray  # (T, R, K)
    scores: np.ndarray  # (T, R, K): the score threshold reaching each recall
    iou_thresholds: np.ndarray  # (T,)
    recall_thresholds: np.ndarray  # (R,)
    category_ids: np.ndarray  # (K,)

    @classmethod
    def of(cls, evaluator: Any) -> PrecisionArrays:
        params, accumulated = evaluator.params, evaluator.eval
        return cls(
            np.asarray(accumulated["precision"])[:, :, :, 0, -1],
            np.asarray(accumulated["scores"])[:, :, :, 0, -1],
            np.asarray(params.iouThrs),
            np.asarray(params.recThrs),
            np.asarray(params.catIds),
        )

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write the arrays to an ``.npz`` file (``numpy.load`` reads them back by these field names)."""
        write_atomically(path, lambda f: np.savez_compressed(f, **dataclasses.asdict(self)))


@dataclass
class CocoResult:
    """One COCO evaluation: the 12 numbers, per-class AP, the precision arrays (``None`` without images) and
    the number of images evaluated."""

    stats: dict[str, float]
    per_class: dict[str, dict[str, float]]
    precision: PrecisionArrays | None
    num_images: int = 0


#: Units of the logged metrics that are not fractions like AP and AR (DETR's ``class_error`` is a percentage, its
#: ``cardinality_error`` a count of boxes per image), shown after their values in :func:`format_table`.
METRIC_UNITS = {"class_error": "%", "cardinality_error": "boxes"}


def metric_text(name: str, value: float) -> str:
    """One logged metric as the tables show it: 3 decimals (:func:`~sparse_detector.text.decimals`: more where a
    nonzero value would read 0.000) and its unit, ``n/a`` for COCO's -1 (no ground truth)."""
    unit = next((unit for metric, unit in METRIC_UNITS.items() if name.endswith(metric)), "")
    return "n/a" if value < 0 else f"{decimals(value)} {unit}".rstrip()


def format_table(stats: Mapping[str, float]) -> str:
    """Markdown table of COCO metrics (AP and AR as fractions, 0 to 1) and the validation losses, aligned for
    plain-text reading; -1 (no ground truth) shows as n/a, the class error as a percentage."""
    header = ("metric", "IoU", "area", "max dets", "value")
    rows = [(name, *_STAT_SETTINGS.get(name, ("", "", "")), metric_text(name, value)) for name, value in stats.items()]
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]

    def line(cells: tuple[str, ...]) -> str:
        text = [cell.ljust(width) for cell, width in zip(cells[:-1], widths[:-1], strict=True)]
        return "| " + " | ".join([*text, cells[-1].rjust(widths[-1])]) + " |"

    rule = "|" + "".join("-" * (width + 2) + "|" for width in widths[:-1]) + "-" * (widths[-1] + 1) + ":|"
    return "\n".join([line(header), rule, *(line(row) for row in rows)])


def format_per_class_table(per_class: Mapping[str, Mapping[str, float]]) -> str:
    """Markdown table of per-class AP (all areas, 100 detections); -1 (no ground truth) shows as n/a."""
    header = ("class", "boxes", "AP", "AP50", "AP75")
    rows = [
        (name, str(int(values["boxes"])), *(metric_text(k, values[k]) for k in header[2:]))
        for name, values in per_class.items()
    ]
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    lines = [
        "| "
        + " | ".join(cell.rjust(w) if i else cell.ljust(w) for i, (cell, w) in enumerate(zip(row, widths, strict=True)))
        + " |"
        for row in [header, *rows]
    ]
    rule = "|" + "|".join("-" * (w + 1) + (":" if i else "-") for i, w in enumerate(widths)) + "|"
    return "\n".join([lines[0], rule, *lines[1:]])
