"""Sparsemax (Martins & Astudillo 2016): the Euclidean projection of the scores onto the simplex."""

from __future__ import annotations

from torch import Tensor

from .base import AttentionActivation, KeyGrid
from .functional import entmax_rows, key_mask
from .registry import register_activation


def sparsemax(x: Tensor, dim: int = -1, mask: Tensor | None = None) -> Tensor:
    """argmin_{p∈Δ} ‖p − x‖² along ``dim``, exact; ``mask`` (True = padding, broadcastable to ``x``) gives 0."""
    return entmax_rows(x, 2.0, dim, mask)


@register_activation("sparsemax")
class Sparsemax(AttentionActivation):
    """Sparsemax over the keys."""

    def forward(
        self, scores: Tensor, key_padding_mask: Tensor | None = None, key_grid: KeyGrid | None = None
    ) -> Tensor:
        self.check_inputs(scores, key_padding_mask)
        return sparsemax(scores, dim=-1, mask=key_mask(key_padding_mask))
