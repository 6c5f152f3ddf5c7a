"""Pieces model builders share: an attention map from its site's config, and the loss of the configured arch."""

from __future__ import annotations

from typing import Any

from torch import nn

from ..attention.base import AttentionActivation
from ..attention.registry import get_activation
from ..config import MAP_OPTIONS, AttentionSiteConfig, Config, ConfigError, ModelConfig
from .criterion import SetCriterion
from .matcher import HungarianMatcher
from .registry import model_entry


def build_activation(sites: dict[str, AttentionSiteConfig], name: str, num_heads: int) -> AttentionActivation:
    """The attention map of site ``name`` (softmax when ``sites`` has no entry for it), with the options that map
    takes; an option out of its range is a :class:`ConfigError` naming its key (one set for another map is said by
    ``check_attention_config``, once per model)."""
    site = sites.get(name, AttentionSiteConfig())
    arguments = {
        "alpha_entmax": {"num_heads": num_heads, "alpha_init": site.alpha_init},
        "tvmax": {"lam": site.tvmax_lambda},
    }
    try:
        return get_activation(site.activation, **arguments.get(site.activation, {}))
    except ValueError as err:
        key = MAP_OPTIONS.get(site.activation, "activation")  # an option out of range, else an unknown map
        raise ConfigError(f"model.attention.{name}.{key}: {err}") from None


def transformer_arguments(cfg: ModelConfig) -> dict[str, Any]:
    """The encoder-decoder arguments DETR's and Deformable DETR's transformers share: ``model.transformer``'s sizes
    and dropout, and each attention site's map."""
    t = cfg.transformer
    return {
        "d_model": t.hidden_dim,
        "nhead": t.nheads,
        "num_encoder_layers": t.enc_layers,
        "num_decoder_layers": t.dec_layers,
        "dim_feedforward": t.dim_feedforward,
        "dropout": t.dropout,
        "make_activation": lambda site: build_activation(cfg.attention, site, t.nheads),
    }


def build_criterion(config: Config) -> nn.Module:
    """The loss of ``config.model.arch``: its registered criterion, else DETR's set criterion."""
    custom = model_entry(config.model.arch).criterion
    return custom(config) if custom is not None else build_set_criterion(config)


def build_set_criterion(config: Config) -> SetCriterion:
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
