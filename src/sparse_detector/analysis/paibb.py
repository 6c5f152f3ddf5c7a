"""PAIBB: the proportion of a matched object query's attention that falls inside its ground-truth box.

It is read at every site whose queries are the object queries and whose keys are the feature grid or multi-scale
sampling points (``takes_paibb``).

Geometry, in the pixels of the image as fed to the model (after the transforms, before padding: the target's
``size`` (h, w)): cell j of a feature level with stride s (the site's ``key_strides``) covers pixels
[j * s, (j + 1) * s]. An image of side n has ceil(n / s) valid cells, which cover ceil(n / s) * s >= n pixels: the
last one is only partly image. A box, normalised (cx, cy, w, h) to the image, has its edges at x * n pixels, i.e.
at x * n / s in cell units; it is never laid over the valid cells as if they covered exactly the image.

At grid sites the attention map lives on the feature grid; each cell counts with the exact fraction of its area
inside the box (no rounding, no resizing; the part of the last cell beyond the image is outside every box), so
PAIBB = sum over cells of p(cell) * coverage(cell).

At sampling-point sites (Deformable DETR's cross-attention) PAIBB is the weight of the points that lie inside the
box. The records give sampling locations in [0, 1] of each level's valid cells (the official model's valid
ratios): a location u at a level with V valid cells of stride s lies at pixel u * V * s, so the same u is a
different pixel at each level where V * s differs from the image side. Points and boxes are compared in pixels; a
point on the border counts as inside. There the matched pairs also get the sampling spread: the weighted pixel
distance of the points from the query's reference point at their level (the reference, like the locations, in
[0, 1] of the level's valid cells), x measured in box widths and y in box heights (each at least ``MIN_BOX_SIDE``
of the image, so zero-area boxes give finite values).

Maps without ``key_strides`` or targets without ``size`` fall back to taking each image's valid grid to cover
exactly the image (exact when every side is a multiple of the stride).

``upsampled_paibb`` is the prior thesis's reading, to set its numbers beside ours (an option, never the default): the
head-averaged map of the last layer, bilinearly upsampled to the original image size, and the share of its mass on
the pixels inside the box (box edges rounded to whole pixels). It keeps the thesis's geometry on purpose, valid grid
stretched over the image where a side is not a multiple of the stride, so that its numbers stay comparable.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from ..attention.sites import PointsRecord
from .maps import AttentionMaps

MatchIndices = Sequence[tuple[Tensor, Tensor]]
"""A matcher's output: per image, the matched query indices and target indices."""

SIZE_BUCKETS = ("small", "medium", "large")
MIN_BOX_SIDE = 0.01  # sampling spread: box sides below this fraction of the image count as this
SMALL_MAX_AREA = 32**2  # COCO: small < 32^2 <= medium < 96^2 <= large (pixels of the original image)
MEDIUM_MAX_AREA = 96**2
GRID_PAIBB = "mass inside the matched box"  # what PAIBB measures at grid sites, and at sampling-point sites:
POINTS_PAIBB = "weight of the sampling points inside the matched box"


def mixed_paibb_meaning(points: Sequence[str]) -> str:
    """What PAIBB measures where the runs ``points`` read it over sampling points and the others over the grid."""
    return f"{GRID_PAIBB}; over sampling points for {', '.join(points)}: NOT comparable with attention mass on the grid"


def size_buckets(boxes: Tensor, orig_size: Tensor) -> Tensor:
    """Index into ``SIZE_BUCKETS`` of normalised cxcywh ``boxes`` (M, 4) in images of original size (h, w),
    ``orig_size`` (M, 2) or (2,).

    The area is the box area in original pixels, w * h * W_orig * H_orig. COCO's own buckets use the segment area
    of its annotations; for box-only datasets the two coincide.
    """
    area = boxes[:, 2] * boxes[:, 3] * orig_size[..., 0] * orig_size[..., 1]
    return (area >= SMALL_MAX_AREA).long() + (area >= MEDIUM_MAX_AREA).long()


def _interval_coverage(lo: Tensor, hi: Tensor, cells: int, valid: Tensor, extent: Tensor) -> Tensor:
    """(M, cells): length of [lo, hi] ∩ [0, ``extent``] (all (M, 1), in cell units) inside each unit cell [j, j + 1],
    zero for cells j >= ``valid``."""
    j = torch.arange(cells, device=lo.device, dtype=lo.dtype)
    overlap = (torch.minimum(torch.minimum(hi, extent), j + 1) - torch.maximum(lo, j)).clamp_min(0.0)
    return overlap * (j < valid)


def box_coverage(
    boxes: Tensor, grid_hw: Tensor, padded_hw: tuple[int, int], image_cells: Tensor | None = None
) -> Tensor:
    """(M, H * W) fraction of each padded-grid cell's area inside each box, row-major like the attention keys.

    ``boxes`` (M, 4) normalised cxcywh relative to the image; ``grid_hw`` (M, 2) the valid grid (h, w) of the box's
    image; ``padded_hw`` the padded grid (H, W); ``image_cells`` (M, 2) the image's (h, w) in cell units, its size
    in pixels over the stride (default ``grid_hw``: the valid grid covers exactly the image). Cells outside the
    valid grid, and the part of a cell beyond the image, get 0.
    """
    boxes = boxes.float() if boxes.dtype != torch.float64 else boxes
    valid_h, valid_w = (grid_hw[:, i : i + 1].to(boxes.dtype) for i in range(2))
    extent = grid_hw if image_cells is None else image_cells
    h, w = (extent[:, i : i + 1].to(boxes.dtype) for i in range(2))
    cx, cy, bw, bh = (boxes[:, i : i + 1] for i in range(4))
    along_x = _interval_coverage((cx - bw / 2) * w, (cx + bw / 2) * w, padded_hw[1], valid_w, w)
    along_y = _interval_coverage((cy - bh / 2) * h, (cy + bh / 2) * h, padded_hw[0], valid_h, h)
    return (along_y[:, :, None] * along_x[:, None, :]).flatten(1)


def widest_float(device: torch.device) -> torch.dtype:
    """float64 for the geometry where the device has it; MPS has no float64, so float32 there."""
    return torch.float32 if device.type == "mps" else torch.float64


def image_sizes(targets: Sequence[Mapping[str, Tensor]], indices: MatchIndices) -> Tensor | None:
    """(M, 2) (h, w) in model-input pixels (the targets' ``size``: after the transforms, before padding) of the image
    of every matched pair; None when a target has no ``size``."""
    if not all("size" in target for target in targets):
        return None
    return torch.cat([t["size"].reshape(1, 2).expand(len(j), 2) for t, (_, j) in zip(targets, indices, strict=True)])


def valid_area_scale(
    record: PointsRecord, image_index: Tensor, image_hw: Tensor, level_strides: Sequence[int]
) -> Tensor:
    """(M, L, 2): the (w, h) of each level's valid cells in units of the image's size, for every matched pair.

    A point record's locations are in [0, 1] of each level's valid cells (V cells of stride s, V * s pixels); times
    this they are in [0, 1] of the image (``image_hw`` (M, 2) pixels, as (h, w)).
    """
    shapes = record.level_shapes.flip(-1).to(record.valid_ratios.dtype)  # (L, 2) padded cells as (w, h)
    valid_cells = (record.valid_ratios[image_index] * shapes).round()  # (M, L, 2)
    strides = torch.as_tensor(level_strides, dtype=valid_cells.dtype, device=valid_cells.device)[:, None]
    return valid_cells * strides / image_hw.flip(-1)[:, None, :].to(valid_cells)


@dataclass
class MatchedPaibb:
    """PAIBB of every matched (query, box) pair of a batch, M pairs in all."""

    values: Tensor  # (layers, M, heads)
    image_index: Tensor  # (M,) image of the pair in the batch
    query_index: Tensor  # (M,)
    target_index: Tensor  # (M,) box index in that image's target
    size_bucket: Tensor  # (M,) index into SIZE_BUCKETS
    spread: Tensor | None = None  # (layers, M, heads) sampling spread, at sampling-point sites

    @property
    def head_mean(self) -> Tensor:
        """(layers, M): PAIBB of the head-averaged map, which equals the mean of the per-head values (linear)."""
        return self.values.mean(-1)


def takes_paibb(maps: AttentionMaps) -> bool:
    """Whether PAIBB is read at a site: object queries attending over the feature grid or sampling points."""
    return maps.queries == "queries" and (maps.keys == "grid" or (maps.keys == "points" and maps.records is not None))


def _to_image(
    records: Sequence[PointsRecord], image_index: Tensor, image_hw: Tensor | None, level_strides: Sequence[int] | None
) -> Tensor | float:
    """(M, 1, L, 1, 2) factor taking the records' locations (relative to each level's valid cells) to the image; 1
    without ``image_hw`` or ``level_strides`` (the valid cells taken to cover exactly the image)."""
    if image_hw is None or level_strides is None:
        return 1.0
    scale = valid_area_scale(records[0], image_index, image_hw, level_strides)
    return scale[:, None, :, None, :].to(records[0].sampling_locations.dtype)


def point_readings(
    records: Sequence[PointsRecord],
    image_index: Tensor,
    query_index: Tensor,
    boxes: Tensor,
    image_hw: Tensor | None = None,
    level_strides: Sequence[int] | None = None,
) -> tuple[Tensor, Tensor]:
    """(layers, M, heads) twice, for each matched query and its box (cxcywh, relative to the image): the weight of
    its sampling points inside the box (PAIBB), and their weighted distance from its reference point at their level,
    in units of the box's width (x) and height (y) (the sampling spread).

    With ``image_hw`` (M, 2), the images' (h, w) in model-input pixels, and the ``level_strides``, points, reference
    and box meet in pixels; without them the valid cells are taken to cover exactly the image.
    """
    cx, cy, bw, bh = (boxes[:, i, None, None, None] for i in range(4))
    size = boxes[:, None, None, None, 2:].clamp_min(MIN_BOX_SIDE)
    to_image = _to_image(records, image_index, image_hw, level_strides)
    inside_weights, spreads = [], []
    for record in records:
        weights = record.weights[image_index, query_index]  # (M, heads, L, P)
        locations = record.sampling_locations[image_index, query_index]  # (M, heads, L, P, 2)
        centre = record.reference_points[image_index, query_index][:, None, :, None, :2]  # (M, 1, L, 1, 2)
        x, y = (locations * to_image).unbind(-1)
        inside = ((x - cx).abs() <= bw / 2) & ((y - cy).abs() <= bh / 2)
        distance = ((locations - centre) * to_image / size).norm(dim=-1)
        inside_weights.append((weights * inside).sum((-2, -1)))
        spreads.append((weights * distance).sum((-2, -1)))
    return torch.stack(inside_weights), torch.stack(spreads)


def compute_paibb(maps: AttentionMaps, targets: Sequence[Mapping[str, Tensor]], indices: MatchIndices) -> MatchedPaibb:
    """PAIBB of ``maps`` (object queries over the feature grid, or sampling points with their records) for the
    Hungarian matching ``indices`` (the model's matcher output). ``targets`` need ``boxes`` and ``orig_size``
    (h, w), and ``size`` (h, w, the image as fed to the model) to place the boxes in pixels (see the module
    docstring)."""
    if not takes_paibb(maps) or (maps.keys == "grid" and (maps.grid_hw is None or maps.padded_hw is None)):
        raise ValueError(
            f"PAIBB needs maps of object queries over the feature grid; these have {maps.queries} queries over "
            f"{maps.keys} keys"
        )
    device = maps.weights[0].device
    image_index = torch.cat([torch.full_like(q, b) for b, (q, _) in enumerate(indices)]).to(device)
    query_index = torch.cat([q for q, _ in indices]).to(device)
    target_index = torch.cat([t for _, t in indices]).to(device)
    boxes = torch.cat([t["boxes"][j.to(t["boxes"].device)] for t, (_, j) in zip(targets, indices, strict=True)])
    orig_size = torch.cat([t["orig_size"].expand(len(j), 2) for t, (_, j) in zip(targets, indices, strict=True)])
    boxes, orig_size = boxes.to(device), orig_size.to(device)
    buckets = size_buckets(boxes, orig_size)
    image_hw = image_sizes(targets, indices)
    image_hw = None if image_hw is None else image_hw.to(device)
    if maps.keys == "points":
        boxes = boxes.to(maps.weights[0].dtype)
        values, spread = point_readings(maps.records, image_index, query_index, boxes, image_hw, maps.key_strides)
        return MatchedPaibb(values, image_index, query_index, target_index, buckets, spread)
    image_cells = None
    if image_hw is not None and maps.key_strides is not None:
        image_cells = image_hw.to(widest_float(device)) / maps.key_strides[0]
    coverage = box_coverage(boxes, maps.grid_hw[image_index].to(device), maps.padded_hw, image_cells)
    values = torch.stack(
        [(w[image_index, :, query_index].to(coverage.dtype) * coverage[:, None, :]).sum(-1) for w in maps.weights]
    )
    return MatchedPaibb(values, image_index, query_index, target_index, buckets)


def upsampled_paibb(maps: AttentionMaps, targets: Sequence[Mapping[str, Tensor]], indices: MatchIndices) -> Tensor:
    """(M,) thesis-compatible PAIBB of every matched pair: the last layer's head-averaged map on the image's valid
    grid, bilinearly upsampled to its original size (h, w) as the thesis did (so stretched where a side is not a
    multiple of the stride), mass on the pixels inside the box over the total."""
    values = []
    last = maps.weights[-1]
    padded_h, padded_w = maps.padded_hw
    for image, (target, (queries, truths)) in enumerate(zip(targets, indices, strict=True)):
        grid_h, grid_w = (int(v) for v in maps.grid_hw[image])
        height, width = (int(v) for v in target["orig_size"])
        for query, truth in zip(queries.tolist(), truths.tolist(), strict=True):
            padded = last[image, :, query].mean(0).reshape(padded_h, padded_w)
            grid = padded[:grid_h, :grid_w].reshape(1, 1, grid_h, grid_w)  # the valid top-left block
            grid = grid.to(widest_float(last.device))
            upsampled = F.interpolate(grid, size=(height, width), mode="bilinear", align_corners=False)[0, 0]
            cx, cy, bw, bh = target["boxes"][truth].tolist()
            x0, x1 = (min(max(round(x * width), 0), width) for x in (cx - bw / 2, cx + bw / 2))
            y0, y1 = (min(max(round(y * height), 0), height) for y in (cy - bh / 2, cy + bh / 2))
            inside = upsampled[y0:y1, x0:x1].sum()
            values.append(inside / upsampled.sum().clamp_min(torch.finfo(upsampled.dtype).tiny))
    return torch.stack(values) if values else torch.zeros(0, dtype=torch.float64)
