"""Padded batching of images of different sizes (the official DETR ``NestedTensor``)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass
class PaddedBatch:
    """Images zero-padded to a common size, with a mask that is ``True`` on padding pixels."""

    tensors: Tensor  # (B, C, H, W)
    mask: Tensor  # (B, H, W), bool, True = padding

    def to(self, device: torch.device | str, non_blocking: bool = False) -> PaddedBatch:
        return PaddedBatch(
            self.tensors.to(device, non_blocking=non_blocking), self.mask.to(device, non_blocking=non_blocking)
        )

    def __len__(self) -> int:
        return self.tensors.shape[0]


def pad_images(images: Sequence[Tensor]) -> PaddedBatch:
    """Pad CHW images at the bottom/right to the largest height and width in the list."""
    if len(images) == 0:
        raise ValueError("pad_images needs at least one image")
    channels = {img.shape[0] for img in images}
    if any(img.dim() != 3 for img in images) or len(channels) != 1:
        shapes = [tuple(img.shape) for img in images]
        raise ValueError(f"expected CHW images with the same number of channels, got shapes {shapes}")
    height = max(img.shape[1] for img in images)
    width = max(img.shape[2] for img in images)
    first = images[0]
    tensors = first.new_zeros((len(images), first.shape[0], height, width))
    mask = torch.ones((len(images), height, width), dtype=torch.bool, device=first.device)
    for img, padded, m in zip(images, tensors, mask, strict=True):
        padded[:, : img.shape[1], : img.shape[2]].copy_(img)
        m[: img.shape[1], : img.shape[2]] = False
    return PaddedBatch(tensors, mask)


def as_padded_batch(images: PaddedBatch | Tensor | Sequence[Tensor]) -> PaddedBatch:
    """Accept a ``PaddedBatch``, a 4-D tensor (no padding) or a list of CHW tensors."""
    if isinstance(images, PaddedBatch):
        return images
    if isinstance(images, Tensor):
        if images.dim() != 4:
            raise ValueError(f"expected a 4-D (B, C, H, W) image tensor, got shape {tuple(images.shape)}")
        b, _, h, w = images.shape
        return PaddedBatch(images, torch.zeros((b, h, w), dtype=torch.bool, device=images.device))
    return pad_images(list(images))


def model_input(
    images: PaddedBatch | Tensor | Sequence[Tensor], mask: Tensor | None, dtype: torch.dtype
) -> PaddedBatch:
    """A detector's input as a ``PaddedBatch`` (``mask``: optional (B, H, W) padding of a (B, 3, H, W) tensor), with a
    clear error for images it cannot take: not RGB channels-first, or not in the model's float ``dtype``."""
    batch = PaddedBatch(images, mask) if mask is not None else as_padded_batch(images)
    shape = tuple(batch.tensors.shape)
    if batch.tensors.dim() != 4 or shape[1] != 3:
        hint = " (channels last? use image.permute(2, 0, 1))" if shape[-1] == 3 else ""
        raise ValueError(f"expected RGB images channels first, (3, H, W) each or (B, 3, H, W); got {shape}{hint}")
    if batch.tensors.dtype != dtype:
        raise TypeError(
            f"images are {batch.tensors.dtype} but the model computes in {dtype}: give it {dtype} images, scaled and "
            "normalised as the data transforms do (ToTensor, then ImageNet mean / std)"
        )
    return batch


def collate_detection(batch: Sequence[tuple[Tensor, dict] | None]) -> tuple[PaddedBatch | None, list[dict]]:
    """DataLoader ``collate_fn``: pad the images, keep targets as a list of dicts.

    ``None`` items (images a dataset skipped as unreadable) are dropped; a batch of nothing but skipped images
    becomes ``(None, [])``.
    """
    kept = [item for item in batch if item is not None]
    if not kept:
        return None, []
    images, targets = zip(*kept, strict=True)
    return pad_images(images), list(targets)


def size_grouped_batches(sizes: Sequence[tuple[int, int]], batch_size: int) -> list[list[int]]:
    """Index batches of at most ``batch_size`` in which every image has the same size (so none is padded).

    The conv backbone sees padding as image content, so a padded image gets slightly different features than
    the same image alone; evaluating only unpadded batches makes every result independent of the batch size.
    Deterministic: images are taken in index order, each batch is emitted when full, partial ones at the end.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    batches: list[list[int]] = []
    open_batches: dict[tuple[int, int], list[int]] = {}
    for index, size in enumerate(sizes):
        batch = open_batches.setdefault(tuple(size), [])
        batch.append(index)
        if len(batch) == batch_size:
            batches.append(open_batches.pop(tuple(size)))
    return batches + [batch for batch in open_batches.values()]
