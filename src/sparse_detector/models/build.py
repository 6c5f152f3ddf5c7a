"""Pieces model builders share: an attention map from its site's config, and the loss of the configured arch."""

from __future__ import annotations

import logging

from torch import nn

from ..attention.base import AttentionActivation
from ..attention.registry import get_activation
from ..config import AttentionSiteConfig, Config, ConfigError
from .criterion import SetCriterion
from .matcher import HungarianMatcher
from .registry import model_entry

logger = logging.getLogger(__name__)


def build_activation(sites: dict[str, AttentionSiteConfig], name: str, num_heads: int) -> AttentionActivation:
    """The attention map of site ``name`` (softmax when ``sites`` has no entry for it), with the options that map
    takes; an option out of its range is a :class:`ConfigError` naming its key, one set for another map a warning
    (an error would refuse old runs and studies whose shared settings give it to every map)."""
    site = sites.get(name, AttentionSiteConfig())
    options = {  # the config key of each map's option, and the map's arguments
        "alpha_entmax": (".alpha_init", {"num_heads": num_heads, "alpha_init": site.alpha_init}),
        "tvmax": (".tvmax_lambda", {"lam": site.tvmax_lambda}),
    }
    default = AttentionSiteConfig()
    for used_by, (option, _) in options.items():  # set for another map than the site's: it would be ignored
        value, unset = getattr(site, option[1:]), getattr(default, option[1:])
        if used_by != site.activation and value != unset:
            logger.warning(
                "model.attention.%s%s=%s is an option of %s, but the map of %s is %s, which ignores it; set "
                "model.attention.%s.activation=%s to use it, or model.attention.%s%s=%s (its default) to say nothing",
                *(name, option, value, used_by, name, site.activation, name, used_by, name, option, unset),
            )
    key, arguments = options.get(site.activation, ("", {}))
    try:
        return get_activation(site.activation, **arguments)
    except ValueError as err:
        raise ConfigError(f"model.attention.{name}{key}: {err}") from None


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
