"""Joint image/target transforms: box geometry, consistency of per-box fields, empty targets, determinism."""

from __future__ import annotations

import pytest
import torch
from PIL import Image

from sparse_detector.data.transforms import (
    Compose,
    Normalize,
    RandomHorizontalFlip,
    RandomResize,
    RandomSizeCrop,
    ToModelTarget,
    ToTensor,
    crop,
    hflip,
    make_transforms,
    resize,
    resized_shape,
)


def _target(boxes: list[list[float]], width: int = 200, height: int = 100) -> dict[str, torch.Tensor]:
    b = torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4)
    return {
        "boxes": b,
        "labels": torch.arange(len(b), dtype=torch.int64),
        "area": (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1]),
        "iscrowd": torch.zeros(len(b), dtype=torch.int64),
        "image_id": torch.tensor(7),
        "orig_size": torch.tensor([height, width]),
        "size": torch.tensor([height, width]),
    }


def _image(width: int = 200, height: int = 100) -> Image.Image:
    """Black image with a white block at x 10..49, y 20..59 (the box [10, 20, 50, 60])."""
    image = Image.new("RGB", (width, height))
    image.paste((255, 255, 255), (10, 20, 50, 60))
    return image


def test_hflip_maps_boxes_and_pixels() -> None:
    image, target = hflip(_image(), _target([[10, 20, 50, 60]]))
    assert torch.equal(target["boxes"], torch.tensor([[150.0, 20.0, 190.0, 60.0]]))
    assert image.getbbox() == (150, 20, 190, 60)
    torch.manual_seed(0)
    _, always = RandomHorizontalFlip(p=1.0)(_image(), _target([[10, 20, 50, 60]]))
    _, never = RandomHorizontalFlip(p=0.0)(_image(), _target([[10, 20, 50, 60]]))
    assert torch.equal(always["boxes"], target["boxes"])
    assert torch.equal(never["boxes"], torch.tensor([[10.0, 20.0, 50.0, 60.0]]))


def test_resize_scales_boxes_area_and_size() -> None:
    image, target = resize(_image(), _target([[10, 20, 50, 60]]), size=50)
    assert image.size == (100, 50)
    assert torch.allclose(target["boxes"], torch.tensor([[5.0, 10.0, 25.0, 30.0]]))
    assert torch.allclose(target["area"], torch.tensor([400.0]))
    assert target["size"].tolist() == [50, 100]
    assert target["orig_size"].tolist() == [100, 200]


def test_resize_scales_the_area_by_both_sides_ratios() -> None:
    """201 x 100 to a shorter side of 50: 100 x 50, so x scales by 100/201 and y by 1/2, and the area as the box."""
    _, target = resize(_image(201, 100), _target([[10, 20, 50, 60]], width=201), size=50)
    x0, y0, x1, y1 = target["boxes"][0].tolist()
    assert target["area"].item() == pytest.approx((x1 - x0) * (y1 - y0), rel=1e-6)


def test_resized_shape_caps_longer_side() -> None:
    assert resized_shape(200, 100, 800, max_size=1333) == (666, 1332)  # official rounding
    assert resized_shape(100, 200, 100) == (200, 100)  # already the requested size
    assert resized_shape(640, 480, 800, max_size=1333) == (800, 1066)


# (w, h, size, max_size) -> (h, w) as official DETR's get_size_with_aspect_ratio returns them (read off that function):
# the capped shorter side is rounded, the longer side truncated, so a capped longer side can come out 1-2 px over
# or under max_size (e.g. 40 x 284 -> 1334 x 188).
OFFICIAL_SIZES = {
    (300, 200, 1000, 1333): (889, 1333),
    (640, 480, 800, 1333): (800, 1066),
    (1333, 800, 800, 1333): (800, 1333),
    (500, 1400, 800, 1333): (1332, 476),
    (96, 200, 96, None): (200, 96),
    (1000, 1000, 800, 1333): (800, 800),
    (40, 101, 800, 1333): (1333, 528),
    (40, 101, 480, 800): (800, 317),
    (40, 162, 480, 800): (801, 198),
    (40, 162, 608, 1000): (1000, 247),
    (40, 284, 800, 1333): (1334, 188),
    (40, 284, 480, 800): (802, 113),
}


def test_an_image_longer_than_max_size_times_its_width_keeps_one_pixel_across() -> None:
    """3000 x 20 at 64 px, at most 64: official DETR's shorter side rounds to 0 pixels and resizing fails."""
    assert resized_shape(3000, 20, 64, max_size=64) == (1, 64)
    assert resized_shape(20, 3000, 64, max_size=64) == (64, 1)
    image, target = resize(Image.new("RGB", (3000, 20)), _target([[1500, 0, 3000, 20]]), 64, max_size=64)
    assert image.size == (64, 1)
    assert target["boxes"].tolist() == [[32.0, 0.0, 64.0, 1.0]]


def test_resized_shape_equals_the_official_function() -> None:
    """Sizes official DETR gives, with and without the cap (300 x 200 to 1000 capped at 1333 is 889 x 1333; it would
    be 888 x 1332 if the capped size were truncated instead of rounded)."""
    for (w, h, size, max_size), expected in OFFICIAL_SIZES.items():
        assert resized_shape(w, h, size, max_size) == expected, (w, h, size, max_size)


def test_crop_keeps_fields_consistent_and_drops_empty_boxes() -> None:
    target = _target([[10, 20, 50, 60], [120, 10, 190, 90], [60, 5, 100, 95]])
    image, out = crop(_image(), target, (0, 40, 100, 80))  # x in [40, 120)
    assert image.size == (80, 100)
    assert out["labels"].tolist() == [0, 2]  # box 1 (x >= 120) is gone
    assert torch.equal(out["boxes"], torch.tensor([[0.0, 20.0, 10.0, 60.0], [20.0, 5.0, 60.0, 95.0]]))
    assert torch.allclose(out["area"], torch.tensor([400.0, 3600.0]))
    assert len(out["iscrowd"]) == 2
    assert out["size"].tolist() == [100, 80]


def test_random_size_crop_within_bounds_and_small_images() -> None:
    torch.manual_seed(0)
    for _ in range(20):
        image, target = RandomSizeCrop(30, 60)(_image(), _target([[10, 20, 50, 60]]))
        assert 30 <= image.width <= 60 and 30 <= image.height <= 60
        assert target["size"].tolist() == [image.height, image.width]
        boxes = target["boxes"]
        assert (boxes[:, 2] <= image.width).all() and (boxes[:, 3] <= image.height).all() and (boxes >= 0).all()
        assert len(boxes) == len(target["labels"]) == len(target["area"]) == len(target["iscrowd"])
    image, _ = RandomSizeCrop(384, 600)(_image(64, 48), _target([], 64, 48))
    assert image.size == (64, 48)


@pytest.mark.parametrize("train", [True, False])
def test_pipeline_outputs_normalised_cxcywh(train: bool) -> None:
    torch.manual_seed(1)
    transforms = make_transforms(
        train, scales=(64, 96), max_size=160, crop_sizes=(40, 80), crop_resize_scales=(90,), val_size=64
    )
    for _ in range(10):
        image, target = transforms(_image(), _target([[10, 20, 50, 60], [0, 0, 200, 100]]))
        assert image.dtype == torch.float32 and image.shape[0] == 3
        assert list(image.shape[-2:]) == target["size"].tolist()
        boxes = target["boxes"]
        assert boxes.dtype == torch.float32 and ((boxes >= 0) & (boxes <= 1)).all()
        assert len(boxes) == len(target["labels"])
    if not train:
        assert image.shape[-2:] == (64, 128)
        assert torch.allclose(target["boxes"][1], torch.tensor([0.5, 0.5, 1.0, 1.0]))


def test_to_model_target_values() -> None:
    image, target = Compose([ToTensor(), ToModelTarget()])(_image(), _target([[10, 20, 50, 60]]))
    assert torch.allclose(target["boxes"], torch.tensor([[0.15, 0.4, 0.2, 0.4]]))
    assert image.min() >= 0 and image.max() <= 1
    normalised, same = Normalize()(image, _target([[10, 20, 50, 60]]))
    assert torch.allclose(same["boxes"], target["boxes"])
    assert normalised.min() < 0


@pytest.mark.parametrize("train", [True, False])
def test_empty_targets_survive(train: bool) -> None:
    torch.manual_seed(2)
    transforms = make_transforms(train, scales=(64, 96), max_size=160, crop_sizes=(40, 80), crop_resize_scales=(90,))
    steps = [RandomHorizontalFlip(1.0), RandomResize([50]), RandomSizeCrop(20, 40), transforms]
    for step in steps:
        _, target = step(_image(), _target([]))
        assert target["boxes"].shape == (0, 4) and target["labels"].shape == (0,) and target["area"].shape == (0,)


def test_seeded_augmentation_is_reproducible() -> None:
    transforms = make_transforms(True, scales=(64, 80, 96), max_size=160, crop_sizes=(40, 80), crop_resize_scales=(90,))

    def run() -> list[torch.Tensor]:
        torch.manual_seed(123)
        return [transforms(_image(), _target([[10, 20, 50, 60]]))[1]["boxes"] for _ in range(8)]

    assert all(torch.equal(a, b) for a, b in zip(run(), run(), strict=True))


def test_small_image_preset_without_crop() -> None:
    transforms = make_transforms(True, scales=range(96, 161, 16), max_size=256, crop_sizes=None)
    assert not any(isinstance(t, RandomSizeCrop) for t in transforms.transforms)
    image, _ = transforms(_image(128, 128), _target([[10, 20, 50, 60]], 128, 128))
    assert image.shape[-1] in range(96, 161, 16)
