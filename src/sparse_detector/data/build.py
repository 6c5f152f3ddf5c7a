"""Datasets and data loaders from a :class:`~sparse_detector.config.Config`."""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch.utils.data import DataLoader

from ..config import Config
from .batching import collate_detection
from .coco import CocoDetection, DatasetError
from .transforms import make_transforms


def build_dataset(config: Config, split: str) -> CocoDetection:
    """The ``train`` or ``val`` split, with the training or evaluation transforms of the config."""
    data = config.data
    paths = getattr(data, split)
    if not paths.images or not paths.annotations:
        raise DatasetError(
            f"data.{split}.images and data.{split}.annotations must be set (a folder of images and a COCO JSON); "
            f"e.g. --set data.{split}.images=DIR data.{split}.annotations=FILE.json"
        )
    train = split == "train"
    transforms = make_transforms(
        train,
        scales=data.train_scales,
        max_size=data.max_size,
        crop_sizes=(data.crop_min, data.crop_max) if data.random_crop else None,
        crop_resize_scales=data.crop_resize_scales,
        val_size=data.val_size,
        normalize=data.normalize,
        hflip_prob=data.hflip_prob,
    )
    return CocoDetection(paths.images, paths.annotations, transforms, data.label_mode, data.on_invalid)


def build_loader(
    dataset: CocoDetection,
    config: Config,
    train: bool,
    generator: torch.Generator | None = None,
    batch_sampler: Iterable[list[int]] | None = None,
) -> DataLoader:
    """Shuffled, last-partial-batch-dropped loader for training; ordered loader for evaluation.

    ``generator`` drives the shuffling and the worker seeds, so a loader made with a generator seeded per epoch
    yields the same batches and augmentations whether or not the run was resumed. ``batch_sampler`` (the batches of
    indices, e.g. this rank's share in distributed training) replaces the loader's own batching.
    """
    batch_size = config.train.batch_size if train else config.train.eval_batch_size
    workers = config.data.num_workers
    batching = {"batch_sampler": batch_sampler}
    if batch_sampler is None:
        batching = {"batch_size": batch_size, "shuffle": train, "drop_last": train and len(dataset) >= batch_size}
    return DataLoader(
        dataset,
        **batching,
        collate_fn=collate_detection,
        num_workers=workers,
        persistent_workers=False,
        generator=generator,
        pin_memory=torch.cuda.is_available(),
    )
