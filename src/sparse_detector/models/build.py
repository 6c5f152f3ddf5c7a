"""Build models and losses from a :class:`~sparse_detector.config.Config`."""

from __future__ import annotations

from ..attention.base import AttentionActivation
from ..attention.registry import get_activation
from ..config import AttentionSiteConfig, Config, ConfigError, ModelConfig
from .backbone import Backbone, Joiner
from .criterion import SetCriterion
from .deformable_detr import DeformableDETR, build_deformable_criterion, build_deformable_detr
from .detr import DETR
from .matcher import HungarianMatcher
from .position_encoding import build_position_encoding
from .transformer import Transformer

ATTENTION_SITES = ("encoder_self", "decoder_self", "decoder_cross")
#: Per ``model.arch``: sites whose keys are the image's feature grid, the only ones where TVMax (a penalty over grid
#: neighbours) applies. Deformable DETR has none: its encoder and cross-attention keys are sampling points.
GRID_SITES = {"detr": ("encoder_self", "decoder_cross"), "deformable_detr": ()}


def build_activation(site: AttentionSiteConfig, num_heads: int) -> AttentionActivation:
    """The attention map of one site, with the options that map takes."""
    options = {
        "alpha_entmax": {"num_heads": num_heads, "alpha_init": site.alpha_init},
        "tvmax": {"lam": site.tvmax_lambda},
    }
    return get_activation(site.activation, **options.get(site.activation, {}))


def site_activations(cfg: ModelConfig) -> dict[str, AttentionSiteConfig]:
    """The configured attention map of every site, checked against the architecture."""
    if cfg.arch not in GRID_SITES:
        raise ConfigError(f"unknown model.arch {cfg.arch!r}; choose one of {sorted(GRID_SITES)}")
    grid_sites = GRID_SITES[cfg.arch]
    sites = {name: getattr(cfg.attention, name) for name in ATTENTION_SITES}
    for name, site in sites.items():
        if site.activation == "tvmax" and name not in grid_sites:
            where = f"use tvmax at {' or '.join(grid_sites)}" if grid_sites else f"{cfg.arch} has no such site"
            raise ConfigError(
                f"model.attention.{name}.activation: tvmax needs keys on the image's feature grid, which the "
                f"{name} site of {cfg.arch} does not have; {where}"
            )
    return sites


def build_transformer(cfg: ModelConfig) -> Transformer:
    t = cfg.transformer
    sites = site_activations(cfg)
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


def build_model(config: Config) -> DETR | DeformableDETR:
    """The configured ``model.arch`` with its backbone, transformer and attention maps."""
    cfg = config.model
    if cfg.arch == "deformable_detr":
        sites = site_activations(cfg)
        return build_deformable_detr(config, lambda site: build_activation(sites[site], cfg.transformer.nheads))
    backbone = Joiner(
        Backbone(cfg.backbone), build_position_encoding(cfg.position_embedding, cfg.transformer.hidden_dim)
    )
    return DETR(backbone, build_transformer(cfg), cfg.num_classes, cfg.num_queries, cfg.aux_loss)


def build_criterion(config: Config) -> SetCriterion:
    """Matcher + set loss with the configured costs and coefficients."""
    if config.model.arch == "deformable_detr":
        return build_deformable_criterion(config)
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
