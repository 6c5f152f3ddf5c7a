"""Synthetic shapes: determinism, box correctness, categories per mode, loading with CocoDetection."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from sparse_detector.data import CocoDetection, generate_shapes, generate_shapes_splits
from sparse_detector.data.shapes import SHAPE_KINDS, _shape_mask


def _files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_same_seed_identical_bytes_different_seed_differs(tmp_path: Path) -> None:
    generate_shapes(tmp_path / "a", 6, seed=3)
    generate_shapes(tmp_path / "b", 6, seed=3)
    generate_shapes(tmp_path / "c", 6, seed=4)
    a, b, c = _files(tmp_path / "a"), _files(tmp_path / "b"), _files(tmp_path / "c")
    assert a == b
    assert a.keys() == c.keys()
    assert all(a[name] != c[name] for name in a)


def test_boxes_inside_image_and_sizes_in_range(tmp_path: Path) -> None:
    annotation_file = generate_shapes(tmp_path, 30, seed=1, image_size=96, min_size=16, max_size=40, max_shapes=4)
    data = json.loads(annotation_file.read_text())
    assert len(data["images"]) == 30
    per_image = np.bincount([a["image_id"] for a in data["annotations"]], minlength=31)[1:]
    assert per_image.min() >= 1 and per_image.max() <= 4
    for ann in data["annotations"]:
        x, y, w, h = ann["bbox"]
        assert x >= 0 and y >= 0 and x + w <= 96 and y + h <= 96
        # the larger side is the nominal size, up to 5 % for stars (width 0.95 of the bounding square)
        assert 0.95 * 16 - 1 <= max(w, h) <= 40
        assert 0 < ann["area"] <= w * h


def test_box_is_tight_around_drawn_pixels(tmp_path: Path) -> None:
    annotation_file = generate_shapes(tmp_path, 4, seed=2, min_shapes=1, max_shapes=1)
    data = json.loads(annotation_file.read_text())
    for image_info, ann in zip(data["images"], data["annotations"], strict=True):
        pixels = np.asarray(Image.open(tmp_path / "images" / image_info["file_name"]), dtype=np.int16)
        x, y, w, h = ann["bbox"]
        inside = pixels[y : y + h, x : x + w]
        # every border row/column of the box touches the shape: a saturated pixel (channel spread > 100)
        saturated = (inside.max(axis=2) - inside.min(axis=2)) > 100
        assert saturated[0].any() and saturated[-1].any() and saturated[:, 0].any() and saturated[:, -1].any()


@pytest.mark.parametrize("kind", SHAPE_KINDS)
def test_shape_mask_fits_nominal_square(kind: str) -> None:
    left, top, right, bottom = _shape_mask(kind, 10, 20, 30, 64).getbbox()
    assert left >= 10 and top >= 20 and right <= 40 and bottom <= 50
    assert max(right - left, bottom - top) >= 28


@pytest.mark.parametrize(
    ("classes", "expected"),
    [
        ("color", ["red", "green", "blue", "yellow"]),
        ("shape", list(SHAPE_KINDS)),
        ("shape_color", [f"{c}_{s}" for c in ("red", "green", "blue", "yellow") for s in SHAPE_KINDS]),
    ],
)
def test_categories_per_mode(tmp_path: Path, classes: str, expected: list[str]) -> None:
    data = json.loads(generate_shapes(tmp_path, 5, classes=classes).read_text())
    assert [c["name"] for c in data["categories"]] == expected
    assert [c["id"] for c in data["categories"]] == list(range(1, len(expected) + 1))
    names = {c["id"]: c["name"] for c in data["categories"]}
    for ann in data["annotations"]:
        assert names[ann["category_id"]] == {"color": ann["color"], "shape": ann["shape"]}.get(
            classes, f"{ann['color']}_{ann['shape']}"
        )


def test_splits_share_images_folder_and_differ(tmp_path: Path) -> None:
    paths = generate_shapes_splits(tmp_path, 5, 3, seed=0, classes="shape", image_size=64, min_size=12, max_size=30)
    assert paths == {"train": tmp_path / "annotations/train.json", "val": tmp_path / "annotations/val.json"}
    images = sorted(p.name for p in (tmp_path / "images").iterdir())
    assert len(images) == 8 and images[0] == "train_000000.png" and images[-1] == "val_000002.png"
    first_train = (tmp_path / "images" / "train_000000.png").read_bytes()
    assert first_train != (tmp_path / "images" / "val_000000.png").read_bytes()
    train = CocoDetection(tmp_path / "images", paths["train"])
    val = CocoDetection(tmp_path / "images", paths["val"])
    assert len(train) == 5 and len(val) == 3 and train.category_names == val.category_names == list(SHAPE_KINDS)
    image, target = val[0]
    assert image.shape == (3, 64, 64) and ((target["boxes"] > 0) & (target["boxes"] <= 1)).all()


def test_invalid_options(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="classes"):
        generate_shapes(tmp_path, 1, classes="texture")
    with pytest.raises(ValueError, match="max_size <= image_size"):
        generate_shapes(tmp_path, 1, image_size=32, max_size=40)
    with pytest.raises(ValueError, match="unknown colours/shapes"):
        generate_shapes(tmp_path, 1, colors=("red", "mauve"))


def test_generation_killed_while_writing_the_annotations_leaves_none(tmp_path: Path, monkeypatch):
    """The annotation file was written in place: a study killed while writing it left half a JSON file, which the
    next run of the study took for generated data (it regenerates only missing annotations) and could not read."""

    def killed_midway(fd: int) -> None:  # the JSON written, not yet on disk
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "fsync", killed_midway)
    with pytest.raises(KeyboardInterrupt):
        generate_shapes(tmp_path, 2, image_size=64, min_size=10, max_size=20)
    monkeypatch.undo()
    assert list((tmp_path / "annotations").iterdir()) == []  # neither the file nor a temporary one
