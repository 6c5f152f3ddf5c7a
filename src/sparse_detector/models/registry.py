"""Models by name, in the style of timm's ``register_model``: ``model.arch`` in the config picks the builder.

A builder takes the whole :class:`~sparse_detector.config.Config` and returns a detector module that

- declares its attention sites (``attention_sites()``, see :mod:`sparse_detector.attention.sites`),
- takes a ``PaddedBatch`` (or a list of CHW images) and returns a :class:`~.outputs.DetectionOutput`.

``build_model(config)`` builds it, sets ``model.arch`` and checks ``model.attention.<site>`` against the model's
sites (unknown site, or a map the site's keys cannot take, e.g. TVMax where the keys are not the feature grid).
An arch may also register how to read an official checkpoint (``official_config``: state dict -> Config) and its
own loss (``criterion``: Config -> module with a ``matcher`` attribute, which PAIBB uses to pair queries with boxes;
default: DETR's set criterion, see ``build.build_criterion``).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from torch import Tensor, nn

from ..attention.registry import available_activations, needs_key_grid
from ..attention.sites import AttentionSite, model_sites
from ..config import MAP_OPTIONS, AttentionSiteConfig, Config, ConfigError
from ..text import did_you_mean

ModelBuilder = Callable[[Config], nn.Module]
CriterionBuilder = Callable[[Config], nn.Module]
OfficialConfig = Callable[..., Config]
"""``(state_dict, **options) -> Config`` of an official checkpoint of the arch (options: e.g. ``nheads``)."""

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ModelEntry:
    """A registered model: its builder and, where it has them, its official-config reader and criterion builder."""

    name: str
    builder: ModelBuilder
    official_config: OfficialConfig | None = None
    criterion: CriterionBuilder | None = None


_MODELS: dict[str, ModelEntry] = {}


def register_model(
    name: str | None = None,
    official_config: OfficialConfig | None = None,
    criterion: CriterionBuilder | None = None,
) -> Callable[[ModelBuilder], ModelBuilder]:
    """Decorator adding a builder under ``name`` (default: the function's name)."""

    def add(builder: ModelBuilder) -> ModelBuilder:
        arch = name or builder.__name__
        _MODELS[arch] = ModelEntry(arch, builder, official_config, criterion)
        return builder

    return add


def available_models() -> list[str]:
    """The registered ``model.arch`` names, sorted."""
    return sorted(_MODELS)


def model_entry(arch: str) -> ModelEntry:
    """The registry entry of ``arch``; a ConfigError naming the choices when there is none."""
    try:
        return _MODELS[arch]
    except KeyError:
        raise ConfigError(
            f"model.arch: unknown model {arch!r}{did_you_mean(arch, _MODELS)}; choose one of {available_models()}"
        ) from None


def check_attention_config(attention: Mapping[str, AttentionSiteConfig], sites: Mapping[str, AttentionSite]) -> None:
    """Every ``model.attention.<site>`` names a site of the model and a map its keys can take; an option set for
    another map than the site's is a warning (an error would refuse old runs and studies whose shared settings give
    it to every map)."""
    default = AttentionSiteConfig()
    for name, site_config in attention.items():
        if name not in sites:
            raise ConfigError(
                f"model.attention.{name}: this model has no such attention site{did_you_mean(name, sites)}; its "
                f"sites: {list(sites)}"
            )
        activation, choices = site_config.activation, available_activations()
        if activation not in choices:
            meant = did_you_mean(activation, choices)
            raise ConfigError(
                f"model.attention.{name}.activation: unknown map {activation!r}{meant}; choose one of {choices}"
            )
        if needs_key_grid(activation) and sites[name].keys != "grid":
            grid_sites = [s for s, site in sites.items() if site.keys == "grid"]
            takes = [a for a in available_activations() if not needs_key_grid(a)]
            elsewhere = f"use {activation} at {grid_sites}" if grid_sites else "no site of this model takes it"
            raise ConfigError(
                f"model.attention.{name}.activation: {activation} needs keys on the image's feature grid, but the keys "
                f"of {name} are {sites[name].keys}; {elsewhere}, or use a map of {takes} here"
            )
        for used_by, option in MAP_OPTIONS.items():
            value, unset = getattr(site_config, option), getattr(default, option)
            if used_by != activation and value != unset:
                logger.warning(
                    "model.attention.%s.%s=%s is an option of %s, but the map of %s is %s, which ignores it; set "
                    "model.attention.%s.activation=%s to use it, or model.attention.%s.%s=%s (its default) to say "
                    "nothing",
                    *(name, option, value, used_by, name, activation, name, used_by, name, option, unset),
                )


def check_model_sizes(config: Config) -> None:
    """Sizes every model needs: at least one query, decoder layer and head, heads dividing the width."""
    model, t = config.model, config.model.transformer
    minimum = {"num_queries": (model.num_queries, 1), "transformer.dec_layers": (t.dec_layers, 1)}
    minimum |= {"transformer.enc_layers": (t.enc_layers, 0), "transformer.nheads": (t.nheads, 1)}
    minimum |= {"transformer.dim_feedforward": (t.dim_feedforward, 1)}
    for key, (value, least) in minimum.items():
        if value < least:
            raise ConfigError(f"model.{key} must be at least {least}, got {value}")
    if t.hidden_dim < 1 or t.hidden_dim % t.nheads:
        raise ConfigError(
            f"model.transformer.hidden_dim ({t.hidden_dim}) must be a positive multiple of model.transformer.nheads "
            f"({t.nheads}): each head gets hidden_dim / nheads channels"
        )


def build_model(config: Config) -> nn.Module:
    """The model of ``config.model.arch`` with the configured attention maps (checked against its sites)."""
    entry = model_entry(config.model.arch)
    check_model_sizes(config)
    model = entry.builder(config)
    check_attention_config(config.model.attention, model_sites(model))
    model.arch = entry.name
    return model


def official_config(arch: str, state_dict: Mapping[str, Tensor], **options) -> Config:
    """The config of an official checkpoint of ``arch``, read from its weights."""
    entry = model_entry(arch)
    if entry.official_config is None:
        raise ValueError(f"model {arch!r} has no loader for official checkpoints")
    config = entry.official_config(state_dict, **options)
    config.model.arch = arch
    return config
