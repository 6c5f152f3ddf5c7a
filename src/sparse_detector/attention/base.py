"""What every attention activation receives: scores, the key padding mask and, for grid-aware maps, the key grid."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn


@dataclass(frozen=True)
class KeyGrid:
    """Layout of the keys when they are a flattened (row-major) padded feature map.

    ``padded_hw`` is the padded grid (H, W), so the key count is H * W; ``valid_hw`` is a (B, 2) long tensor with
    each image's unpadded grid height and width (its valid region is the top-left ``h x w`` block).
    """

    padded_hw: tuple[int, int]
    valid_hw: Tensor

    @staticmethod
    def from_mask(mask: Tensor) -> KeyGrid:
        """Build from a (B, H, W) padding mask (True = padding) whose valid region is a top-left block."""
        if mask.dim() != 3 or mask.dtype != torch.bool:
            raise ValueError(
                "KeyGrid.from_mask takes a (B, H, W) bool padding mask (True = padding), "
                f"got {mask.dtype} of shape {tuple(mask.shape)}"
            )
        valid = ~mask
        valid_h = valid.any(dim=2).sum(dim=1)
        valid_w = valid.any(dim=1).sum(dim=1)
        return KeyGrid((mask.shape[1], mask.shape[2]), torch.stack([valid_h, valid_w], dim=1))


class AttentionActivation(nn.Module):
    """Maps attention scores to attention weights over the last dimension (the keys).

    ``scores``: (B, H, Lq, Lk) scaled dot products. ``key_padding_mask``: (B, Lk) bool, True = padded key, or None.
    ``key_grid``: the key layout, for maps that need the 2-D structure (TVMax); the others ignore it.
    Returns weights of the same shape and dtype; each row sums to 1 over valid keys, padded keys get exactly 0,
    a fully padded row is all zeros.
    """

    #: Softmax maps let the attention module use the fused ``scaled_dot_product_attention``.
    is_softmax: bool = False
    #: Maps that need the keys' 2-D layout (``key_grid``): only sites whose keys are the feature grid take them.
    needs_key_grid: bool = False

    def forward(
        self, scores: Tensor, key_padding_mask: Tensor | None = None, key_grid: KeyGrid | None = None
    ) -> Tensor:
        raise NotImplementedError

    def check_inputs(self, scores: Tensor, key_padding_mask: Tensor | None) -> None:
        """Raise a clear error unless ``scores`` are (B, H, Lq, Lk) and ``key_padding_mask`` a (B, Lk) bool mask."""
        name = type(self).__name__
        if scores.dim() != 4:
            raise ValueError(
                f"{name} takes (B, H, Lq, Lk) scores, got shape {tuple(scores.shape)}; for other layouts use the "
                "functions (sparsemax, entmax15, entmax_alpha, tvmax, softmax), which take any dim and mask"
            )
        if key_padding_mask is not None and (
            key_padding_mask.dtype != torch.bool or key_padding_mask.shape != (scores.shape[0], scores.shape[-1])
        ):
            raise ValueError(
                f"{name}: key_padding_mask must be a (B, Lk) = {(scores.shape[0], scores.shape[-1])} bool tensor "
                f"(True = padded key), got {key_padding_mask.dtype} of shape {tuple(key_padding_mask.shape)}"
            )
