"""Synthetic detection data: coloured shapes on textured backgrounds, written as PNG images + COCO JSON.

Each image gets ``min_shapes..max_shapes`` shapes (circle, square, triangle, diamond, star) of a nominal
size (side of the shape's bounding square) drawn uniformly from ``[min_size, max_size]``, in a saturated
colour with slight jitter, on a muted texture (smooth noise, linear gradient or stripes). Shapes may overlap:
a later shape may hide part of an earlier one, but a placement is re-drawn if it would hide more than
``max_occlusion`` of any earlier shape's pixels. Each box is the tight pixel box of the whole shape as drawn,
occluded parts included; ``area`` is the shape's pixel count. Output is a pure function of
``(seed, split_name)`` and the options (byte-identical files).
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
from PIL import Image, ImageDraw

from ..files import write_atomically

ClassMode = Literal["color", "shape", "shape_color"]

COLORS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "green": (40, 170, 60),
    "blue": (40, 80, 225),
    "yellow": (235, 210, 30),
    "magenta": (210, 50, 200),
    "cyan": (40, 200, 210),
}
SHAPE_KINDS = ("circle", "square", "triangle", "diamond", "star")
DEFAULT_COLORS = ("red", "green", "blue", "yellow")
COLOR_JITTER = 15
MAX_PLACEMENT_TRIES = 20
SHAPE_SIZES = (24, 56)  # smallest and largest side of a drawn shape in pixels (generate_shapes' defaults)


def _polygon(kind: str, x0: int, y0: int, size: int) -> list[tuple[float, float]]:
    """Vertices of a polygonal shape inside the square ``[x0, x0 + size) x [y0, y0 + size)``."""
    last = size - 1
    cx, cy = x0 + last / 2, y0 + last / 2
    if kind == "square":
        return [(x0, y0), (x0 + last, y0), (x0 + last, y0 + last), (x0, y0 + last)]
    if kind == "diamond":
        return [(cx, y0), (x0 + last, cy), (cx, y0 + last), (x0, cy)]
    if kind == "triangle":
        height = round(size * math.sqrt(3) / 2)
        top = y0 + (size - height) // 2
        return [(x0, top + height - 1), (x0 + last, top + height - 1), (cx, top)]
    if kind == "star":
        radii = (last / 2, last / 2 * 0.45)
        angles = [-math.pi / 2 + k * math.pi / 5 for k in range(10)]
        return [(cx + radii[k % 2] * math.cos(a), cy + radii[k % 2] * math.sin(a)) for k, a in enumerate(angles)]
    raise ValueError(f"unknown shape kind {kind!r}; choose from {SHAPE_KINDS}")


def _shape_mask(kind: str, x0: int, y0: int, size: int, image_size: int) -> Image.Image:
    """Binary ("L", 0/255) mask of one shape."""
    mask = Image.new("L", (image_size, image_size), 0)
    draw = ImageDraw.Draw(mask)
    if kind == "circle":
        draw.ellipse([x0, y0, x0 + size - 1, y0 + size - 1], fill=255)
    else:
        draw.polygon(_polygon(kind, x0, y0, size), fill=255)
    return mask


def _muted_color(rng: np.random.Generator) -> np.ndarray:
    """A greyish colour, so that the saturated shape colours stand out."""
    return rng.uniform(70, 180) + rng.uniform(-25, 25, size=3)


def _background(rng: np.random.Generator, image_size: int) -> Image.Image:
    """Textured background: smooth noise, a linear gradient or stripes, plus fine pixel noise."""
    coords = np.arange(image_size, dtype=np.float64)
    yy, xx = np.meshgrid(coords, coords, indexing="ij")
    texture = rng.integers(3)
    if texture == 0:
        cells = int(rng.integers(4, 17))
        coarse = (_muted_color(rng) + rng.uniform(-40, 40, size=(cells, cells, 3))).clip(0, 255).astype(np.uint8)
        base = np.asarray(Image.fromarray(coarse).resize((image_size, image_size), Image.BILINEAR), dtype=np.float64)
    else:
        angle = rng.uniform(0, math.pi)
        t = (xx * math.cos(angle) + yy * math.sin(angle)) / image_size
        if texture == 1:
            t = (t - t.min()) / max(t.max() - t.min(), 1e-9)
        else:
            t = (np.floor(t * rng.uniform(4, 16)) % 2).astype(np.float64)
        first, second = _muted_color(rng), _muted_color(rng)
        base = first + t[..., None] * (second - first)
    pixels = base + rng.normal(0, 6, size=base.shape)
    return Image.fromarray(pixels.clip(0, 255).astype(np.uint8), "RGB")


def _draw_shapes(
    image: Image.Image,
    rng: np.random.Generator,
    count: int,
    shapes: Sequence[str],
    colors: Sequence[str],
    size_range: tuple[int, int],
    max_occlusion: float,
) -> list[tuple[str, str, tuple[int, int, int, int], int]]:
    """Paint up to ``count`` shapes onto ``image``; returns (kind, colour, xyxy pixel box, pixel count) each.

    A shape whose placements all hide more than ``max_occlusion`` of an earlier shape (after
    ``MAX_PLACEMENT_TRIES`` draws) is left out.
    """
    drawn: list[tuple[str, str, tuple[int, int, int, int], int]] = []
    visible: list[np.ndarray] = []
    for _ in range(count):
        kind, color = shapes[rng.integers(len(shapes))], colors[rng.integers(len(colors))]
        jitter = rng.integers(-COLOR_JITTER, COLOR_JITTER + 1, 3)
        rgb = tuple(int(v) for v in np.clip(np.add(COLORS[color], jitter), 0, 255))
        for _ in range(MAX_PLACEMENT_TRIES):
            size = int(rng.integers(size_range[0], size_range[1] + 1))
            x0, y0 = (int(v) for v in rng.integers(0, image.width - size + 1, size=2))
            mask = _shape_mask(kind, x0, y0, size, image.width)
            pixels = np.asarray(mask) > 0
            if all((v & ~pixels).sum() >= (1 - max_occlusion) * d[3] for v, d in zip(visible, drawn, strict=True)):
                break
        else:
            continue
        visible = [v & ~pixels for v in visible] + [pixels]
        image.paste(rgb, mask=mask)
        drawn.append((kind, color, mask.getbbox(), int(pixels.sum())))
    return drawn


def _category_name(classes: ClassMode, color: str, kind: str) -> str:
    if classes == "color":
        return color
    if classes == "shape":
        return kind
    if classes == "shape_color":
        return f"{color}_{kind}"
    raise ValueError(f"classes must be 'color', 'shape' or 'shape_color', got {classes!r}")


def category_names(classes: ClassMode, colors: Sequence[str], shapes: Sequence[str]) -> list[str]:
    """Category names, in id order (ids 1..C): the colours, the shape kinds, or colour-major pairs."""
    return list(dict.fromkeys(_category_name(classes, color, kind) for color in colors for kind in shapes))


def generate_shapes(
    out_dir: str | Path,
    num_images: int,
    seed: int = 0,
    image_size: int = 128,
    min_shapes: int = 1,
    max_shapes: int = 3,
    min_size: int = SHAPE_SIZES[0],
    max_size: int = SHAPE_SIZES[1],
    classes: ClassMode = "color",
    split_name: str = "train",
    colors: Sequence[str] = DEFAULT_COLORS,
    shapes: Sequence[str] = SHAPE_KINDS,
    max_occlusion: float = 0.5,
) -> Path:
    """Write ``out_dir/images/{split_name}_NNNNNN.png`` and ``out_dir/annotations/{split_name}.json``.

    ``classes`` picks the categories: the colours, the shape kinds, or every ``{colour}_{shape}`` pair.
    The random stream is seeded by ``(seed, split_name)``, so splits written with one seed never share images.
    Returns the annotation file path.
    """
    if not 0 <= min_shapes <= max_shapes:
        raise ValueError(f"need 0 <= min_shapes <= max_shapes, got {min_shapes}, {max_shapes}")
    if not 1 <= min_size <= max_size <= image_size:
        raise ValueError(f"need 1 <= min_size <= max_size <= image_size, got {min_size}, {max_size}, {image_size}")
    unknown = [c for c in colors if c not in COLORS] + [s for s in shapes if s not in SHAPE_KINDS]
    if unknown or not colors or not shapes:
        raise ValueError(f"unknown colours/shapes {unknown}; colours: {list(COLORS)}, shapes: {list(SHAPE_KINDS)}")
    names = category_names(classes, colors, shapes)
    category_ids = {name: i + 1 for i, name in enumerate(names)}

    out = Path(out_dir)
    (out / "images").mkdir(parents=True, exist_ok=True)
    (out / "annotations").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng([seed, *split_name.encode()])
    images: list[dict[str, Any]] = []
    annotations: list[dict[str, Any]] = []
    for index in range(num_images):
        image = _background(rng, image_size)
        image_id = index + 1
        count = int(rng.integers(min_shapes, max_shapes + 1))
        for kind, color, (left, top, right, bottom), area in _draw_shapes(
            image, rng, count, shapes, colors, (min_size, max_size), max_occlusion
        ):
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": image_id,
                    "category_id": category_ids[_category_name(classes, color, kind)],
                    "bbox": [left, top, right - left, bottom - top],
                    "area": area,
                    "iscrowd": 0,
                    "shape": kind,
                    "color": color,
                }
            )
        file_name = f"{split_name}_{index:06d}.png"
        image.save(out / "images" / file_name, format="PNG")
        images.append({"id": image_id, "file_name": file_name, "width": image_size, "height": image_size})

    coco = {
        "info": {"description": "synthetic shapes", "split": split_name, "seed": seed, "classes": classes},
        "licenses": [],
        "images": images,
        "annotations": annotations,
        "categories": [{"id": i, "name": name, "supercategory": classes} for name, i in category_ids.items()],
    }
    annotation_file = out / "annotations" / f"{split_name}.json"
    write_atomically(annotation_file, json.dumps(coco))  # whole or not at all: a study regenerates missing annotations
    return annotation_file


def generate_shapes_splits(
    out_dir: str | Path, num_train: int, num_val: int, seed: int = 0, **options: Any
) -> dict[str, Path]:
    """Write a ``train`` and a held-out ``val`` split into one folder (shared ``images/``).

    The splits draw from different random streams (``(seed, "train")`` and ``(seed, "val")``). ``options`` are
    passed on to ``generate_shapes``. Returns ``{"train": path, "val": path}`` to the annotation files.
    """
    return {
        split: generate_shapes(out_dir, count, seed=seed, split_name=split, **options)
        for split, count in (("train", num_train), ("val", num_val))
    }
