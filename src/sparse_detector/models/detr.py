"""DETR: backbone -> transformer -> class and box heads (facebookresearch/detr semantics and names).

Registered as ``model.arch: detr``; its attention sites are the transformer's (see ``transformer.py``).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch.nn.functional as F
from torch import Tensor, nn

from ..attention.fast_layers import Linear
from ..attention.sites import AttentionSite, with_key_strides
from ..config import Config
from ..data.batching import PaddedBatch, model_input
from .backbone import MEMORY_FORMAT, Backbone, Joiner
from .build import transformer_arguments
from .outputs import DetectionOutput
from .position_encoding import build_position_encoding
from .registry import register_model
from .transformer import Transformer
from .weights import infer_official_config


class MLP(nn.Module):
    """A plain multi-layer perceptron with ReLU between layers (the box head)."""

    def __init__(self, input_dim: int, hidden_dim: int, output_dim: int, num_layers: int) -> None:
        super().__init__()
        dims = [hidden_dim] * (num_layers - 1)
        self.layers = nn.ModuleList(Linear(n, k) for n, k in zip([input_dim, *dims], [*dims, output_dim], strict=True))

    def forward(self, x: Tensor) -> Tensor:
        for i, layer in enumerate(self.layers):
            x = F.relu(layer(x)) if i < len(self.layers) - 1 else layer(x)
        return x


class DETR(nn.Module):
    """End-to-end set prediction: ``num_queries`` boxes with ``num_classes + 1`` class logits (last = no object)."""

    #: Modules whose shape depends on the class count (one head, shared by the auxiliary decoder outputs): the ones a
    #: fine-tuning run on data with other classes re-initialises.
    class_heads: tuple[str, ...] = ("class_embed",)

    def __init__(
        self,
        backbone: Joiner,
        transformer: Transformer,
        num_classes: int,
        num_queries: int,
        aux_loss: bool = True,
    ) -> None:
        super().__init__()
        hidden_dim = transformer.d_model
        self.num_classes = num_classes
        self.num_queries = num_queries
        self.aux_loss = aux_loss
        self.transformer = transformer
        self.class_embed = Linear(hidden_dim, num_classes + 1)
        self.bbox_embed = MLP(hidden_dim, hidden_dim, 4, 3)
        self.query_embed = nn.Embedding(num_queries, hidden_dim)
        # channels-last as the features it projects, so its weight's gradient has the weight's strides (DDP's buckets)
        self.input_proj = nn.Conv2d(backbone.num_channels, hidden_dim, kernel_size=1).to(memory_format=MEMORY_FORMAT)
        self.backbone = backbone

    def attention_sites(self) -> tuple[AttentionSite, ...]:
        return with_key_strides(self.transformer.attention_sites(), [self.backbone.stride])

    def forward(self, images: PaddedBatch | Tensor | Sequence[Tensor], mask: Tensor | None = None) -> DetectionOutput:
        """``images``: a ``PaddedBatch``, a list of CHW tensors of any sizes, or a (B, 3, H, W) tensor with an
        optional (B, H, W) padding ``mask`` (True = padding)."""
        batch = model_input(images, mask, next(self.parameters()).dtype)
        features, pos = self.backbone(batch)
        hs = self.transformer(self.input_proj(features.tensors), features.mask, self.query_embed.weight, pos)[0]
        logits = self.class_embed(hs)
        boxes = self.bbox_embed(hs).sigmoid()
        aux = None
        if self.aux_loss:
            aux = [DetectionOutput(a, b) for a, b in zip(logits[:-1], boxes[:-1], strict=True)]
        return DetectionOutput(logits[-1], boxes[-1], aux)


@register_model("detr", official_config=infer_official_config)
def build_detr(config: Config) -> DETR:
    """A DETR with the configured backbone, transformer and attention maps."""
    cfg = config.model
    t = cfg.transformer
    backbone = Joiner(Backbone(cfg.backbone), build_position_encoding(cfg.position_embedding, t.hidden_dim))
    transformer = Transformer(normalize_before=t.pre_norm, **transformer_arguments(cfg))
    return DETR(backbone, transformer, cfg.num_classes, cfg.num_queries, cfg.aux_loss)
