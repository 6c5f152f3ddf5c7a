"""Datasets and data loaders from a :class:`~sparse_detector.config.Config`."""

from __future__ import annotations

import dataclasses
import signal
from collections.abc import Iterable
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from ..config import Config
from .batching import collate_detection, size_grouped_batches
from .coco import CocoDetection, DatasetError
from .transforms import Compose, make_transforms

SPLITS = ("train", "val")


def build_dataset(config: Config, split: str) -> CocoDetection:
    """The ``train`` or ``val`` split, with the training or evaluation transforms of the config."""
    data = config.data
    paths = getattr(data, split)
    if not paths.annotations:
        raise DatasetError(
            f"data.{split}.annotations must be set (a COCO JSON, e.g. from `sparse-detector data import`); "
            f"e.g. --set data.{split}.annotations=FILE.json (data.{split}.images=DIR if its file names are "
            "relative to another folder than the JSON's)"
        )
    # a missing JSON is named first (by CocoDetection): the images folder's advice reads its file names
    if paths.images and not Path(paths.images).is_dir() and Path(paths.annotations).is_file():
        raise DatasetError(
            f"data.{split}.images={paths.images} is not a folder; set it to the folder the file "
            f"names in {paths.annotations} are relative to, or empty for the JSON's own folder: --set "
            f"data.{split}.images= (what a JSON from `sparse-detector data import` needs)"
        )
    dataset = CocoDetection(
        paths.images or None,
        paths.annotations,
        config_transforms(config, train=split == "train"),
        data.label_mode,
        data.on_invalid,
        check_images=data.check_images,
        bit_depth=data.bit_depth,
    )
    if not len(dataset):  # training would run its epochs without a step, evaluation score nothing
        left_out = sum(dataset.skipped.values())
        raise DatasetError(
            f"{paths.annotations} lists no images{f' once {left_out} invalid ones were left out' if left_out else ''}"
            f" (data.{split}.annotations); training and evaluation need at least one: `sparse-detector data check "
            f"{paths.annotations}` lists what is wrong"
        )
    return dataset


def config_transforms(config: Config, train: bool) -> Compose:
    """The training or evaluation transforms that ``config.data`` sets."""
    data = config.data
    return make_transforms(
        train,
        scales=data.train_scales,
        max_size=data.max_size,
        crop_sizes=(data.crop_min, data.crop_max) if data.random_crop else None,
        crop_resize_scales=data.crop_resize_scales,
        val_size=data.val_size,
        normalize=data.normalize,
        hflip_prob=data.hflip_prob,
    )


def absolute_data_paths(config: Config) -> Config:
    """A copy of ``config`` whose data paths are absolute (resolved against the current directory), so the
    ``config.yaml`` saved in a run directory works from any directory."""
    data = config.data
    splits = {
        split: dataclasses.replace(
            getattr(data, split),
            **{
                key: str(Path(value).resolve())
                for key, value in dataclasses.asdict(getattr(data, split)).items()
                if value
            },
        )
        for split in SPLITS
    }
    return dataclasses.replace(config, data=dataclasses.replace(data, **splits))


def _leave_stop_signals_to_the_main_process(worker_id: int) -> None:
    """DataLoader workers ignore SIGTERM / SIGINT: a scheduler (``scancel``, a preemption) or Ctrl-C signals the
    whole process group, and a worker killed by it would end the run before the main process has finished its step
    and written the checkpoint; the main process shuts its workers down itself."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def build_loader(
    dataset: CocoDetection,
    config: Config,
    train: bool,
    generator: torch.Generator | None = None,
    batch_sampler: Iterable[list[int]] | None = None,
) -> DataLoader:
    """Shuffled, last-partial-batch-dropped loader for training; loader for evaluation whose batches each hold
    images of one size, so no image is padded and the results do not depend on the batch size.

    ``generator`` drives the shuffling and the worker seeds, so a loader made with a generator seeded per epoch
    yields the same batches and augmentations whether or not the run was resumed. ``batch_sampler`` (the batches of
    indices, e.g. this rank's share in distributed training) replaces the loader's own batching.
    """
    workers = config.data.num_workers
    common = {
        "collate_fn": collate_detection,
        "num_workers": workers,
        "persistent_workers": False,
        "worker_init_fn": _leave_stop_signals_to_the_main_process if workers else None,
        "pin_memory": torch.cuda.is_available(),
    }
    if batch_sampler is None and not train:
        batch_sampler = size_grouped_batches(dataset.image_sizes(), config.train.eval_batch_size)
    if batch_sampler is not None:
        return DataLoader(dataset, batch_sampler=batch_sampler, generator=generator, **common)
    batch_size = config.train.batch_size
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=True,
        drop_last=len(dataset) >= batch_size,
        generator=generator,
        **common,
    )
