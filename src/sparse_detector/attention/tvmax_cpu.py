"""The 2-D TV prox of TVMax on the CPU: the FISTA of :mod:`.tvmax` run per map in compiled loops (numba).

Written by hand for the same reason as :mod:`.entmax_cpu`: the batched tensor version streams every iterate of all
maps through memory (about 100 iterations of ~15 whole-tensor operations), while one map's state (scores, duals
and momentum of ~2·H·W edges) fits in the CPU cache, so a loop over each map's iterations runs from cache. The
algorithm, step, restart rule, stopping test and tolerance are those of :func:`.tvmax._tv_prox` (see there), in
float64 arithmetic; maps are split over ``torch.get_num_threads()`` threads.
"""

from __future__ import annotations

import math

import numba
import numpy as np
import torch
from torch import Tensor

from .entmax_cpu import chunk, row_of, threads_and_chunks


@numba.njit(cache=True, nogil=True)
def _primal(z: np.ndarray, u_h: np.ndarray, u_v: np.ndarray, width: int, x: np.ndarray) -> None:
    """x = z − Dᵀu for the horizontal (step 1) and vertical (step ``width``) edge duals."""
    n = z.shape[0]
    for i in range(n):  # one simple loop per term, so that each vectorises
        x[i] = z[i]
    for i in range(n - 1):
        x[i] -= u_h[i]
    for i in range(1, n):
        x[i] += u_h[i - 1]
    for i in range(n - width):
        x[i] -= u_v[i]
    for i in range(width, n):
        x[i] += u_v[i - width]


@numba.njit(cache=True, nogil=True)
def _gap(x: np.ndarray, u: np.ndarray, bound: np.ndarray, step: int) -> float:
    """Σ_e (bound_e |(Dx)_e| − u_e (Dx)_e) over the edges of one direction: its part of the duality gap."""
    total = 0.0
    for e in range(u.shape[0]):
        d = x[e] - x[e + step]
        total += bound[e] * abs(d) - u[e] * d
    return total


@numba.njit(cache=True, nogil=True)
def _dual_step(x: np.ndarray, v: np.ndarray, bound: np.ndarray, step: int, new: np.ndarray) -> None:
    """new = clip(v + Dx / 8, −bound, bound): the projected gradient step on one direction's duals."""
    for e in range(v.shape[0]):
        new[e] = min(max(v[e] + (x[e] - x[e + step]) * 0.125, -bound[e]), bound[e])


@numba.njit(cache=True, nogil=True)
def _momentum(u: np.ndarray, v: np.ndarray, new: np.ndarray, beta: float) -> None:
    """v = new + β(new − u), u = new."""
    for e in range(u.shape[0]):
        v[e] = new[e] + beta * (new[e] - u[e])
        u[e] = new[e]


@numba.njit(cache=True, nogil=True)
def _against(u: np.ndarray, v: np.ndarray, new: np.ndarray) -> float:
    """⟨v − new, new − u⟩: positive when the step goes against the last move (restart the momentum)."""
    total = 0.0
    for e in range(u.shape[0]):
        total += (v[e] - new[e]) * (new[e] - u[e])
    return total


@numba.njit(cache=True, nogil=True)
def _prox_map(
    z: np.ndarray,
    bound_h: np.ndarray,
    bound_v: np.ndarray,
    width: int,
    eps: float,
    max_iters: int,
    check_every: int,
    out: np.ndarray,
    scratch: np.ndarray,
) -> None:
    """One map's prox into ``out``; ``scratch`` is (7, H·W) float64."""
    n = z.shape[0]
    x = scratch[0]
    u_h, v_h, new_h = scratch[1, : n - 1], scratch[2, : n - 1], scratch[3, : n - 1]
    u_v, v_v, new_v = scratch[4, : n - width], scratch[5, : n - width], scratch[6, : n - width]
    for row in range(1, 7):
        scratch[row, :] = 0.0
    largest = 0.0
    for i in range(n):
        largest = max(largest, abs(z[i]))
    tol = eps * (1.0 + largest) * (1.0 + largest)
    t = 1.0
    for it in range(max_iters + 1):
        if it % check_every == 0 or it == max_iters:
            _primal(z, u_h, u_v, width, x)
            if it == max_iters or _gap(x, u_h, bound_h, 1) + _gap(x, u_v, bound_v, width) <= tol:
                for i in range(n):
                    out[i] = x[i]
                return
        _primal(z, v_h, v_v, width, x)
        _dual_step(x, v_h, bound_h, 1, new_h)
        _dual_step(x, v_v, bound_v, width, new_v)
        if _against(u_h, v_h, new_h) + _against(u_v, v_v, new_v) > 0.0:
            t = 1.0
        t_next = (1.0 + math.sqrt(1.0 + 4.0 * t * t)) / 2.0
        beta = (t - 1.0) / t_next
        _momentum(u_h, v_h, new_h, beta)
        _momentum(u_v, v_v, new_v, beta)
        t = t_next


@numba.njit(parallel=True, cache=True, nogil=True)
def _prox(
    z: np.ndarray,
    bound_h: np.ndarray,
    bound_v: np.ndarray,
    width: int,
    eps: float,
    max_iters: int,
    check_every: int,
    out: np.ndarray,
    chunks: int,
) -> None:
    maps, n = z.shape
    for c in numba.prange(chunks):
        scratch = np.empty((7, n), np.float64)
        start, stop = chunk(c, maps, chunks)
        for m in range(start, stop):
            _prox_map(z[m], row_of(bound_h, m), row_of(bound_v, m), width, eps, max_iters, check_every, out[m], scratch)


@numba.njit(cache=True, nogil=True)
def _root(parent: np.ndarray, i: int) -> int:
    """The root of i's set, halving the path on the way."""
    while parent[i] != i:
        parent[i] = parent[parent[i]]
        i = parent[i]
    return i


@numba.njit(cache=True, nogil=True)
def _group_mean_map(
    values: np.ndarray,
    fused_h: np.ndarray,
    fused_v: np.ndarray,
    width: int,
    out: np.ndarray,
    parent: np.ndarray,
    sums: np.ndarray,
    counts: np.ndarray,
) -> None:
    """One map's values averaged over the groups of cells joined by fused edges (union–find), into ``out``."""
    n = values.shape[0]
    for i in range(n):
        parent[i] = i
        sums[i] = 0.0
        counts[i] = 0
    for fused, step in ((fused_h, 1), (fused_v, width)):
        for e in range(fused.shape[0]):
            if fused[e]:
                a, b = _root(parent, e), _root(parent, e + step)
                parent[max(a, b)] = min(a, b)
    for i in range(n):
        root = _root(parent, i)
        parent[i] = root
        sums[root] += values[i]
        counts[root] += 1
    for i in range(n):
        out[i] = sums[parent[i]] / counts[parent[i]]


@numba.njit(parallel=True, cache=True, nogil=True)
def _group_mean(
    values: np.ndarray, fused_h: np.ndarray, fused_v: np.ndarray, width: int, out: np.ndarray, chunks: int
) -> None:
    maps, n = values.shape
    for c in numba.prange(chunks):
        parent = np.empty(n, np.int64)
        sums = np.empty(n, np.float64)
        counts = np.empty(n, np.int64)
        start, stop = chunk(c, maps, chunks)
        for m in range(start, stop):
            _group_mean_map(values[m], fused_h[m], fused_v[m], width, out[m], parent, sums, counts)


def group_mean(values: Tensor, fused: tuple[Tensor, Tensor], width: int) -> Tensor:
    """Average each row of the CPU ``values`` (N, H·W) over its groups of cells joined by the (N, edges) ``fused``."""
    out = torch.empty_like(values)
    if values.numel():
        fused_h, fused_v = (f.expand(values.shape[0], -1).contiguous().numpy() for f in fused)
        chunks = threads_and_chunks(values.shape[0])
        _group_mean(values.contiguous().numpy(), fused_h, fused_v, width, out.numpy(), chunks)
    return out


def prox(z: Tensor, bounds: tuple[Tensor, Tensor], width: int, max_iters: int, check_every: int) -> Tensor:
    """prox of Σ_e bound_e |(Dx)_e| for each row of the CPU z (N, H·W); bounds are (N or 1, edges) per direction."""
    out = torch.empty_like(z)
    if z.numel():
        z = z.contiguous()
        bound_h, bound_v = (b.to(torch.float64).contiguous().numpy() for b in bounds)
        eps = torch.finfo(z.dtype).eps
        chunks = threads_and_chunks(z.shape[0])
        _prox(z.numpy(), bound_h, bound_v, width, eps, max_iters, check_every, out.numpy(), chunks)
    return out
