"""Multi-head attention with a selectable attention map (softmax, sparsemax, entmax, ...).

Parameter names equal ``torch.nn.MultiheadAttention`` (``in_proj_weight``, ``in_proj_bias``, ``out_proj``) so
official DETR checkpoints load unchanged. Tensors are batch-first: (B, L, E).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .base import AttentionActivation, KeyGrid
from .registry import Softmax


class MultiheadAttention(nn.Module):
    """Scaled dot-product attention whose score-to-weight map is ``activation``.

    Per-head weights (B, H, Lq, Lk) are returned with ``need_weights=True``; setting ``store_weights = True``
    keeps the last ones in ``stored_weights`` (used by the attention recorder). Softmax without weights runs
    through the fused ``scaled_dot_product_attention``.
    """

    def __init__(
        self,
        embed_dim: int,
        num_heads: int,
        dropout: float = 0.0,
        activation: AttentionActivation | None = None,
    ) -> None:
        super().__init__()
        if embed_dim % num_heads != 0:
            raise ValueError(f"embed_dim {embed_dim} is not divisible by num_heads {num_heads}")
        self.embed_dim = embed_dim
        self.num_heads = num_heads
        self.head_dim = embed_dim // num_heads
        self.dropout = dropout
        self.in_proj_weight = nn.Parameter(torch.empty(3 * embed_dim, embed_dim))
        self.in_proj_bias = nn.Parameter(torch.empty(3 * embed_dim))
        self.out_proj = nn.Linear(embed_dim, embed_dim)
        self.activation = activation if activation is not None else Softmax()
        self.store_weights = False
        self.stored_weights: Tensor | None = None
        self._reset_parameters()

    def _reset_parameters(self) -> None:
        # Same initialisation as torch.nn.MultiheadAttention.
        nn.init.xavier_uniform_(self.in_proj_weight)
        nn.init.zeros_(self.in_proj_bias)
        nn.init.zeros_(self.out_proj.bias)

    def _split_heads(self, x: Tensor, index: int) -> Tensor:
        size = self.embed_dim
        weight = self.in_proj_weight[index * size : (index + 1) * size]
        bias = self.in_proj_bias[index * size : (index + 1) * size]
        batch, length, _ = x.shape
        return F.linear(x, weight, bias).view(batch, length, self.num_heads, self.head_dim).transpose(1, 2)

    def forward(
        self,
        query: Tensor,
        key: Tensor,
        value: Tensor,
        key_padding_mask: Tensor | None = None,
        key_grid: KeyGrid | None = None,
        need_weights: bool = False,
    ) -> tuple[Tensor, Tensor | None]:
        """``query`` (B, Lq, E), ``key``/``value`` (B, Lk, E), ``key_padding_mask`` (B, Lk) True = padding."""
        q = self._split_heads(query, 0)
        k = self._split_heads(key, 1)
        v = self._split_heads(value, 2)
        dropout_p = self.dropout if self.training else 0.0
        weights = None
        if self.activation.is_softmax and not (need_weights or self.store_weights):
            attn_mask = None if key_padding_mask is None else ~key_padding_mask[:, None, None, :]
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, dropout_p=dropout_p)
        else:
            scores = (q * (1.0 / math.sqrt(self.head_dim))) @ k.transpose(-2, -1)
            weights = self.activation(scores, key_padding_mask, key_grid)
            out = F.dropout(weights, dropout_p, self.training) @ v
        if self.store_weights:
            self.stored_weights = weights.detach()
        batch, length = query.shape[:2]
        out = self.out_proj(out.transpose(1, 2).reshape(batch, length, self.embed_dim))
        return out, weights if need_weights else None
