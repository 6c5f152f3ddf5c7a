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

Layout as in :mod:`.tvmax_cpu`: cells row-major, the edge (c − 1, c) is ``h[c]``, (c − W, c) is ``v[c]``; a flow
f on an edge goes from its first cell to its second. Written by hand: no library computes small real-valued
parametric cuts inside a compiled per-map loop.
"""

from __future__ import annotations

import math

import numba
import numpy as np

NOT_ON_GRID = -1  # the piece of the cells outside the grid graph (masked keys)
CROWDED = 0.25  # a map with more of its cells near or above t0 than this share is left to the iterative prox, ...
TRIED_SETS = 64  # t0 is the best t_S over the sets of the top 1 … max(this, 2·|sparsemax(guess)'s support|) cells
REACH = 64  # ... and so is one whose cuts take more than REACH·(cells above t0) + 64 steps


@numba.njit(cache=True, nogil=True, inline="always")
def _room(c: int, j: int, f_h: np.ndarray, f_v: np.ndarray, b_h: np.ndarray, b_v: np.ndarray, width: int) -> float:
    """How much more can flow from cell c to its neighbour j (vertical first: on a one-column grid c ± 1 is one)."""
    if j == c - width:
        return b_v[c] + f_v[c]
    if j == c + width:
        return b_v[j] - f_v[j]
    if j == c - 1:
        return b_h[c] + f_h[c]
    return b_h[j] - f_h[j]


@numba.njit(cache=True, nogil=True, inline="always")
def _send(
    c: int, j: int, amount: float, f_h: np.ndarray, f_v: np.ndarray, b_h: np.ndarray, b_v: np.ndarray, width: int
):
    """Add ``amount`` to the flow from c to its neighbour j (kept within the edge's bounds against rounding)."""
    if j == c - width:
        f_v[c] = max(f_v[c] - amount, -b_v[c])
    elif j == c + width:
        f_v[j] = min(f_v[j] + amount, b_v[j])
    elif j == c - 1:
        f_h[c] = max(f_h[c] - amount, -b_h[c])
    else:
        f_h[j] = min(f_h[j] + amount, b_h[j])


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


@numba.njit(cache=True, nogil=True)
def _levels(sources, piece, p, excess, tiny, f_h, f_v, b_h, b_v, width, seen, stamp, level, arc, queue) -> tuple:
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
            if j < 0 or seen[j] == stamp or piece[j] != p or _room(c, j, f_h, f_v, b_h, b_v, width) <= 0.0:
                continue
            seen[j] = stamp
            level[j] = level[c] + 1
            arc[j] = 0
            queue[tail] = j
            tail += 1
            if excess[j] < -tiny and found < 0:
                found = level[j]
    return found, tail


@numba.njit(cache=True, nogil=True)
def _blocking_flow(sources, piece, p, excess, tiny, f_h, f_v, b_h, b_v, width, seen, stamp, level, arc, found, path):
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
                    amount = min(amount, _room(path[k], path[k + 1], f_h, f_v, b_h, b_v, width))
                for k in range(depth):
                    _send(path[k], path[k + 1], amount, f_h, f_v, b_h, b_v, width)
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
                    and _room(c, j, f_h, f_v, b_h, b_v, width) > 0.0
                ):
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


@numba.njit(cache=True, nogil=True)
def _cut(
    sources: np.ndarray,
    piece: np.ndarray,
    p: int,
    excess: np.ndarray,
    tiny: float,
    f_h: np.ndarray,
    f_v: np.ndarray,
    b_h: np.ndarray,
    b_v: np.ndarray,
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
    paths by phases); then the minimum cut's source side, the cells reachable from an excess left over, is
    ``queue[:size]``. Returns (size, the next unused stamp, the budget of steps left: < 0 when it ran out)."""
    while True:
        found, visited = _levels(
            sources, piece, p, excess, tiny, f_h, f_v, b_h, b_v, width, seen, stamp, level, arc, queue
        )
        budget -= visited
        if found < 0 or budget < 0:
            return visited, stamp + 1, budget
        budget -= _blocking_flow(
            sources, piece, p, excess, tiny, f_h, f_v, b_h, b_v, width, seen, stamp, level, arc, found, path
        )
        stamp += 1


@numba.njit(cache=True, nogil=True, inline="always")
def _bound(c: int, j: int, b_h: np.ndarray, b_v: np.ndarray, width: int) -> float:
    """The bound λ_e of the edge between c and its neighbour j (0 when there is none; vertical first, as in
    :func:`_room`)."""
    if j == c - width:
        return b_v[c]
    if j == c + width:
        return b_v[j]
    if j == c - 1:
        return b_h[c]
    return b_h[j]


@numba.njit(cache=True, nogil=True)
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


@numba.njit(cache=True, nogil=True)
def _sparsemax_level(z, guess, piece, b_h, b_v, width: int, cells, values, seen, stamp: int) -> float:
    """A level t0 at or below the threshold τ of sparsemax(x*): for any set S of cells,
    t_S = (Σ_S z_i − Σ_{e∈∂S} λ_e − 1) / |S| ≤ τ (see the module's docstring). Returns the best t_S over the sets
    of the top k cells of ``guess`` (z, or an approximate prox), down to λ/2 below sparsemax(guess)'s threshold;
    −inf when those are crowded. ``cells`` (int64), ``values`` (float64) are (n,) scratch; ``seen`` marks the
    cells taken with ``stamp``."""
    n = z.shape[0]
    top, steepest = -math.inf, 0.0
    for c in range(n):
        if piece[c] != NOT_ON_GRID:
            top = max(top, guess[c])
            steepest = max(steepest, b_h[c], b_v[c])
    count = 0  # sparsemax(guess)'s support lies within 1 of the top; the sets tried, within λ/2 below its threshold
    lowest = top - 1.0 - 0.5 * steepest
    for c in range(n):  # (branch-free: the scores' order is random)
        cells[count] = c
        values[count] = guess[c]
        count += piece[c] != NOT_ON_GRID and guess[c] > lowest
    tau, above = sparsemax_threshold(values, count, top - 1.0)
    band = 0
    for k in range(count):
        cells[band] = cells[k]
        band += guess[cells[k]] > tau - 0.5 * steepest
    if band > n * CROWDED:  # near-uniform scores (see prox_map)
        return -math.inf
    tried = min(band, max(TRIED_SETS, 2 * above))  # the sets of up to this many cells (a partial sort)
    for k in range(band):
        values[k] = -guess[cells[k]]
    if tried < band:
        cutoff = np.partition(values[:band], tried - 1)[tried - 1]
        kept = 0
        for k in range(band):
            if values[k] <= cutoff and kept < tried:
                cells[kept] = cells[k]
                values[kept] = values[k]
                kept += 1
        band = kept
    order = cells[:band][np.argsort(values[:band])]
    total, boundary, best = 0.0, 0.0, -math.inf
    for k in range(band):
        c = order[k]
        seen[c] = stamp
        total += z[c]
        for m in range(4):
            j = _neighbour(c, m, n, width)
            if j >= 0:
                boundary += -_bound(c, j, b_h, b_v, width) if seen[j] == stamp else _bound(c, j, b_h, b_v, width)
        best = max(best, (total - boundary - 1.0) / (k + 1))
    return best


@numba.njit(cache=True, nogil=True)
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


@numba.njit(cache=True, nogil=True, fastmath={"reassoc", "nsz"})
def near_top(z: np.ndarray, valid: np.ndarray) -> int:
    """How many valid scores lie within 1 of the top one (sparsemax(z)'s support is among them): few at peaked
    scores, where the cuts need no start."""
    top = -math.inf
    for c in range(z.shape[0]):
        top = max(top, z[c] if valid[c] else -math.inf)
    count = 0
    for c in range(z.shape[0]):
        count += valid[c] and z[c] > top - 1.0
    return count


@numba.njit(cache=True, nogil=True)
def prox_map(
    z: np.ndarray,
    valid: np.ndarray,
    b_h: np.ndarray,
    b_v: np.ndarray,
    width: int,
    f_h: np.ndarray,
    f_v: np.ndarray,
    out: np.ndarray,
    work: np.ndarray,
    index: np.ndarray,
    stamp: int,
    most: int,
) -> tuple[bool, int]:
    """x* on the cells above t0 into ``out`` (−inf elsewhere) for one map whose ``valid`` cells form the grid (the
    others, masked keys, have no edges and stay −inf). f_h, f_v (n,) are edge duals to start from, within their
    bounds (zero, or a few FISTA iterations' duals: the closer to the prox's, the less flow is left to move), and
    are overwritten; ``work`` is (2, n) float64 scratch, ``index`` (10, n) int64 scratch whose row 0 (search stamps)
    must hold values below ``stamp`` on entry. Maps with more than ``most`` cells above t0 are declined. Returns
    (whether the map was solved here, the next unused stamp)."""
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
    largest = -1.0
    for c in range(n):
        piece[c] = 0 if valid[c] else NOT_ON_GRID
        out[c] = -math.inf
        if valid[c]:
            if not abs(z[c]) < math.inf:  # NaN or infinite scores: left to the iterative prox
                return False, stamp
            largest = max(largest, abs(z[c]))
    if largest < 0.0:  # no cell on the grid
        return False, stamp
    tiny = 64.0 * np.finfo(np.float64).eps * (1.0 + largest)
    for c in range(n):  # the start: x = z − Dᵀf
        excess[c] = (
            z[c] + f_h[c] + f_v[c] - (f_h[c + 1] if c + 1 < n else 0.0) - (f_v[c + width] if c + width < n else 0.0)
        )
    t0 = _sparsemax_level(z, excess, piece, b_h, b_v, width, sources, shifted, seen, stamp)
    stamp += 1
    if t0 == -math.inf:
        return False, stamp
    count = 0
    for c in range(n):  # (branch-free)
        excess[c] -= t0
        sources[count] = c
        count += piece[c] == 0 and excess[c] > tiny
    if count > most:  # e.g. near-uniform scores: the cuts would reach across the grid
        return False, stamp
    budget = REACH * count + 64
    above, stamp, budget = _cut(
        sources[:count], piece, 0, excess, tiny, f_h, f_v, b_h, b_v, width, seen, stamp, level, arc, queue, path, budget
    )
    if budget < 0:
        return False, stamp
    # S = {x* > t0}: its edges to the rest leave at their bound, then its pieces are solved by divide and conquer
    marked = stamp
    stamp += 1
    for k in range(above):
        seen[queue[k]] = marked
        order[k] = queue[k]
    for k in range(above):
        c = order[k]
        shifted[c] = z[c]
        for m in range(4):
            j = _neighbour(c, m, n, width)
            if j >= 0 and seen[j] != marked:
                shifted[c] -= _bound(c, j, b_h, b_v, width)
        piece[c] = -2
    next_id, top = _components(order[:above].copy(), piece, -2, seen, marked, 1, order, seg_start, seg_end, 0, 0, width)
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
            f_h[c] = 0.0
            f_v[c] = 0.0
            if c + 1 < n:
                f_h[c + 1] = 0.0
            if c + width < n:
                f_v[c + width] = 0.0
        size, stamp, budget = _cut(
            sources[:count],
            piece,
            p,
            excess,
            tiny,
            f_h,
            f_v,
            b_h,
            b_v,
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
                    lam = _bound(c, j, b_h, b_v, width)
                    shifted[c] -= lam
                    shifted[j] += lam
        next_id, top = _components(
            cells.copy(), piece, p, seen, upper, next_id, order, seg_start, seg_end, top, start, width
        )
    return True, stamp
