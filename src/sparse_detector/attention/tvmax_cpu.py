"""The 2-D TV prox of TVMax on the CPU: the FISTA of :mod:`.tvmax` run per map in compiled loops (numba), finished
exactly from the groups of equal values it has found; for TVMax, the exact minimum cuts of :mod:`.tvmax_support`
(from zero duals at peaked scores, else from FISTA's after ``CUTS_AT`` iterations), FISTA going on for the maps
they decline (near-uniform scores).

Written by hand for the same reason as :mod:`.entmax_cpu` (no maintained library solves a batch of small 2-D TV
proxes on CPU tensors): the batched tensor version streams every iterate of all maps through memory, while one map's
state fits in the CPU cache. The step, restart rule, stopping test and tolerance are those of :func:`.tvmax._tv_prox`
(see there); maps are split over ``torch.get_num_threads()`` threads.

Precision: FISTA iterates in float32 (16 SIMD lanes, ~1.5× faster per iteration than float64) until its gap comes
within ``SWITCH_GAP`` float32 tolerances (float32's rounding floor of the gap is near there), then goes on in float64;
every gap that stops a map is computed in float64 from duals clipped to the float64 bounds, so the stated tolerance
holds for float64 scores too.

Layout: a map's cells are row-major, c = row·W + col; the dual of the edge (c − 1, c) is ``h[c]`` and that of
(c − W, c) is ``v[c]``, so every edge belongs to the cell it enters, and a bound of 0 marks the edges that do not
exist (first column, first row, masked cells). Dual arrays have W zero entries past the last cell and x is stored
W entries in, so that every loop over the cells is one branch-free loop of fixed offsets that LLVM vectorises;
each loop touches few arrays (a loop over more than ~8 pairs of possibly-aliasing arrays is left scalar) and indexes
slices with the loop counter alone (an offset index compiles to gathers, for negative-index wrap-around).

Finish: FISTA identifies the groups of equal prox values long before its iterate meets the tolerance (edges whose
dual is strictly inside [−λ, λ] join their cells). Given the groups, the prox is exact in closed form (each group's
mean of z − Dᵀu over the jump edges' duals ±λ), and a dual w that certifies it is found along a spanning tree of each
group: the other edges keep FISTA's duals, the tree edges carry the rest of each group's residual (leaves first).
The trees are made of the edges with the most room to their bound (Prim's algorithm over classes of room), so that
their duals rarely overflow. If every tree dual is within its bound, the duality gap of the group means x̂ and w
(:func:`_finish_gap`, exactly 0 on the edges inside groups) is evaluated; the map returns x̂ if that gap is within
the tolerance, otherwise FISTA goes on. The finish is tried at iteration 10 if ``SPARSE_GROUPS`` of the edges are at
their bound (mostly lone cells: a cheap try), at each gap check within ``FINISH_GAP`` tolerances, and at a check
whose saturated edges (and signs) are those of the last one while the attempts stay within the iterations' cost
(``FINISH_COST``): where λ is large against the scores' spread, the few large groups settle long before FISTA's gap
nears the tolerance. Mean iterations per map on 25 × 34 grids, float32 scores (the plain prox, step 1.3/8):
λ = 0.1: ~13, ~29 and ~227 at N(0, 3²), N(0, 1), N(0, 0.1²) (~31, ~57 and ~490 with FISTA's own gap test alone
and step 1/8); N(0, 0.1²) at λ = 0.3, 1, 3: ~100, ~55, 40 (~450–500 before the settled-edges tries;
benchmarks/RESULTS.md).
A gap of x̂ with FISTA's own duals (no tree) would certify near-uniform maps sooner still, but it also passes groups
that FISTA has wrongly merged, off by up to 2e-4 in float32; it is used only at FISTA's exit (see there).
"""

from __future__ import annotations

import math

import numba
import numpy as np
import torch
from torch import Tensor

from . import (
    numba_cache,  # noqa: F401  (before the kernels: where numba may cache them)
    tvmax_support,
)
from .entmax_cpu import chunk, row_of, threads_and_chunks
from .tvmax_support import no_refcounts
from .vector_math import bitcast

# Sums may be reordered (so that the reductions vectorise); NaN and infinity keep their meaning.
FASTMATH = {"reassoc", "contract", "nsz", "arcp"}
STEP = 1.3 / 8  # FISTA's step on the dual (also the tensor path's): ‖DDᵀ‖ ≤ 8 on a 4-neighbour grid, and momentum
# steps stay stable for step·‖DDᵀ‖ < 4/3 (on a quadratic, Nesterov's iteration with momentum β is stable for
# step·L < 1 + 1/(1 + 2β)); 1.3/8 takes 10–16 % fewer iterations than 1/8, 1.4/8 diverges on some grids
no_refcounts_fastmath = numba.njit(cache=True, nogil=True, fastmath=FASTMATH, _nrt=False)  # see tvmax_support
SPARSE_GROUPS = 0.93  # the finish is tried at iteration 10 only when this share of the edges is at its bound
COLD_NEAR, COLD_CUTS = 32, 32  # TVMax's cuts (tvmax_support) start from zero duals when at most COLD_NEAR
# scores are within 1 of the top and COLD_CUTS above t0,
CUTS_AT = 10  # else from FISTA's duals after this many iterations
TIES = 256  # prox values within TIES·eps·(1 + max|x|) of each other are one group's (the backward's groups)
ROOM_CLASSES = 8  # the finish's spanning trees prefer edges with room to their bound, in these classes (halvings)
FIRST_FINISH = 10  # an early attempt at the exact finish, when SPARSE_GROUPS of the edges are at their bound ...
FINISH_GAP = 512  # ... later ones at each gap check within this many tolerances (of 512 … 32768, measured best),
FINISH_COST = 37  # and when the saturated edges are unchanged since the last check, while the attempts so far cost
# at most as much as the iterations (an attempt ≈ this many iterations on a near-uniform 25 × 34 map: 16.5 / 0.45 µs)
F32_EPS = float(np.finfo(np.float32).eps)
SWITCH_GAP = 16  # FISTA goes on in float64 below this many float32 tolerances eps32·(1 + max|z|)² (float32's
# rounding floor is near: measured ~1e-6, i.e. 4 tolerances, at N(0, 0.1²) scores on 25 × 34) ...
STALLED_CHECKS = 50  # ... or after this many gap checks without halving the gap (a safety net)


@no_refcounts_fastmath
def _copy(source: np.ndarray, target: np.ndarray) -> None:
    """target[:] = source, as a loop (a slice assignment needs reference counting)."""
    for c in range(source.shape[0]):
        target[c] = source[c]


@no_refcounts_fastmath
def _primal(z: np.ndarray, h: np.ndarray, v: np.ndarray, width: int, x: np.ndarray) -> None:
    """x = z − Dᵀu (x stored ``width`` entries in)."""
    n = z.shape[0]
    x_c, h_right, v_down = x[width : width + n], h[1 : n + 1], v[width : width + n]  # slices: no gathers
    for c in range(n):
        x_c[c] = z[c] + h[c] - h_right[c] + v[c] - v_down[c]


@no_refcounts_fastmath
def _dual_step(
    x: np.ndarray, v: np.ndarray, bound: np.ndarray, offset: int, width: int, step: float, new: np.ndarray
) -> None:
    """new = clip(v + step·Dx, −bound, bound) on one direction's edges (``step``: see ``STEP``); ``offset`` =
    width − the edges' cell step."""
    n = bound.shape[0]
    x_from, x_to = x[offset : offset + n], x[width : width + n]
    for c in range(n):
        new[c] = min(max(v[c] + (x_from[c] - x_to[c]) * step, -bound[c]), bound[c])


@no_refcounts_fastmath
def _against(u: np.ndarray, v: np.ndarray, new: np.ndarray, cells: int) -> float:
    """⟨v − new, new − u⟩: positive when the step goes against the last move (restart the momentum)."""
    total = 0.0
    for c in range(cells):
        total += (v[c] - new[c]) * (new[c] - u[c])
    return total


@no_refcounts_fastmath
def _extrapolate(u: np.ndarray, new: np.ndarray, beta: float, cells: int, v: np.ndarray) -> None:
    """v = new + β(new − u)."""
    for c in range(cells):
        v[c] = new[c] + beta * (new[c] - u[c])


@no_refcounts_fastmath
def _gap_part(x: np.ndarray, u: np.ndarray, bound: np.ndarray, offset: int, width: int) -> float:
    """Σ_e (bound_e |(Dx)_e| − u_e (Dx)_e) over one direction's edges: its part of the duality gap."""
    n = bound.shape[0]
    x_from, x_to = x[offset : offset + n], x[width : width + n]
    total = 0.0
    for c in range(n):
        d = x_from[c] - x_to[c]
        total += bound[c] * abs(d) - u[c] * d
    return total


@no_refcounts
def _gap(
    z: np.ndarray, h: np.ndarray, v: np.ndarray, b_h: np.ndarray, b_v: np.ndarray, width: int, x: np.ndarray
) -> float:
    """x = z − Dᵀu and the duality gap of (x, u), which certifies ‖x − x*‖₂ ≤ √(2·gap) when |u| ≤ bound."""
    _primal(z, h, v, width, x)
    return _gap_part(x, h, b_h, width - 1, width) + _gap_part(x, v, b_v, 0, width)


@no_refcounts_fastmath
def _saturated(u: np.ndarray, bound: np.ndarray) -> int:
    """How many edges have their dual at a bound > 0."""
    count = 0
    for c in range(bound.shape[0]):
        count += abs(u[c]) >= bound[c] and bound[c] > 0.0
    return count


@no_refcounts_fastmath
def _saturation_key(u: np.ndarray, bound: np.ndarray) -> float:
    """Σ (c + 1)·sign(u_c) over the edges at their bound: equal for equal sets of saturated edges and signs (and
    rarely otherwise)."""
    key = 0.0
    for c in range(bound.shape[0]):
        at = abs(u[c]) >= bound[c] and bound[c] > 0.0
        key += (c + 1.0) * (1.0 if u[c] > 0.0 else -1.0) if at else 0.0
    return key


@numba.njit(cache=True, nogil=True, inline="always")
def _room_class(u: float, bound: float) -> int:
    """About log2(bound / (bound − |u|)), an edge's room to its bound in halvings (from the float64 exponents, no
    division): 0 for the most room, at most ``ROOM_CLASSES`` − 1."""
    halvings = (bitcast(bound) >> 52) - (bitcast(bound - abs(u)) >> 52)  # both > 0: no sign bit
    return min(max(halvings, 0), ROOM_CLASSES - 1)


@numba.njit(cache=True, nogil=True, inline="always")
def _offer(code: int, u: float, bound: float, links: np.ndarray, count: int, lowest: int) -> tuple[int, int]:
    """Put the edge ``code`` (see :func:`_groups`) on the list of its room class; returns the new count and the
    lowest class that may hold an edge."""
    room = _room_class(u, bound)
    head = links.shape[1] - ROOM_CLASSES + room
    links[0, count] = code
    links[1, count] = links[0, head]
    links[0, head] = count
    return count + 1, min(lowest, room)


@numba.njit(cache=True, nogil=True, inline="always")
def _ends(code: int, width: int) -> tuple[int, int]:
    """(the cell an edge ``code`` reaches, the cell it comes from): see :func:`_groups`."""
    e, kind = code >> 2, code & 3  # code ≥ 0: the shifts of // 4 and % 4 without their sign branches
    step = 1 if kind < 2 else width
    return (e - step, e) if kind & 1 == 0 else (e, e - step)


@no_refcounts_fastmath
def _mark_joined(u_h: np.ndarray, u_v: np.ndarray, b_h: np.ndarray, b_v: np.ndarray, width: int, mark: np.ndarray):
    """mark[c] = 1 where cell c has an edge with |u| < bound (is not alone in its group), else 0."""
    n = mark.shape[0]
    for c in range(n):  # the edges entering c ...
        mark[c] = 1.0 if abs(u_h[c]) < b_h[c] or abs(u_v[c]) < b_v[c] else 0.0
    left, u_right, b_right = mark[: n - 1], u_h[1:n], b_h[1:n]  # ... and those leaving it
    for c in range(n - 1):
        left[c] = 1.0 if abs(u_right[c]) < b_right[c] else left[c]
    up, u_down, b_down = mark[: n - width], u_v[width:n], b_v[width:n]
    for c in range(n - width):
        up[c] = 1.0 if abs(u_down[c]) < b_down[c] else up[c]


@no_refcounts
def _groups(
    u_h: np.ndarray,
    u_v: np.ndarray,
    b_h: np.ndarray,
    b_v: np.ndarray,
    width: int,
    mark: np.ndarray,
    parent: np.ndarray,
    tree_edge: np.ndarray,
    order: np.ndarray,
    links: np.ndarray,
) -> int:
    """Spanning trees of the groups of two or more cells joined by edges with |u| < bound, made of the edges with
    the most room to their bound (Prim's algorithm on the edges' room classes, :func:`_room_class`): the trees'
    duals then rarely overflow (near-uniform scores: certified after ~200 FISTA iterations instead of ~370 with
    breadth-first trees). Returns how many cells they hold. ``order`` lists those cells, each after its ``parent``
    (−1 for a group's first cell); ``tree_edge`` codes the edge to the parent as 4·e + k: k = 0 / 1 for h[e] with
    the cell as its first / second end, 2 / 3 for v[e]. Cells alone in their group (most of them at peaked scores)
    are skipped. ``links`` (2, 4·n + ``ROOM_CLASSES``) holds the lists of offered edges per class."""
    n = parent.shape[0]
    _mark_joined(u_h, u_v, b_h, b_v, width, mark)
    parent[:] = -2  # not reached yet
    heads = links.shape[1] - ROOM_CLASSES
    tail = 0
    for start in range(n):
        if mark[start] == 0.0 or parent[start] != -2:
            continue
        links[0, heads:] = -1
        count, lowest = 0, ROOM_CLASSES
        c, code = start, -1
        while True:
            parent[c] = -1 if code < 0 else _ends(code, width)[1]
            tree_edge[c] = code
            order[tail] = c
            tail += 1
            # offer c's edges with |u| < bound to cells not reached yet (a bound > 0: the neighbour exists)
            if abs(u_h[c]) < b_h[c] and parent[c - 1] == -2:
                count, lowest = _offer(4 * c, u_h[c], b_h[c], links, count, lowest)
            if c + 1 < n and abs(u_h[c + 1]) < b_h[c + 1] and parent[c + 1] == -2:
                count, lowest = _offer(4 * (c + 1) + 1, u_h[c + 1], b_h[c + 1], links, count, lowest)
            if abs(u_v[c]) < b_v[c] and parent[c - width] == -2:
                count, lowest = _offer(4 * c + 2, u_v[c], b_v[c], links, count, lowest)
            if c + width < n and abs(u_v[c + width]) < b_v[c + width] and parent[c + width] == -2:
                count, lowest = _offer(4 * (c + width) + 3, u_v[c + width], b_v[c + width], links, count, lowest)
            c = -1  # the next cell: the target of the offered edge with the most room that reaches a new cell
            while lowest < ROOM_CLASSES:
                entry = links[0, heads + lowest]
                if entry < 0:
                    lowest += 1
                    continue
                links[0, heads + lowest] = links[1, entry]
                code = links[0, entry]
                c = _ends(code, width)[0]
                if parent[c] == -2:
                    break
                c = -1
            if c < 0:
                break
    return tail


@no_refcounts
def _exact_dual(
    z: np.ndarray,
    u_h: np.ndarray,
    u_v: np.ndarray,
    b_h: np.ndarray,
    b_v: np.ndarray,
    width: int,
    w_h: np.ndarray,
    w_v: np.ndarray,
    need: np.ndarray,
    mean: np.ndarray,
    size: np.ndarray,
    parent: np.ndarray,
    tree_edge: np.ndarray,
    order: np.ndarray,
    links: np.ndarray,
) -> bool:
    """Duals w with z − Dᵀw constant on each group of u, that constant in ``mean`` (see the module's docstring);
    False when a tree edge would need more than its bound (``mean`` holds the group means either way)."""
    n = z.shape[0]
    grouped = _groups(u_h, u_v, b_h, b_v, width, size, parent, tree_edge, order, links)
    _copy(u_h, w_h)
    _copy(u_v, w_v)
    for k in range(grouped):
        code = tree_edge[order[k]]
        if code >= 0:
            (w_h if code % 4 < 2 else w_v)[code // 4] = 0.0
    _primal(z, w_h, w_v, width, need)  # z − Dᵀw without the tree edges (stored ``width`` in)
    need = need[width : width + n]
    _copy(need, mean)  # a cell alone in its group is its own mean
    for k in range(grouped):
        size[order[k]] = 1.0
    for k in range(grouped - 1, -1, -1):  # group sums and sizes gather at each group's first cell
        c = order[k]
        if parent[c] >= 0:
            mean[parent[c]] += mean[c]
            size[parent[c]] += size[c]
    for k in range(grouped):
        c = order[k]
        mean[c] = mean[c] / size[c] if parent[c] < 0 else mean[parent[c]]
    # each tree edge carries what its subtree still needs: (Dᵀw)_c = need_c − mean_c on every cell of a group
    for k in range(grouped - 1, -1, -1):
        c = order[k]
        code = tree_edge[c]
        if code < 0:
            continue
        e, kind = code // 4, code % 4
        excess = need[c] - mean[c]
        flow = excess if kind % 2 == 0 else -excess  # (Dx)_e = x_first − x_second: (Dᵀw)_first gets +w_e
        bounds, duals = (b_h, w_h) if kind < 2 else (b_v, w_v)
        if abs(flow) > bounds[e]:
            return False
        duals[e] = flow
        need[parent[c]] += excess
    return True


@no_refcounts
def _finish_gap(
    z: np.ndarray,
    w_h: np.ndarray,
    w_v: np.ndarray,
    b_h: np.ndarray,
    b_v: np.ndarray,
    width: int,
    mean: np.ndarray,
    x_hat: np.ndarray,
    x_w: np.ndarray,
) -> float:
    """The duality gap of the group means x̂ (``mean``, copied into ``x_hat``) and the duals w:
    P(x̂) − D(w) = Σ_e (bound_e |(Dx̂)_e| − w_e (Dx̂)_e) + ½‖z − Dᵀw − x̂‖², which bounds ½‖x̂ − x*‖² for any x̂.
    With x̂ exactly constant on the groups, the edges inside them add exactly 0 (no rounding noise)."""
    n = z.shape[0]
    _copy(mean, x_hat[width : width + n])
    _primal(z, w_h, w_v, width, x_w)
    residual = 0.0
    for c in range(n):
        residual += (x_w[width + c] - mean[c]) ** 2
    return _gap_part(x_hat, w_h, b_h, width - 1, width) + _gap_part(x_hat, w_v, b_v, 0, width) + 0.5 * residual


@no_refcounts_fastmath
def _clip(u: np.ndarray, bound: np.ndarray, out: np.ndarray) -> None:
    """out = clip(u, −bound, bound) in float64: a feasible dual, as the duality gap needs."""
    for c in range(bound.shape[0]):
        out[c] = min(max(u[c], -bound[c]), bound[c])


@no_refcounts
def _iterate(
    z: np.ndarray,
    b_h: np.ndarray,
    b_v: np.ndarray,
    width: int,
    x: np.ndarray,
    u_h: np.ndarray,
    u_v: np.ndarray,
    v_h: np.ndarray,
    v_v: np.ndarray,
    new_h: np.ndarray,
    new_v: np.ndarray,
    t: float,
    count: int,
    typed: np.ndarray,
) -> float:
    """``count`` FISTA iterations in the arrays' dtype from duals u, momentum point v (x = z − Dᵀv) and t; returns
    t. ``typed`` is a 1-element array of that dtype, for the constants."""
    n = z.shape[0]
    typed[0] = STEP
    step = typed[0]
    for _ in range(count):
        _dual_step(x, v_h, b_h, width - 1, width, step, new_h)
        _dual_step(x, v_v, b_v, 0, width, step, new_v)
        if _against(u_h, v_h, new_h, n) + _against(u_v, v_v, new_v, n) > 0.0:
            t = 1.0
        t_next = (1.0 + math.sqrt(1.0 + 4.0 * t * t)) / 2.0
        typed[0] = (t - 1.0) / t_next
        t = t_next
        _extrapolate(u_h, new_h, typed[0], n, v_h)
        _extrapolate(u_v, new_v, typed[0], n, v_v)
        u_h, new_h = new_h, u_h
        u_v, new_v = new_v, u_v
        _primal(z, v_h, v_v, width, x)
    if count % 2:  # the duals are in the caller's new arrays
        _copy(u_h, new_h)
        _copy(u_v, new_v)
    return t


@no_refcounts
def _prox_map(
    z_in: np.ndarray,
    bound: np.ndarray,
    bound32: np.ndarray,
    width: int,
    eps: float,
    max_iters: int,
    check_every: int,
    out: np.ndarray,
    work: np.ndarray,
    work32: np.ndarray,
    parent: np.ndarray,
    tree_edge: np.ndarray,
    order: np.ndarray,
    valid: np.ndarray,
    index: np.ndarray,
    stamp: int,
    links: np.ndarray,
) -> tuple[int, int]:
    """One map's prox into ``out``; returns (the next search stamp, see below; its FISTA iterations, or −1 if it
    stopped at ``max_iters`` above the tolerance). ``bound``
    (2, H·W) holds the edges' λ (``bound32`` in float32), ``work`` is (18, H·W + W) float64, ``work32``
    (9, H·W + W) float32, the others (H·W,) int64. With ``valid`` (H·W,) not empty, only what TVMax needs: the prox
    above a level t0 below sparsemax's threshold and −inf elsewhere, by :mod:`.tvmax_support` (from zero duals or
    FISTA's after ``CUTS_AT`` iterations; ``index``: its (10, H·W) int64 scratch, searched with ``stamp``);
    ``links``: the finish's (2, 4·H·W + ``ROOM_CLASSES``) int64 scratch."""
    n = z_in.shape[0]
    b_h, b_v, b32_h, b32_v = bound[0], bound[1], bound32[0], bound32[1]
    z, x_u, need, mean, size = work[0, :n], work[1], work[2], work[3, :n], work[4, :n]
    w_h, w_v, c_h, c_v, x_hat = work[5], work[6], work[7], work[8], work[16]  # clipped duals, the finish's
    x, u_h, u_v, v_h, v_v, new_h, new_v = work[9], work[10], work[11], work[12], work[13], work[14], work[15]
    z32, x32, u32_h, u32_v, v32_h, v32_v = work32[0, :n], work32[1], work32[2], work32[3], work32[4], work32[5]
    new32_h, new32_v = work32[6], work32[7]
    w_h[:] = 0.0
    w_v[:] = 0.0
    for c in range(n):
        z[c] = z_in[c]
    if valid.shape[0] and tvmax_support.near_top(z, valid) <= COLD_NEAR:  # TVMax: the cuts of
        solved, stamp = tvmax_support.prox_map(  # tvmax_support, from zero duals at peaked scores ...
            z, valid, bound, width, work[5:7, :n], out, work[1:3, :n], index, stamp, COLD_CUTS
        )
        if solved:
            return stamp, 0
    largest = 0.0
    for c in range(n):
        largest = max(largest, abs(z[c]))
    work32[1:8] = 0.0
    for c in range(n):
        z32[c] = z_in[c]
    tol = eps * (1.0 + largest) * (1.0 + largest)
    switch = SWITCH_GAP * F32_EPS * (1.0 + largest) * (1.0 + largest)
    _primal(z32, v32_h, v32_v, width, x32)
    t = 1.0
    single = True  # iterating in float32
    edges = _saturated(b_h, b_h) + _saturated(b_v, b_v)
    best, stalled = math.inf, 0
    it = attempts = 0
    last_saturated = math.nan
    if valid.shape[0]:
        # ... else from FISTA's duals after a few iterations
        t = _iterate(
            z32, b32_h, b32_v, width, x32, u32_h, u32_v, v32_h, v32_v, new32_h, new32_v, t, CUTS_AT, work32[8, :1]
        )
        it = CUTS_AT
        _clip(u32_h, b_h, w_h)
        _clip(u32_v, b_v, w_v)
        solved, stamp = tvmax_support.prox_map(
            z,
            valid,
            bound,
            width,
            work[5:7, :n],
            out,
            work[1:3, :n],
            index,
            stamp,
            int(n * tvmax_support.CROWDED),
        )
        if solved:
            return stamp, it
    while True:
        if single:
            _clip(u32_h, b_h, w_h)
            _clip(u32_v, b_v, w_v)
        else:
            _clip(u_h, b_h, w_h)
            _clip(u_v, b_v, w_v)
        gap = _gap(z, w_h, w_v, b_h, b_v, width, x_u)
        if gap <= tol or it >= max_iters:
            # the means of FISTA's groups where they are certified as well (a gap within FISTA's): exactly
            # constant on each group, so that the backward's ties find the groups that x splits by FISTA's error
            _exact_dual(z, w_h, w_v, b_h, b_v, width, c_h, c_v, need, mean, size, parent, tree_edge, order, links)
            snap_gap = _finish_gap(z, w_h, w_v, b_h, b_v, width, mean, x_hat, need)
            if snap_gap <= gap:
                x_u = x_hat
            if min(gap, snap_gap) > tol:
                it = -1  # stopped at the cap above the tolerance
            break
        lone = it == FIRST_FINISH and _saturated(w_h, b_h) + _saturated(w_v, b_v) >= SPARSE_GROUPS * edges
        saturated = _saturation_key(w_h, b_h) + 1e6 * _saturation_key(w_v, b_v)  # (a collision costs a try)
        settled = saturated == last_saturated and FINISH_COST * (attempts + 1) <= it
        last_saturated = saturated
        if lone or settled or gap <= FINISH_GAP * tol:
            attempts += 1
            if (
                _exact_dual(z, w_h, w_v, b_h, b_v, width, c_h, c_v, need, mean, size, parent, tree_edge, order, links)
                and _finish_gap(z, c_h, c_v, b_h, b_v, width, mean, x_hat, need) <= tol
            ):
                x_u = x_hat
                break
        stalled = 0 if gap < 0.5 * best else stalled + 1
        best = min(best, gap)
        if single and (gap <= switch or stalled >= STALLED_CHECKS):
            single = False
            _copy(w_h, u_h)
            _copy(w_v, u_v)
            for c in range(n + width):
                v_h[c] = v32_h[c]
                v_v[c] = v32_v[c]
            _primal(z, v_h, v_v, width, x)
        count = min(check_every, max_iters - it)
        if single:
            t = _iterate(
                z32, b32_h, b32_v, width, x32, u32_h, u32_v, v32_h, v32_v, new32_h, new32_v, t, count, work32[8, :1]
            )
        else:
            t = _iterate(z, b_h, b_v, width, x, u_h, u_v, v_h, v_v, new_h, new_v, t, count, work[17, :1])
        it += count
    for c in range(n):
        out[c] = x_u[width + c]
    return stamp, it


@numba.njit(parallel=True, cache=True, nogil=True)
def _prox(
    z: np.ndarray,
    bounds: np.ndarray,
    width: int,
    eps: float,
    max_iters: int,
    check_every: int,
    out: np.ndarray,
    chunks: int,
    valid: np.ndarray,
    weights: np.ndarray,
    iterations: np.ndarray,
) -> None:
    """The prox of each map into ``out`` (``bounds``: (N or 1, 2, n), see :func:`cell_bounds`) and its FISTA
    iterations into ``iterations`` (−1: stopped at ``max_iters`` above the tolerance); with ``valid`` (N or 1, n)
    not empty, TVMax's: the prox where sparsemax needs it (−inf elsewhere and on invalid cells) into ``out`` and its
    sparsemax into ``weights``."""
    maps, n = z.shape
    bounds32 = bounds.astype(np.float32)
    for c in numba.prange(chunks):
        work = np.zeros((18, n + width), np.float64)
        work32 = np.zeros((9, n + width), np.float32)
        parent = np.empty(n, np.int64)
        tree_edge = np.empty(n, np.int64)
        order = np.empty(n, np.int64)
        index = np.zeros((10, n), np.int64)
        links = np.empty((2, 4 * n + ROOM_CLASSES), np.int64)
        stamp = 1
        start, stop = chunk(c, maps, chunks)
        for m in range(start, stop):
            stamp, iterations[m] = _prox_map(
                z[m],
                row_of(bounds, m),
                row_of(bounds32, m),
                width,
                eps,
                max_iters,
                check_every,
                out[m],
                work,
                work32,
                parent,
                tree_edge,
                order,
                row_of(valid, m) if valid.shape[0] else valid.reshape(-1),
                index,
                stamp,
                links,
            )
            if valid.shape[0]:
                _sparsemax_row(out[m], row_of(valid, m), weights[m], work[0, :n], order)


@numba.njit(cache=True, nogil=True, inline="always")
def _visit(m: int, seen: np.ndarray, queue: np.ndarray, tail: int) -> int:
    """Queue cell m unless seen; returns the new tail."""
    if seen[m]:
        return tail
    seen[m] = True
    queue[tail] = m
    return tail + 1


@numba.njit(cache=True, nogil=True, inline="always")
def _joined(x: np.ndarray, c: int, j: int, bound: float, tol: float) -> bool:
    """Whether the grid edge (of ``bound``) between cells c and j joins them: equal prox values within ``tol``."""
    return bound > 0.0 and abs(x[c] - x[j]) <= tol


@no_refcounts
def _centre_on_support(
    grad: np.ndarray,
    weights: np.ndarray,
    everywhere: np.ndarray,
    out: np.ndarray,
    support: np.ndarray,
    kept: np.ndarray,
) -> int:
    """Sparsemax's backward: out = grad minus its mean over the support (weights > 0) there, 0 elsewhere. The
    support's cells go to ``support[:count]``; returns count (``everywhere``: all True, ``kept``: scratch)."""
    count = tvmax_support.gather_above(weights, everywhere, 0.0, support, kept)
    total = 0.0
    for k in range(count):
        total += grad[support[k]]
    mean = total / max(count, 1)
    out[:] = 0.0
    for k in range(count):
        out[support[k]] = grad[support[k]] - mean
    return count


@no_refcounts
def _group_mean_map(
    values: np.ndarray,
    x: np.ndarray,
    eps: float,
    b_h: np.ndarray,
    b_v: np.ndarray,
    width: int,
    out: np.ndarray,
    queue: np.ndarray,
    seen: np.ndarray,
    starts: np.ndarray,
) -> None:
    """One map's values averaged over the groups of 4-neighbours with equal prox values x (within
    ``TIES``·eps·(1 + max|x|)), into ``out``. Each group holding a nonzero value is filled breadth-first from it
    (``starts``: the cells that may hold one); the others average zeros (a sparsemax gradient is zero off its few
    support cells, so most of the grid is never visited; TVMax's −inf cells never join)."""
    n = values.shape[0]
    tol = TIES * eps * (1.0 + tvmax_support.largest_finite(x))
    out[:] = 0.0
    seen[:] = False
    for start in starts:
        if values[start] == 0.0 or seen[start]:
            continue
        seen[start] = True
        queue[0] = start
        head, tail, total = 0, 1, 0.0
        while head < tail:
            c = queue[head]
            head += 1
            total += values[c]
            if c > 0 and _joined(x, c, c - 1, b_h[c], tol):
                tail = _visit(c - 1, seen, queue, tail)
            if c + 1 < n and _joined(x, c, c + 1, b_h[c + 1], tol):
                tail = _visit(c + 1, seen, queue, tail)
            if c >= width and _joined(x, c, c - width, b_v[c], tol):
                tail = _visit(c - width, seen, queue, tail)
            if c + width < n and _joined(x, c, c + width, b_v[c + width], tol):
                tail = _visit(c + width, seen, queue, tail)
        for k in range(tail):
            out[queue[k]] = total / tail


@numba.njit(parallel=True, cache=True, nogil=True)
def _group_mean(
    values: np.ndarray,
    weights: np.ndarray,
    x: np.ndarray,
    eps: float,
    bounds: np.ndarray,
    width: int,
    out: np.ndarray,
    chunks: int,
) -> None:
    """Each map's values averaged over its groups of equal x (``bounds``: see :func:`cell_bounds`); with ``weights``
    (sparsemax's output) not empty, the values are first centred on their support (sparsemax's backward)."""
    maps, n = values.shape
    for c in numba.prange(chunks):
        queue = np.empty(n, np.int64)
        seen = np.empty(n, np.bool_)
        centred = np.empty(n, values.dtype)
        every_cell = np.arange(n)
        everywhere = np.ones(n, np.bool_)
        support = np.empty(n, np.int64)
        kept = np.empty(n, weights.dtype)
        start, stop = chunk(c, maps, chunks)
        for m in range(start, stop):
            bound = row_of(bounds, m)
            if weights.shape[0]:
                count = _centre_on_support(values[m], weights[m], everywhere, centred, support, kept)
                _group_mean_map(centred, x[m], eps, bound[0], bound[1], width, out[m], queue, seen, support[:count])
            else:
                _group_mean_map(values[m], x[m], eps, bound[0], bound[1], width, out[m], queue, seen, every_cell)


def group_mean(
    values: Tensor, x: Tensor, bounds: tuple[Tensor, Tensor], width: int, weights: Tensor | None = None
) -> Tensor:
    """Average each row of the CPU ``values`` (N, H·W) over its groups: 4-neighbours joined by an edge of bound > 0
    (``bounds``: (N or 1, edges) per direction) whose prox values x (N, H·W) are equal to rounding (see
    :func:`_group_mean_map`). With TVMax's ``weights``, its backward: the values (the gradient of the weights) are
    first centred on the weights' support (sparsemax's backward)."""
    out = torch.empty_like(values)
    if values.numel():
        cell = cell_bounds(bounds, values.shape[1], width)
        chunks = threads_and_chunks(values.shape[0])
        centre_on = np.zeros((0, 0), np.float64) if weights is None else weights.numpy()
        _group_mean(
            values.contiguous().numpy(),
            centre_on,
            x.contiguous().numpy(),
            torch.finfo(x.dtype).eps,
            cell.numpy(),
            width,
            out.numpy(),
            chunks,
        )
    return out


@no_refcounts
def _sparsemax_row(x: np.ndarray, valid: np.ndarray, weights: np.ndarray, values: np.ndarray, cells: np.ndarray):
    """weights = sparsemax(x) over the valid cells (x is set to −inf on the others, which FISTA's full prox may not
    have); ``values`` (float64), ``cells`` (int64) are (n,) scratch."""
    n = x.shape[0]
    undefined = False
    for c in range(n):
        x[c] = x[c] if valid[c] else -math.inf
        undefined |= x[c] != x[c] or x[c] == math.inf
    if undefined:  # a NaN or +inf score: the row is NaN, as every map's (not silently dropped)
        weights[:] = math.nan
        return
    top = tvmax_support.top_of(x, valid)
    count = tvmax_support.gather_above(x, valid, top - 1.0, cells, values)
    tau = tvmax_support.sparsemax_threshold(values, count, top - 1.0)[0]
    for c in range(n):
        weights[c] = x[c] - tau if x[c] > tau else 0.0  # (0 on a row without valid cells)


def cell_bounds(bounds: tuple[Tensor, Tensor], cells: int, width: int) -> Tensor:
    """The (N or 1, edges) bounds per direction as one (N or 1, 2, cells) float64 tensor in the per-cell layout:
    edge (c − 1, c) at [:, 0, c], (c − W, c) at [:, 1, c]."""
    bound_h, bound_v = bounds
    cell = bound_h.new_zeros(max(bound_h.shape[0], bound_v.shape[0]), 2, cells, dtype=torch.float64)
    cell[:, 0, 1:] = bound_h
    cell[:, 1, width:] = bound_v
    return cell


def _run(
    z: Tensor, bounds: tuple[Tensor, Tensor], width: int, max_iters: int, check_every: int, valid: Tensor | None
) -> tuple[Tensor, Tensor, np.ndarray]:
    """The prox (and with ``valid``, TVMax's prox and weights: see :func:`_prox`) of each row of the CPU z, and
    the FISTA iterations each took (0 where the cuts solved it from zero duals, −1 where it stopped at ``max_iters``
    above the tolerance)."""
    out = torch.empty_like(z)
    weights = torch.empty_like(z) if valid is not None else z.new_empty(0, 0)
    iterations = np.zeros(z.shape[0], np.int64)
    if z.numel():
        z = z.contiguous()
        cell = cell_bounds(bounds, z.shape[1], width)
        eps = torch.finfo(z.dtype).eps
        chunks = threads_and_chunks(z.shape[0])
        cells = np.zeros((0, 0), np.bool_) if valid is None else valid.contiguous().numpy()
        _prox(
            z.numpy(),
            cell.numpy(),
            width,
            eps,
            max_iters,
            check_every,
            out.numpy(),
            chunks,
            cells,
            weights.numpy(),
            iterations,
        )
    return out, weights, iterations


def prox(z: Tensor, bounds: tuple[Tensor, Tensor], width: int, max_iters: int, check_every: int) -> tuple[Tensor, int]:
    """prox of Σ_e bound_e |(Dx)_e| for each row of the CPU z (N, H·W); bounds are (N or 1, edges) per direction.
    Also returns how many maps stopped at ``max_iters`` above the tolerance."""
    x, _, iterations = _run(z, bounds, width, max_iters, check_every, None)
    return x, int((iterations < 0).sum())


def tvmax(
    z: Tensor, bounds: tuple[Tensor, Tensor], valid: Tensor, width: int, max_iters: int, check_every: int
) -> tuple[Tensor, Tensor, int]:
    """TVMax of each row of the CPU z (N, H·W) over its ``valid`` (N or 1, H·W) cells, the prox where it matters
    (the cells that can reach sparsemax's support; −inf elsewhere and on invalid cells), and how many maps stopped
    at ``max_iters`` above the tolerance: (weights, prox, count)."""
    x, weights, iterations = _run(z, bounds, width, max_iters, check_every, valid)
    return weights, x, int((iterations < 0).sum())
