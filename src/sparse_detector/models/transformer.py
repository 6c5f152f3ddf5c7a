"""The DETR encoder-decoder transformer (official semantics, batch-first tensors).

Positional embeddings are added to queries and keys only, never to values. Post-norm by default, pre-norm as an
option. The decoder returns the normalised output of every layer (for the auxiliary losses).

The transformer declares DETR's three attention sites (``attention_sites()``): encoder self attention (queries and
keys on the feature grid), decoder self attention (object queries over object queries) and decoder cross attention
(object queries over the feature grid).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..attention.base import AttentionActivation, KeyGrid
from ..attention.fast_layers import Dropout, Linear
from ..attention.multihead import MultiheadAttention
from ..attention.registry import Softmax
from ..attention.sites import AttentionSite

ENCODER_SELF, DECODER_SELF, DECODER_CROSS = "encoder_self", "decoder_self", "decoder_cross"
"""DETR's attention sites (roles shared with other models: ``model.attention.<site>`` in the config)."""

ActivationFactory = Callable[[str], AttentionActivation]
"""Makes the attention activation of one layer of the site it is given (one of the names above)."""


def softmax_everywhere(site: str) -> AttentionActivation:
    """The default activation factory: softmax at every site."""
    return Softmax()


class _LayerWithFeedForward(nn.Module):
    """The two-layer ReLU block, with the official parameter names ``linear1``/``linear2``."""

    linear1: Linear
    linear2: Linear
    dropout: Dropout

    def _feed_forward(self, x: Tensor) -> Tensor:
        return self.linear2(self.dropout(F.relu(self.linear1(x))))


class TransformerEncoderLayer(_LayerWithFeedForward):
    """Self-attention over the feature grid, then the feed-forward block (post-norm, or pre-norm with
    ``normalize_before``)."""

    def __init__(
        self,
        d_model: int,
        nhead: int,
        dim_feedforward: int,
        dropout: float,
        normalize_before: bool,
        self_attn_activation: AttentionActivation,
    ) -> None:
        super().__init__()
        self.self_attn = MultiheadAttention(d_model, nhead, dropout, self_attn_activation)
        self.linear1 = Linear(d_model, dim_feedforward)
        self.linear2 = Linear(dim_feedforward, d_model)
        self.norm1 = nn.LayerNorm(d_model)
        self.norm2 = nn.LayerNorm(d_model)
        self.dropout = Dropout(dropout)
        self.dropout1 = Dropout(dropout)
        self.dropout2 = Dropout(dropout)
        self.normalize_before = normalize_before

    def forward(self, src: Tensor, pos: Tensor, padding_mask: Tensor | None, key_grid: KeyGrid | None) -> Tensor:
        if self.normalize_before:
            src2 = self.norm1(src)
            q = k = src2 + pos
            attended = self.self_attn(q, k, src2, padding_mask, key_grid, query_padding_mask=padding_mask)[0]
            src = src + self.dropout1(attended)
            return src + self.dropout2(self._feed_forward(self.norm2(src)))
        q = k = src + pos
        attended = self.self_attn(q, k, src, padding_mask, key_grid, query_padding_mask=padding_mask)[0]
        src = self.norm1(src + self.dropout1(attended))
        return self.norm2(src + self.dropout2(self._feed_forward(src)))


class TransformerDecoderLayer(_LayerWithFeedForward):
    """Self-attention among the queries, cross-attention into the encoder memory, then the feed-forward block
    (post-norm, or pre-norm with ``normalize_before``)."""

    def __init__(
        self,
        d_model: int,
        nhead: int,
        dim_feedforward: int,
        dropout: float,
        normalize_before: bool,
        self_attn_activation: AttentionActivation,
        cross_attn_activation: AttentionActivation,
    ) -> None:
        super().__init__()
        self.self_attn = MultiheadAttention(d_model, nhead, dropout, self_attn_activation)
        self.multihead_attn = MultiheadAttention(d_model, nhead, dropout, cross_attn_activation)
        self.linear1 = Linear(d_model, dim_feedforward)
        self.linear2 = Linear(dim_feedforward, d_model)
        self.norm1 = nn.LayerNorm(d_model)
        self.norm2 = nn.LayerNorm(d_model)
        self.norm3 = nn.LayerNorm(d_model)
        self.dropout = Dropout(dropout)
        self.dropout1 = Dropout(dropout)
        self.dropout2 = Dropout(dropout)
        self.dropout3 = Dropout(dropout)
        self.normalize_before = normalize_before

    def forward(
        self,
        tgt: Tensor,
        memory: Tensor,
        pos: Tensor,
        query_pos: Tensor,
        memory_padding_mask: Tensor | None,
        key_grid: KeyGrid | None,
    ) -> Tensor:
        if self.normalize_before:
            tgt2 = self.norm1(tgt)
            q = k = tgt2 + query_pos
            tgt = tgt + self.dropout1(self.self_attn(q, k, tgt2)[0])
            tgt2 = self.norm2(tgt)
            attended = self.multihead_attn(tgt2 + query_pos, memory + pos, memory, memory_padding_mask, key_grid)[0]
            tgt = tgt + self.dropout2(attended)
            return tgt + self.dropout3(self._feed_forward(self.norm3(tgt)))
        q = k = tgt + query_pos
        tgt = self.norm1(tgt + self.dropout1(self.self_attn(q, k, tgt)[0]))
        attended = self.multihead_attn(tgt + query_pos, memory + pos, memory, memory_padding_mask, key_grid)[0]
        tgt = self.norm2(tgt + self.dropout2(attended))
        return self.norm3(tgt + self.dropout3(self._feed_forward(tgt)))


class TransformerEncoder(nn.Module):
    """The encoder layers in turn, then ``norm`` where given (pre-norm models)."""

    def __init__(self, layers: list[TransformerEncoderLayer], norm: nn.Module | None) -> None:
        super().__init__()
        self.layers = nn.ModuleList(layers)
        self.norm = norm

    def forward(self, src: Tensor, pos: Tensor, padding_mask: Tensor | None, key_grid: KeyGrid | None) -> Tensor:
        for layer in self.layers:
            src = layer(src, pos, padding_mask, key_grid)
        return self.norm(src) if self.norm is not None else src


class TransformerDecoder(nn.Module):
    """The decoder layers in turn, each layer's output normalised by the shared ``norm`` (for the auxiliary losses)."""

    def __init__(self, layers: list[TransformerDecoderLayer], norm: nn.Module) -> None:
        super().__init__()
        self.layers = nn.ModuleList(layers)
        self.norm = norm

    def forward(
        self,
        tgt: Tensor,
        memory: Tensor,
        pos: Tensor,
        query_pos: Tensor,
        memory_padding_mask: Tensor | None,
        key_grid: KeyGrid | None,
    ) -> Tensor:
        """Returns the normalised output of every layer: (num_layers, B, num_queries, d_model)."""
        outputs = []
        for layer in self.layers:
            tgt = layer(tgt, memory, pos, query_pos, memory_padding_mask, key_grid)
            outputs.append(self.norm(tgt))
        return torch.stack(outputs)


class Transformer(nn.Module):
    """Encoder over the flattened feature map, decoder from learned object queries."""

    def __init__(
        self,
        d_model: int = 512,
        nhead: int = 8,
        num_encoder_layers: int = 6,
        num_decoder_layers: int = 6,
        dim_feedforward: int = 2048,
        dropout: float = 0.1,
        normalize_before: bool = False,
        make_activation: ActivationFactory = softmax_everywhere,
    ) -> None:
        super().__init__()
        encoder_layers = [
            TransformerEncoderLayer(
                d_model, nhead, dim_feedforward, dropout, normalize_before, make_activation(ENCODER_SELF)
            )
            for _ in range(num_encoder_layers)
        ]
        decoder_layers = [
            TransformerDecoderLayer(
                d_model,
                nhead,
                dim_feedforward,
                dropout,
                normalize_before,
                make_activation(DECODER_SELF),
                make_activation(DECODER_CROSS),
            )
            for _ in range(num_decoder_layers)
        ]
        self.encoder = TransformerEncoder(encoder_layers, nn.LayerNorm(d_model) if normalize_before else None)
        self.decoder = TransformerDecoder(decoder_layers, nn.LayerNorm(d_model))
        self.d_model = d_model
        self.nhead = nhead
        self._reset_parameters()

    def attention_sites(self) -> tuple[AttentionSite, ...]:
        encoder, decoder = self.encoder.layers, self.decoder.layers
        return (
            AttentionSite(ENCODER_SELF, "grid", "grid", tuple(layer.self_attn for layer in encoder)),
            AttentionSite(DECODER_SELF, "queries", "queries", tuple(layer.self_attn for layer in decoder)),
            AttentionSite(DECODER_CROSS, "grid", "queries", tuple(layer.multihead_attn for layer in decoder)),
        )

    def _reset_parameters(self) -> None:
        for param in self.parameters():
            if param.dim() > 1:
                nn.init.xavier_uniform_(param)

    def forward(self, src: Tensor, mask: Tensor, query_embed: Tensor, pos_embed: Tensor) -> tuple[Tensor, Tensor]:
        """``src``/``pos_embed`` (B, C, H, W), ``mask`` (B, H, W) True = padding, ``query_embed`` (Q, C).

        Returns decoder outputs (num_layers, B, Q, C) and the encoder memory (B, C, H, W).
        """
        batch, channels, height, width = src.shape
        key_grid = KeyGrid.from_mask(mask)
        src = src.flatten(2).transpose(1, 2)
        pos_embed = pos_embed.flatten(2).transpose(1, 2)
        query_pos = query_embed.unsqueeze(0).expand(batch, -1, -1)
        padding_mask = mask.flatten(1)
        memory = self.encoder(src, pos_embed, padding_mask, key_grid)
        tgt = torch.zeros_like(query_pos)
        hs = self.decoder(tgt, memory, pos_embed, query_pos, padding_mask, key_grid)
        return hs, memory.transpose(1, 2).reshape(batch, channels, height, width)
