"""Build Deformable DETR and its loss from a :class:`~sparse_detector.config.Config`; registered as
``model.arch: deformable_detr`` with its official-checkpoint reader and its set loss."""

from __future__ import annotations

from ...config import Config, ConfigError
from ..build import transformer_arguments
from ..position_encoding import build_position_encoding
from ..registry import register_model
from ..weights import infer_official_deformable_config
from .backbone import MultiScaleBackbone, MultiScaleJoiner
from .criterion import FocalHungarianMatcher, FocalSetCriterion
from .model import DeformableDETR
from .transformer import DeformableTransformer

#: Official Deformable DETR offsets the sine encoding's indices by -0.5 (DETR does not).
POSITION_OFFSET = -0.5


def build_deformable_criterion(config: Config) -> FocalSetCriterion:
    """Focal-loss matcher and set loss with the configured costs, coefficients and focal alpha."""
    loss = config.loss
    matcher = FocalHungarianMatcher(loss.set_cost_class, loss.set_cost_bbox, loss.set_cost_giou, loss.focal_alpha)
    num_aux = config.model.transformer.dec_layers - 1 if config.model.aux_loss else 0
    return FocalSetCriterion(
        config.model.num_classes,
        matcher,
        focal_alpha=loss.focal_alpha,
        train_proposals=config.model.aux_loss,  # official: the "_enc" weights come with the auxiliary ones
        ce_loss_coef=loss.ce_loss_coef,
        bbox_loss_coef=loss.bbox_loss_coef,
        giou_loss_coef=loss.giou_loss_coef,
        num_aux_layers=num_aux,
    )


@register_model(
    "deformable_detr", official_config=infer_official_deformable_config, criterion=build_deformable_criterion
)
def build_deformable_detr(config: Config) -> DeformableDETR:
    """A Deformable DETR with the configured backbone, transformer and sampling-weight maps."""
    cfg = config.model
    t, d = cfg.transformer, cfg.deformable
    for key in ("num_feature_levels", "enc_n_points", "dec_n_points"):
        if getattr(d, key) < 1:
            raise ConfigError(f"model.deformable.{key} must be at least 1, got {getattr(d, key)}")
    backbone = MultiScaleJoiner(
        MultiScaleBackbone(cfg.backbone, d.num_feature_levels),
        build_position_encoding(cfg.position_embedding, t.hidden_dim, offset=POSITION_OFFSET),
    )
    transformer = DeformableTransformer(
        num_feature_levels=d.num_feature_levels,
        dec_n_points=d.dec_n_points,
        enc_n_points=d.enc_n_points,
        two_stage=d.two_stage,
        two_stage_num_proposals=cfg.num_queries,
        **transformer_arguments(cfg),
    )
    return DeformableDETR(
        backbone,
        transformer,
        cfg.num_classes,
        cfg.num_queries,
        d.num_feature_levels,
        aux_loss=cfg.aux_loss,
        with_box_refine=d.with_box_refine,
        two_stage=d.two_stage,
    )
