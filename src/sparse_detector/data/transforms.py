"""Joint image + target transforms of the official DETR recipe (``datasets/transforms.py``).

Every transform is a callable ``(image, target) -> (image, target)``. Until ``ToTensor`` the image is a PIL
image and ``target["boxes"]`` holds absolute (x0, y0, x1, y1) pixel boxes; ``Normalize`` (or ``ToModelTarget``
when the image is not normalised) turns them into the model's convention: (cx, cy, w, h) normalised to [0, 1].
Per-box fields (``boxes``, ``labels``, ``area``, ``iscrowd``) stay aligned; empty targets pass through.

Randomness: all draws use torch's global RNG (``torch.rand`` / ``torch.randint``), so ``torch.manual_seed``
(and the per-worker torch seed a ``DataLoader`` sets) makes augmentation reproducible. Official DETR mixes
python ``random`` with torch; this module uses torch only.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torchvision.transforms as T
import torchvision.transforms.functional as F
from PIL import Image
from torch import Tensor
from torchvision.ops import box_convert

Target = dict[str, Tensor]
Transform = Callable[[Image.Image | Tensor, Target], tuple[Image.Image | Tensor, Target]]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
DEFAULT_SCALES = tuple(range(480, 801, 32))
PER_BOX_FIELDS = ("boxes", "labels", "area", "iscrowd")


def _randint(low: int, high: int) -> int:
    """Uniform integer in [low, high], inclusive, from torch's RNG."""
    return int(torch.randint(low, high + 1, (1,)).item())


def hflip(image: Image.Image, target: Target) -> tuple[Image.Image, Target]:
    """Flip left-right; x0, x1 become ``width - x1``, ``width - x0``."""
    width = image.width
    target = dict(target)
    boxes = target["boxes"]
    target["boxes"] = torch.stack([width - boxes[:, 2], boxes[:, 1], width - boxes[:, 0], boxes[:, 3]], dim=1)
    return F.hflip(image), target


def resized_shape(width: int, height: int, size: int, max_size: int | None = None) -> tuple[int, int]:
    """(h, w) after scaling the shorter side to ``size``, capped so the longer side stays <= ``max_size``.

    Same arithmetic as official DETR's ``get_size_with_aspect_ratio`` (including its truncation), but for an image
    longer than ``max_size`` times its shorter side: the shorter side, which would round to 0 pixels, keeps 1 and the
    longer one is ``max_size`` (stretched a little along the shorter side; the boxes scale alike).
    """
    if max_size is not None:
        short, long = float(min(width, height)), float(max(width, height))
        if long / short * size > max_size:
            size = int(round(max_size * short / long))
            if size == 0:
                return (max_size, 1) if width < height else (1, max_size)
    if (width <= height and width == size) or (height <= width and height == size):
        return height, width
    if width < height:
        return int(size * height / width), size
    return size, int(size * width / height)


def resize(image: Image.Image, target: Target, size: int, max_size: int | None = None) -> tuple[Image.Image, Target]:
    """Resize the shorter side to ``size`` (see ``resized_shape``); boxes and areas scale with the image."""
    new_h, new_w = resized_shape(image.width, image.height, size, max_size)
    resized = F.resize(image, [new_h, new_w])
    ratio_w, ratio_h = resized.width / image.width, resized.height / image.height
    target = dict(target)
    target["boxes"] = target["boxes"] * torch.tensor([ratio_w, ratio_h, ratio_w, ratio_h])
    if "area" in target:
        target["area"] = target["area"] * (ratio_w * ratio_h)
    target["size"] = torch.tensor([new_h, new_w], dtype=torch.int64)
    return resized, target


def crop(image: Image.Image, target: Target, region: tuple[int, int, int, int]) -> tuple[Image.Image, Target]:
    """Crop ``region = (top, left, height, width)``; boxes are shifted and clipped, and boxes left empty are
    dropped with their labels, areas and crowd flags (area becomes the clipped box area, as official)."""
    top, left, height, width = region
    target = dict(target)
    boxes = target["boxes"] - torch.tensor([left, top, left, top], dtype=torch.float32)
    boxes = torch.min(boxes.reshape(-1, 2, 2), torch.tensor([width, height], dtype=torch.float32)).clamp(min=0)
    keep = torch.all(boxes[:, 1] > boxes[:, 0], dim=1)
    target["boxes"] = boxes.reshape(-1, 4)
    target["area"] = (boxes[:, 1] - boxes[:, 0]).prod(dim=1)
    for field in PER_BOX_FIELDS:
        if field in target:
            target[field] = target[field][keep]
    target["size"] = torch.tensor([height, width], dtype=torch.int64)
    return F.crop(image, top, left, height, width), target


def to_model_target(target: Target, height: int, width: int) -> Target:
    """Absolute xyxy pixel boxes -> (cx, cy, w, h) normalised by the image size and clamped to [0, 1]."""
    target = dict(target)
    scale = torch.tensor([width, height, width, height], dtype=torch.float32)
    target["boxes"] = (box_convert(target["boxes"], "xyxy", "cxcywh") / scale).clamp(0.0, 1.0)
    return target


class Compose:
    """Apply transforms in order."""

    def __init__(self, transforms: Sequence[Transform]) -> None:
        self.transforms = list(transforms)

    def __call__(self, image: Image.Image | Tensor, target: Target) -> tuple[Image.Image | Tensor, Target]:
        for transform in self.transforms:
            image, target = transform(image, target)
        return image, target

    def __repr__(self) -> str:
        inner = "".join(f"\n    {t!r}" for t in self.transforms)
        return f"{type(self).__name__}({inner}\n)"


class RandomHorizontalFlip:
    """Flip with probability ``p``."""

    def __init__(self, p: float = 0.5) -> None:
        self.p = p

    def __call__(self, image: Image.Image, target: Target) -> tuple[Image.Image, Target]:
        if torch.rand(()) < self.p:
            return hflip(image, target)
        return image, target

    def __repr__(self) -> str:
        return f"{type(self).__name__}(p={self.p})"


class RandomResize:
    """Resize the shorter side to a size drawn uniformly from ``sizes`` (longer side <= ``max_size``)."""

    def __init__(self, sizes: Sequence[int], max_size: int | None = None) -> None:
        if len(sizes) == 0:
            raise ValueError("RandomResize needs at least one size")
        self.sizes = tuple(sizes)
        self.max_size = max_size

    def __call__(self, image: Image.Image, target: Target) -> tuple[Image.Image, Target]:
        size = self.sizes[_randint(0, len(self.sizes) - 1)]
        return resize(image, target, size, self.max_size)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(sizes={self.sizes}, max_size={self.max_size})"


class RandomSizeCrop:
    """Crop a random region whose height and width are drawn uniformly from [min_size, max_size].

    Sides are limited to the image's own size, so an image smaller than ``min_size`` is at most kept whole.
    """

    def __init__(self, min_size: int, max_size: int) -> None:
        if not 0 < min_size <= max_size:
            raise ValueError(f"RandomSizeCrop needs 0 < min_size <= max_size, got {min_size}, {max_size}")
        self.min_size = min_size
        self.max_size = max_size

    def __call__(self, image: Image.Image, target: Target) -> tuple[Image.Image, Target]:
        width = _randint(min(self.min_size, image.width), min(image.width, self.max_size))
        height = _randint(min(self.min_size, image.height), min(image.height, self.max_size))
        return crop(image, target, T.RandomCrop.get_params(image, (height, width)))

    def __repr__(self) -> str:
        return f"{type(self).__name__}(min_size={self.min_size}, max_size={self.max_size})"


class RandomSelect:
    """Apply ``first`` with probability ``p``, otherwise ``second``."""

    def __init__(self, first: Transform, second: Transform, p: float = 0.5) -> None:
        self.first = first
        self.second = second
        self.p = p

    def __call__(self, image: Image.Image, target: Target) -> tuple[Image.Image | Tensor, Target]:
        if torch.rand(()) < self.p:
            return self.first(image, target)
        return self.second(image, target)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(p={self.p},\n  {self.first!r},\n  {self.second!r})"


class ToTensor:
    """PIL image -> float CHW tensor in [0, 1]; the target is unchanged."""

    def __call__(self, image: Image.Image, target: Target) -> tuple[Tensor, Target]:
        return F.to_tensor(image), target

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class ToModelTarget:
    """Convert a tensor image's target boxes to normalised cxcywh (``Normalize`` without the pixel step)."""

    def __call__(self, image: Tensor, target: Target) -> tuple[Tensor, Target]:
        return image, to_model_target(target, image.shape[-2], image.shape[-1])

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class Normalize:
    """Standardise a tensor image per channel, then convert the boxes like ``ToModelTarget`` (as official)."""

    def __init__(self, mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD) -> None:
        self.mean = list(mean)
        self.std = list(std)

    def __call__(self, image: Tensor, target: Target) -> tuple[Tensor, Target]:
        image = F.normalize(image, mean=self.mean, std=self.std)
        return image, to_model_target(target, image.shape[-2], image.shape[-1])

    def __repr__(self) -> str:
        return f"{type(self).__name__}(mean={self.mean}, std={self.std})"


def image_tensor(transforms: Transform, image: Image.Image) -> Tensor:
    """``image`` alone (no boxes) through ``transforms``: the model's input tensor of an unlabelled image."""
    no_boxes = {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)}
    return transforms(image, no_boxes)[0]


def make_transforms(
    train: bool,
    scales: Sequence[int] = DEFAULT_SCALES,
    max_size: int = 1333,
    crop_sizes: tuple[int, int] | None = (384, 600),
    crop_resize_scales: Sequence[int] = (400, 500, 600),
    val_size: int = 800,
    normalize: bool = True,
    hflip_prob: float = 0.5,
) -> Compose:
    """The official ``make_coco_transforms`` with every size configurable.

    Train: flip -> either RandomResize(scales, max_size) or [RandomResize(crop_resize_scales),
    RandomSizeCrop(*crop_sizes), RandomResize(scales, max_size)] with equal odds; ``crop_sizes=None`` drops
    the crop branch. Val: resize the shorter side to ``val_size``. Both end with ToTensor and Normalize
    (ImageNet statistics; ``normalize=False`` keeps pixels in [0, 1] and only converts the boxes).
    Example for 128 px synthetic shapes:
    ``make_transforms(True, scales=range(96, 161, 16), max_size=256, crop_sizes=None)``.
    """
    if train:
        resize_only = RandomResize(scales, max_size)
        if crop_sizes is None:
            geometric: Transform = resize_only
        else:
            geometric = RandomSelect(
                resize_only,
                Compose([RandomResize(crop_resize_scales), RandomSizeCrop(*crop_sizes), resize_only]),
            )
        steps: list[Transform] = [RandomHorizontalFlip(hflip_prob), geometric]
    else:
        steps = [RandomResize([val_size], max_size)]
    steps += [ToTensor(), Normalize() if normalize else ToModelTarget()]
    return Compose(steps)
