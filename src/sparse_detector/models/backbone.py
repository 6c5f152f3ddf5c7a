"""ResNet backbone returning one feature map and its downsampled padding mask (official DETR layout).

Module names follow the official model: ``backbone.0.body.layer1...`` (the ResNet) and ``backbone.1`` (the
position encoding), so official checkpoints load without a key map.
"""

from __future__ import annotations

import torch.nn.functional as F
import torchvision
from torch import Tensor, nn
from torchvision.models._utils import IntermediateLayerGetter
from torchvision.ops.misc import FrozenBatchNorm2d

from ..config import BackboneConfig
from ..data.batching import PaddedBatch

RESNETS = ("resnet18", "resnet34", "resnet50", "resnet101")
STAGES = ("stem", "layer1", "layer2", "layer3", "layer4")
NORM_LAYERS = {"frozen_bn": FrozenBatchNorm2d, "batch_norm": nn.BatchNorm2d}


def _stage_of(param_name: str) -> str:
    head = param_name.split(".", 1)[0]
    return head if head.startswith("layer") else "stem"


def _load_resnet(cfg: BackboneConfig) -> nn.Module:
    if cfg.name not in RESNETS:
        raise ValueError(f"unknown model.backbone.name {cfg.name!r}; choose one of {list(RESNETS)}")
    if cfg.norm not in NORM_LAYERS:
        raise ValueError(f"unknown model.backbone.norm {cfg.norm!r}; choose one of {list(NORM_LAYERS)}")
    if cfg.dilation and cfg.name in ("resnet18", "resnet34"):
        raise ValueError(f"model.backbone.dilation (DC5) needs a bottleneck ResNet (resnet50/101), not {cfg.name}")
    weights = "IMAGENET1K_V1" if cfg.pretrained else None  # the weights official DETR was trained from
    try:
        return torchvision.models.get_model(
            cfg.name,
            weights=weights,
            replace_stride_with_dilation=[False, False, cfg.dilation],
            norm_layer=NORM_LAYERS[cfg.norm],
        )
    except (OSError, RuntimeError) as err:  # URLError is an OSError
        if not cfg.pretrained:
            raise
        raise RuntimeError(
            f"could not load ImageNet weights for {cfg.name} ({err}). They are downloaded once into the torch hub "
            "cache ($TORCH_HOME); without internet access copy the file there, or set "
            "model.backbone.pretrained=false to start from random weights."
        ) from err


def _stage_channels(stage: nn.Module) -> int:
    convs = [m for m in stage[-1].modules() if isinstance(m, nn.Conv2d)]
    return convs[-1].out_channels


def trainable_resnet(cfg: BackboneConfig) -> nn.Module:
    """The configured ResNet with every stage outside ``trainable_layers`` frozen (all of it when ``lr`` is 0)."""
    unknown = sorted(set(cfg.trainable_layers) - set(STAGES))
    if unknown:
        raise ValueError(f"model.backbone.trainable_layers has unknown stage {unknown[0]!r}; use {list(STAGES)}")
    resnet = _load_resnet(cfg)
    trainable = set(cfg.trainable_layers) if cfg.lr > 0 else set()
    for name, param in resnet.named_parameters():
        param.requires_grad_(_stage_of(name) in trainable)
    return resnet


class Backbone(nn.Module):
    """A torchvision ResNet cut after ``return_layer``; stages outside ``trainable_layers`` are frozen."""

    def __init__(self, cfg: BackboneConfig) -> None:
        super().__init__()
        if cfg.return_layer not in STAGES[1:]:
            raise ValueError(f"model.backbone.return_layer must be one of {list(STAGES[1:])}, got {cfg.return_layer!r}")
        resnet = trainable_resnet(cfg)
        self.body = IntermediateLayerGetter(resnet, return_layers={cfg.return_layer: "0"})
        self.num_channels = _stage_channels(getattr(resnet, cfg.return_layer))

    def forward(self, batch: PaddedBatch) -> PaddedBatch:
        features = self.body(batch.tensors)["0"]
        mask = F.interpolate(batch.mask[None].float(), size=features.shape[-2:]).to(batch.mask.dtype)[0]
        return PaddedBatch(features, mask)


class Joiner(nn.Sequential):
    """``[backbone, position_encoding]``: returns the feature map with its mask and positional encoding."""

    def __init__(self, backbone: Backbone, position_encoding: nn.Module) -> None:
        super().__init__(backbone, position_encoding)
        self.num_channels = backbone.num_channels

    def forward(self, batch: PaddedBatch) -> tuple[PaddedBatch, Tensor]:
        features = self[0](batch)
        pos = self[1](features.mask).to(features.tensors.dtype)
        return features, pos
