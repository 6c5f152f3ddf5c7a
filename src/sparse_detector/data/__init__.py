"""Datasets (COCO JSON; importers for VOC, YOLO, CSV, COCO; checks and splits; synthetic shapes), DETR transforms
and padded batching."""

from sparse_detector.data.batching import PaddedBatch, as_padded_batch, collate_detection, pad_images
from sparse_detector.data.coco import CocoDetection, DatasetError
from sparse_detector.data.labels import LabelMap
from sparse_detector.data.shapes import generate_shapes, generate_shapes_splits
from sparse_detector.data.transforms import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    Compose,
    Normalize,
    RandomHorizontalFlip,
    RandomResize,
    RandomSelect,
    RandomSizeCrop,
    ToModelTarget,
    ToTensor,
    make_transforms,
)

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "CocoDetection",
    "Compose",
    "DatasetError",
    "LabelMap",
    "Normalize",
    "PaddedBatch",
    "RandomHorizontalFlip",
    "RandomResize",
    "RandomSelect",
    "RandomSizeCrop",
    "ToModelTarget",
    "ToTensor",
    "as_padded_batch",
    "collate_detection",
    "generate_shapes",
    "generate_shapes_splits",
    "make_transforms",
    "pad_images",
]
