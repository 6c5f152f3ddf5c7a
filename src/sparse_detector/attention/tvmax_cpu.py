"""The 2-D TV prox of TVMax on the CPU: exact 1-D TV solves alternated over rows and columns, per map (numba).

The anisotropic 2-D TV is the sum of a TV along rows and one along columns, and the dual of its prox,
min ½‖z − D_hᵀu_h − D_vᵀu_v‖² over |u| ≤ λ, splits into the duals of those two 1-D problems. Block coordinate
ascent on it (equivalently, proximal Dykstra on the two 1-D TVs; Barbero & Sra 2018) alternates an exact
solve of every row's 1-D TV prox of z − D_vᵀu_v (giving u_h) and of every column's of z − D_hᵀu_h (giving u_v), by
Condat's direct algorithm (2013), which solves a 1-D TV prox exactly in a few passes over the line. After each
column sweep x = z − Dᵀu is the primal point of a feasible dual, and the map stops once the duality gap
Σ_e (λ_e|(Dx)_e| − u_e(Dx)_e), which certifies ‖x − x*‖₂ ≤ √(2·gap), is below the tolerance it is given
(:data:`.tvmax.CPU_PROX_GAP`). The momentum of FISTA on the column duals (with adaptive restart) accelerates the
alternation (Chambolle & Pock 2015). Masked cells' edges have λ_e = 0 and split a line into independent segments.

Written by hand because no maintained Python library solves batches of 2-D TV proxes on the CPU (proxTV's
bindings are unmaintained): one map's state fits in the cache, the sweeps run from there, and maps are split over
``torch.get_num_threads()`` threads.
"""

from __future__ import annotations

import math

import numba
import numpy as np
import torch
from torch import Tensor

from .entmax_cpu import chunk, row_of, threads_and_chunks


@numba.njit(cache=True, nogil=True)
def _fill(x: np.ndarray, start: int, stop: int, value: float) -> int:
    """x[start:stop + 1] = value; returns stop + 1."""
    for i in range(start, stop + 1):
        x[i] = value
    return stop + 1


@numba.njit(cache=True, nogil=True)
def _tv1d(y: np.ndarray, n: int, lam: float, x: np.ndarray) -> None:
    """x[:n] = argmin ½‖x − y‖² + λ Σ_k |x_{k+1} − x_k|, exactly, by Condat's direct algorithm (2013).

    It runs along the line keeping the range [vmin, vmax] of values the current segment can still take, and
    fixes the segment at vmin or vmax once the running sums show a jump down or up, then restarts after it:
    linear time in practice, quadratic at worst.
    """
    if n == 1:
        x[0] = y[0]
        return
    k = k0 = k_minus = k_plus = 0
    v_min, v_max = y[0] - lam, y[0] + lam
    u_min, u_max = lam, -lam
    while True:
        if k == n - 1:
            if u_min < 0.0:  # the last segment jumps down: fix what precedes its lowest point
                k0 = _fill(x, k0, k_minus, v_min)
                k = k_minus = k0
                v_min, u_min = y[k], lam
                u_max = v_min + u_min - v_max
            elif u_max > 0.0:
                k0 = _fill(x, k0, k_plus, v_max)
                k = k_plus = k0
                v_max, u_max = y[k], -lam
                u_min = v_max + u_max - v_min
            else:
                _fill(x, k0, k, v_min + u_min / (k - k0 + 1))
                return
        else:
            u_min += y[k + 1] - v_min
            if u_min < -lam:  # a jump down after k_minus
                k0 = _fill(x, k0, k_minus, v_min)
                k = k_minus = k_plus = k0
                v_min, v_max, u_min, u_max = y[k], y[k] + 2.0 * lam, lam, -lam
                continue
            u_max += y[k + 1] - v_max
            if u_max > lam:  # a jump up after k_plus
                k0 = _fill(x, k0, k_plus, v_max)
                k = k_minus = k_plus = k0
                v_min, v_max, u_min, u_max = y[k] - 2.0 * lam, y[k], lam, -lam
                continue
            k += 1
            if u_min >= lam:
                k_minus = k
                v_min += (u_min - lam) / (k - k0 + 1)
                u_min = lam
            if u_max <= -lam:
                k_plus = k
                v_max += (u_max + lam) / (k - k0 + 1)
                u_max = -lam


@numba.njit(cache=True, nogil=True)
def _solve_line(
    w: np.ndarray,
    x: np.ndarray,
    u: np.ndarray,
    bound: np.ndarray,
    start: int,
    stride: int,
    count: int,
    line: np.ndarray,
    solved: np.ndarray,
) -> None:
    """The 1-D TV prox of w along the line start, start + stride, … (count cells) into x, and its dual into u.

    Edge e joins cells e and e + stride with weight bound[e]; weight-0 edges split the line into independent
    segments (each solved with its own λ, the weight of its edges). The dual of a segment is the running sum
    u_k = u_{k−1} + w_k − x_k (x = w − Dᵀu), clipped to [−λ, λ] against rounding, and ±λ exactly across a jump.
    """
    first = 0
    for k in range(count):
        line[k] = w[start + k * stride]
    for k in range(count):
        if k < count - 1 and bound[start + k * stride] > 0.0:
            continue
        n = k - first + 1  # the segment first..k
        lam = bound[start + first * stride] if n > 1 else 0.0
        _tv1d(line[first:], n, lam, solved[first:])
        dual = 0.0
        for j in range(first, k + 1):
            cell = start + j * stride
            x[cell] = solved[j]
            dual += line[j] - solved[j]
            if j == count - 1:
                continue
            if j == k:  # the weight-0 edge after the segment
                u[cell] = 0.0
            elif solved[j] != solved[j + 1]:  # a jump: its dual is ±λ exactly (the sum only up to rounding)
                u[cell] = lam if solved[j] > solved[j + 1] else -lam
            else:
                u[cell] = min(max(dual, -lam), lam)
        first = k + 1


@numba.njit(cache=True, nogil=True)
def _gap(x: np.ndarray, u: np.ndarray, bound: np.ndarray, step: int, rounding: float) -> float:
    """Σ_e (bound_e |(Dx)_e| − u_e (Dx)_e) over the edges of one direction: its part of the duality gap.

    Differences within ``rounding`` count as 0: over many fused edges their rounding alone would add up to more
    than a float64 tolerance."""
    total = 0.0
    for e in range(u.shape[0]):
        d = x[e] - x[e + step]
        if abs(d) > rounding:
            total += bound[e] * abs(d) - u[e] * d
    return total


@numba.njit(cache=True, nogil=True)
def _minus_adjoint(z: np.ndarray, u: np.ndarray, step: int, w: np.ndarray) -> None:
    """w = z − Dᵀu for the duals u of the edges (i, i + step)."""
    n = z.shape[0]
    for i in range(n):
        w[i] = z[i]
    for i in range(n - step):
        w[i] -= u[i]
        w[i + step] += u[i]


@numba.njit(cache=True, nogil=True)
def _prox_map(
    z: np.ndarray,
    bound_h: np.ndarray,
    bound_v: np.ndarray,
    width: int,
    gap: float,
    max_sweeps: int,
    out: np.ndarray,
    scratch: np.ndarray,
) -> int:
    """One map's prox into ``out``; ``scratch`` is (8, H·W) float64. Returns the number of sweeps taken."""
    n = z.shape[0]
    height = n // width
    w, x, line, solved = scratch[0], scratch[1], scratch[2], scratch[3]
    u_h, u_v = scratch[4, : n - 1], scratch[5, : n - width]
    extrapolated, new = scratch[6, : n - width], scratch[7, : n - width]
    u_h[:] = 0.0  # also the row-end edges, which no row solve writes
    u_v[:] = 0.0
    extrapolated[:] = 0.0
    largest = 0.0
    for i in range(n):
        largest = max(largest, abs(z[i]))
    tol = gap * (1.0 + largest) * (1.0 + largest)
    rounding = 256.0 * np.finfo(np.float64).eps * (1.0 + largest)  # as fused as the backward counts them
    t = 1.0
    sweeps = 0
    while sweeps < max_sweeps:
        sweeps += 1
        _minus_adjoint(z, extrapolated, width, w)
        for r in range(height):
            _solve_line(w, x, u_h, bound_h, r * width, 1, width, line, solved)
        _minus_adjoint(z, u_h, 1, w)
        for c in range(width):
            _solve_line(w, x, new, bound_v, c, width, height, line, solved)
        if _gap(x, u_h, bound_h, 1, rounding) + _gap(x, new, bound_v, width, rounding) <= tol:
            break
        # FISTA momentum on the column duals, restarted when the step goes against the last move
        against = 0.0
        for e in range(new.shape[0]):
            against += (extrapolated[e] - new[e]) * (new[e] - u_v[e])
        t = 1.0 if against > 0.0 else t
        t_next = (1.0 + math.sqrt(1.0 + 4.0 * t * t)) / 2.0
        beta = (t - 1.0) / t_next
        for e in range(new.shape[0]):
            extrapolated[e] = new[e] + beta * (new[e] - u_v[e])
            u_v[e] = new[e]
        t = t_next
    for i in range(n):
        out[i] = x[i]
    return sweeps


@numba.njit(parallel=True, cache=True, nogil=True)
def _prox(
    z: np.ndarray,
    bound_h: np.ndarray,
    bound_v: np.ndarray,
    width: int,
    gap: float,
    max_sweeps: int,
    out: np.ndarray,
    sweeps: np.ndarray,
    chunks: int,
) -> None:
    maps, n = z.shape
    for c in numba.prange(chunks):
        scratch = np.empty((8, n), np.float64)
        start, stop = chunk(c, maps, chunks)
        for m in range(start, stop):
            sweeps[m] = _prox_map(z[m], row_of(bound_h, m), row_of(bound_v, m), width, gap, max_sweeps, out[m], scratch)


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


def prox(z: Tensor, bounds: tuple[Tensor, Tensor], width: int, gap: float, max_sweeps: int) -> Tensor:
    """prox of Σ_e bound_e |(Dx)_e| for each row of the CPU z (N, H·W); bounds are (N or 1, edges) per direction,
    each edge's weight λ or 0. A map stops once its duality gap is ≤ gap·(1 + max|z|)², or after ``max_sweeps``
    sweeps over rows and columns."""
    out = torch.empty_like(z)
    if z.numel():
        z = z.contiguous()
        bound_h, bound_v = (b.to(torch.float64).contiguous().numpy() for b in bounds)
        chunks = threads_and_chunks(z.shape[0])
        sweeps = np.zeros(z.shape[0], np.int64)
        _prox(z.numpy(), bound_h, bound_v, width, gap, max_sweeps, out.numpy(), sweeps, chunks)
    return out
