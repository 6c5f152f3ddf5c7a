"""Sparsity readings of attention maps, one value per query map, over valid (unpadded) keys only.

Every function takes ``p`` (B, ..., Lk), non-negative weights over the last dimension, and ``valid_mask``
(B, Lk), True = valid key, or None (all keys valid); it returns a tensor of shape ``p.shape[:-1]``. N is the number
of valid keys of the map's row, so images of different sizes in one padded batch are read as if alone. A row with
no valid key or no mass has no defined Gini or zeros ratio (NaN).
"""

from __future__ import annotations

import torch
from torch import Tensor

from .recorder import AttentionMaps

METRICS = ("gini", "zeros_ratio", "entropy", "support_90")
DENSE_ZERO_THRESHOLD = 1e-6  # zeros-ratio threshold for dense (softmax) maps; sparse maps use exact zeros (0)


def _as_float(p: Tensor) -> Tensor:
    return p if p.dtype == torch.float64 else p.float()


def _valid_keys(p: Tensor, valid_mask: Tensor | None) -> Tensor:
    """``valid_mask`` (B, Lk) expanded to the shape of ``p`` (B, ..., Lk)."""
    if valid_mask is None:
        return torch.ones((), dtype=torch.bool, device=p.device).expand_as(p)
    if p.dim() < 2 or valid_mask.shape != (p.shape[0], p.shape[-1]):
        raise ValueError(f"valid_mask must be (B, Lk) = {(p.shape[0], p.shape[-1])}, got {tuple(valid_mask.shape)}")
    return valid_mask.view(p.shape[0], *[1] * (p.dim() - 2), p.shape[-1]).expand_as(p)


def gini(p: Tensor, valid_mask: Tensor | None = None) -> Tensor:
    """Hurley & Rickard (2009) Gini index: with c sorted ascending over the N valid keys,
    G = 1 - 2 sum_k (c_k / ||c||_1) (N - k + 1/2) / N. 0 for a uniform map, 1 - 1/N for a one-hot map."""
    p = _as_float(p)
    valid = _valid_keys(p, valid_mask)
    n = valid.sum(-1, keepdim=True)
    c = p.masked_fill(~valid, float("inf")).sort(-1).values  # padded keys sort last
    rank = torch.arange(1, p.shape[-1] + 1, device=p.device, dtype=p.dtype)
    c = c.masked_fill(rank > n, 0.0)
    weight = (n - rank + 0.5) / n
    return 1.0 - 2.0 * (c * weight).sum(-1) / c.sum(-1)


def zeros_ratio(p: Tensor, valid_mask: Tensor | None, threshold: float) -> Tensor:
    """Fraction of valid keys with weight <= ``threshold`` (0 for sparse maps, ``DENSE_ZERO_THRESHOLD`` for dense)."""
    valid = _valid_keys(p, valid_mask)
    return ((p <= threshold) & valid).sum(-1) / valid.sum(-1)


def entropy(p: Tensor, valid_mask: Tensor | None = None) -> Tensor:
    """Shannon entropy -sum p log p in nats, with 0 log 0 = 0."""
    p = _as_float(p)
    return -torch.special.xlogy(p, p).masked_fill(~_valid_keys(p, valid_mask), 0.0).sum(-1)


def support_90(p: Tensor, valid_mask: Tensor | None = None, mass: float = 0.9) -> Tensor:
    """Smallest number of keys holding at least ``mass`` (0 < mass <= 1) of the map's total weight (int64)."""
    if not 0.0 < mass <= 1.0:
        raise ValueError(f"mass must be in (0, 1], got {mass}")
    p = _as_float(p)
    cumulative = p.masked_fill(~_valid_keys(p, valid_mask), 0.0).sort(-1, descending=True).values.cumsum(-1)
    return (cumulative < mass * cumulative[..., -1:]).sum(-1) + 1


def site_metrics(maps: AttentionMaps, zero_threshold: float, support_mass: float = 0.9) -> dict[str, Tensor]:
    """Every metric of ``METRICS`` for every layer of one site: name -> (layers, B, heads, Lq).

    Values at padded queries (encoder self attention, ``maps.query_padding_mask``) are computed but are not maps of
    the image; aggregation leaves them out.
    """
    valid = None if maps.key_padding_mask is None else ~maps.key_padding_mask
    readings = {
        "gini": lambda w: gini(w, valid),
        "zeros_ratio": lambda w: zeros_ratio(w, valid, zero_threshold),
        "entropy": lambda w: entropy(w, valid),
        "support_90": lambda w: support_90(w, valid, support_mass),
    }
    return {name: torch.stack([readings[name](w) for w in maps.weights]) for name in METRICS}
