"""α-entmax (Peters et al. 2019; Correia et al. 2019): entmax15 and α-entmax with a learnable α per head."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from .base import AttentionActivation, KeyGrid
from .functional import check_alpha, entmax_rows, key_mask
from .registry import register_activation

#: α = 1 + ALPHA_EPS + (1 − ALPHA_EPS)·sigmoid(pre_alpha) keeps the learnable α in (1 + ALPHA_EPS, 2).
ALPHA_EPS = 0.01


def entmax15(x: Tensor, dim: int = -1, mask: Tensor | None = None) -> Tensor:
    """1.5-entmax along ``dim``, exact; ``mask`` (True = padding, broadcastable to ``x``) gives 0."""
    return entmax_rows(x, 1.5, dim, mask)


def entmax_alpha(x: Tensor, alpha: float | Tensor, dim: int = -1, mask: Tensor | None = None) -> Tensor:
    """α-entmax along ``dim`` for 1 < α ≤ 2, differentiable in ``x`` and ``alpha``.

    ``alpha`` is a float or a tensor broadcastable to ``x`` with size 1 along ``dim`` (e.g. (1, H, 1, 1) for one
    α per head of (B, H, Lq, Lk) scores). ``mask`` (True = padding, broadcastable to ``x``) gives 0.
    """
    check_alpha(alpha if isinstance(alpha, Tensor) else float(alpha))
    return entmax_rows(x, alpha if isinstance(alpha, Tensor) else float(alpha), dim, mask)


@register_activation("entmax15")
class Entmax15(AttentionActivation):
    """1.5-entmax over the keys."""

    def forward(
        self, scores: Tensor, key_padding_mask: Tensor | None = None, key_grid: KeyGrid | None = None
    ) -> Tensor:
        self.check_inputs(scores, key_padding_mask)
        return entmax15(scores, dim=-1, mask=key_mask(key_padding_mask))


@register_activation("alpha_entmax")
class AlphaEntmax(AttentionActivation):
    """α-entmax with one learnable α per head: α = 1 + ε + (1 − ε)·sigmoid(pre_alpha), ε = 0.01."""

    def __init__(self, num_heads: int, alpha_init: float = 1.5) -> None:
        super().__init__()
        if isinstance(num_heads, bool) or not isinstance(num_heads, int) or num_heads < 1:
            raise ValueError(f"AlphaEntmax: num_heads must be a positive int, got {num_heads!r}")
        if not 1 + ALPHA_EPS < alpha_init < 2:
            raise ValueError(f"alpha_init must lie in ({1 + ALPHA_EPS}, 2), got {alpha_init}")
        unit = (alpha_init - 1 - ALPHA_EPS) / (1 - ALPHA_EPS)
        self.pre_alpha = nn.Parameter(torch.full((num_heads,), math.log(unit / (1 - unit))))

    def current_alpha(self) -> Tensor:
        """The per-head α as a differentiable (num_heads,) tensor."""
        return 1 + ALPHA_EPS + (1 - ALPHA_EPS) * torch.sigmoid(self.pre_alpha)

    @property
    def alpha(self) -> Tensor:
        """The per-head α, detached (for logging)."""
        return self.current_alpha().detach()

    def forward(
        self, scores: Tensor, key_padding_mask: Tensor | None = None, key_grid: KeyGrid | None = None
    ) -> Tensor:
        self.check_inputs(scores, key_padding_mask)
        if scores.shape[1] != self.pre_alpha.numel():
            raise ValueError(f"scores have {scores.shape[1]} heads, AlphaEntmax has {self.pre_alpha.numel()}")
        alpha = self.current_alpha().view(1, -1, 1, 1)
        return entmax_rows(scores, alpha, -1, key_mask(key_padding_mask))

    def extra_repr(self) -> str:
        return f"num_heads={self.pre_alpha.numel()}, alpha={[round(a, 4) for a in self.alpha.tolist()]}"
