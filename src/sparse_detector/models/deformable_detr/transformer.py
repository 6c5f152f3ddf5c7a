"""Deformable transformer: multi-scale deformable encoder, decoder with deformable cross-attention.

Semantics and parameter names of fundamentalvision/Deformable-DETR (``encoder.layers.N.self_attn``,
``decoder.layers.N.cross_attn`` / ``self_attn``, ``level_embed``, ``reference_points``, and for two-stage
``enc_output``, ``pos_trans``). Tensors are batch-first. Reference points are (x, y) — or boxes (cx, cy, w, h) —
normalised to each image's valid (unpadded) area; the attention modules receive them scaled to the padded map by
the valid ratios.
"""

from __future__ import annotations

import copy
import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ...attention.base import AttentionActivation
from ...attention.deformable import MSDeformAttn
from ...attention.fast_layers import Dropout, Linear
from ...attention.multihead import MultiheadAttention
from ...attention.sites import AttentionSite
from ..transformer import DECODER_CROSS, DECODER_SELF, ENCODER_SELF, ActivationFactory, softmax_everywhere


def inverse_sigmoid(x: Tensor, eps: float = 1e-5) -> Tensor:
    """logit(x) with x clamped to [eps, 1 - eps] (the official refinement's inverse)."""
    x = x.clamp(min=0, max=1)
    return torch.log(x.clamp(min=eps) / (1 - x).clamp(min=eps))


def valid_ratios_of(mask: Tensor) -> Tensor:
    """(B, 2) share (w, h) of a (B, H, W) padded map that is valid (True in ``mask`` = padding)."""
    _, height, width = mask.shape
    valid_h = (~mask[:, :, 0]).sum(1)
    valid_w = (~mask[:, 0, :]).sum(1)
    return torch.stack([valid_w.float() / width, valid_h.float() / height], -1)


class DeformableTransformerEncoderLayer(nn.Module):
    """Deformable self-attention over all levels, then a feed-forward block (post-norm)."""

    def __init__(
        self,
        d_model: int,
        d_ffn: int,
        dropout: float,
        n_levels: int,
        n_heads: int,
        n_points: int,
        activation: AttentionActivation | None = None,
    ) -> None:
        super().__init__()
        self.self_attn = MSDeformAttn(d_model, n_levels, n_heads, n_points, activation)
        self.dropout1 = Dropout(dropout)
        self.norm1 = nn.LayerNorm(d_model)
        self.linear1 = Linear(d_model, d_ffn)
        self.dropout2 = Dropout(dropout)
        self.linear2 = Linear(d_ffn, d_model)
        self.dropout3 = Dropout(dropout)
        self.norm2 = nn.LayerNorm(d_model)

    def forward(
        self,
        src: Tensor,
        pos: Tensor,
        reference_points: Tensor,
        spatial_shapes: Tensor,
        level_start_index: Tensor,
        padding_mask: Tensor | None = None,
        valid_ratios: Tensor | None = None,
    ) -> Tensor:
        attended = self.self_attn(
            src + pos,
            reference_points,
            src,
            spatial_shapes,
            level_start_index,
            padding_mask,
            valid_ratios=valid_ratios,
            query_padding_mask=padding_mask,
        )
        src = self.norm1(src + self.dropout1(attended))
        ffn = self.linear2(self.dropout2(F.relu(self.linear1(src))))
        return self.norm2(src + self.dropout3(ffn))


class DeformableTransformerEncoder(nn.Module):
    """The encoder layers in turn, every query's reference point the centre of its own cell."""

    def __init__(self, layers: list[DeformableTransformerEncoderLayer]) -> None:
        super().__init__()
        self.layers = nn.ModuleList(layers)
        self.num_layers = len(layers)

    @staticmethod
    def get_reference_points(spatial_shapes: Tensor, valid_ratios: Tensor, device: torch.device) -> Tensor:
        """(B, S, L, 2): the centre of every valid cell of every level, for each level's map (padded coords)."""
        points = []
        for level, (height, width) in enumerate(spatial_shapes.tolist()):
            ref_y, ref_x = torch.meshgrid(
                torch.linspace(0.5, height - 0.5, height, dtype=torch.float32, device=device),
                torch.linspace(0.5, width - 0.5, width, dtype=torch.float32, device=device),
                indexing="ij",
            )
            ref_y = ref_y.reshape(-1)[None] / (valid_ratios[:, None, level, 1] * height)
            ref_x = ref_x.reshape(-1)[None] / (valid_ratios[:, None, level, 0] * width)
            points.append(torch.stack((ref_x, ref_y), -1))
        return torch.cat(points, 1)[:, :, None] * valid_ratios[:, None]

    def forward(
        self,
        src: Tensor,
        spatial_shapes: Tensor,
        level_start_index: Tensor,
        valid_ratios: Tensor,
        pos: Tensor,
        padding_mask: Tensor | None = None,
    ) -> Tensor:
        reference_points = self.get_reference_points(spatial_shapes, valid_ratios, src.device)
        for layer in self.layers:
            src = layer(src, pos, reference_points, spatial_shapes, level_start_index, padding_mask, valid_ratios)
        return src


class DeformableTransformerDecoderLayer(nn.Module):
    """Self-attention among the queries, deformable cross-attention into the memory, feed-forward (post-norm)."""

    def __init__(
        self,
        d_model: int,
        d_ffn: int,
        dropout: float,
        n_levels: int,
        n_heads: int,
        n_points: int,
        make_activation: ActivationFactory = softmax_everywhere,
    ) -> None:
        super().__init__()
        self.cross_attn = MSDeformAttn(d_model, n_levels, n_heads, n_points, make_activation(DECODER_CROSS))
        self.dropout1 = Dropout(dropout)
        self.norm1 = nn.LayerNorm(d_model)
        self.self_attn = MultiheadAttention(d_model, n_heads, dropout, make_activation(DECODER_SELF))
        self.dropout2 = Dropout(dropout)
        self.norm2 = nn.LayerNorm(d_model)
        self.linear1 = Linear(d_model, d_ffn)
        self.dropout3 = Dropout(dropout)
        self.linear2 = Linear(d_ffn, d_model)
        self.dropout4 = Dropout(dropout)
        self.norm3 = nn.LayerNorm(d_model)

    def forward(
        self,
        tgt: Tensor,
        query_pos: Tensor,
        reference_points: Tensor,
        src: Tensor,
        src_spatial_shapes: Tensor,
        level_start_index: Tensor,
        src_padding_mask: Tensor | None = None,
        src_valid_ratios: Tensor | None = None,
    ) -> Tensor:
        q = k = tgt + query_pos
        tgt = self.norm2(tgt + self.dropout2(self.self_attn(q, k, tgt)[0]))
        attended = self.cross_attn(
            tgt + query_pos,
            reference_points,
            src,
            src_spatial_shapes,
            level_start_index,
            src_padding_mask,
            valid_ratios=src_valid_ratios,
        )
        tgt = self.norm1(tgt + self.dropout1(attended))
        ffn = self.linear2(self.dropout3(F.relu(self.linear1(tgt))))
        return self.norm3(tgt + self.dropout4(ffn))


class DeformableTransformerDecoder(nn.Module):
    """Decoder layers returning every layer's output and reference points.

    With box refinement the model sets ``bbox_embed`` (one head per layer): each layer's output moves the
    reference points (detached) for the next layer. Two-stage sets ``class_embed`` too (used for proposals).
    """

    def __init__(self, layers: list[DeformableTransformerDecoderLayer]) -> None:
        super().__init__()
        self.layers = nn.ModuleList(layers)
        self.num_layers = len(layers)
        self.bbox_embed: nn.ModuleList | None = None
        self.class_embed: nn.ModuleList | None = None

    def forward(
        self,
        tgt: Tensor,
        reference_points: Tensor,
        src: Tensor,
        src_spatial_shapes: Tensor,
        src_level_start_index: Tensor,
        src_valid_ratios: Tensor,
        query_pos: Tensor,
        src_padding_mask: Tensor | None = None,
    ) -> tuple[Tensor, Tensor]:
        output = tgt
        outputs, references = [], []
        for index, layer in enumerate(self.layers):
            ratios = src_valid_ratios if reference_points.shape[-1] == 2 else src_valid_ratios.repeat(1, 1, 2)
            reference_input = reference_points[:, :, None] * ratios[:, None]
            output = layer(
                output,
                query_pos,
                reference_input,
                src,
                src_spatial_shapes,
                src_level_start_index,
                src_padding_mask,
                src_valid_ratios,
            )
            if self.bbox_embed is not None:
                delta = self.bbox_embed[index](output)
                if reference_points.shape[-1] == 4:
                    refined = delta + inverse_sigmoid(reference_points)
                else:
                    refined = torch.cat([delta[..., :2] + inverse_sigmoid(reference_points), delta[..., 2:]], -1)
                reference_points = refined.sigmoid().detach()
            outputs.append(output)
            references.append(reference_points)
        return torch.stack(outputs), torch.stack(references)


class DeformableTransformer(nn.Module):
    """Encoder over the flattened levels, then the decoder from learned queries or (two-stage) encoder proposals.

    ``make_activation(site)`` gives each layer's attention map for the sites ``encoder_self``, ``decoder_self``
    and ``decoder_cross`` (softmax everywhere is the official model).
    """

    def __init__(
        self,
        d_model: int = 256,
        nhead: int = 8,
        num_encoder_layers: int = 6,
        num_decoder_layers: int = 6,
        dim_feedforward: int = 1024,
        dropout: float = 0.1,
        num_feature_levels: int = 4,
        dec_n_points: int = 4,
        enc_n_points: int = 4,
        two_stage: bool = False,
        two_stage_num_proposals: int = 300,
        make_activation: ActivationFactory = softmax_everywhere,
    ) -> None:
        super().__init__()
        self.d_model = d_model
        self.nhead = nhead
        self.two_stage = two_stage
        self.two_stage_num_proposals = two_stage_num_proposals
        self.encoder = DeformableTransformerEncoder(
            [
                DeformableTransformerEncoderLayer(
                    d_model,
                    dim_feedforward,
                    dropout,
                    num_feature_levels,
                    nhead,
                    enc_n_points,
                    make_activation(ENCODER_SELF),
                )
                for _ in range(num_encoder_layers)
            ]
        )
        self.decoder = DeformableTransformerDecoder(
            [
                DeformableTransformerDecoderLayer(
                    d_model, dim_feedforward, dropout, num_feature_levels, nhead, dec_n_points, make_activation
                )
                for _ in range(num_decoder_layers)
            ]
        )
        self.level_embed = nn.Parameter(torch.empty(num_feature_levels, d_model))
        if two_stage:
            self.enc_output = Linear(d_model, d_model)
            self.enc_output_norm = nn.LayerNorm(d_model)
            self.pos_trans = Linear(d_model * 2, d_model * 2)
            self.pos_trans_norm = nn.LayerNorm(d_model * 2)
        else:
            self.reference_points = Linear(d_model, 2)
        self._reset_parameters()

    def attention_sites(self) -> tuple[AttentionSite, ...]:
        """Encoder self-attention (grid-cell queries) and decoder cross-attention sample multi-scale points; the
        decoder's self-attention is over the object queries."""
        encoder, decoder = self.encoder.layers, self.decoder.layers
        return (
            AttentionSite(ENCODER_SELF, "points", "grid", tuple(layer.self_attn for layer in encoder)),
            AttentionSite(DECODER_SELF, "queries", "queries", tuple(layer.self_attn for layer in decoder)),
            AttentionSite(DECODER_CROSS, "points", "queries", tuple(layer.cross_attn for layer in decoder)),
        )

    def _reset_parameters(self) -> None:
        for p in self.parameters():
            if p.dim() > 1:
                nn.init.xavier_uniform_(p)
        for m in self.modules():
            if isinstance(m, MSDeformAttn):
                m._reset_parameters()
        if not self.two_stage:
            nn.init.xavier_uniform_(self.reference_points.weight, gain=1.0)
            nn.init.zeros_(self.reference_points.bias)
        nn.init.normal_(self.level_embed)

    def get_proposal_pos_embed(self, proposals: Tensor, temperature: float = 10000.0) -> Tensor:
        """Sine encoding of (B, N, 4) unnormalised proposals -> (B, N, 2 * d_model) (official: 128 features per
        coordinate, which is d_model / 2 for the official d_model 256)."""
        num_pos_feats = self.d_model // 2
        dim_t = torch.arange(num_pos_feats, dtype=torch.float32, device=proposals.device)
        dim_t = temperature ** (2 * torch.div(dim_t, 2, rounding_mode="floor") / num_pos_feats)
        pos = proposals.sigmoid()[:, :, :, None] * (2 * math.pi) / dim_t
        return torch.stack((pos[:, :, :, 0::2].sin(), pos[:, :, :, 1::2].cos()), dim=4).flatten(2)

    def gen_encoder_output_proposals(
        self, memory: Tensor, memory_padding_mask: Tensor, spatial_shapes: Tensor
    ) -> tuple[Tensor, Tensor]:
        """Two-stage: one proposal box per valid memory cell (centre of the cell, size 0.05·2^level), as logits;
        cells in padding or with a proposal near the border get ``inf`` and a zeroed memory."""
        batch = memory.shape[0]
        proposals = []
        start = 0
        for level, (height, width) in enumerate(spatial_shapes.tolist()):
            mask = memory_padding_mask[:, start : start + height * width].view(batch, height, width)
            valid_h = (~mask[:, :, 0]).sum(1)
            valid_w = (~mask[:, 0, :]).sum(1)
            grid_y, grid_x = torch.meshgrid(
                torch.linspace(0, height - 1, height, dtype=torch.float32, device=memory.device),
                torch.linspace(0, width - 1, width, dtype=torch.float32, device=memory.device),
                indexing="ij",
            )
            grid = torch.stack([grid_x, grid_y], -1)
            scale = torch.stack([valid_w, valid_h], 1).view(batch, 1, 1, 2)
            grid = (grid[None].expand(batch, -1, -1, -1) + 0.5) / scale
            size = torch.ones_like(grid) * 0.05 * (2.0**level)
            proposals.append(torch.cat((grid, size), -1).view(batch, -1, 4))
            start += height * width
        proposals = torch.cat(proposals, 1)
        valid = ((proposals > 0.01) & (proposals < 0.99)).all(-1, keepdim=True)
        proposals = torch.log(proposals / (1 - proposals))
        proposals = proposals.masked_fill(memory_padding_mask[..., None], float("inf"))
        proposals = proposals.masked_fill(~valid, float("inf"))
        output_memory = memory.masked_fill(memory_padding_mask[..., None], 0.0).masked_fill(~valid, 0.0)
        return self.enc_output_norm(self.enc_output(output_memory)), proposals

    def forward(
        self, srcs: list[Tensor], masks: list[Tensor], pos_embeds: list[Tensor], query_embed: Tensor | None = None
    ) -> tuple[Tensor, Tensor, Tensor, Tensor | None, Tensor | None]:
        """``srcs`` per level (B, C, h, w) with ``masks`` (B, h, w) True = padding and ``pos_embeds`` (B, C, h, w);
        ``query_embed`` (Q, 2C): query positions and contents (not used by two-stage).

        Returns the decoder outputs (layers, B, Q, C), the initial reference points (B, Q, 2 or 4), every layer's
        reference points (layers, B, Q, 2 or 4) and, for two-stage, the encoder's class logits and box logits.
        """
        if not self.two_stage and query_embed is None:
            raise ValueError("query_embed is required unless the transformer is two-stage")
        spatial_shapes = torch.as_tensor([src.shape[-2:] for src in srcs], dtype=torch.long, device=srcs[0].device)
        level_start_index = torch.cat((spatial_shapes.new_zeros((1,)), spatial_shapes.prod(1).cumsum(0)[:-1]))
        valid_ratios = torch.stack([valid_ratios_of(m) for m in masks], 1)
        src_flatten = torch.cat([src.flatten(2).transpose(1, 2) for src in srcs], 1)
        mask_flatten = torch.cat([mask.flatten(1) for mask in masks], 1)
        pos_flatten = torch.cat(
            [pos.flatten(2).transpose(1, 2) + self.level_embed[level] for level, pos in enumerate(pos_embeds)], 1
        )
        memory = self.encoder(src_flatten, spatial_shapes, level_start_index, valid_ratios, pos_flatten, mask_flatten)

        batch, _, channels = memory.shape
        enc_class = enc_coord = None
        if self.two_stage:
            output_memory, proposals = self.gen_encoder_output_proposals(memory, mask_flatten, spatial_shapes)
            enc_class = self.decoder.class_embed[self.decoder.num_layers](output_memory)
            enc_coord = self.decoder.bbox_embed[self.decoder.num_layers](output_memory) + proposals
            if memory.shape[1] < self.two_stage_num_proposals:
                grids = ", ".join(f"{h}x{w}" for h, w in spatial_shapes.tolist())
                raise ValueError(
                    f"two-stage Deformable DETR picks model.num_queries={self.two_stage_num_proposals} proposals among "
                    f"the encoder's feature-map cells, but this batch has only {memory.shape[1]} (levels {grids}): "
                    "use larger images (data.train_scales to train; data.val_size and data.max_size, which evaluate "
                    "and predict take as --set data.val_size=N) or fewer queries (model.num_queries, to train)"
                )
            top = torch.topk(enc_class[..., 0], self.two_stage_num_proposals, dim=1)[1]
            top_coords = torch.gather(enc_coord, 1, top[..., None].expand(-1, -1, 4)).detach()
            reference_points = top_coords.sigmoid()
            query_pos, tgt = self.pos_trans_norm(self.pos_trans(self.get_proposal_pos_embed(top_coords))).split(
                channels, dim=2
            )
        else:
            query_pos, tgt = query_embed.split(channels, dim=1)
            query_pos = query_pos[None].expand(batch, -1, -1)
            tgt = tgt[None].expand(batch, -1, -1)
            reference_points = self.reference_points(query_pos).sigmoid()
        hs, inter_references = self.decoder(
            tgt, reference_points, memory, spatial_shapes, level_start_index, valid_ratios, query_pos, mask_flatten
        )
        return hs, reference_points, inter_references, enc_class, enc_coord


def clones(module: nn.Module, count: int) -> nn.ModuleList:
    """``count`` independent deep copies of ``module``."""
    return nn.ModuleList(copy.deepcopy(module) for _ in range(count))
