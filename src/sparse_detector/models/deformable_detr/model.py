"""Deformable DETR: multi-scale backbone -> deformable transformer -> per-layer class and box heads.

Semantics and parameter names of fundamentalvision/Deformable-DETR: ``input_proj.N`` (1×1 conv + GroupNorm per
backbone level, stride-2 3×3 conv + GroupNorm per extra level), ``query_embed`` (positions and contents, 2C wide),
``class_embed.N`` / ``bbox_embed.N`` (one per decoder layer, shared unless box refinement; one more for two-stage
proposals). Class logits are sigmoid scores without a "no object" class.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ...attention.fast_layers import Linear
from ...attention.sites import AttentionSite, with_key_strides
from ...data.batching import PaddedBatch, model_input
from ..detr import MLP
from ..outputs import DetectionOutput
from .backbone import MultiScaleJoiner
from .transformer import DeformableTransformer, clones, inverse_sigmoid

#: Group count of the GroupNorm after every input projection (official).
PROJECTION_GROUPS = 32


def projection_groups(hidden_dim: int) -> int:
    """The official 32 groups, or half as many channels as a narrower model has: groups of one channel normalise a
    1×1 level (small images, many levels) to a constant, which GroupNorm refuses outright for a single image."""
    return min(PROJECTION_GROUPS, hidden_dim // 2)


def _projection(in_channels: int, hidden_dim: int, extra_level: bool) -> nn.Sequential:
    conv = (
        nn.Conv2d(in_channels, hidden_dim, kernel_size=3, stride=2, padding=1)
        if extra_level
        else nn.Conv2d(in_channels, hidden_dim, kernel_size=1)
    )
    nn.init.xavier_uniform_(conv.weight, gain=1)
    nn.init.zeros_(conv.bias)
    return nn.Sequential(conv, nn.GroupNorm(projection_groups(hidden_dim), hidden_dim))


class DeformableDETR(nn.Module):
    """``num_queries`` boxes with ``num_classes`` sigmoid class logits each, from ``num_feature_levels`` levels."""

    #: Class logits are independent sigmoids (no "no object" class): post-processing takes the top-k pairs.
    sigmoid_scores = True
    #: Parameters at ``model.backbone.lr``: the ResNet only; a learned position embedding (``backbone.1``) trains at
    #: ``optim.lr``, as officially (``--lr_backbone_names backbone.0``).
    backbone_param_prefix = "backbone.0."
    #: Re-initialised by ``--init-from`` when the class count differs: every layer's head, and (two-stage) the same
    #: heads under the decoder, which uses the extra one for its proposals.
    class_heads: tuple[str, ...] = ("class_embed", "transformer.decoder.class_embed")

    def __init__(
        self,
        backbone: MultiScaleJoiner,
        transformer: DeformableTransformer,
        num_classes: int,
        num_queries: int,
        num_feature_levels: int,
        aux_loss: bool = True,
        with_box_refine: bool = False,
        two_stage: bool = False,
    ) -> None:
        super().__init__()
        if two_stage and not with_box_refine:
            raise ValueError("two-stage Deformable DETR needs box refinement (model.deformable.with_box_refine=true)")
        hidden_dim = transformer.d_model
        if hidden_dim % PROJECTION_GROUPS != 0:
            raise ValueError(f"model.transformer.hidden_dim must be a multiple of {PROJECTION_GROUPS}: {hidden_dim}")
        self.num_classes = num_classes
        self.num_queries = num_queries
        self.num_feature_levels = num_feature_levels
        self.aux_loss = aux_loss
        self.with_box_refine = with_box_refine
        self.two_stage = two_stage
        self.transformer = transformer
        self.backbone = backbone
        if not two_stage:
            self.query_embed = nn.Embedding(num_queries, hidden_dim * 2)
        channels = list(backbone.num_channels)
        projections = [_projection(c, hidden_dim, extra_level=False) for c in channels]
        in_channels = channels[-1]
        for _ in range(num_feature_levels - len(channels)):
            projections.append(_projection(in_channels, hidden_dim, extra_level=True))
            in_channels = hidden_dim
        self.input_proj = nn.ModuleList(projections)

        class_embed = Linear(hidden_dim, num_classes)
        bias = -math.log((1 - 0.01) / 0.01)  # prior probability 0.01 for every class
        nn.init.constant_(class_embed.bias, bias)
        bbox_embed = MLP(hidden_dim, hidden_dim, 4, 3)
        nn.init.zeros_(bbox_embed.layers[-1].weight)
        nn.init.zeros_(bbox_embed.layers[-1].bias)
        num_pred = transformer.decoder.num_layers + (1 if two_stage else 0)
        if with_box_refine:
            self.class_embed = clones(class_embed, num_pred)
            self.bbox_embed = clones(bbox_embed, num_pred)
            nn.init.constant_(self.bbox_embed[0].layers[-1].bias[2:], -2.0)
            self.transformer.decoder.bbox_embed = self.bbox_embed
        else:
            nn.init.constant_(bbox_embed.layers[-1].bias[2:], -2.0)
            self.class_embed = nn.ModuleList([class_embed] * num_pred)
            self.bbox_embed = nn.ModuleList([bbox_embed] * num_pred)
        if two_stage:
            self.transformer.decoder.class_embed = self.class_embed
            for head in self.bbox_embed:
                nn.init.zeros_(head.layers[-1].bias[2:])

    @property
    def trains_every_parameter(self) -> bool:
        """Whether the loss reaches every parameter: with box refinement but no auxiliary losses, the heads of the
        layers before the last (and, two-stage, the proposals' heads) get no gradient."""
        return self.aux_loss or not self.with_box_refine

    def attention_sites(self) -> tuple[AttentionSite, ...]:
        return with_key_strides(self.transformer.attention_sites(), self.level_strides)

    @property
    def level_strides(self) -> list[int]:
        """Input pixels per cell of every level, finest first: the backbone's, then each extra level twice the
        one before (stride-2 convolutions)."""
        strides = list(self.backbone.strides)
        for _ in range(self.num_feature_levels - len(strides)):
            strides.append(strides[-1] * 2)
        return strides

    def levels(self, batch: PaddedBatch) -> tuple[list[Tensor], list[Tensor], list[Tensor]]:
        """Projected feature maps, padding masks and position encodings of every level, finest first."""
        features, pos = self.backbone(batch)
        srcs = [proj(f.tensors) for proj, f in zip(self.input_proj, features, strict=False)]
        masks = [f.mask for f in features]
        pos = list(pos)
        for level in range(len(features), self.num_feature_levels):
            src = self.input_proj[level](features[-1].tensors if level == len(features) else srcs[-1])
            mask = F.interpolate(batch.mask[None].float(), size=src.shape[-2:]).to(torch.bool)[0]
            srcs.append(src)
            masks.append(mask)
            pos.append(self.backbone[1](mask).to(src.dtype))
        return srcs, masks, pos

    def forward(self, images: PaddedBatch | Tensor | Sequence[Tensor], mask: Tensor | None = None) -> DetectionOutput:
        """``images``: a ``PaddedBatch``, a list of CHW tensors of any sizes, or a (B, 3, H, W) tensor with an
        optional (B, H, W) padding ``mask`` (True = padding)."""
        batch = model_input(images, mask, next(self.parameters()).dtype)
        srcs, masks, pos = self.levels(batch)
        query_embed = None if self.two_stage else self.query_embed.weight
        hs, init_reference, inter_references, enc_class, enc_coord = self.transformer(srcs, masks, pos, query_embed)
        logits, boxes = [], []
        for layer in range(hs.shape[0]):
            reference = inverse_sigmoid(init_reference if layer == 0 else inter_references[layer - 1])
            delta = self.bbox_embed[layer](hs[layer])
            if reference.shape[-1] == 4:
                delta = delta + reference
            else:
                delta = torch.cat([delta[..., :2] + reference, delta[..., 2:]], -1)
            logits.append(self.class_embed[layer](hs[layer]))
            boxes.append(delta.sigmoid())
        aux = None
        if self.aux_loss:
            aux = [DetectionOutput(a, b) for a, b in zip(logits[:-1], boxes[:-1], strict=True)]
        enc = DetectionOutput(enc_class, enc_coord.sigmoid()) if self.two_stage else None
        return DetectionOutput(logits[-1], boxes[-1], aux, enc_outputs=enc)
