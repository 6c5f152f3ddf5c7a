"""Multi-scale ResNet features for Deformable DETR: C3-C5 (strides 8, 16, 32) with their padding masks.

``model.backbone.return_layer`` is the last stage read (official: layer4 = C5); layer3 stops at C4, which saves
the largest stage of a from-scratch tiny model (the extra levels then start from C4).

Module names follow the official model (``backbone.0.body.layer2...``, ``backbone.1`` the position encoding).
The extra coarser levels (stride-2 convolutions on C5) belong to the model's ``input_proj``, as officially.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.models._utils import IntermediateLayerGetter

from ...config import BackboneConfig
from ...data.batching import PaddedBatch
from ..backbone import _stage_channels, stage_stride, trainable_resnet

#: The stages Deformable DETR reads, finest first (C3, C4, C5).
FEATURE_STAGES = ("layer2", "layer3", "layer4")


class MultiScaleBackbone(nn.Module):
    """A torchvision ResNet returning up to ``num_outputs`` of C3-C5 (the coarsest ones, ending at
    ``cfg.return_layer``); stages outside ``trainable_layers`` are frozen."""

    def __init__(self, cfg: BackboneConfig, num_outputs: int) -> None:
        super().__init__()
        if cfg.return_layer not in FEATURE_STAGES:
            raise ValueError(
                f"model.backbone.return_layer must be one of {list(FEATURE_STAGES)} for Deformable DETR, "
                f"got {cfg.return_layer!r}"
            )
        resnet = trainable_resnet(cfg)
        readable = FEATURE_STAGES[: FEATURE_STAGES.index(cfg.return_layer) + 1]
        stages = readable[-num_outputs:]
        self.body = IntermediateLayerGetter(resnet, return_layers={stage: str(i) for i, stage in enumerate(stages)})
        self.num_channels = [_stage_channels(getattr(resnet, stage)) for stage in stages]
        self.strides = [stage_stride(stage, cfg.dilation) for stage in stages]

    def forward(self, batch: PaddedBatch) -> list[PaddedBatch]:
        features = []
        for x in self.body(batch.tensors).values():
            mask = F.interpolate(batch.mask[None].float(), size=x.shape[-2:]).to(batch.mask.dtype)[0]
            features.append(PaddedBatch(x, mask))
        return features


class MultiScaleJoiner(nn.Sequential):
    """``[backbone, position_encoding]``: each level's features with its mask, and its positional encoding."""

    def __init__(self, backbone: MultiScaleBackbone, position_encoding: nn.Module) -> None:
        super().__init__(backbone, position_encoding)
        self.num_channels = backbone.num_channels
        self.strides = backbone.strides

    def forward(self, batch: PaddedBatch) -> tuple[list[PaddedBatch], list[Tensor]]:
        features = self[0](batch)
        return features, [self[1](f.mask).to(f.tensors.dtype) for f in features]
