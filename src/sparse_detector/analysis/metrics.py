"""Sparsity readings of attention maps, one value per query map, over valid (unpadded) keys only.

Every function takes ``p`` (B, ..., Lk), non-negative weights over the last dimension, and the key padding mask
``key_padding_mask`` (B, Lk), True = padding (as the attention maps and their records), or None (no padding); it
returns a tensor of shape ``p.shape[:-1]``. Plain tensors in, plain tensors out: nothing here knows about models.
N is the number of valid keys of the map's row, so images of different sizes in one padded batch are read as if
alone. A row with no valid key has no defined Gini or zeros ratio (NaN); a row with valid keys but no mass has NaN
Gini, zeros ratio 1 (every key is zero) and support_90 0.

All readings come from the keys sorted ascending with the padding zeroed (``site_metrics`` sorts each map once,
on CPU with NumPy's sort, which is much faster than torch's for rows this short).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from .maps import AttentionMaps

METRICS = ("gini", "zeros_ratio", "entropy", "support_90")
DENSE_ZERO_THRESHOLD = 1e-6  # zeros-ratio threshold for dense (softmax) maps; sparse maps use exact zeros (0)


def _as_float(p: Tensor) -> Tensor:
    return p if p.dtype == torch.float64 else p.float()


def _padded_keys(p: Tensor, key_padding_mask: Tensor) -> Tensor:
    """``key_padding_mask`` (B, Lk) expanded to the shape of ``p`` (B, ..., Lk)."""
    if p.dim() < 2 or key_padding_mask.shape != (p.shape[0], p.shape[-1]):
        raise ValueError(
            f"key_padding_mask must be (B, Lk) = {(p.shape[0], p.shape[-1])}, got {tuple(key_padding_mask.shape)}"
        )
    return key_padding_mask.view(p.shape[0], *[1] * (p.dim() - 2), p.shape[-1]).expand_as(p)


def _masked_keys(p: Tensor, key_padding_mask: Tensor | None) -> Tensor:
    """``p`` in float with the padded keys set to 0."""
    p = _as_float(p)
    if key_padding_mask is None:
        return p
    return p.masked_fill(_padded_keys(p, key_padding_mask), 0.0)


def _sorted_keys(p: Tensor, key_padding_mask: Tensor | None) -> Tensor:
    """``_masked_keys`` sorted ascending over the keys: the padding sorts first, among the zeros, so the valid
    keys' nonzero weights fill the last positions of each row."""
    p = _masked_keys(p, key_padding_mask)
    if p.device.type == "cpu":  # NumPy's vectorised sort of short rows is an order of magnitude faster on CPUs
        return torch.from_numpy(np.sort(p.detach().numpy(), axis=-1))
    return p.sort(-1).values


def _num_valid(p: Tensor, key_padding_mask: Tensor | None) -> Tensor:
    """Number of valid keys N of every row of ``p``, broadcastable to ``p.shape[:-1]``."""
    dtype = torch.float64 if p.dtype == torch.float64 else torch.float32
    if key_padding_mask is None:
        return torch.tensor(float(p.shape[-1]), device=p.device, dtype=dtype)
    _padded_keys(p, key_padding_mask)  # shape check
    num_valid = p.shape[-1] - key_padding_mask.sum(-1)
    return num_valid.view(p.shape[0], *[1] * (p.dim() - 2)).to(dtype)


def _gini_of_sorted(c: Tensor, n: Tensor) -> Tensor:
    """Gini of rows ``c`` from ``_sorted_keys`` with N = ``n`` valid keys. Position k (1-based) of a row of Lk keys
    holds valid rank k - (Lk - N) (zeros may trade places among themselves), so N - rank + 1/2 = Lk - k + 1/2."""
    weight = torch.arange(c.shape[-1], 0, -1, device=c.device, dtype=c.dtype) - 0.5
    # torch's sums, not a matrix product: on 2 threads that put a uniform row of 5000 keys at 1.5e-5, not 0
    weighted, total = (c * weight).sum(-1), c.sum(-1)
    return (1.0 - 2.0 * weighted / (n * total)).clamp_min(0.0)  # rounding put uniform rows at -1e-7 ('-0.000')


def _zeros_of_sorted(c: Tensor, n: Tensor, threshold: float) -> Tensor:
    """Zeros ratio of rows ``c`` from ``_sorted_keys`` with N = ``n`` valid keys: a binary search counts the keys
    <= ``threshold``, less the Lk - N padding zeros (counted only for threshold >= 0; weights are non-negative)."""
    bound = torch.full((*c.shape[:-1], 1), threshold, device=c.device, dtype=c.dtype)
    below = torch.searchsorted(c, bound, right=True).squeeze(-1)
    return (below - (c.shape[-1] - n)).clamp_min(0.0) / n


def _support_of_sorted(c: Tensor, mass: float) -> Tensor:
    """``support_90`` of rows ``c`` from ``_sorted_keys``: the smallest j whose j largest weights, summed from the
    largest down (B_j, non-decreasing in j), reach ``mass`` · B_Lk; a binary search finds it. Summing from the top
    compares the mass held with ``mass`` · total as defined (no ``1 - mass`` rounding at exact boundaries)."""
    top = c.flip(-1).cumsum(-1)
    total = top[..., -1:]
    count = torch.searchsorted(top, (mass * total).contiguous(), right=False).squeeze(-1) + 1
    return torch.where(total.squeeze(-1) > 0, count, 0)


def _check_mass(mass: float) -> None:
    if not 0.0 < mass <= 1.0:
        raise ValueError(f"mass must be in (0, 1], got {mass}")


def gini(p: Tensor, key_padding_mask: Tensor | None = None) -> Tensor:
    """Hurley & Rickard (2009) Gini index: with c sorted ascending over the N valid keys,
    G = 1 - 2 sum_k (c_k / ||c||_1) (N - k + 1/2) / N. 0 for a uniform map, 1 - 1/N for a one-hot map."""
    return _gini_of_sorted(_sorted_keys(p, key_padding_mask), _num_valid(p, key_padding_mask))


def zeros_ratio(p: Tensor, key_padding_mask: Tensor | None, threshold: float) -> Tensor:
    """Fraction of valid keys with weight <= ``threshold`` (0 for sparse maps, ``DENSE_ZERO_THRESHOLD`` for dense)."""
    return _zeros_of_sorted(_sorted_keys(p, key_padding_mask), _num_valid(p, key_padding_mask), threshold)


def entropy(p: Tensor, key_padding_mask: Tensor | None = None) -> Tensor:
    """Shannon entropy -sum p log p in nats, with 0 log 0 = 0."""
    return torch.special.entr(_masked_keys(p, key_padding_mask)).sum(-1)


def support_90(p: Tensor, key_padding_mask: Tensor | None = None, mass: float = 0.9) -> Tensor:
    """Smallest number of keys holding at least ``mass`` (0 < mass <= 1) of the map's total weight (int64; 0 for a
    row without mass)."""
    _check_mass(mass)
    return _support_of_sorted(_sorted_keys(p, key_padding_mask), mass)


def site_metrics(maps: AttentionMaps, zero_threshold: float, support_mass: float = 0.9) -> dict[str, Tensor]:
    """Every metric of ``METRICS`` for every layer of one site: name -> (layers, B, heads, Lq).

    Values at padded queries (encoder self attention, ``maps.query_padding_mask``) are computed but are not maps of
    the image; aggregation leaves them out.
    """
    _check_mass(support_mass)
    p = torch.stack([_as_float(w) for w in maps.weights], dim=1)  # (B, layers, heads, Lq, Lk): one op per site
    c = _sorted_keys(p, maps.key_padding_mask)  # one sort serves every metric (padding holds zeros)
    n = _num_valid(p, maps.key_padding_mask)
    values = {
        "gini": _gini_of_sorted(c, n),
        "zeros_ratio": _zeros_of_sorted(c, n, zero_threshold),
        "entropy": entropy(c),
        "support_90": _support_of_sorted(c, support_mass),
    }
    return {name: values[name].movedim(1, 0) for name in METRICS}
