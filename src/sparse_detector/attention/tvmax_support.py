"""TVMax's prox where TVMax needs it: exactly, on the cells above a level that the sparsemax support cannot go below,
by minimum cuts (numba, per map, CPU).

TVMax(z) = sparsemax(x*), x* = prox_{λTV}(z): only the cells of x* above sparsemax's threshold τ matter, and on
DETR's maps they are few (median 14 of 850 cells at an untrained DETR-R50's decoder cross-attention, 2–4 at peaked
scores). Three facts about the prox make them cheap to find exactly:

1. For any level t, the cells with x*_i > t are the smallest set S minimising Σ_{i∈S} (t − z_i) + Σ_{e∈∂S} λ_e, a
   minimum s–t cut in which cells with z_i > t hold the excess z_i − t, the others a deficit t − z_i, and each grid
   edge carries up to λ_e either way (Hochbaum 2001; Chambolle & Darbon 2009).
2. A level t0 ≤ τ is known before solving anything: Σ_i (x*_i − t)_+ = max_S Σ_{i∈S} (z_i − t) − Σ_{e∈∂S} λ_e, so
   any set S gives t_S = (Σ_S z_i − Σ_{e∈∂S} λ_e − 1) / |S| ≤ τ; t0 is the best t_S over the top cells of the
   start (z, or FISTA's iterate).
3. On S = {x* > t0} the prox is the prox of its own subgraph, with every edge leaving S taken out at its bound
   (z_i − λ_e for each such edge of i), because x* is above t0 inside and at most t0 outside. That prox is solved
   by divide and conquer over the same cuts: at a piece's mean value t the cut either splits the piece into
   {x* > t} and the rest, whose edges between them are then taken out the same way, or shows that the piece is one
   group at the value t. Each answer is a fact about the exact prox, so the recursion ends with it.

The output is x* on S and −inf elsewhere (the cells at or below t0 ≤ τ, which sparsemax sets to 0 either way), so
that sparsemax and the backward pass (which averages over groups of equal values inside the support) are those of
the full prox. Each cut is a maximum flow by Dinic's blocking flows from the cells in excess; near the top of a map
it stays among few cells. A map whose cut would reach too far (near-uniform scores: half the grid lies above
t0), or whose scores are not finite, is left to the iterative prox of :mod:`.tvmax_cpu` (the caller is told).

Layout as in :mod:`.tvmax_cpu`: cells row-major; an edge's bound and flow are ``[0, c]`` for the edge (c − 1, c),
``[1, c]`` for (c − W, c); a flow goes from the edge's first cell to its second. Written by hand: no library
computes small real-valued parametric cuts inside a compiled per-map loop.
"""

from __future__ import annotations

import math

import numba
import numpy as np

from . import numba_cache  # noqa: F401  (before the kernels: where numba may cache them)
from .vector_math import bitcast

NOT_ON_GRID = -1  # the piece of the cells outside the grid graph (masked keys)
CROWDED = 0.25  # a map with more of its cells near or above t0 than this share is left to the iterative prox, ...
TRIED_SETS = 64  # t0 is the best t_S over the sets of the top 1 … max(this, 2·|sparsemax(guess)'s support|) cells
REACH = 64  # ... and so is one whose cuts take more than REACH·(cells above t0) + 64 steps
MAGNITUDE_BITS = 2**63 - 1  # a float64's bits but its sign
GATHER_RUN = 64  # cells per run of gather_above

# The per-map loops allocate nothing and compile without reference counting (numba's `_nrt=False`, which numba's own
# allocation-free helpers use): with it, every array passed to a call or sliced costs two atomic operations — 58 %
# of the cuts' time on N(0, 1) maps, measured with perf (benchmarks/RESULTS.md).
no_refcounts = numba.njit(cache=True, nogil=True, _nrt=False)


@numba.njit(cache=True, nogil=True, inline="always")
def _neighbour(c: int, k: int, n: int, width: int) -> int:
    """The k-th (0–3: left, right, up, down) grid neighbour of c, or −1."""
    if k == 0:
        return c - 1 if c % width else -1
    if k == 1:
        return c + 1 if (c + 1) % width and c + 1 < n else -1
    if k == 2:
        return c - width if c >= width else -1
    return c + width if c + width < n else -1


@numba.njit(cache=True, nogil=True, inline="always")
def _edge(c: int, j: int, width: int) -> tuple[int, int, float]:
    """The edge between cell c and its neighbour j as (direction: 0 across, 1 down; its cell; +1 if c is its first
    cell, else −1): the flow from c to j is sign·flow[direction, cell], its room bound − sign·flow. Vertical
    first: on a one-column grid c ± 1 is one. (Scalars only: array arguments of helpers called per cell cost
    atomic reference counts in numba.)"""
    if j == c - width:
        return 1, c, -1.0
    if j == c + width:
        return 1, j, 1.0
    if j == c - 1:
        return 0, c, -1.0
    return 0, j, 1.0


@numba.njit(cache=True, nogil=True, inline="always")
def _order_key(x: float) -> int:
    """An int64 that orders as the float64 x does (NaNs aside): numba leaves a float max reduction scalar (~1 cycle
    per cell) but vectorises an integer one."""
    bits = bitcast(x)
    return bits ^ ((bits >> 63) & MAGNITUDE_BITS)


@numba.njit(cache=True, nogil=True, inline="always")
def _from_order_key(key: int) -> float:
    """The float64 of :func:`_order_key`'s ``key``."""
    return bitcast(key ^ ((key >> 63) & MAGNITUDE_BITS))


@no_refcounts
def top_of(values: np.ndarray, valid: np.ndarray) -> float:
    """The largest of ``values`` over the valid cells (−inf when none)."""
    lowest = _order_key(-math.inf)
    top = lowest
    for c in range(values.shape[0]):
        key = _order_key(values[c])
        top = max(top, key if valid[c] else lowest)
    return _from_order_key(top)


@no_refcounts
def count_above(values: np.ndarray, valid: np.ndarray, low: float) -> int:
    """How many valid cells have a value above ``low``."""
    count = 0
    for c in range(values.shape[0]):
        count += valid[c] and values[c] > low
    return count


@no_refcounts
def gather_above(values: np.ndarray, valid: np.ndarray, low: float, cells: np.ndarray, kept: np.ndarray) -> int:
    """The valid cells whose value is above ``low`` into ``cells[:count]`` (in order) and their values into
    ``kept[:count]``; returns count. By runs of GATHER_RUN cells: a vectorised count skips the runs without one
    (most of a map, where the cells above are its few top ones), branches take the others' cells (measured faster
    than a branch-free compaction from 3 to 500 cells above, of 850)."""
    n = values.shape[0]
    count = 0
    for start in range(0, n, GATHER_RUN):
        run, inside = values[start : start + GATHER_RUN], valid[start : start + GATHER_RUN]
        hits = 0
        for k in range(run.shape[0]):
            hits += inside[k] and run[k] > low
        if hits == 0:
            continue
        for k in range(run.shape[0]):
            if inside[k] and run[k] > low:
                cells[count] = start + k
                kept[count] = run[k]
                count += 1
    return count


@no_refcounts
def largest_finite(values: np.ndarray) -> float:
    """max |value| over the finite values (0 if none), on the bits as :func:`largest_magnitude`."""
    infinite = bitcast(math.inf)
    largest = 0
    for c in range(values.shape[0]):
        size = bitcast(values[c]) & MAGNITUDE_BITS
        largest = max(largest, size if size < infinite else 0)
    return bitcast(largest)


@no_refcounts
def largest_magnitude(values: np.ndarray, valid: np.ndarray) -> float:
    """max |value| over the valid cells: +inf or NaN when one of them is not finite, −1 when no cell is valid
    (vectorised on the bits: a non-negative float orders as its bits do)."""
    largest = -1
    for c in range(values.shape[0]):
        largest = max(largest, bitcast(values[c]) & MAGNITUDE_BITS if valid[c] else -1)
    return bitcast(largest) if largest >= 0 else -1.0


@no_refcounts
def _levels(sources, piece, p, excess, tiny, flow, bound, width, seen, stamp, level, arc, queue) -> tuple:
    """Breadth-first levels over piece p's edges with room, from the ``sources`` still in excess, up to the first
    level holding a cell short of flow. Returns (that level, or −1 when no such cell is reachable, and then
    ``queue[:count]`` is every cell reachable from an excess; count)."""
    n = piece.shape[0]
    tail = 0
    for s in sources:
        if excess[s] > tiny:
            seen[s] = stamp
            level[s] = 0
            arc[s] = 0
            queue[tail] = s
            tail += 1
    head, found = 0, -1
    while head < tail:
        c = queue[head]
        head += 1
        if found >= 0 and level[c] >= found:
            break
        if excess[c] < -tiny:  # a cell short of flow ends every path through it
            continue
        for k in range(4):
            j = _neighbour(c, k, n, width)
            if j < 0 or seen[j] == stamp or piece[j] != p:
                continue
            d, e, sign = _edge(c, j, width)
            if bound[d, e] - sign * flow[d, e] <= 0.0:
                continue
            seen[j] = stamp
            level[j] = level[c] + 1
            arc[j] = 0
            queue[tail] = j
            tail += 1
            if excess[j] < -tiny and found < 0:
                found = level[j]
    return found, tail


@no_refcounts
def _blocking_flow(sources, piece, p, excess, tiny, flow, bound, width, seen, stamp, level, arc, found, path):
    """Send flow from the sources along paths whose level rises by one per edge to cells short of flow at level
    ``found``, until no such path is left (Dinic's blocking flow, depth first with current arcs). Returns the
    number of steps taken."""
    n = piece.shape[0]
    steps = 0
    for s in sources:
        if seen[s] != stamp or level[s] != 0:
            continue
        depth = 0
        path[0] = s
        while excess[s] > tiny:
            steps += 1
            c = path[depth]
            if depth > 0 and excess[c] < -tiny:  # reached a shortfall: augment along the path
                amount = min(excess[s], -excess[c])
                for k in range(depth):
                    d, e, sign = _edge(path[k], path[k + 1], width)
                    amount = min(amount, bound[d, e] - sign * flow[d, e])
                for k in range(depth):
                    d, e, sign = _edge(path[k], path[k + 1], width)
                    flow[d, e] = min(max(flow[d, e] + sign * amount, -bound[d, e]), bound[d, e])
                excess[s] -= amount
                excess[c] += amount
                depth = 0
                continue
            advanced = False
            while arc[c] < 4:
                j = _neighbour(c, arc[c], n, width)
                if (
                    j >= 0
                    and seen[j] == stamp
                    and level[j] == level[c] + 1
                    and piece[j] == p
                    and (level[j] < found or excess[j] < -tiny)
                ):
                    d, e, sign = _edge(c, j, width)
                    if bound[d, e] - sign * flow[d, e] > 0.0:
                        depth += 1
                        path[depth] = j
                        advanced = True
                        break
                arc[c] += 1
            if advanced:
                continue
            level[c] = -1  # a dead end for this phase
            if depth == 0:
                break
            depth -= 1
            arc[path[depth]] += 1
    return steps


@no_refcounts
def _push_to_neighbours(sources, piece, p, excess, tiny, flow, bound, width) -> int:
    """Send each source's excess straight to its neighbours short of flow: the paths of one edge, which carry most
    of the flow near a map's top (a cell above t0 mostly borders cells far below it), without the levels.
    Returns the steps taken."""
    n = piece.shape[0]
    for s in sources:
        for k in range(4):
            j = _neighbour(s, k, n, width)
            if j < 0 or piece[j] != p or not excess[j] < -tiny:
                continue
            d, e, sign = _edge(s, j, width)
            amount = min(excess[s], -excess[j], bound[d, e] - sign * flow[d, e])
            if amount > 0.0:
                flow[d, e] = min(max(flow[d, e] + sign * amount, -bound[d, e]), bound[d, e])
                excess[s] -= amount
                excess[j] += amount
    return 4 * sources.shape[0]


@no_refcounts
def _cut(
    sources: np.ndarray,
    piece: np.ndarray,
    p: int,
    excess: np.ndarray,
    tiny: float,
    flow: np.ndarray,
    bound: np.ndarray,
    width: int,
    seen: np.ndarray,
    stamp: int,
    level: np.ndarray,
    arc: np.ndarray,
    queue: np.ndarray,
    path: np.ndarray,
    budget: int,
) -> tuple[int, int, int]:
    """Maximum flow in piece p from the cells in excess (``sources``) to those short of it (Dinic 1970: shortest
    paths by phases, after the one-edge paths); then the minimum cut's source side, the cells reachable from an
    excess left over, is ``queue[:size]``. Returns (size, the next unused stamp, the budget of steps left: < 0
    when it ran out)."""
    budget -= _push_to_neighbours(sources, piece, p, excess, tiny, flow, bound, width)
    while True:
        found, visited = _levels(sources, piece, p, excess, tiny, flow, bound, width, seen, stamp, level, arc, queue)
        budget -= visited
        if found < 0 or budget < 0:
            return visited, stamp + 1, budget
        budget -= _blocking_flow(
            sources, piece, p, excess, tiny, flow, bound, width, seen, stamp, level, arc, found, path
        )
        stamp += 1


@no_refcounts
def sparsemax_threshold(values: np.ndarray, count: int, tau: float) -> tuple[float, int]:
    """Sparsemax's threshold over ``values[:count]`` (all the values above ``tau`` ≤ it, e.g. max − 1), and how
    many lie above it (left first in ``values``): τ ← (Σ_{v > τ} v − 1) / #{v > τ} rises to it (Michelot 1986).
    Branch-free compaction: the values' order is random."""
    while True:
        total, kept = 0.0, 0
        for k in range(count):
            value = values[k]
            values[kept] = value
            inside = value > tau
            total += value if inside else 0.0
            kept += inside
        count = kept
        new = (total - 1.0) / kept if kept else tau
        if not new > tau:
            return tau, count
        tau = new


@no_refcounts
def _sift_down(heap: np.ndarray, size: int, root: int, values: np.ndarray) -> None:
    """Restore the max-heap ``heap[:size]`` of cells (ordered by ``values``) below ``root`` (heapsort's step, by
    hand: numba's sorts allocate, which these loops do not, so that they run without reference counting)."""
    while True:
        child = 2 * root + 1
        if child >= size:
            return
        if child + 1 < size and values[heap[child + 1]] > values[heap[child]]:
            child += 1
        if not values[heap[child]] > values[heap[root]]:
            return
        heap[root], heap[child] = heap[child], heap[root]
        root = child


@no_refcounts
def _sparsemax_level(z, guess, valid, bound, width: int, cells, values, seen, stamp: int) -> float:
    """A level t0 at or below the threshold τ of sparsemax(x*): for any set S of cells,
    t_S = (Σ_S z_i − Σ_{e∈∂S} λ_e − 1) / |S| ≤ τ (see the module's docstring). Returns the best t_S over the sets
    of the top k cells of ``guess`` (z, or an approximate prox), down to λ/2 below sparsemax(guess)'s threshold;
    −inf when those are crowded. ``cells`` (int64), ``values`` (float64) are (n,) scratch; ``seen`` marks the
    cells taken with ``stamp``."""
    n = z.shape[0]
    top = top_of(guess, valid)
    steepest = 0  # the largest bound, by its bits (as in largest_magnitude)
    for c in range(n):
        steepest = max(steepest, bitcast(bound[0, c]), bitcast(bound[1, c]))
    steepest = bitcast(steepest)
    # sparsemax(guess)'s support lies within 1 of the top; the sets tried, within λ/2 below its threshold
    count = gather_above(guess, valid, top - 1.0 - 0.5 * steepest, cells, values)
    tau, above = sparsemax_threshold(values, count, top - 1.0)
    band = 0
    for k in range(count):
        cells[band] = cells[k]
        band += guess[cells[k]] > tau - 0.5 * steepest
    if band > n * CROWDED:  # near-uniform scores (see prox_map)
        return -math.inf
    tried = min(band, max(TRIED_SETS, 2 * above))  # the sets of up to this many cells, taken from a heap
    for k in range(band // 2 - 1, -1, -1):
        _sift_down(cells, band, k, guess)
    total, boundary, best = 0.0, 0.0, -math.inf
    for k in range(tried):
        c = cells[0]  # the k-th largest
        band -= 1
        cells[0] = cells[band]
        _sift_down(cells, band, 0, guess)
        seen[c] = stamp
        total += z[c]
        for m in range(4):
            j = _neighbour(c, m, n, width)
            if j >= 0:
                d, e, _ = _edge(c, j, width)
                boundary += -bound[d, e] if seen[j] == stamp else bound[d, e]
        best = max(best, (total - boundary - 1.0) / (k + 1))
    return best


@no_refcounts
def _components(cells, piece, p, side, stamp, first_id, order, seg_start, seg_end, top, offset, width) -> tuple:
    """Give each connected part of piece p's ``cells`` that is all on one side (``side[c] == stamp`` or not) a new
    piece id from ``first_id`` on, write the cells part by part into ``order`` from ``offset`` and push the parts
    on the segment stack. Returns (the next unused id, the new stack top)."""
    n = piece.shape[0]
    tail = offset
    next_id = first_id
    for start in cells:
        if piece[start] != p:
            continue
        head = tail
        seg_start[top] = tail
        piece[start] = next_id
        order[tail] = start
        tail += 1
        upper = side[start] == stamp
        while head < tail:
            c = order[head]
            head += 1
            for k in range(4):
                j = _neighbour(c, k, n, width)
                if j >= 0 and piece[j] == p and (side[j] == stamp) == upper:
                    piece[j] = next_id
                    order[tail] = j
                    tail += 1
        seg_end[top] = tail
        top += 1
        next_id += 1
    return next_id, top


@no_refcounts
def near_top(z: np.ndarray, valid: np.ndarray) -> int:
    """How many valid scores lie within 1 of the top one (sparsemax(z)'s support is among them): few at peaked
    scores, where the cuts need no start."""
    return count_above(z, valid, top_of(z, valid) - 1.0)


@no_refcounts
def prox_map(
    z: np.ndarray,
    valid: np.ndarray,
    bound: np.ndarray,
    width: int,
    flow: np.ndarray,
    out: np.ndarray,
    work: np.ndarray,
    index: np.ndarray,
    stamp: int,
    most: int,
) -> tuple[bool, int]:
    """x* on the cells above t0 into ``out`` (−inf elsewhere) for one map whose ``valid`` cells form the grid (the
    others, masked keys, have no edges and stay −inf). ``bound`` (2, n) holds the edges' λ and ``flow`` (2, n) the
    edge duals to start from, within their bounds (zero, or a few FISTA iterations' duals: the closer to the
    prox's, the less flow is left to move), in the layout of :func:`_edge`; ``flow`` is overwritten. ``work`` is
    (2, n) float64 scratch, ``index`` (10, n) int64 scratch whose row 0 (search stamps) must hold values below
    ``stamp`` on entry. Maps with more than ``most`` cells above t0 are declined. Returns (whether the map was
    solved here, the next unused stamp)."""
    n = z.shape[0]
    excess, shifted = work[0], work[1]
    seen, level, queue, order, piece, sources, seg_start, seg_end, arc, path = (
        index[0],
        index[1],
        index[2],
        index[3],
        index[4],
        index[5],
        index[6],
        index[7],
        index[8],
        index[9],
    )
    largest = largest_magnitude(z, valid)
    if not largest < math.inf:  # NaN or infinite scores: left to the iterative prox
        return False, stamp
    if largest < 0.0:  # no cell on the grid
        return False, stamp
    tiny = 64.0 * np.finfo(np.float64).eps * (1.0 + largest)
    right, below = flow[0, 1:], flow[1, width:]
    for c in range(n):  # the start: x = z − Dᵀf
        piece[c] = 0 if valid[c] else NOT_ON_GRID
        out[c] = -math.inf
        excess[c] = z[c] + flow[0, c] + flow[1, c]
    for c in range(n - 1):
        excess[c] -= right[c]
    for c in range(n - width):
        excess[c] -= below[c]
    t0 = _sparsemax_level(z, excess, valid, bound, width, sources, shifted, seen, stamp)
    stamp += 1
    if t0 == -math.inf:
        return False, stamp
    for c in range(n):
        excess[c] -= t0
    count = gather_above(excess, valid, tiny, sources, shifted)
    if count > most:  # e.g. near-uniform scores: the cuts would reach across the grid
        return False, stamp
    budget = REACH * count + 64
    above, stamp, budget = _cut(
        sources[:count], piece, 0, excess, tiny, flow, bound, width, seen, stamp, level, arc, queue, path, budget
    )
    if budget < 0:
        return False, stamp
    # S = {x* > t0}: its edges to the rest leave at their bound, then its pieces are solved by divide and conquer
    marked = stamp
    stamp += 1
    for k in range(above):
        seen[queue[k]] = marked
    for k in range(above):
        c = queue[k]
        shifted[c] = z[c]
        for m in range(4):
            j = _neighbour(c, m, n, width)
            if j >= 0 and seen[j] != marked:
                d, e, _ = _edge(c, j, width)
                shifted[c] -= bound[d, e]
        piece[c] = -2
    next_id, top = _components(queue[:above], piece, -2, seen, marked, 1, order, seg_start, seg_end, 0, 0, width)
    while top > 0:
        top -= 1
        start, stop = seg_start[top], seg_end[top]
        cells = order[start:stop]
        p = piece[cells[0]]
        if stop - start == 1:
            out[cells[0]] = shifted[cells[0]]
            continue
        mean = 0.0
        for c in cells:
            mean += shifted[c]
        mean /= stop - start
        count = 0
        for c in cells:
            excess[c] = shifted[c] - mean
            if excess[c] > tiny:
                sources[count] = c
                count += 1
            flow[0, c] = 0.0
            flow[1, c] = 0.0
            if c + 1 < n:
                flow[0, c + 1] = 0.0
            if c + width < n:
                flow[1, c + width] = 0.0
        size, stamp, budget = _cut(
            sources[:count],
            piece,
            p,
            excess,
            tiny,
            flow,
            bound,
            width,
            seen,
            stamp,
            level,
            arc,
            queue,
            path,
            budget,
        )
        if budget < 0:
            return False, stamp
        if size == 0 or size == stop - start:  # one group (all of it above its mean is rounding)
            for c in cells:
                out[c] = mean
            continue
        upper = stamp
        stamp += 1
        for k in range(size):
            seen[queue[k]] = upper
        for k in range(size):  # the edges from {x* > mean} to the rest of the piece leave at their bound
            c = queue[k]
            for m in range(4):
                j = _neighbour(c, m, n, width)
                if j >= 0 and piece[j] == p and seen[j] != upper:
                    d, e, _ = _edge(c, j, width)
                    lam = bound[d, e]
                    shifted[c] -= lam
                    shifted[j] += lam
        for k in range(stop - start):  # (_components rewrites order, where cells lie)
            path[k] = cells[k]
        next_id, top = _components(
            path[: stop - start], piece, p, seen, upper, next_id, order, seg_start, seg_end, top, start, width
        )
    return True, stamp
