"""Multi-head attention with a selectable attention map (softmax, sparsemax, entmax, ...).

Parameter names equal ``torch.nn.MultiheadAttention`` (``in_proj_weight``, ``in_proj_bias``, ``out_proj``) so
official DETR checkpoints load unchanged. Tensors are batch-first: (B, L, E).

The module is a :class:`~sparse_detector.attention.sites.RecordingModule`: while a recorder listens it emits a
:class:`GridRecord` (keys on the feature grid, ``key_grid`` given) or a :class:`QueriesRecord` per call. Softmax
without recording and without ``need_weights`` runs through the fused ``scaled_dot_product_attention``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .base import AttentionActivation, KeyGrid
from .fast_layers import Linear, linear
from .registry import Softmax
from .sites import AttentionRecord, GridRecord, QueriesRecord, RecordingModule


class MultiheadAttention(RecordingModule):
    """Scaled dot-product attention whose score-to-weight map is ``activation``.

    Per-head weights (B, H, Lq, Lk) are returned with ``need_weights=True``. ``store_weights = True`` is the
    simplest recorder: it keeps the weights of the last call in ``stored_weights``.
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
        if isinstance(dropout, bool) or not isinstance(dropout, (int, float)) or not 0 <= dropout < 1:
            raise ValueError(
                f"dropout must be a probability in [0, 1), got {dropout!r}; the map goes third only as "
                "activation=... (MultiheadAttention(embed_dim, num_heads, dropout, activation))"
            )
        if activation is not None and not isinstance(activation, AttentionActivation):
            raise TypeError(
                f"activation must be an AttentionActivation module, got {activation!r}; build one by name with "
                f"get_activation(name), e.g. get_activation('alpha_entmax', num_heads={num_heads})"
            )
        self.embed_dim = embed_dim
        self.num_heads = num_heads
        self.head_dim = embed_dim // num_heads
        self.dropout = dropout
        self.in_proj_weight = nn.Parameter(torch.empty(3 * embed_dim, embed_dim))
        self.in_proj_bias = nn.Parameter(torch.empty(3 * embed_dim))
        self.out_proj = Linear(embed_dim, embed_dim)
        self.activation = activation if activation is not None else Softmax()
        self.stored_weights: Tensor | None = None
        self._reset_parameters()

    @property
    def store_weights(self) -> bool:
        return self._sink == self._store

    @store_weights.setter
    def store_weights(self, on: bool) -> None:
        self.record_to(self._store if on else None)

    def _store(self, record: AttentionRecord) -> None:
        self.stored_weights = record.key_weights()

    def _reset_parameters(self) -> None:
        # Same initialisation as torch.nn.MultiheadAttention.
        nn.init.xavier_uniform_(self.in_proj_weight)
        nn.init.zeros_(self.in_proj_bias)
        nn.init.zeros_(self.out_proj.bias)

    def _split_heads(self, x: Tensor) -> Tensor:
        batch, length, _ = x.shape
        return x.view(batch, length, self.num_heads, self.head_dim).transpose(1, 2)

    def _project(self, x: Tensor, first: int, count: int = 1) -> list[Tensor]:
        """``x`` through ``count`` consecutive in-projections (0: query, 1: key, 2: value) in one product."""
        rows = slice(first * self.embed_dim, (first + count) * self.embed_dim)
        projected = linear(x, self.in_proj_weight[rows], self.in_proj_bias[rows])
        return [self._split_heads(part) for part in projected.split(self.embed_dim, dim=-1)]

    def forward(
        self,
        query: Tensor,
        key: Tensor,
        value: Tensor,
        key_padding_mask: Tensor | None = None,
        key_grid: KeyGrid | None = None,
        need_weights: bool = False,
        query_padding_mask: Tensor | None = None,
    ) -> tuple[Tensor, Tensor | None]:
        """``query`` (B, Lq, E), ``key``/``value`` (B, Lk, E), ``key_padding_mask`` (B, Lk) True = padding.

        ``key_grid``: the keys' layout when they are the feature grid; ``query_padding_mask`` (B, Lq): padded
        queries when the queries are grid cells too — both only describe the record (TVMax reads the grid)."""
        self._check_inputs(query, key, value, key_padding_mask)
        if query is key:  # self attention: queries and keys in one product
            q, k = self._project(query, 0, count=2)
        else:
            (q,), (k,) = self._project(query, 0), self._project(key, 1)
        (v,) = self._project(value, 2)
        dropout_p = self.dropout if self.training else 0.0
        weights = None
        if self.activation.is_softmax and not (need_weights or self.recording):
            attn_mask = None if key_padding_mask is None else ~key_padding_mask[:, None, None, :]
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, dropout_p=dropout_p)
        else:
            scores = (q * (1.0 / math.sqrt(self.head_dim))) @ k.transpose(-2, -1)
            weights = self.activation(scores, key_padding_mask, key_grid)
            out = F.dropout(weights, dropout_p, self.training) @ v
        if self.recording:
            self.emit(self._record(weights.detach(), key_padding_mask, key_grid, query_padding_mask))
        batch, length = query.shape[:2]
        out = self.out_proj(out.transpose(1, 2).reshape(batch, length, self.embed_dim))
        return out, weights if need_weights else None

    def _check_inputs(self, query: Tensor, key: Tensor, value: Tensor, key_padding_mask: Tensor | None) -> None:
        """Raise a clear error unless query, key and value are batch-first (B, L, embed_dim), keys and values alike,
        and ``key_padding_mask`` is None or (B, Lk) bool."""
        for name, x in (("query", query), ("key", key), ("value", value)):
            if x.dim() != 3 or x.shape[-1] != self.embed_dim or x.shape[0] != query.shape[0]:
                raise ValueError(
                    f"MultiheadAttention: {name} must be batch-first (B, L, embed_dim) = ({query.shape[0]}, L, "
                    f"{self.embed_dim}), got shape {tuple(x.shape)} (sequence-first (L, B, E) inputs: transpose(0, 1))"
                )
        if key.shape[1] != value.shape[1]:
            raise ValueError(f"MultiheadAttention: key has {key.shape[1]} entries, value {value.shape[1]}")
        if key_padding_mask is not None and (
            key_padding_mask.dtype != torch.bool or key_padding_mask.shape != key.shape[:2]
        ):
            raise ValueError(
                f"MultiheadAttention: key_padding_mask must be a (B, Lk) = {tuple(key.shape[:2])} bool tensor (True "
                f"= padded key), got {key_padding_mask.dtype} of shape {tuple(key_padding_mask.shape)}"
            )

    def _record(
        self,
        weights: Tensor,
        key_padding_mask: Tensor | None,
        key_grid: KeyGrid | None,
        query_padding_mask: Tensor | None,
    ) -> AttentionRecord:
        dense = self.activation.is_softmax
        if key_grid is None:
            return QueriesRecord(weights, dense=dense, key_padding_mask=key_padding_mask)
        if key_padding_mask is None:
            key_padding_mask = weights.new_zeros(weights.shape[0], weights.shape[-1], dtype=torch.bool)
        return GridRecord(weights, key_padding_mask, key_grid, query_padding_mask, dense)
