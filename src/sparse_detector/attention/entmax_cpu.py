"""α-entmax forward and backward on the CPU: one compiled loop per row (numba), exact, in float64 arithmetic.

Written by hand because no maintained library has a fast exact entmax: the ``entmax`` library sorts full rows or
bisects, and PyTorch on the CPU pays a pass over memory and an op dispatch per elementary step, so that the
threshold search of :mod:`.entmax_tensor` costs several softmaxes. Here each row is read once for its maximum (by
torch) and once for its candidates (entries with p ≤ 1 possible: X = (α−1)(z − max z) > −1), and the threshold τ of
p = [X − τ]₊^{1/(α−1)} is found on those candidates alone, which shrink to the support as τ rises:

* sparsemax (α = 2): Michelot's iteration (Newton's method for Σ [X − τ]₊ = 1 from below) until the support
  stops changing; τ is then the closed form on that support, i.e. exact;
* entmax15 (α = 1.5): Newton on ‖[X − τ]₊‖₂ = 1 from below until a step is below 1e-9, then the closed form on
  the support found (the smaller root of Σ_S (X − τ)² = 1) when consistent with it, else one more step;
* any other α: the root of ‖[X − τ]₊‖_m = 1 for the integer m = max(2, ⌈q⌉) ≥ q, q = 1/(α−1), bounds τ from
  below (d^m ≤ d^q on [0, 1]: less mass, a lower threshold) and prunes the candidates without exp/log per entry;
  then Newton on ‖[X − τ]₊‖_q = 1 until a step is below 1e-9, that last step applied to p to first order, and p
  renormalised.

Newton iterates from below only rise (the equations are convex and decreasing in τ), so entries at or below an
iterate never return to the support and are dropped from the candidates as they fall out.

The backward pass is closed form, per row: s = p^{2−α} on the support, dz = s⊙(g − v) with v = ⟨s,g⟩/Σs, and
dL/dα = q·Σ p(q − log p)(g − v) (see :mod:`.functional`).

Rows are split over ``torch.get_num_threads()`` threads. A row with a NaN or +inf score gives NaN (so that a
non-finite loss is caught upstream); a row of −inf (fully padded) gives zeros.
"""

from __future__ import annotations

import math

import numba
import numpy as np
import torch
from torch import Tensor

SPARSEMAX, ENTMAX15, GENERAL = 1, 2, 0
# Newton stops once a step is below this (the next step's error is ~its square), iterations are capped.
SETTLE = 1e-9
MAX_ITERS = 100
# Row chunks per thread: small enough to even out rows of different cost.
CHUNKS_PER_THREAD = 8


def mode_of(alpha: float | Tensor) -> int:
    """The specialised solve for a float α (2 or 1.5), else the general one."""
    if isinstance(alpha, float) and alpha == 2.0:
        return SPARSEMAX
    if isinstance(alpha, float) and alpha == 1.5:
        return ENTMAX15
    return GENERAL


@numba.njit(cache=True, nogil=True)
def _integer_power(d: float, m: int) -> float:
    """d^m for an integer m ≥ 0 by repeated squaring (no exp/log)."""
    result = 1.0
    while m:
        if m & 1:
            result *= d
        d *= d
        m >>= 1
    return result


@numba.njit(cache=True, nogil=True)
def _newton_norm(idx: np.ndarray, val: np.ndarray, k: int, tau: float, m: int, steps: int) -> tuple[int, float, float]:
    """Newton steps of ‖[X − τ]₊‖_m = 1 (integer m ≥ 2) on the k candidates, dropping those at or below τ.

    Returns (k, τ, last step). Powers of an integer order need no exp/log per entry, only one root per row.
    """
    step = 0.0
    for _ in range(steps):
        low = 0.0  # Σ d^{m−1}
        high = 0.0  # Σ d^m
        kept = 0
        for j in range(k):  # branch-free compaction: every entry is copied, the kept ones advance
            d = max(val[j] - tau, 0.0)
            power = d if m == 2 else _integer_power(d, m - 1)
            low += power
            high += power * d
            idx[kept] = idx[j]
            val[kept] = val[j]
            kept += d > 0.0
        k = kept
        norm = math.sqrt(high) if m == 2 else high ** (1.0 / m)
        step = max((norm - 1.0) * _integer_power(norm, m - 1) / low, 0.0)
        tau += step
        if step <= SETTLE:
            break
    return k, tau, step


@numba.njit(cache=True, nogil=True)
def _sparsemax_threshold(idx: np.ndarray, val: np.ndarray, k: int) -> tuple[int, float]:
    """Michelot's iteration: τ = (Σ_C X − 1)/|C| on the candidates C, dropping those at or below it, until none
    drops; τ is then the closed form on a support consistent with it, i.e. exact. Returns (support size, τ)."""
    tau = 0.0
    for _ in range(MAX_ITERS):
        total = 0.0
        for j in range(k):
            total += val[j]
        tau = (total - 1.0) / k
        kept = 0
        for j in range(k):
            idx[kept] = idx[j]
            val[kept] = val[j]
            kept += val[j] > tau
        if kept == k:
            break
        k = kept
    return k, tau


@numba.njit(cache=True, nogil=True)
def _entmax15_threshold(idx: np.ndarray, val: np.ndarray, k: int) -> tuple[int, float]:
    """Newton from τ = −1, then the closed form on the support when consistent with it: (candidates, τ)."""
    k, tau, step = _newton_norm(idx, val, k, -1.0, 2, MAX_ITERS)
    count = 0
    total = 0.0
    lowest = math.inf
    for j in range(k):
        if val[j] > tau:
            count += 1
            total += val[j]
            lowest = min(lowest, val[j])
    mean = total / count
    spread = 0.0
    for j in range(k):
        if val[j] > tau:
            spread += (val[j] - mean) * (val[j] - mean)
    delta = (1.0 - spread) / count
    if delta >= 0.0:
        closed = mean - math.sqrt(delta)
        if lowest > closed:
            return k, closed
    return k, tau + step


@numba.njit(cache=True, nogil=True)
def _general_probabilities(idx: np.ndarray, val: np.ndarray, work: np.ndarray, k: int, alpha: float) -> int:
    """p of the k candidates for any 1 < α ≤ 2 (written over ``val``; ``work`` is scratch); returns the count kept.

    The last Newton step (≤ SETTLE) is applied to p to first order, p = d^{q−1}(d − q·step), from the powers of
    the last iteration: one exp and one log per entry fewer, with an error ~(q·step/d)² relative.
    """
    q = 1.0 / (alpha - 1.0)
    tau = -1.0
    # The root for an integer order m ≥ q bounds τ from below (d^m ≤ d^q on [0, 1]) and prunes the candidates
    # without exp/log per entry; q within 1e-9 of an integer counts as that integer (α = 1.2 gives 5.000000000000001).
    k, tau, _ = _newton_norm(idx, val, k, tau, max(2, math.ceil(q - 1e-9)), MAX_ITERS)
    step = 0.0
    for _ in range(MAX_ITERS + 1):
        slope = 0.0
        norm_q = 0.0
        kept = 0
        for j in range(k):
            d = val[j] - tau
            if d > 0.0:
                power = math.exp((q - 1.0) * math.log(d))
                slope += power
                norm_q += power * d
                idx[kept] = idx[j]
                val[kept] = val[j]
                work[kept] = power
                kept += 1
        k = kept
        log_norm = math.log(norm_q) / q
        step = max(math.expm1(log_norm) / (math.exp((1.0 - q) * log_norm) * slope), 0.0)
        if step <= SETTLE:
            break
        tau += step
    total = 0.0
    for j in range(k):
        p = work[j] * max(val[j] - tau - q * step, 0.0)
        val[j] = p
        total += p
    for j in range(k):
        val[j] /= total
    return k


@numba.njit(cache=True, nogil=True)
def _forward_row(
    z: np.ndarray,
    top: float,
    alpha: float,
    mode: int,
    out: np.ndarray,
    idx: np.ndarray,
    val: np.ndarray,
    work: np.ndarray,
) -> None:
    """p of one row with maximum ``top`` into ``out``; ``idx``, ``val`` and ``work`` are scratch of its length."""
    n = z.shape[0]
    not_finite = not top < math.inf  # a NaN (the maximum propagates it) or +inf score
    fill = math.nan if not_finite else 0.0
    for i in range(n):
        out[i] = fill
    if not_finite or top == -math.inf:
        return
    scale = alpha - 1.0
    floor = top - 1.0 / scale
    k = 0
    for i in range(n):  # branch-free: every entry is written, the candidates advance
        idx[k] = i
        val[k] = scale * (z[i] - top)
        k += z[i] > floor
    if mode == SPARSEMAX:
        k, tau = _sparsemax_threshold(idx, val, k)
        for j in range(k):
            out[idx[j]] = val[j] - tau
    elif mode == ENTMAX15:
        k, tau = _entmax15_threshold(idx, val, k)
        for j in range(k):
            d = val[j] - tau
            if d > 0.0:
                out[idx[j]] = d * d
    else:
        k = _general_probabilities(idx, val, work, k, alpha)
        for j in range(k):
            out[idx[j]] = val[j]


@numba.njit(cache=True, nogil=True)
def _backward_row(
    p: np.ndarray,
    g: np.ndarray,
    alpha: float,
    mode: int,
    with_alpha: bool,
    dz: np.ndarray,
    idx: np.ndarray,
    weight: np.ndarray,
    log_p: np.ndarray,
) -> float:
    """dz of one row (written into ``dz``); returns dL/dα when ``with_alpha``, else 0. The last three are scratch."""
    n = p.shape[0]
    k = 0
    sg = 0.0
    s_total = 0.0
    for i in range(n):
        dz[i] = 0.0
        if p[i] > 0.0:
            if mode == SPARSEMAX:
                s = 1.0
            elif mode == ENTMAX15:
                s = math.sqrt(p[i])
            else:
                log_p[k] = math.log(p[i])
                s = math.exp((2.0 - alpha) * log_p[k])
            idx[k] = i
            weight[k] = s
            sg += s * g[i]
            s_total += s
            k += 1
    if k == 0:
        return 0.0
    v = sg / s_total
    d_alpha = 0.0
    q = 1.0 / (alpha - 1.0)
    for j in range(k):
        i = idx[j]
        dz[i] = weight[j] * (g[i] - v)
        if with_alpha:
            d_alpha += p[i] * (q - log_p[j]) * (g[i] - v)
    return q * d_alpha


@numba.njit(cache=True, nogil=True)
def chunk(c: int, rows: int, chunks: int) -> tuple[int, int]:
    """[start, stop) of the rows of chunk c when ``rows`` are split into ``chunks`` near-equal chunks."""
    return c * rows // chunks, (c + 1) * rows // chunks


@numba.njit(cache=True, nogil=True)
def row_of(array: np.ndarray, r: int) -> np.ndarray | float:
    """``array[r]``, or ``array[0]`` when ``array`` holds one value (or row) shared by all rows."""
    return array[r if array.shape[0] > 1 else 0]


@numba.njit(parallel=True, cache=True, nogil=True)
def _forward(z: np.ndarray, top: np.ndarray, alpha: np.ndarray, mode: int, out: np.ndarray, chunks: int) -> None:
    rows, n = z.shape
    for c in numba.prange(chunks):
        idx = np.empty(n, np.int64)
        val = np.empty(n, np.float64)
        work = np.empty(n, np.float64)
        start, stop = chunk(c, rows, chunks)
        for r in range(start, stop):
            _forward_row(z[r], top[r], row_of(alpha, r), mode, out[r], idx, val, work)


@numba.njit(parallel=True, cache=True, nogil=True)
def _backward(
    p: np.ndarray,
    g: np.ndarray,
    alpha: np.ndarray,
    mode: int,
    with_alpha: bool,
    dz: np.ndarray,
    d_alpha: np.ndarray,
    chunks: int,
) -> None:
    rows, n = p.shape
    for c in numba.prange(chunks):
        idx = np.empty(n, np.int64)
        weight = np.empty(n, np.float64)
        log_p = np.empty(n, np.float64)
        start, stop = chunk(c, rows, chunks)
        for r in range(start, stop):
            d_alpha[r] = _backward_row(p[r], g[r], row_of(alpha, r), mode, with_alpha, dz[r], idx, weight, log_p)


def threads_and_chunks(rows: int) -> int:
    """Use torch's intra-op thread count (within numba's limit); returns the number of row chunks."""
    threads = max(1, min(torch.get_num_threads(), numba.config.NUMBA_NUM_THREADS))
    numba.set_num_threads(threads)
    return max(1, min(rows, threads * CHUNKS_PER_THREAD))


def _alpha_array(alpha: float | Tensor) -> np.ndarray:
    """α as a float64 array: one value, or one per row from a (rows, 1) tensor."""
    if isinstance(alpha, float):
        return np.array([alpha])
    return alpha.detach().reshape(-1).to(torch.float64).numpy()


def forward(z: Tensor, alpha: float | Tensor) -> Tensor:
    """α-entmax of the contiguous (rows, n) CPU scores ``z`` (float32 or float64) along the last dim."""
    out = torch.empty_like(z)
    if z.numel():
        top = z.amax(1).numpy()  # vectorised (and NaN-propagating), unlike a loop
        _forward(z.numpy(), top, _alpha_array(alpha), mode_of(alpha), out.numpy(), threads_and_chunks(z.shape[0]))
    return out


def backward(p: Tensor, grad: Tensor, alpha: float | Tensor, with_alpha: bool) -> tuple[Tensor, Tensor]:
    """dz, and dL/dα per row as (rows, 1) float64 (zeros unless ``with_alpha``), for the output ``p`` of
    :func:`forward` and its gradient ``grad``."""
    grad = grad.to(p.dtype).contiguous()
    dz = torch.empty_like(p)
    d_alpha = torch.zeros(p.shape[0], 1, dtype=torch.float64)
    if p.numel():
        chunks = threads_and_chunks(p.shape[0])
        _backward(
            p.numpy(),
            grad.numpy(),
            _alpha_array(alpha),
            mode_of(alpha),
            with_alpha,
            dz.numpy(),
            d_alpha.numpy(),
            chunks,
        )
    return dz, d_alpha
