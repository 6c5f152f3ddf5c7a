"""Build models and losses from a :class:`~sparse_detector.config.Config`."""

from __future__ import annotations

from ..attention.base import AttentionActivation
from ..attention.registry import get_activation
from ..config import AttentionSiteConfig, Config, ConfigError, ModelConfig
from .backbone import Backbone, Joiner
from .criterion import SetCriterion
from .detr import DETR
from .matcher import HungarianMatcher
from .position_encoding import build_position_encoding
from .transformer import Transformer

ATTENTION_SITES = ("encoder_self", "decoder_self", "decoder_cross")
#: Sites whose keys are the image's feature grid: the only ones where TVMax (a penalty over grid neighbours) applies.
GRID_SITES = ("encoder_self", "decoder_cross")


def build_activation(site: AttentionSiteConfig, num_heads: int) -> AttentionActivation:
    """The attention map of one site, with the options that map takes."""
    options = {
        "alpha_entmax": {"num_heads": num_heads, "alpha_init": site.alpha_init},
        "tvmax": {"lam": site.tvmax_lambda},
    }
    return get_activation(site.activation, **options.get(site.activation, {}))


def build_transformer(cfg: ModelConfig) -> Transformer:
    t = cfg.transformer
    sites = {name: getattr(cfg.attention, name) for name in ATTENTION_SITES}
    for name, site in sites.items():
        if site.activation == "tvmax" and name not in GRID_SITES:
            raise ConfigError(
                f"model.attention.{name}.activation: tvmax needs keys on the image's feature grid, which the "
                f"{name} site does not have (its keys are the object queries); use tvmax at {' or '.join(GRID_SITES)}"
            )
    return Transformer(
        d_model=t.hidden_dim,
        nhead=t.nheads,
        num_encoder_layers=t.enc_layers,
        num_decoder_layers=t.dec_layers,
        dim_feedforward=t.dim_feedforward,
        dropout=t.dropout,
        normalize_before=t.pre_norm,
        make_activation=lambda site: build_activation(sites[site], t.nheads),
    )


def build_model(config: Config) -> DETR:
    """A DETR with the configured backbone, transformer and attention maps."""
    cfg = config.model
    backbone = Joiner(
        Backbone(cfg.backbone), build_position_encoding(cfg.position_embedding, cfg.transformer.hidden_dim)
    )
    return DETR(backbone, build_transformer(cfg), cfg.num_classes, cfg.num_queries, cfg.aux_loss)


def build_criterion(config: Config) -> SetCriterion:
    """Matcher + set loss with the configured costs and coefficients."""
    loss = config.loss
    matcher = HungarianMatcher(loss.set_cost_class, loss.set_cost_bbox, loss.set_cost_giou)
    num_aux = config.model.transformer.dec_layers - 1 if config.model.aux_loss else 0
    return SetCriterion(
        config.model.num_classes,
        matcher,
        eos_coef=loss.eos_coef,
        ce_loss_coef=loss.ce_loss_coef,
        bbox_loss_coef=loss.bbox_loss_coef,
        giou_loss_coef=loss.giou_loss_coef,
        num_aux_layers=num_aux,
    )
