"""Attention activations by name: ``get_activation("sparsemax")``."""

from __future__ import annotations

import inspect
from collections.abc import Callable

import torch
from torch import Tensor

from ..text import did_you_mean
from .base import AttentionActivation, KeyGrid


def masked_scores(scores: Tensor, key_padding_mask: Tensor | None) -> Tensor:
    """Scores with ``-inf`` at padded keys; ``key_padding_mask`` is (B, Lk) and scores (B, H, Lq, Lk)."""
    if key_padding_mask is None:
        return scores
    return scores.masked_fill(key_padding_mask[:, None, None, :], float("-inf"))


class Softmax(AttentionActivation):
    """The dense baseline (official DETR). A fully padded row gives zeros instead of NaN; a row with a NaN or +inf
    score stays NaN."""

    is_softmax = True

    def forward(
        self, scores: Tensor, key_padding_mask: Tensor | None = None, key_grid: KeyGrid | None = None
    ) -> Tensor:
        self.check_inputs(scores, key_padding_mask)
        weights = torch.softmax(masked_scores(scores, key_padding_mask), dim=-1)
        if key_padding_mask is not None:  # a fully padded row is NaN: all its entries are padded (NaN scores stay NaN)
            weights = weights.masked_fill(key_padding_mask[:, None, None, :], 0.0)
        return weights


_REGISTRY: dict[str, Callable[..., AttentionActivation]] = {"softmax": Softmax}


def register_activation(name: str) -> Callable[[type[AttentionActivation]], type[AttentionActivation]]:
    """Class decorator adding an activation (an :class:`AttentionActivation` subclass) to the registry under ``name``;
    a name taken by another class is an error (redefining the same class, e.g. in a notebook, replaces it)."""

    def add(cls: type[AttentionActivation]) -> type[AttentionActivation]:
        if not (isinstance(cls, type) and issubclass(cls, AttentionActivation)):
            raise TypeError(f"register_activation({name!r}) decorates AttentionActivation subclasses, got {cls!r}")
        taken = _REGISTRY.get(name)
        if taken is not None and (taken.__module__, taken.__qualname__) != (cls.__module__, cls.__qualname__):
            raise ValueError(
                f"attention activation {name!r} is already registered ({taken.__module__}.{taken.__qualname__}); "
                "choose another name"
            )
        _REGISTRY[name] = cls
        return cls

    return add


def available_activations() -> list[str]:
    """The registered attention map names, sorted."""
    return sorted(_REGISTRY)


def needs_key_grid(name: str) -> bool:
    """Whether the activation ``name`` needs keys laid out on the feature grid (TVMax)."""
    return bool(getattr(_REGISTRY.get(name), "needs_key_grid", False))


def get_activation(name: str, **kwargs) -> AttentionActivation:
    """Instantiate an activation by name; ``kwargs`` go to its constructor (e.g. ``num_heads``, ``lam``)."""
    try:
        factory = _REGISTRY[name]
    except KeyError:
        choices = available_activations()
        raise ValueError(
            f"unknown attention activation {name!r}{did_you_mean(name, choices)}; choose one of {choices}"
        ) from None
    try:
        return factory(**kwargs)
    except TypeError as err:  # a missing or unknown keyword: name the map and what it takes
        signature = inspect.signature(factory)
        named = [p for p in signature.parameters.values() if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]
        takes = f"it takes {signature}" if named else "it takes no arguments"
        raise ValueError(f"attention activation {name!r}: {err}; {takes}") from None
