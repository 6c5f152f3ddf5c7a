"""Multi-scale deformable attention (Zhu et al. 2021) in pure PyTorch, with any attention map over the points.

Each query of each head looks at ``n_points`` locations on each of ``n_levels`` feature maps, placed around its
reference point by learned offsets, and mixes the bilinearly sampled values with weights over the levels × points.
The official model computes those weights with a softmax; here they go through any map of :mod:`.registry`
(sparsemax, entmax15, α-entmax), so sampling points can get exactly zero weight.

Sampling uses ``grid_sample`` (bilinear, zero padding, ``align_corners=False``): the same numbers as the official
CUDA kernel, on every device PyTorch supports, with no compiled extension. Parameter names and initialisation
follow fundamentalvision/Deformable-DETR so official state dicts load unchanged.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .base import AttentionActivation
from .fast_layers import Linear
from .registry import Softmax
from .sites import PointsRecord, RecordingModule


def level_shapes(spatial_shapes: Tensor | Sequence[Sequence[int]]) -> list[tuple[int, int]]:
    """(height, width) of each level as Python ints, from an (L, 2) tensor or a sequence of pairs."""
    rows = spatial_shapes.tolist() if isinstance(spatial_shapes, Tensor) else spatial_shapes
    return [(int(h), int(w)) for h, w in rows]


def _pack_nonzero(weights: Tensor) -> tuple[Tensor, Tensor] | None:
    """Indices of the nonzero entries of each row of (rows, n) ``weights``, left-packed and padded to the longest
    row, with the packed weights (0 in padding slots). ``None`` when packing would not halve the work."""
    nonzero = weights != 0
    counts = nonzero.sum(1)
    k = int(counts.max())
    if 2 * k > weights.shape[1]:
        return None
    rows, n = weights.shape
    # Slot of each nonzero entry in its row; zero entries go to a discarded extra slot k.
    slot = torch.where(nonzero, nonzero.cumsum(1) - 1, k)
    index = torch.zeros(rows, k + 1, dtype=torch.long, device=weights.device)
    index.scatter_(1, slot, torch.arange(n, device=weights.device).expand(rows, n))
    index = index[:, :k]
    filled = torch.arange(k, device=weights.device) < counts[:, None]
    return index, weights.gather(1, index) * filled


def ms_deform_attn_sample(
    value: Tensor,
    spatial_shapes: Tensor | Sequence[Sequence[int]],
    sampling_locations: Tensor,
    attention_weights: Tensor,
    skip_zero_weights: bool = False,
) -> Tensor:
    """Weighted sum of bilinear samples of multi-level ``value`` maps at ``sampling_locations``.

    ``value`` (B, S, H, D): the levels' flattened (row-major) maps concatenated along S, per head H;
    ``spatial_shapes`` (L, 2): each level's (height, width); ``sampling_locations`` (B, Lq, H, L, P, 2): (x, y) in
    [0, 1] of the padded map (outside = zero); ``attention_weights`` (B, Lq, H, L, P). Returns (B, Lq, H * D).

    With ``skip_zero_weights`` only the points of nonzero weight are sampled (on levels where that at least halves
    the work), so zero-weight points cost nothing forward or backward; the gradient reported for a zero weight is
    then 0 rather than its sampled value — exact for sparse maps, whose backward ignores it outside the support.
    """
    batch, _, heads, dim = value.shape
    _, num_queries, _, num_levels, num_points, _ = sampling_locations.shape
    shapes = level_shapes(spatial_shapes)
    values = value.split([h * w for h, w in shapes], dim=1)
    grids = 2 * sampling_locations - 1  # grid_sample's [-1, 1] coordinates
    out = value.new_zeros(batch * heads, dim, num_queries)
    for level, (height, width) in enumerate(shapes):
        # (B, h*w, H, D) -> (B*H, D, h, w)
        level_value = values[level].flatten(2).transpose(1, 2).reshape(batch * heads, dim, height, width)
        # (B, Lq, H, P, 2) -> (B*H, Lq*P, 2) and (B, Lq, H, P) -> (B*H, Lq*P)
        grid = grids[:, :, :, level].transpose(1, 2).reshape(batch * heads, num_queries * num_points, 2)
        weights = attention_weights[:, :, :, level].transpose(1, 2).reshape(batch * heads, num_queries * num_points)
        packed = _pack_nonzero(weights) if skip_zero_weights else None
        if packed is None:
            sampled = F.grid_sample(
                level_value, grid[:, None], mode="bilinear", padding_mode="zeros", align_corners=False
            )  # (B*H, D, 1, Lq*P)
            weighted = sampled.view(batch * heads, dim, num_queries, num_points) * weights.view(
                batch * heads, 1, num_queries, num_points
            )
            out = out + weighted.sum(-1)
            continue
        index, packed_weights = packed
        packed_grid = grid.gather(1, index[..., None].expand(-1, -1, 2))
        sampled = F.grid_sample(
            level_value, packed_grid[:, None], mode="bilinear", padding_mode="zeros", align_corners=False
        )[:, :, 0]  # (B*H, D, k)
        query = (index // num_points)[:, None].expand(-1, dim, -1)
        out = out.scatter_add(2, query, sampled * packed_weights[:, None])
    return out.view(batch, heads * dim, num_queries).transpose(1, 2).contiguous()


class MSDeformAttn(RecordingModule):
    """Multi-scale deformable attention; ``activation`` maps the (levels × points) logits of each head to weights.

    While a recorder listens (:class:`~.sites.RecordingModule`) every call emits a :class:`~.sites.PointsRecord`:
    the weights, sampling locations and reference points in [0, 1] of each image's valid area, the level shapes
    and valid ratios.
    """

    def __init__(
        self,
        d_model: int = 256,
        n_levels: int = 4,
        n_heads: int = 8,
        n_points: int = 4,
        activation: AttentionActivation | None = None,
    ) -> None:
        super().__init__()
        if d_model % n_heads != 0:
            raise ValueError(f"d_model {d_model} is not divisible by n_heads {n_heads}")
        self.d_model = d_model
        self.n_levels = n_levels
        self.n_heads = n_heads
        self.n_points = n_points
        self.sampling_offsets = Linear(d_model, n_heads * n_levels * n_points * 2)
        self.attention_weights = Linear(d_model, n_heads * n_levels * n_points)
        self.value_proj = Linear(d_model, d_model)
        self.output_proj = Linear(d_model, d_model)
        self.activation = activation if activation is not None else Softmax()
        self._reset_parameters()

    def _reset_parameters(self) -> None:
        """Official initialisation: offsets start on rays at evenly spaced angles (one per head), point i at
        distance i + 1; uniform weights; Xavier projections."""
        nn.init.zeros_(self.sampling_offsets.weight)
        thetas = torch.arange(self.n_heads, dtype=torch.float32) * (2.0 * math.pi / self.n_heads)
        directions = torch.stack([thetas.cos(), thetas.sin()], -1)
        directions = directions / directions.abs().max(-1, keepdim=True)[0]
        grid = directions.view(self.n_heads, 1, 1, 2).repeat(1, self.n_levels, self.n_points, 1)
        grid = grid * torch.arange(1, self.n_points + 1, dtype=torch.float32).view(1, 1, -1, 1)
        with torch.no_grad():
            self.sampling_offsets.bias.copy_(grid.view(-1))
        nn.init.zeros_(self.attention_weights.weight)
        nn.init.zeros_(self.attention_weights.bias)
        nn.init.xavier_uniform_(self.value_proj.weight)
        nn.init.zeros_(self.value_proj.bias)
        nn.init.xavier_uniform_(self.output_proj.weight)
        nn.init.zeros_(self.output_proj.bias)

    def sampling_weights(self, query: Tensor) -> Tensor:
        """(B, Lq, H, L, P) weights over each head's levels × points, through ``activation``."""
        batch, length, _ = query.shape
        logits = self.attention_weights(query).view(batch, length, self.n_heads, self.n_levels * self.n_points)
        weights = self.activation(logits.transpose(1, 2)).transpose(1, 2)  # maps take (B, H, Lq, keys)
        return weights.reshape(batch, length, self.n_heads, self.n_levels, self.n_points)

    def forward(
        self,
        query: Tensor,
        reference_points: Tensor,
        input_flatten: Tensor,
        input_spatial_shapes: Tensor,
        input_level_start_index: Tensor | None = None,
        input_padding_mask: Tensor | None = None,
        valid_ratios: Tensor | None = None,
        query_padding_mask: Tensor | None = None,
    ) -> Tensor:
        """``query`` (B, Lq, C); ``reference_points`` (B, Lq, L, 2) as (x, y) in [0, 1] of the padded map, or
        (B, Lq, L, 4) reference boxes (cx, cy, w, h); ``input_flatten`` (B, S, C) the levels' maps flattened and
        concatenated; ``input_spatial_shapes`` (L, 2) each level's (h, w); ``input_padding_mask`` (B, S) True =
        padding. ``input_level_start_index`` is accepted for signature parity with the official module.
        ``valid_ratios`` (B, L, 2) each image's valid share (w, h) of each level (default: no padding) and
        ``query_padding_mask`` (B, Lq) (queries that are padded grid cells) only describe the records."""
        batch, num_queries, _ = query.shape
        value = self.value_proj(input_flatten)
        if input_padding_mask is not None:
            value = value.masked_fill(input_padding_mask[..., None], 0.0)
        value = value.view(batch, value.shape[1], self.n_heads, self.d_model // self.n_heads)
        offsets = self.sampling_offsets(query).view(batch, num_queries, self.n_heads, self.n_levels, self.n_points, 2)
        weights = self.sampling_weights(query)
        if reference_points.shape[-1] == 2:
            # Offsets are in level pixels: divide by each level's (w, h).
            normalizer = torch.stack([input_spatial_shapes[..., 1], input_spatial_shapes[..., 0]], -1)
            locations = reference_points[:, :, None, :, None, :] + offsets / normalizer[None, None, None, :, None, :]
        elif reference_points.shape[-1] == 4:
            # Offsets are relative to the reference box, half its size per n_points.
            centre, size = reference_points[:, :, None, :, None, :2], reference_points[:, :, None, :, None, 2:]
            locations = centre + offsets / self.n_points * size * 0.5
        else:
            raise ValueError(f"reference_points must end in 2 or 4 coordinates, got {reference_points.shape[-1]}")
        if self.recording:
            self.emit(
                self._record(
                    weights, locations, reference_points, input_spatial_shapes, valid_ratios, query_padding_mask
                )
            )
        output = ms_deform_attn_sample(
            value, input_spatial_shapes, locations, weights, skip_zero_weights=not self.activation.is_softmax
        )
        return self.output_proj(output)

    def _record(
        self,
        weights: Tensor,
        locations: Tensor,
        reference_points: Tensor,
        spatial_shapes: Tensor,
        valid_ratios: Tensor | None,
        query_padding_mask: Tensor | None,
    ) -> PointsRecord:
        """The call's record, locations moved from the padded map to each image's valid area."""
        if valid_ratios is None:
            valid_ratios = weights.new_ones(weights.shape[0], self.n_levels, 2)
        ratios = valid_ratios if reference_points.shape[-1] == 2 else valid_ratios.repeat(1, 1, 2)
        return PointsRecord(
            weights=weights.detach(),
            sampling_locations=locations.detach() / valid_ratios[:, None, None, :, None, :],
            reference_points=reference_points.detach() / ratios[:, None],
            level_shapes=spatial_shapes,
            valid_ratios=valid_ratios,
            query_padding_mask=query_padding_mask,
            dense=self.activation.is_softmax,
        )
