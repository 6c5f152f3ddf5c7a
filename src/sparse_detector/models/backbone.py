"""ResNet backbone returning one feature map and its downsampled padding mask (official DETR layout).

Module names follow the official model: ``backbone.0.body.layer1...`` (the ResNet) and ``backbone.1`` (the
position encoding), so official checkpoints load without a key map.
"""

from __future__ import annotations

import typing
from pathlib import Path

import torch
import torch.nn.functional as F
import torchvision
from torch import Tensor, nn
from torchvision.models._utils import IntermediateLayerGetter
from torchvision.ops.misc import FrozenBatchNorm2d

from ..config import BackboneConfig, BackboneName, BackboneNorm, BackboneStage, FeatureStage, check_choice
from ..data.batching import PaddedBatch

RESNETS = typing.get_args(BackboneName)
STAGES = typing.get_args(BackboneStage)
NORM_LAYERS = {"frozen_bn": FrozenBatchNorm2d, "batch_norm": nn.BatchNorm2d}
MEMORY_FORMAT = torch.channels_last
"""The layout of the ResNet's convolution weights and of the images it reads. oneDNN's channels-last convolutions
(and max pooling) are faster on the CPU than NCHW ones; with the weights in the same layout no convolution
reorders them, and the flattened feature map comes out contiguous."""


def stage_stride(stage: str, dilation: bool = False) -> int:
    """Input pixels per feature cell after ``stage`` of a torchvision ResNet (stem and layer1: 4, then doubling);
    with ``dilation`` (DC5) layer4 keeps layer3's stride."""
    stride = 2 ** (max(STAGES.index(stage), 1) + 1)
    return stride // 2 if dilation and stage == "layer4" else stride


def _stage_of(param_name: str) -> str:
    head = param_name.split(".", 1)[0]
    return head if head.startswith("layer") else "stem"


PRETRAINED_WEIGHTS = "IMAGENET1K_V1"  # the ImageNet weights official DETR was trained from


def _load_resnet(cfg: BackboneConfig) -> nn.Module:
    check_choice(cfg.name, BackboneName, "model.backbone.name")
    check_choice(cfg.norm, BackboneNorm, "model.backbone.norm")
    if cfg.dilation and cfg.name in ("resnet18", "resnet34"):
        raise ValueError(f"model.backbone.dilation (DC5) needs a bottleneck ResNet (resnet50/101), not {cfg.name}")
    try:
        return torchvision.models.get_model(
            cfg.name,
            weights=PRETRAINED_WEIGHTS if cfg.pretrained else None,
            replace_stride_with_dilation=[False, False, cfg.dilation],
            norm_layer=NORM_LAYERS[cfg.norm],
        )
    except (OSError, RuntimeError) as err:  # URLError is an OSError
        if not cfg.pretrained:
            raise
        raise _weights_error(cfg.name, err) from err


def fetch_pretrained_weights(cfg: BackboneConfig) -> None:
    """Make sure the ImageNet weights a ``pretrained`` backbone starts from are in the torch hub cache (downloaded
    there once), so a command can fail before it spends minutes on other work; nothing when not ``pretrained``."""
    if not cfg.pretrained or cfg.name not in RESNETS:  # an unknown name: building the model names it
        return
    try:
        torchvision.models.get_model_weights(cfg.name)[PRETRAINED_WEIGHTS].get_state_dict(progress=True)
    except (OSError, RuntimeError) as err:
        raise _weights_error(cfg.name, err) from err


def _weights_error(name: str, err: Exception) -> RuntimeError:
    """Where the weights of ``name`` come from and where to put them by hand."""
    url = torchvision.models.get_model_weights(name)[PRETRAINED_WEIGHTS].url
    cache = Path(torch.hub.get_dir()) / "checkpoints"
    return RuntimeError(
        f"could not load ImageNet weights for {name} ({err}). They are downloaded once into the torch hub "
        f"cache ($TORCH_HOME); without internet access copy {url} into {cache}/, or set "
        "model.backbone.pretrained=false to start from random weights."
    )


def _stage_channels(stage: nn.Module) -> int:
    convs = [m for m in stage[-1].modules() if isinstance(m, nn.Conv2d)]
    return convs[-1].out_channels


def frozen_bn_affine(norm: FrozenBatchNorm2d) -> tuple[Tensor, Tensor]:
    """The per-channel ``(scale, shift)`` with which a frozen BatchNorm maps ``x`` to ``x * scale + shift``."""
    scale = norm.weight * (norm.running_var + norm.eps).rsqrt()
    return scale, norm.bias - norm.running_mean * scale


class ConvWithFrozenBatchNorm(nn.Conv2d):
    """A convolution that applies the frozen BatchNorm after it too: ``conv(x, w * scale) + shift``.

    One convolution with a bias instead of a convolution and two passes over its output (forward and backward).
    The fold happens at every call, so the stored weight and the BatchNorm's buffers keep their names and
    meaning (official checkpoints load unchanged) and the weight's gradient is the unfolded one.
    """

    norm: tuple[FrozenBatchNorm2d]  # in a tuple, not a submodule: its buffers stay under the BatchNorm's own name

    def forward(self, x: Tensor) -> Tensor:
        scale, shift = frozen_bn_affine(self.norm[0])
        return self._conv_forward(x, self.weight * scale[:, None, None, None], shift)


class FoldedFrozenBatchNorm2d(FrozenBatchNorm2d):
    """A frozen BatchNorm applied by the convolution before it (a ``ConvWithFrozenBatchNorm``): the identity here."""

    def forward(self, x: Tensor) -> Tensor:
        return x


def fold_frozen_batch_norms(resnet: nn.Module) -> None:
    """Let each convolution of a torchvision ResNet apply the frozen BatchNorm that follows it (in place).

    The pairs are torchvision's: ``convN``/``bnN`` in the stem and the blocks, ``0``/``1`` in a downsample.
    """
    for module in list(resnet.modules()):
        children = dict(module.named_children())
        for conv_name, norm_name in (("conv1", "bn1"), ("conv2", "bn2"), ("conv3", "bn3"), ("0", "1")):
            conv, norm = children.get(conv_name), children.get(norm_name)
            if type(conv) is not nn.Conv2d or type(norm) is not FrozenBatchNorm2d or conv.bias is not None:
                continue
            folded_norm = FoldedFrozenBatchNorm2d(norm.weight.numel(), norm.eps)
            folded_norm.load_state_dict(norm.state_dict())
            folded_conv = ConvWithFrozenBatchNorm(
                conv.in_channels,
                conv.out_channels,
                conv.kernel_size,
                conv.stride,
                conv.padding,
                conv.dilation,
                conv.groups,
                bias=False,
                padding_mode=conv.padding_mode,
                device="meta",
            )
            folded_conv.weight = conv.weight
            folded_conv.norm = (folded_norm,)
            setattr(module, conv_name, folded_conv)
            setattr(module, norm_name, folded_norm)


def trainable_resnet(cfg: BackboneConfig) -> nn.Module:
    """The configured ResNet with every stage outside ``trainable_layers`` frozen (all of it when ``lr`` is 0).

    With ``norm: frozen_bn`` each convolution applies the BatchNorm after it (``fold_frozen_batch_norms``).
    """
    check_choice(cfg.trainable_layers, list[BackboneStage], "model.backbone.trainable_layers")
    resnet = _load_resnet(cfg)
    if cfg.norm == "frozen_bn":
        fold_frozen_batch_norms(resnet)
    trainable = set(cfg.trainable_layers) if cfg.lr > 0 else set()
    for name, param in resnet.named_parameters():
        param.requires_grad_(_stage_of(name) in trainable)
    return resnet


class Backbone(nn.Module):
    """A torchvision ResNet cut after ``return_layer``; stages outside ``trainable_layers`` are frozen."""

    def __init__(self, cfg: BackboneConfig) -> None:
        super().__init__()
        check_choice(cfg.return_layer, FeatureStage, "model.backbone.return_layer")
        resnet = trainable_resnet(cfg)
        self.body = IntermediateLayerGetter(resnet, return_layers={cfg.return_layer: "0"})
        self.body.to(memory_format=MEMORY_FORMAT)
        self.num_channels = _stage_channels(getattr(resnet, cfg.return_layer))
        self.stride = stage_stride(cfg.return_layer, cfg.dilation)

    def forward(self, batch: PaddedBatch) -> PaddedBatch:
        features = self.body(batch.tensors.contiguous(memory_format=MEMORY_FORMAT))["0"]
        mask = F.interpolate(batch.mask[None].float(), size=features.shape[-2:]).to(batch.mask.dtype)[0]
        return PaddedBatch(features, mask)


class Joiner(nn.Sequential):
    """``[backbone, position_encoding]``: returns the feature map with its mask and positional encoding."""

    def __init__(self, backbone: Backbone, position_encoding: nn.Module) -> None:
        super().__init__(backbone, position_encoding)
        self.num_channels = backbone.num_channels
        self.stride = backbone.stride

    def forward(self, batch: PaddedBatch) -> tuple[PaddedBatch, Tensor]:
        features = self[0](batch)
        pos = self[1](features.mask).to(features.tensors.dtype)
        return features, pos
