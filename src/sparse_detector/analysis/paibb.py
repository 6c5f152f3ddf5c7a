"""PAIBB: the proportion of a matched object query's attention that falls inside its ground-truth box.

It is read at every site whose queries are the object queries and whose keys are the feature grid or multi-scale
sampling points (``takes_paibb``).

The attention map lives on the feature grid. A box, normalised (cx, cy, w, h) relative to the image's valid
(unpadded) region, is laid on the image's valid h x w grid, where cell (i, j) covers [j/w, (j+1)/w] x [i/h, (i+1)/h];
each cell counts with the exact fraction of its area inside the box (no rounding, no resizing), so
PAIBB = sum over cells of p(cell) * coverage(cell).

At sampling-point sites (Deformable DETR's cross-attention) PAIBB is the weight of the points that lie inside the
box: sampling locations and boxes are both normalised to the image's valid region, a point on the border counts as
inside. There the matched pairs also get the sampling spread: the weighted distance of the points from the query's
reference point (box centre for reference boxes), x measured in box widths and y in box heights (each at least
``MIN_BOX_SIDE`` of the image, so zero-area boxes give finite values).

``upsampled_paibb`` is the prior thesis's reading, to set its numbers beside ours (an option, never the default): the
head-averaged map of the last layer, bilinearly upsampled to the original image size, and the share of its mass on
the pixels inside the box (box edges rounded to whole pixels).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from .maps import AttentionMaps

MatchIndices = Sequence[tuple[Tensor, Tensor]]
"""A matcher's output: per image, the matched query indices and target indices."""

SIZE_BUCKETS = ("small", "medium", "large")
MIN_BOX_SIDE = 0.01  # sampling spread: box sides below this fraction of the image count as this
SMALL_MAX_AREA = 32**2  # COCO: small < 32^2 <= medium < 96^2 <= large (pixels of the original image)
MEDIUM_MAX_AREA = 96**2


def size_buckets(boxes: Tensor, orig_size: Tensor) -> Tensor:
    """Index into ``SIZE_BUCKETS`` of normalised cxcywh ``boxes`` (M, 4) in images of original size (h, w),
    ``orig_size`` (M, 2) or (2,).

    The area is the box area in original pixels, w * h * W_orig * H_orig. COCO's own buckets use the segment area
    of its annotations; for box-only datasets the two coincide.
    """
    area = boxes[:, 2] * boxes[:, 3] * orig_size[..., 0] * orig_size[..., 1]
    return (area >= SMALL_MAX_AREA).long() + (area >= MEDIUM_MAX_AREA).long()


def _interval_coverage(lo: Tensor, hi: Tensor, cells: int, valid: Tensor) -> Tensor:
    """(M, cells): length of [lo, hi] (M, 1) inside each unit cell [j, j + 1], zero for cells j >= ``valid``."""
    j = torch.arange(cells, device=lo.device, dtype=lo.dtype)
    overlap = (torch.minimum(hi, j + 1) - torch.maximum(lo, j)).clamp_min(0.0)
    return overlap * (j < valid)


def box_coverage(boxes: Tensor, grid_hw: Tensor, padded_hw: tuple[int, int]) -> Tensor:
    """(M, H * W) fraction of each padded-grid cell's area inside each box, row-major like the attention keys.

    ``boxes`` (M, 4) normalised cxcywh relative to the valid region; ``grid_hw`` (M, 2) the valid grid (h, w) of the
    box's image; ``padded_hw`` the padded grid (H, W). Cells outside the valid grid get 0.
    """
    boxes = boxes.float() if boxes.dtype != torch.float64 else boxes
    h, w = (grid_hw[:, i : i + 1].to(boxes.dtype) for i in range(2))
    cx, cy, bw, bh = (boxes[:, i : i + 1] for i in range(4))
    along_x = _interval_coverage((cx - bw / 2) * w, (cx + bw / 2) * w, padded_hw[1], w)
    along_y = _interval_coverage((cy - bh / 2) * h, (cy + bh / 2) * h, padded_hw[0], h)
    return (along_y[:, :, None] * along_x[:, None, :]).flatten(1)


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


def points_in_box(records: Sequence, image_index: Tensor, query_index: Tensor, boxes: Tensor) -> Tensor:
    """(layers, M, heads): weight of each matched query's sampling points inside its box (cxcywh, valid region)."""
    cx, cy, bw, bh = (boxes[:, i, None, None, None] for i in range(4))
    values = []
    for record in records:
        locations = record.sampling_locations[image_index, query_index]  # (M, heads, L, P, 2)
        inside = ((locations[..., 0] - cx).abs() <= bw / 2) & ((locations[..., 1] - cy).abs() <= bh / 2)
        values.append((record.weights[image_index, query_index] * inside).sum((-2, -1)))
    return torch.stack(values)


def sampling_spread(records: Sequence, image_index: Tensor, query_index: Tensor, boxes: Tensor) -> Tensor:
    """(layers, M, heads): weighted distance of each matched query's sampling points from its reference point,
    in units of its box's width (x) and height (y)."""
    size = boxes[:, None, None, None, 2:].clamp_min(MIN_BOX_SIDE)
    values = []
    for record in records:
        locations = record.sampling_locations[image_index, query_index]  # (M, heads, L, P, 2)
        centre = record.reference_points[image_index, query_index][..., :2]  # (M, L, 2)
        distance = ((locations - centre[:, None, :, None, :]) / size).norm(dim=-1)
        values.append((record.weights[image_index, query_index] * distance).sum((-2, -1)))
    return torch.stack(values)


def compute_paibb(maps: AttentionMaps, targets: Sequence[Mapping[str, Tensor]], indices: MatchIndices) -> MatchedPaibb:
    """PAIBB of ``maps`` (object queries over the feature grid, or sampling points with their records) for the
    Hungarian matching ``indices`` (the model's matcher output). ``targets`` need ``boxes`` and ``orig_size``
    (h, w)."""
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
    if maps.keys == "points":
        boxes = boxes.to(maps.weights[0].dtype)
        values = points_in_box(maps.records, image_index, query_index, boxes)
        spread = sampling_spread(maps.records, image_index, query_index, boxes)
        return MatchedPaibb(values, image_index, query_index, target_index, buckets, spread)
    coverage = box_coverage(boxes, maps.grid_hw[image_index], maps.padded_hw)
    values = torch.stack(
        [(w[image_index, :, query_index].to(coverage.dtype) * coverage[:, None, :]).sum(-1) for w in maps.weights]
    )
    return MatchedPaibb(values, image_index, query_index, target_index, buckets)


def upsampled_paibb(maps: AttentionMaps, targets: Sequence[Mapping[str, Tensor]], indices: MatchIndices) -> Tensor:
    """(M,) thesis-compatible PAIBB of every matched pair: the last layer's head-averaged map on the image's valid
    grid, bilinearly upsampled to its original size (h, w), mass on the pixels inside the box over the total."""
    values = []
    last = maps.weights[-1]
    padded_h, padded_w = maps.padded_hw
    for image, (target, (queries, truths)) in enumerate(zip(targets, indices, strict=True)):
        grid_h, grid_w = (int(v) for v in maps.grid_hw[image])
        height, width = (int(v) for v in target["orig_size"])
        for query, truth in zip(queries.tolist(), truths.tolist(), strict=True):
            padded = last[image, :, query].mean(0).reshape(padded_h, padded_w)
            grid = padded[:grid_h, :grid_w].reshape(1, 1, grid_h, grid_w).double()  # the valid top-left block
            upsampled = F.interpolate(grid, size=(height, width), mode="bilinear", align_corners=False)[0, 0]
            cx, cy, bw, bh = target["boxes"][truth].tolist()
            x0, x1 = round((cx - bw / 2) * width), round((cx + bw / 2) * width)
            y0, y1 = round((cy - bh / 2) * height), round((cy + bh / 2) * height)
            inside = upsampled[max(y0, 0) : max(y1, 0), max(x0, 0) : max(x1, 0)].sum()
            values.append(inside / upsampled.sum().clamp_min(torch.finfo(upsampled.dtype).tiny))
    return torch.stack(values) if values else torch.zeros(0, dtype=torch.float64)
