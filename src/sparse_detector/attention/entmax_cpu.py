"""α-entmax forward and backward on the CPU: compiled loops per row (numba), exact to the precision of the input.

Written by hand because no maintained library has a fast exact entmax: the ``entmax`` library sorts full rows or
bisects, and PyTorch on the CPU pays a pass over memory and an op dispatch per elementary step, so that the
threshold search of :mod:`.entmax_tensor` costs several softmaxes. Here the threshold τ of
p = [X − τ]₊^{1/(α−1)}, X = (α−1)(z − max z), is found by a few passes over the row's candidates (the entries
with p ≤ 1 possible: X > −1), each pass one simple loop that LLVM turns into SIMD code (AVX-512 where the CPU has
it: the exp and log of :mod:`.vector_math`, sums reassociated, no early exit inside a loop). The solve is chosen
per row by its α (a float, or one value per row of an α tensor):

* α = 2 (sparsemax): Michelot's iteration (Newton's method for Σ [X − τ]₊ = 1 from below) until the support
  stops changing; τ is then the closed form on that support, i.e. exact;
* α = 1.5 (entmax15): Newton on ‖[X − τ]₊‖₂ = 1 from below until a step is below SETTLE, then the closed form
  on the support found (the smaller root of Σ_S (X − τ)² = 1) when consistent with it, else one more step;
  both start from the exact threshold of the row's block maxima (:func:`_block_bound`), a close lower bound;
* any other α: Halley/Newton steps on Σ [X − τ]₊^q = 1, q = 1/(α−1), one pass of exp/log per step, from a start
  near the root (softmax's moments for α near 1), the last step applied to p by Taylor expansion
  (see :func:`_general_solve`).

The equations are convex and decreasing in τ, so lower bounds of the root only rise: entries at or below one
never return to the support, and once fewer than half of the candidates are left above it they are compacted.

The arithmetic per entry runs in the input's dtype (float32: 16 SIMD lanes, its exp/log to ~1 ulp; float64: 8),
the per-row scalars (τ, its bounds, the steps) in float64; the stopping rules are the dtype's (TOLERANCES). float32
outputs are within ~6e-7 of the exact map, float64 ones within ~1e-12 (1e-9 for α > 1.5): both are tested against
the ``entmax`` library in float64.

The backward pass is closed form, per row, in two passes: s = p^{2−α} on the support with v = ⟨s,g⟩/Σs and the
sums of dL/dα = q·Σ p(q − log p)(g − v) (see :mod:`.functional`), then dz = s⊙(g − v).

Rows are split over ``torch.get_num_threads()`` threads. A row with a NaN or +inf score gives NaN (so that a
non-finite loss is caught upstream); a row of −inf (fully padded) gives zeros.
"""

from __future__ import annotations

import functools
import math
import os

import numba
import numpy as np
import torch
from torch import Tensor

from . import (
    numba_cache,  # noqa: F401  (before the kernels: where numba may cache them)
    vector_math,
)

# numba runs its parallel loops on its own OpenMP runtime (GNU libgomp, not the copy bundled with torch), whose idle
# threads by default spin after each loop and take the cores from torch's next operations (benchmarks/RESULTS.md,
# "numba's idle threads": torch's products up to 40x slower right after a kernel, 2 cores). Passive waiting costs a
# kernel call microseconds. libgomp reads the variable when numba loads it (at its first parallel loop, after torch
# has started its own runtime, which keeps its setting); a value the user set is kept.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

# Newton stops once a step is below this (the next step's error is ~its square), iterations are capped.
SETTLE = 1e-9
# The general α's stopping rules per dtype (see _general_solve): (step below which it stops for q < 2, q·step below
# which it stops for q ≥ 2, q·step below which it stops after a Halley step for q ≥ 3). float32's are what its
# arithmetic resolves (τ to ~1e-7), with errors in p below 1e-6; float64's below 1e-12 (1e-9 for q < 2).
TOLERANCES = {torch.float64: (SETTLE, 1e-6, 1e-4), torch.float32: (5e-7, 1e-4, 2e-3)}
MAX_ITERS = 100
# α below which the general solve starts from softmax's moments (see _general_solve).
SOFTMAX_START_BELOW = 1.25
# Softmax's start clamps z − max z at this (e^SOFTMAX_FLOOR is negligible; −inf would give NaN moments).
SOFTMAX_FLOOR = -80.0
# A log far below any float's, taken for 0: e^{e·NEVER} = 0 for every exponent e ≥ 1e-6.
NEVER = -1e30
# The smallest log of a positive float64 (vector_math's floor): p·(q − log p) clamps log p there, 0 for p = 0.
LOG_FLOOR = vector_math.LOG_MIN
# Entries per block of the block maxima that bound the thresholds of sparsemax and entmax15 from below.
BLOCK = 8
# Row chunks per thread: small enough to even out rows of different cost.
CHUNKS_PER_THREAD = 8

# Reassociation lets LLVM vectorise the loops' sums; the helpers of vector_math keep their own (exact) flags.
kernel = functools.partial(
    numba.njit, cache=True, nogil=True, fastmath={"reassoc", "contract", "nsz"}, error_model="numpy"
)


@kernel
def _log_or_never(d: float) -> float:
    """ln d for d > 0, else NEVER (in d's dtype): exp(e·NEVER) = 0 = 0^e for any exponent e ≥ 1e-6."""
    return vector_math.log(d) if d > 0.0 else vector_math.cast_like(NEVER, d)


# The loops below load each entry once and use max/min and masks rather than conditional expressions over array
# entries, and sum counts as floats: written otherwise, LLVM here leaves them scalar (up to 20× slower).


@kernel
def _load(z: np.ndarray, top: float, scale: float, idx: np.ndarray, val: np.ndarray) -> int:
    """val = X = scale·(z − top) and idx = position, for the whole row; returns the count of candidates X > −1."""
    scale = vector_math.cast_like(scale, top)
    count = 0.0
    for i in range(z.shape[0]):
        x = scale * (z[i] - top)
        val[i] = x
        idx[i] = i
        count += x > -1.0
    return int(count)


@kernel
def _compact(idx: np.ndarray, val: np.ndarray, k: int, tau: float) -> int:
    """Keep the entries of val[:k] above τ (and their idx), in order; returns their count."""
    kept = 0
    for j in range(k):  # branch-free: every entry is copied, the kept ones advance
        x = val[j]
        idx[kept] = idx[j]
        val[kept] = x
        kept += x > tau
    return kept


@kernel
def _linear(val: np.ndarray, k: int, tau: float) -> tuple[int, float]:
    """For d = [X − τ]₊ over val[:k]: (count of d > 0, Σ d)."""
    count = 0.0
    total = 0.0
    for j in range(k):
        d = max(val[j] - tau, 0.0)  # also for X = −inf (a padded key)
        count += d > 0.0
        total += d
    return int(count), total


@kernel
def _sparsemax_threshold(idx: np.ndarray, val: np.ndarray, k: int, tau: float, compact: bool) -> tuple[int, float]:
    """Michelot's iteration from a lower bound τ: τ ← τ + (Σ_S (X − τ) − 1)/|S| = (Σ_S X − 1)/|S| on the entries S
    above τ, until S stops changing; τ is then the closed form on a support consistent with it, i.e. exact.

    Returns (candidates kept, τ); with ``compact``, candidates at or below the iterates are dropped on the way.
    """
    count = -1
    for _ in range(MAX_ITERS):
        new_count, total = _linear(val, k, tau)
        if new_count == count:
            break
        count = new_count
        tau += (total - 1.0) / count
        if compact and 2 * count < k:
            k = _compact(idx, val, k, tau)
    return k, tau


@kernel
def _block_maxima(val: np.ndarray, k: int, maxima: np.ndarray) -> int:
    """maxima[b] = the maximum of val[BLOCK·b : BLOCK·(b + 1)] over val[:k]; returns the number of blocks."""
    full = k // BLOCK
    for b in range(full):
        top = val[b * BLOCK]
        for j in range(1, BLOCK):
            top = max(top, val[b * BLOCK + j])
        maxima[b] = top
    if full * BLOCK == k:
        return full
    top = val[full * BLOCK]
    for j in range(full * BLOCK + 1, k):
        top = max(top, val[j])
    maxima[full] = top
    return full + 1


@kernel
def _block_bound(idx: np.ndarray, val: np.ndarray, scratch: np.ndarray, k: int, order: int) -> float:
    """A lower bound of the threshold of val[:k] for the integer order 1 (sparsemax) or 2 (entmax15): the exact
    threshold of the maxima of its blocks of BLOCK entries, a subset (fewer positive terms need a lower τ to sum
    to 1). On near-uniform rows it is close to the row's, from a pass over a BLOCK-th of the entries per step."""
    blocks = _block_maxima(val, k, scratch)
    if order == 1:
        return _sparsemax_threshold(idx, scratch, blocks, -1.0, False)[1]  # (idx untouched: no compaction)
    return _entmax15_threshold(idx, scratch, blocks, -1.0, False)[1]


@kernel
def _squares(val: np.ndarray, k: int, tau: float) -> tuple[int, float, float]:
    """For d = [X − τ]₊ over val[:k]: (count of d > 0, Σ d, Σ d²)."""
    count = 0.0
    linear = 0.0
    square = 0.0
    for j in range(k):
        d = max(val[j] - tau, 0.0)
        count += d > 0.0
        linear += d
        square += d * d
    return int(count), linear, square


@kernel
def _entmax15_probabilities(val: np.ndarray, p: np.ndarray, k: int, tau: float, shift: float) -> tuple[int, float]:
    """p = [X − τ − shift]₊² over val[:k]; returns (count of p > 0, Σ p)."""
    count = 0.0
    total = 0.0
    for j in range(k):
        d = max(val[j] - tau - shift, 0.0)
        square = d * d
        p[j] = square
        count += d > 0.0
        total += square
    return int(count), total


@kernel
def _entmax15_threshold(
    idx: np.ndarray, val: np.ndarray, k: int, tau: float, compact: bool
) -> tuple[int, float, float, int, float, float]:
    """Newton on ‖[X − τ]₊‖₂ = 1 from a lower bound τ until a step is below SETTLE (with ``compact``, dropping
    candidates at or below τ on the way). Returns (candidates kept, τ, the last step, and the count, Σ d and Σ d²
    at τ)."""
    step = 0.0
    count, linear, square = 0, 0.0, 0.0
    for _ in range(MAX_ITERS):
        count, linear, square = _squares(val, k, tau)
        norm = math.sqrt(square)
        step = max((norm - 1.0) * norm / linear, 0.0)
        if step <= SETTLE:
            break
        tau += step
        if compact and 2 * count < k:
            k = _compact(idx, val, k, tau)
    return k, tau, step, count, linear, square


@kernel
def _entmax15_solve(idx: np.ndarray, val: np.ndarray, p: np.ndarray, k: int) -> int:
    """p of the k candidates for α = 1.5 (into ``p``); returns the count of candidates kept.

    Newton on ‖[X − τ]₊‖₂ = 1 from τ = −1 until a step is below SETTLE, then the closed form on the support S
    found: the smaller root t of Σ_S (d − t)² = 1 for d = X − τ, t = mean − √((1 − Σ d² + (Σ d)²/|S|)/|S|) (near
    the root Σ d² ≈ 1: no cancellation), kept when consistent with S (no entry of S at or below t); else τ + step,
    and p renormalised.
    """
    k, tau, step, count, linear, square = _entmax15_threshold(idx, val, k, _block_bound(idx, val, p, k, 2), False)
    mean = linear / count
    delta = (1.0 - square + linear * mean) / count
    if delta >= 0.0:
        closed = mean - math.sqrt(delta)
        kept, _ = _entmax15_probabilities(val, p, k, tau, closed)
        if closed >= 0.0 and kept == count:
            return k
    _, total = _entmax15_probabilities(val, p, k, tau, step)
    for j in range(k):
        p[j] /= total
    return k


@kernel
def _softmax_start(val: np.ndarray, k: int, alpha: float) -> float:
    """The root τ of the row to second order in ε = α − 1, from softmax's moments: τ ≈ −1 + ε(t − ε·v/2) with
    y = X/ε = z − max z, t = log Σ e^y (softmax's normaliser) and v = E_π[(y − t)²] under π = softmax(y).

    (From Σ (1 + ε(y − t'))^{1/ε} = Σ e^{(y − t') − ε(y − t')²/2 + O(ε²)} = 1.)
    """
    like = val[0]  # the dtype of the per-entry arithmetic and its sums
    q = vector_math.cast_like(1.0 / (alpha - 1.0), like)
    floor = vector_math.cast_like(SOFTMAX_FLOOR, like)
    total = vector_math.cast_like(0.0, like)
    first = vector_math.cast_like(0.0, like)
    second = vector_math.cast_like(0.0, like)
    for j in range(k):
        y = max(q * val[j], floor)  # no −inf (a padded key): its weight is ~0 anyway
        weight = vector_math.exp(y)
        total += weight
        first += weight * y
        second += weight * y * y
    t = math.log(total)
    mean = first / numba.float64(total)
    variance = max(second / numba.float64(total) - 2.0 * t * mean + t * t, 0.0)
    return -1.0 + (alpha - 1.0) * (t - 0.5 * (alpha - 1.0) * variance)


@kernel
def _powers(val: np.ndarray, work: np.ndarray, k: int, tau: float, exponent: float) -> tuple[int, float, float, float]:
    """work = P = d^exponent for d = [X − τ]₊ over val[:k] (0 where d = 0), in one pass with its sums:
    (count of d > 0, Σ P, Σ P·d, Σ P·d²)."""
    like = val[0]  # the dtype of the per-entry arithmetic and its sums
    tau = vector_math.cast_like(tau, like)
    exponent = vector_math.cast_like(exponent, like)
    zero = vector_math.cast_like(0.0, like)
    count, total, moment, second = zero, zero, zero, zero
    for j in range(k):
        d = max(val[j] - tau, zero)  # also for X = −inf (a padded key)
        power = vector_math.exp(exponent * _log_or_never(d))
        work[j] = power
        count += d > 0.0
        total += power
        moment += power * d
        second += power * d * d
    return int(count), numba.float64(total), numba.float64(moment), numba.float64(second)


@kernel
def _taylor(val: np.ndarray, work: np.ndarray, k: int, tau: float, step: float, q: float, order: int) -> float:
    """work = p ≈ d^q at τ + step from P = d^{q−order} in work: to second order in the step for order 2,
    P·[d² − q·step·d + q(q−1)/2·step²]₊, to first order for order 1, P·[d − q·step]₊; returns Σ p."""
    total = 0.0
    half = 0.5 * q * (q - 1.0) * step * step
    for j in range(k):
        d = max(val[j] - tau, 0.0)
        p = work[j] * max(d * (d - q * step) + half if order == 2 else d - q * step, 0.0)
        work[j] = p
        total += p
    return total


@kernel
def _general_solve(
    idx: np.ndarray, val: np.ndarray, work: np.ndarray, k: int, alpha: float, tolerance: tuple[float, float, float]
) -> int:
    """p of the k candidates for any 1 < α < 2 but 1.5 (into ``work``); returns the count of candidates kept.

    The start: for α < SOFTMAX_START_BELOW the root to second order in α − 1 from softmax's moments (see
    :func:`_softmax_start`), capped at −k^{−(α−1)} (the root of k equal entries, above the row's) so that the
    support is not empty; for q < 2 (α > 1.5) the roots τ₂ ≤ τ_q ≤ τ₁ of the integer orders 2 and 1 (d² ≤ d^q ≤ d
    on [0, 1]; exact, cheap passes without exp/log) bracket the root, and τ₁ + (τ₂ − τ₁)(q − 1) starts; else
    τ = −1 (a lower bound: p ≤ 1 and max X = 0). Each pass computes
    P = d^{q−2} (q ≥ 2) or d^{q−1} (q < 2), d = [X − τ]₊, with F = Σ d^q and its first two derivatives in τ.
    The step is Halley's on log F = 0 (cubic; q ≥ 2 only, where d^{q−2} is bounded) when it lands strictly
    between the best lower and upper bounds of the root found so far, else Newton's on ‖d‖_q = 1, whose iterate
    is a lower bound from any τ (the norm is convex and decreasing in τ). Once a step is small enough it is applied
    to p from the powers of the last pass: after a Halley step (error ~step³) with q ≥ 3 and q·step ≤
    ``tolerance[2]``, to second order, P·(d² − q·step·d + q(q−1)/2·step²), error ≲ (q·step)³/6; else to first
    order, error ≲ (q·step)²/2 with q·step ≤ ``tolerance[1]`` (q ≥ 2), or |step| ≤ ``tolerance[0]`` (q < 2): see
    TOLERANCES. p is then renormalised. The passes run in the dtype of ``val``, their sums too.
    """
    q = 1.0 / (alpha - 1.0)
    order = 2 if q >= 2.0 else 1
    settle = tolerance[1] / q if q >= 2.0 else tolerance[0]
    cap = -math.exp(-(alpha - 1.0) * math.log(k))  # the root of k equal entries, above the row's
    lower = -1.0  # p ≤ 1 on the support, and max X = 0
    upper = cap
    if alpha < SOFTMAX_START_BELOW:  # from softmax's moments (the α → 1 limit), capped: the support is not empty
        tau = min(_softmax_start(val, k, alpha), cap)
    elif q < 2.0:  # between the roots for the integer orders 2 ≥ q and 1 ≤ q, interpolated in q
        k, lower, _, _, _, _ = _entmax15_threshold(idx, val, k, _block_bound(idx, val, work, k, 2), True)
        _, upper = _sparsemax_threshold(idx, val, k, lower, False)
        tau = upper + (lower - upper) * (q - 1.0)
    else:
        tau = lower
    step = 0.0
    for _ in range(MAX_ITERS):
        count, low, middle, high = _powers(val, work, k, tau, q - order)
        # Σ d^{q−2}, Σ d^{q−1}, Σ d^q (the first only for q ≥ 2)
        f2, f1, f0 = (low, middle, high) if order == 2 else (0.0, low, middle)
        if f0 > 1.0:
            lower = max(lower, tau)
        else:
            upper = min(upper, tau)
        log_norm = math.log(f0) / q
        newton = math.expm1(log_norm) / (math.exp((1.0 - q) * log_norm) * f1)  # on ‖d‖_q − 1
        lower = max(lower, tau + newton)
        step = newton
        finish = settle
        if order == 2:
            g = math.log(f0)
            slope = -q * f1 / f0
            curvature = q * (q - 1.0) * f2 / f0 - slope * slope
            halley = -2.0 * g * slope / (2.0 * slope * slope - g * curvature)
            if lower < tau + halley < upper:
                step = halley
                finish = tolerance[2] / q if q >= 3.0 else settle
        if abs(step) <= finish:
            break
        tau += step
        if 2 * count < k:
            k = _compact(idx, val, k, lower)
    total = _taylor(val, work, k, tau, step, q, order)
    for j in range(k):
        work[j] /= total
    return k


@kernel
def _forward_row(
    z: np.ndarray,
    top: float,
    alpha: float,
    out: np.ndarray,
    idx: np.ndarray,
    val: np.ndarray,
    work: np.ndarray,
    tolerance: tuple[float, float, float],
) -> None:
    """p of one row with maximum ``top`` into ``out``; ``idx``, ``val`` and ``work`` are scratch of its length (in
    the dtype of ``z``, that of the arithmetic per entry); ``tolerance`` is that dtype's (see TOLERANCES)."""
    n = z.shape[0]
    not_finite = not top < math.inf  # a NaN (the maximum propagates it) or +inf score
    if not_finite or top == -math.inf:
        out[:] = math.nan if not_finite else 0.0
        return
    candidates = _load(z, top, alpha - 1.0, idx, val)
    k = n
    if 2 * candidates < n:  # entries with X ≤ −1 have p = 0
        k = _compact(idx, val, k, -1.0)
    if alpha == 2.0:
        k, tau = _sparsemax_threshold(idx, val, k, _block_bound(idx, val, work, k, 1), False)
        for j in range(k):
            work[j] = max(val[j] - tau, 0.0)
    elif alpha == 1.5:
        k = _entmax15_solve(idx, val, work, k)
    else:
        k = _general_solve(idx, val, work, k, alpha, tolerance)
    if k == n:  # never compacted: idx is the identity
        for i in range(n):
            out[i] = work[i]
    else:
        out[:] = 0.0
        for j in range(k):
            out[idx[j]] = work[j]


@kernel
def _support_weights(p: np.ndarray, g: np.ndarray, alpha: float, s: np.ndarray) -> tuple[float, float, float, float]:
    """s = p^{2−α} on the support (0 elsewhere), in one pass with (⟨s,g⟩, Σs, ⟨w,g⟩, Σw) for the general α's
    w = p(q − log p) (dL/dα = q·(⟨w,g⟩ − v·Σw)); the last two are 0 for α = 1.5 and 2."""
    sg = 0.0
    s_total = 0.0
    wg = 0.0
    w_total = 0.0
    if alpha == 2.0:
        for i in range(p.shape[0]):
            weight = numba.float64(p[i] > 0.0)
            s[i] = weight
            sg += weight * g[i]
            s_total += weight
    elif alpha == 1.5:
        for i in range(p.shape[0]):
            weight = math.sqrt(numba.float64(p[i]))
            s[i] = weight
            sg += weight * g[i]
            s_total += weight
    else:
        like = p[0]  # the dtype of the per-entry arithmetic and its sums
        exponent = vector_math.cast_like(2.0 - alpha, like)
        q = vector_math.cast_like(1.0 / (alpha - 1.0), like)
        log_min = vector_math.cast_like(LOG_FLOOR, like)
        zero = vector_math.cast_like(0.0, like)
        sg, s_total, wg, w_total = zero, zero, zero, zero
        for i in range(p.shape[0]):
            pi = p[i]
            log_p = _log_or_never(pi)
            weight = vector_math.exp(exponent * log_p)
            w = pi * (q - max(log_p, log_min))  # 0 for p = 0
            s[i] = weight
            sg += weight * g[i]
            s_total += weight
            wg += w * g[i]
            w_total += w
    return numba.float64(sg), numba.float64(s_total), numba.float64(wg), numba.float64(w_total)


@kernel
def _entropic_sums(p: np.ndarray, g: np.ndarray, q: float) -> tuple[float, float]:
    """(⟨w,g⟩, Σw) for w = p(q − log p)."""
    wg = 0.0
    w_total = 0.0
    for i in range(p.shape[0]):
        pi = numba.float64(p[i])
        w = pi * (q - vector_math.log(pi))  # 0 for p = 0 (the log of 0 is finite: LOG_FLOOR)
        wg += w * g[i]
        w_total += w
    return wg, w_total


@kernel
def _backward_row(p: np.ndarray, g: np.ndarray, alpha: float, with_alpha: bool, dz: np.ndarray, s: np.ndarray) -> float:
    """dz of one row (written into ``dz``); returns dL/dα when ``with_alpha``, else 0. ``s`` is scratch."""
    sg, s_total, wg, w_total = _support_weights(p, g, alpha, s)
    if not s_total > 0.0:  # a fully padded (or NaN) row
        dz[:] = 0.0
        return 0.0
    v = sg / s_total
    for i in range(p.shape[0]):
        dz[i] = s[i] * (g[i] - v)
    if not with_alpha:
        return 0.0
    q = 1.0 / (alpha - 1.0)
    if alpha == 2.0 or alpha == 1.5:
        wg, w_total = _entropic_sums(p, g, q)
    return q * (wg - v * w_total)


@kernel
def chunk(c: int, rows: int, chunks: int) -> tuple[int, int]:
    """[start, stop) of the rows of chunk c when ``rows`` are split into ``chunks`` near-equal chunks."""
    return c * rows // chunks, (c + 1) * rows // chunks


@kernel
def row_of(array: np.ndarray, r: int) -> np.ndarray | float:
    """``array[r]``, or ``array[0]`` when ``array`` holds one value (or row) shared by all rows."""
    return array[r if array.shape[0] > 1 else 0]


@numba.njit(parallel=True, cache=True, nogil=True)
def _forward(
    z: np.ndarray,
    top: np.ndarray,
    alpha: np.ndarray,
    out: np.ndarray,
    chunks: int,
    tolerance: tuple[float, float, float],
) -> None:
    rows, n = z.shape
    for c in numba.prange(chunks):
        idx = np.empty(n, np.int64)
        val = np.empty(n, z.dtype)
        work = np.empty(n, z.dtype)
        start, stop = chunk(c, rows, chunks)
        for r in range(start, stop):
            _forward_row(z[r], top[r], row_of(alpha, r), out[r], idx, val, work, tolerance)


@numba.njit(parallel=True, cache=True, nogil=True)
def _backward(
    p: np.ndarray,
    g: np.ndarray,
    alpha: np.ndarray,
    with_alpha: bool,
    dz: np.ndarray,
    d_alpha: np.ndarray,
    chunks: int,
) -> None:
    rows, n = p.shape
    for c in numba.prange(chunks):
        s = np.empty(n, p.dtype)
        start, stop = chunk(c, rows, chunks)
        for r in range(start, stop):
            d_alpha[r] = _backward_row(p[r], g[r], row_of(alpha, r), with_alpha, dz[r], s)


def threads_and_chunks(rows: int) -> int:
    """Use torch's intra-op thread count (within numba's limit); returns the number of row chunks.

    The first call starts numba's thread pool, which (OpenMP threading layer) sets torch's runtime to numba's
    thread count (all cores): torch's count is put back, so that ``OMP_NUM_THREADS`` or ``torch.set_num_threads``
    still hold after the first sparse map (2 threads instead of 1 made a shared 2-core machine's convolutions
    spin ~10x longer)."""
    torch_threads = torch.get_num_threads()
    threads = max(1, min(torch_threads, numba.config.NUMBA_NUM_THREADS))
    numba.set_num_threads(threads)
    if torch.get_num_threads() != torch_threads:
        torch.set_num_threads(torch_threads)
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
        chunks = threads_and_chunks(z.shape[0])
        _forward(z.numpy(), top, _alpha_array(alpha), out.numpy(), chunks, TOLERANCES[z.dtype])
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
            with_alpha,
            dz.numpy(),
            d_alpha.numpy(),
            chunks,
        )
    return dz, d_alpha
