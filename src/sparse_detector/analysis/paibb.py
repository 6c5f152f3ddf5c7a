"""PAIBB: the proportion of a matched object query's attention that falls inside its ground-truth box.

It is read at every site whose queries are the object queries and whose keys are the feature grid
(``takes_paibb``).

The attention map lives on the feature grid. A box, normalised (cx, cy, w, h) relative to the image's valid
(unpadded) region, is laid on the image's valid h x w grid, where cell (i, j) covers [j/w, (j+1)/w] x [i/h, (i+1)/h];
each cell counts with the exact fraction of its area inside the box (no rounding, no resizing), so
PAIBB = sum over cells of p(cell) * coverage(cell).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from .maps import AttentionMaps

MatchIndices = Sequence[tuple[Tensor, Tensor]]
"""A matcher's output: per image, the matched query indices and target indices."""

SIZE_BUCKETS = ("small", "medium", "large")
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

    @property
    def head_mean(self) -> Tensor:
        """(layers, M): PAIBB of the head-averaged map, which equals the mean of the per-head values (linear)."""
        return self.values.mean(-1)


def takes_paibb(maps: AttentionMaps) -> bool:
    """Whether PAIBB is read at a site: object queries attending over the feature grid."""
    return maps.queries == "queries" and maps.keys == "grid"


def compute_paibb(maps: AttentionMaps, targets: Sequence[Mapping[str, Tensor]], indices: MatchIndices) -> MatchedPaibb:
    """PAIBB of ``maps`` (object queries over the feature grid) for the Hungarian matching ``indices`` (the
    model's matcher output). ``targets`` need ``boxes`` and ``orig_size`` (h, w)."""
    if not takes_paibb(maps) or maps.grid_hw is None or maps.padded_hw is None:
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
    coverage = box_coverage(boxes, maps.grid_hw[image_index], maps.padded_hw)
    values = torch.stack(
        [(w[image_index, :, query_index].to(coverage.dtype) * coverage[:, None, :]).sum(-1) for w in maps.weights]
    )
    return MatchedPaibb(values, image_index, query_index, target_index, size_buckets(boxes, orig_size))
