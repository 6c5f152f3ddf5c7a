"""Datasets (COCO JSON; importers for VOC, YOLO, CSV, COCO; checks and splits; synthetic shapes), DETR transforms
and padded batching.

The names below are imported on first use (PEP 562), so the data commands that need neither (``data import``,
``check``, ``split``, ``shapes``) do not load torchvision (and ``data shapes`` not even torch).
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "PaddedBatch": "sparse_detector.data.batching",
    "as_padded_batch": "sparse_detector.data.batching",
    "collate_detection": "sparse_detector.data.batching",
    "pad_images": "sparse_detector.data.batching",
    "CocoDetection": "sparse_detector.data.coco",
    "DatasetError": "sparse_detector.data.coco",
    "LabelMap": "sparse_detector.data.labels",
    "generate_shapes": "sparse_detector.data.shapes",
    "generate_shapes_splits": "sparse_detector.data.shapes",
    **dict.fromkeys(
        (
            "IMAGENET_MEAN",
            "IMAGENET_STD",
            "Compose",
            "Normalize",
            "RandomHorizontalFlip",
            "RandomResize",
            "RandomSelect",
            "RandomSizeCrop",
            "ToModelTarget",
            "ToTensor",
            "make_transforms",
        ),
        "sparse_detector.data.transforms",
    ),
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'sparse_detector.data' has no attribute {name!r}")
