"""TVMax: a direct constrained solve on small grids, λ = 0, gradients, padding and batching."""

from __future__ import annotations

import functools
import importlib
import warnings

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import ndimage, sparse
from scipy.optimize import linprog, lsq_linear, minimize
from scipy.sparse.csgraph import connected_components
from torch import Tensor
from torch.autograd import gradcheck

from sparse_detector.attention import KeyGrid, TVMax, functional, sparsemax, tvmax, tvmax_cpu


@pytest.fixture(autouse=True, params=["cpu-kernels", "tensor-ops"])
def implementation(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Every test runs on both implementations: the compiled CPU loops and the tensor operations used on GPUs."""
    monkeypatch.setattr(functional, "CPU_KERNELS", request.param == "cpu-kernels")
    return request.param


F64 = torch.float64
tensor_path = importlib.import_module("sparse_detector.attention.tvmax")  # the package's `tvmax` is the function


def _full_grid_bounds(height: int, width: int, lam: float, dtype: torch.dtype = F64) -> tuple[Tensor, Tensor]:
    """λ on every edge of a full height × width grid: the tensor path's (horizontal, vertical) edge bounds."""
    return tensor_path._edge_bounds(torch.ones(1, height * width, dtype=torch.bool), width, lam, dtype)


def _grid_difference(height: int, width: int) -> np.ndarray:
    """The (edges, cells) difference matrix D of the 4-neighbour grid."""
    edges = [(r * width + c, r * width + c + 1) for r in range(height) for c in range(width - 1)]
    edges += [(r * width + c, (r + 1) * width + c) for r in range(height - 1) for c in range(width)]
    diff = np.zeros((len(edges), height * width))
    for e, (i, j) in enumerate(edges):
        diff[e, i], diff[e, j] = 1.0, -1.0
    return diff


def _direct_tvmax(z: np.ndarray, height: int, width: int, lam: float) -> np.ndarray:
    """argmin_{p∈Δ} ½‖p − z‖² + λ‖Dp‖₁ as a smooth QP: Dp = a − b with a, b ≥ 0 (SLSQP)."""
    diff = _grid_difference(height, width)
    cells, edges = diff.shape[1], diff.shape[0]

    def objective(v: np.ndarray) -> float:
        return 0.5 * float(((v[:cells] - z) ** 2).sum()) + lam * float(v[cells:].sum())

    def gradient(v: np.ndarray) -> np.ndarray:
        return np.concatenate([v[:cells] - z, np.full(2 * edges, lam)])

    constraints = [
        {
            "type": "eq",
            "fun": lambda v: np.array([v[:cells].sum() - 1.0]),
            "jac": lambda v: np.concatenate([np.ones(cells), np.zeros(2 * edges)])[None],
        },
        {
            "type": "eq",
            "fun": lambda v: diff @ v[:cells] - v[cells : cells + edges] + v[cells + edges :],
            "jac": lambda v: np.hstack([diff, -np.eye(edges), np.eye(edges)]),
        },
    ]
    start = np.concatenate([np.full(cells, 1.0 / cells), np.zeros(2 * edges)])
    result = minimize(
        objective,
        start,
        jac=gradient,
        constraints=constraints,
        bounds=[(0.0, None)] * (cells + 2 * edges),
        method="SLSQP",
        options={"ftol": 1e-12, "maxiter": 1000},
    )
    assert result.success, result.message
    return result.x[:cells]


@pytest.mark.parametrize(("height", "width"), [(3, 4), (4, 4), (2, 5)])
@pytest.mark.parametrize("lam", [0.05, 0.2, 0.6])
def test_matches_direct_constrained_solve(height: int, width: int, lam: float) -> None:
    z = torch.randn(height * width, dtype=F64)
    ours = tvmax(z, (height, width), lam).numpy()
    assert np.abs(ours - _direct_tvmax(z.numpy(), height, width, lam)).max() <= 1e-4


def _scores(height: int, width: int, scale: float, seed: int, smooth: bool) -> np.ndarray:
    """N(0, scale²) scores on a height × width grid; ``smooth``: spatially correlated like an untrained DETR's
    cross-attention (white noise blurred over ~2 cells, then scaled to a standard deviation of ``scale``)."""
    noise = np.random.default_rng(seed).standard_normal(height * width)
    if not smooth:
        return noise * scale
    blurred = ndimage.gaussian_filter(noise.reshape(height, width), 2.0).ravel()
    return blurred / blurred.std() * scale


@functools.cache
def _exact_prox(
    height: int, width: int, lam: float, scale: float, seed: int, smooth: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    """Scores (:func:`_scores`) on a height × width grid and their prox_{λTV}, exact to rounding (≤ 1e-9), by a
    route independent of the implementation: an interior-point solve of the dual box-constrained least squares
    min ½‖z − Dᵀu‖², |u| ≤ λ (scipy's lsq_linear) gives the groups of equal values; on those groups the prox is
    closed form (each group's mean of z − Dᵀu with u = λ·sign(Dx) on the edges between groups); and a dual point
    on the edges inside the groups, found by linear programming (HiGHS) with |u| ≤ λ, certifies it optimal."""
    z = _scores(height, width, scale, seed, smooth)
    diff = sparse.csr_matrix(_grid_difference(height, width))
    guess = z - diff.T @ lsq_linear(diff.T, z, bounds=(-lam, lam), method="trf", tol=1e-13, lsmr_tol=1e-14).x
    jumps = diff @ guess
    fused = np.abs(jumps) <= 1e-7 * (1 + np.abs(z).max())
    ends = np.abs(diff[fused]).T @ np.abs(diff[fused])  # cells joined by a fused edge
    groups, labels = connected_components(ends, directed=False)
    between = np.where(fused, 0.0, lam * np.sign(jumps))
    target = z - diff.T @ between
    prox = (np.bincount(labels, target, groups) / np.bincount(labels, minlength=groups))[labels]
    exact_jumps = diff @ prox
    assert (np.sign(exact_jumps[~fused]) == np.sign(between[~fused])).all(), "groups not separated as guessed"
    if not fused.any():  # single cells: the prox is z − Dᵀu exactly
        return z, prox
    certificate = linprog(
        np.zeros(int(fused.sum())),
        A_eq=diff[fused].T,
        b_eq=target - prox,
        bounds=(-lam, lam),
        method="highs",
        options={"primal_feasibility_tolerance": 1e-10},
    )
    assert certificate.status == 0, certificate.message
    assert np.abs(diff[fused].T @ certificate.x - (target - prox)).max() <= 1e-9
    return z, prox


@pytest.mark.parametrize("scale", [0.1, 1.0, 3.0])  # near-uniform, normal and peaked attention scores
@pytest.mark.parametrize(("height", "width", "lam"), [(1, 34, 0.1), (3, 4, 0.3), (9, 13, 0.1), (25, 34, 0.1)])
def test_prox_matches_certified_exact_prox(
    height: int, width: int, lam: float, scale: float, implementation: str
) -> None:
    """The TV prox and TVMax in float64 within 1e-6 of the exact prox, up to DETR's 25 × 34 feature grid: a prox
    stopped before the stated tolerance fails here (so does, on the CPU, a finish taken without its gap test)."""
    z, exact = _exact_prox(height, width, lam, scale, seed=height * width)
    bounds = _full_grid_bounds(height, width, lam)
    prox = tensor_path.TVProxFunction.apply(torch.from_numpy(z)[None], *bounds, width)[0].numpy()
    assert np.abs(prox - exact).max() <= 1e-6
    # the stated stopping tolerance: a duality gap ≤ eps·(1 + max|z|)², which certifies ‖x − x*‖₂ ≤ √(2·gap)
    assert np.linalg.norm(prox - exact) <= (2 * torch.finfo(F64).eps) ** 0.5 * (1 + np.abs(z).max())
    ours = tvmax(torch.from_numpy(z), (height, width), lam)
    assert (ours - sparsemax(torch.from_numpy(exact))).abs().max() <= 1e-6
    if implementation == "cpu-kernels":  # finished from FISTA's groups: the exact prox up to rounding
        assert np.abs(prox - exact).max() <= 1e-12


@pytest.mark.parametrize(
    ("scale", "smooth", "cut"),
    [(0.1, False, False), (1.0, False, True), (3.0, False, True), (0.3, True, True), (0.5, True, True)],
)
@pytest.mark.parametrize("seed", [0, 1])
def test_tvmax_prox_is_exact_where_sparsemax_needs_it(scale: float, smooth: bool, cut: bool, seed: int) -> None:
    """What TVMax asks of the CPU prox (the cells that can reach sparsemax's support, found by minimum cuts; −inf
    elsewhere) is the exact prox there, and TVMax equals sparsemax of the exact prox, to rounding. Near-uniform
    scores (half the grid above the level) are left to FISTA: then the whole prox comes back."""
    height, width, lam = 25, 34, 0.1
    z, exact = _exact_prox(height, width, lam, scale, seed=seed, smooth=smooth)
    bounds = _full_grid_bounds(height, width, lam)
    valid = torch.ones(1, height * width, dtype=torch.bool)
    weights, x, uncertified = tvmax_cpu.tvmax(torch.from_numpy(z)[None], bounds, valid, width, 1000, 10)
    weights, x = weights[0].numpy(), x[0].numpy()
    assert uncertified == 0
    kept = np.isfinite(x)
    assert kept.all() != cut  # the cuts answered (or, near-uniform, FISTA did)
    assert np.abs(x[kept] - exact[kept]).max() <= 1e-12
    expected = sparsemax(torch.from_numpy(exact))
    assert (expected[torch.from_numpy(~kept)] == 0).all()
    assert (sparsemax(torch.from_numpy(x)) - expected).abs().max() <= 1e-12
    assert np.abs(weights - expected.numpy()).max() <= 1e-12
    assert (tvmax(torch.from_numpy(z), (height, width), lam) - expected).abs().max() <= 1e-12


@settings(max_examples=150, deadline=None)
@given(
    height=st.integers(1, 7),
    width=st.integers(1, 7),
    lam=st.sampled_from([0.02, 0.1, 0.4, 1.5]),
    scale=st.sampled_from([0.05, 0.5, 2.0, 8.0]),
    seed=st.integers(0, 2**16),
    masked=st.booleans(),
)
def test_tvmax_cut_path_matches_the_iterative_prox(
    height: int, width: int, lam: float, scale: float, seed: int, masked: bool
) -> None:
    """Small grids, ties of many kinds, masked keys: TVMax from the cuts (CPU) equals sparsemax of the tensor
    path's full prox (float64, within its stated tolerance)."""
    if not functional.CPU_KERNELS:
        return  # (compares the two implementations: runs once)
    generator = torch.Generator().manual_seed(seed)
    z = torch.randn(4, height * width, generator=generator, dtype=F64) * scale
    z[1] = torch.round(z[1])  # ties
    mask = (torch.rand(4, height * width, generator=generator) < 0.3) if masked else None
    ours = tvmax(z, (height, width), lam, mask=mask)
    functional.CPU_KERNELS = False
    try:
        reference = tvmax(z, (height, width), lam, mask=mask)
    finally:
        functional.CPU_KERNELS = True
    assert (ours - reference).abs().max() <= 1e-6


@pytest.mark.parametrize("scale", [0.1, 1.0, 3.0])
def test_float32_prox_within_its_stated_tolerance(scale: float) -> None:
    """float32 scores on DETR's 25 × 34 grid: the prox within the ℓ2 bound its stopping test states,
    √(2·eps32)·(1 + max|z|), of the exact prox (the CPU kernels iterate in float32, then certify in float64)."""
    z, exact = _exact_prox(25, 34, 0.1, scale, seed=25 * 34)
    bounds = _full_grid_bounds(25, 34, 0.1, torch.float32)
    prox = tensor_path.TVProxFunction.apply(torch.from_numpy(z).float()[None], *bounds, 34)[0].double().numpy()
    assert np.linalg.norm(prox - exact) <= (2 * torch.finfo(torch.float32).eps) ** 0.5 * (1 + np.abs(z).max())


def _cpu_bounds(cells: int, width: int, lam: float) -> tuple[np.ndarray, np.ndarray]:
    """λ on every edge of a full grid in the CPU kernels' per-cell layout: (horizontal, vertical) bounds."""
    bounds = tvmax_cpu.cell_bounds(_full_grid_bounds(cells // width, width, lam), cells, width)
    return bounds[0, 0].numpy(), bounds[0, 1].numpy()


def _finish_cpu(z: np.ndarray, duals: np.ndarray, width: int, lam: float) -> tuple[np.ndarray, list[float]]:
    """The CPU kernels' finish for duals in the order of :func:`_grid_difference`'s edges (moved to the kernels'
    per-cell layout): the means x̂ of the duals' groups, and the gaps that certify them, with the duals themselves
    (FISTA's exit) and, where its duals are within their bounds, with the spanning-tree dual."""
    n = z.shape[0]
    height = n // width
    duals_per_cell = np.zeros((2, n + width))
    duals_per_cell[0, :n].reshape(height, width)[:, 1:] = duals[: height * (width - 1)].reshape(height, width - 1)
    duals_per_cell[1, width:n] = duals[height * (width - 1) :]
    w_h, w_v = duals_per_cell
    b_h, b_v = _cpu_bounds(n, width, lam)
    tree_h, tree_v, need, x_hat, mean, size = np.zeros((6, n + width))
    parent, tree_edge, order = np.zeros((3, n), np.int64)
    links = np.zeros((2, 4 * n + tvmax_cpu.ROOM_CLASSES), np.int64)
    mean, size = mean[:n], size[:n]
    tree = tvmax_cpu._exact_dual(
        z, w_h, w_v, b_h, b_v, width, tree_h, tree_v, need, mean, size, parent, tree_edge, order, links
    )
    gaps = [tvmax_cpu._finish_gap(z, w_h, w_v, b_h, b_v, width, mean, x_hat, need)]
    if tree:
        gaps.append(tvmax_cpu._finish_gap(z, tree_h, tree_v, b_h, b_v, width, mean, x_hat, need))
    return x_hat[width : width + n], gaps


@pytest.mark.parametrize("scale", [0.1, 1.0])
@pytest.mark.parametrize("iterations", [10, 40, 120, 400])
def test_finish_gap_bounds_the_error_of_any_grouping(scale: float, iterations: int, implementation: str) -> None:
    """The finish (the means x̂ of the groups of a dual u's free edges) is accepted on its duality gap, which must
    bound ½‖x̂ − x*‖² whatever the groups: here the duals of projected gradient steps on the dual, whose groups are
    wrong early on (a gap without its ½‖z − Dᵀu − x̂‖² term accepts wrong merges and fails here)."""
    height, width, lam = 9, 13, 0.1
    z, exact = _exact_prox(height, width, lam, scale, seed=7)
    diff = _grid_difference(height, width)
    duals = np.zeros(diff.shape[0])
    for _ in range(iterations):
        duals = np.clip(duals + diff @ (z - diff.T @ duals) / 8, -lam, lam)
    if implementation == "cpu-kernels":
        snapped, gaps = _finish_cpu(z, duals, width, lam)
    else:
        bounds = _full_grid_bounds(height, width, lam)
        horizontal = torch.zeros(1, height * width - 1, dtype=F64)  # the tensor path's edges (c, c + 1) …
        horizontal[bounds[0] > 0] = torch.from_numpy(duals[: height * (width - 1)])  # … not across row ends
        u = (horizontal, torch.from_numpy(duals[height * (width - 1) :])[None])
        x = z - diff.T @ duals
        snapped, gap = tensor_path._snap_to_groups(
            torch.from_numpy(z)[None], torch.from_numpy(x)[None], u, bounds, (1, width)
        )
        snapped, gaps = snapped[0].numpy(), [float(gap)]
    assert all(0.5 * np.square(snapped - exact).sum() <= gap + 1e-15 for gap in gaps)


@pytest.mark.parametrize("seed", range(4))
def test_finish_trees_span_the_groups_with_the_most_room(seed: int, implementation: str) -> None:
    """The CPU finish's spanning trees: one per group of cells joined by edges with |u| < bound, each cell after its
    parent along such an edge, and a maximum spanning tree of the edges' room classes (every other joining edge
    has no more room than each tree edge on the tree path between its ends), so that the tree duals rarely
    overflow."""
    if implementation != "cpu-kernels":
        pytest.skip("the spanning trees are the CPU kernels' own")
    height, width, lam = 9, 13, 0.1
    n = height * width
    rng = np.random.default_rng(seed)
    b_h, b_v = _cpu_bounds(n, width, lam)
    duals = np.zeros((2, n + width))
    duals[:, :n] = np.where(rng.random((2, n)) < 0.4, lam, rng.uniform(-lam, lam, (2, n))) * np.sign(
        rng.random((2, n)) - 0.5
    )
    mark, (parent, tree_edge, order) = np.zeros(n), np.zeros((3, n), np.int64)
    links = np.zeros((2, 4 * n + tvmax_cpu.ROOM_CLASSES), np.int64)
    reached = tvmax_cpu._groups(duals[0], duals[1], b_h, b_v, width, mark, parent, tree_edge, order, links)
    joined = {}  # (cell, cell) → room class, for the edges with |u| < bound
    for c in range(n):
        for u, bound, other in ((duals[0, c], b_h[c], c - 1), (duals[1, c], b_v[c], c - width)):
            if abs(u) < bound:
                joined[min(c, other), max(c, other)] = tvmax_cpu._room_class(u, bound)
    graph = sparse.coo_matrix((np.ones(len(joined)), tuple(np.array(list(joined)).T)), shape=(n, n))
    _, labels = connected_components(graph, directed=False)
    grouped = {c for edge in joined for c in edge}
    assert sorted(order[:reached]) == sorted(grouped)
    position = {c: k for k, c in enumerate(order[:reached])}
    tree = {}
    for c in order[:reached]:
        if parent[c] >= 0:
            assert position[parent[c]] < position[c]
            assert tvmax_cpu._ends(tree_edge[c], width) == (c, parent[c])
            tree[c] = joined[min(c, parent[c]), max(c, parent[c])]
    assert sum(parent[c] < 0 for c in order[:reached]) == len({labels[c] for c in grouped})

    def path_to_root(c: int) -> list[int]:
        return [c] + (path_to_root(parent[c]) if parent[c] >= 0 else [])

    for (a, b), room in joined.items():
        up_a, up_b = path_to_root(a), path_to_root(b)
        meet = next(c for c in up_a if c in set(up_b))
        on_path = up_a[: up_a.index(meet)] + up_b[: up_b.index(meet)]
        assert all(tree[c] <= room for c in on_path), (a, b)


@pytest.mark.parametrize(("lam", "mean_iterations"), [(0.3, 110), (1.0, 65), (3.0, 40)])
def test_finish_is_tried_once_the_saturated_edges_settle(lam: float, mean_iterations: int, implementation: str) -> None:
    """Near-uniform scores under a larger λ (N(0, 0.1²), λ ≥ 3σ) fuse into a few large groups that FISTA finds
    early, while its own gap is still far above the tolerance: the CPU finish is also tried when the saturated edges
    are those of the last check (within a budget of attempts), so these maps are certified exact after ~40–110
    iterations (at FISTA's gap alone, as before, ~450–500)."""
    if implementation != "cpu-kernels":
        pytest.skip("the exact finish is the CPU kernels' own")
    height, width = 25, 34
    z, exact = _exact_prox(height, width, lam, 0.1, seed=3)
    scores = np.concatenate([z[None], np.random.default_rng(3).standard_normal((15, height * width)) * 0.1])
    bounds = _full_grid_bounds(height, width, lam)
    prox, _, iterations = tvmax_cpu._run(torch.from_numpy(scores), bounds, width, 1000, 10, None)
    assert np.abs(prox[0].numpy() - exact).max() <= 1e-12
    assert iterations.mean() <= mean_iterations, iterations


def test_a_failing_triton_kernel_falls_back_to_the_tensor_operations(monkeypatch: pytest.MonkeyPatch) -> None:
    """Where the optional Triton kernel fails (here: asked to run outside a GPU), one warning says so and the
    tensor operations give the same prox; the kernel is not tried again."""
    monkeypatch.setattr(tensor_path, "TRITON_FAILURES", [])
    monkeypatch.setattr(tensor_path, "_uses_triton", lambda z: not tensor_path.TRITON_FAILURES)
    z, exact = _exact_prox(9, 13, 0.1, 1.0, seed=9 * 13)
    with pytest.warns(RuntimeWarning, match="Triton kernel of the prox failed") as caught:
        prox = tensor_path._tv_prox(torch.from_numpy(z)[None], _full_grid_bounds(9, 13, 0.1), 13)[0].numpy()
    assert len(caught) == 1 and len(tensor_path.TRITON_FAILURES) == 1
    assert np.abs(prox - exact).max() <= 1e-6


def test_prox_stopped_at_its_cap_is_reported(monkeypatch: pytest.MonkeyPatch) -> None:
    """A map that reaches the iteration cap above the stated tolerance is named in a warning (with a cap of 20
    iterations, near-uniform scores), and its prox and TVMax still come back."""
    monkeypatch.setattr(tensor_path, "MAX_PROX_ITERS", 20)
    monkeypatch.setattr(tensor_path, "PROX_ITERS_PER_SIDE", 0)
    height, width, lam = 9, 13, 0.1
    z = torch.from_numpy(_scores(height, width, 0.1, seed=1, smooth=False))[None].repeat(3, 1)
    bounds = _full_grid_bounds(height, width, lam)
    message = r"3 of 3 maps on a 9 x 13 grid \(torch.float64\) stopped at the prox's iteration cap \(20 iterations\)"
    with pytest.warns(RuntimeWarning, match=message):
        prox = tensor_path.TVProxFunction.apply(z, *bounds, width)
    assert torch.isfinite(prox).all()
    with pytest.warns(RuntimeWarning, match="iteration cap"):
        weights = tvmax(z, (height, width), lam)
    assert torch.allclose(weights.sum(-1), torch.ones(3, dtype=F64))


def test_prox_iteration_cap_grows_with_the_grid(implementation: str) -> None:
    """DETR-DC5's 50 × 67 grid at COCO size, near-uniform for its λ (N(0, 1) scores, λ = 1), float64: every map
    meets the stated tolerance within the default cap, no warning (FISTA takes up to ~1100 iterations on these
    48 maps, so a cap of 1000, as on 25 × 34, fails here)."""
    height, width = 50, 67
    z = torch.from_numpy(np.random.default_rng(0).standard_normal((48, height * width)))
    bounds = _full_grid_bounds(height, width, 1.0)
    assert tensor_path.max_prox_iters(height, width) == 3350
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        tensor_path.TVProxFunction.apply(z, *bounds, width)


def test_fp32_matches_fp64() -> None:
    z = torch.randn(2, 3, 20, 5 * 7, dtype=F64)
    ours = tvmax(z.float(), (5, 7), 0.2)
    assert (ours.double() - tvmax(z, (5, 7), 0.2)).abs().max() <= 1e-5


def test_lambda_zero_is_sparsemax() -> None:
    z = torch.randn(2, 4, 6, 20, dtype=F64)
    assert (tvmax(z, (4, 5), 0.0) - sparsemax(z)).abs().max() <= 1e-12


def test_gradcheck_with_fused_groups() -> None:
    """Away from ties: the prox fuses neighbours into groups (equal output values) and gradients average over them."""
    x = torch.randn(2, 12, dtype=F64, requires_grad=True)
    out = tvmax(x, (3, 4), 0.3).detach().view(2, 3, 4)
    pairs = ((out[..., :-1], out[..., 1:]), (out[..., :-1, :], out[..., 1:, :]))
    equal_neighbours = [((a - b).abs() < 1e-9) & (a > 0) for a, b in pairs]
    assert sum(int(e.sum()) for e in equal_neighbours) > 0
    assert gradcheck(lambda v: tvmax(v, (3, 4), 0.3), (x,))
    mask = torch.zeros(2, 12, dtype=torch.bool)
    mask[1, 8:] = True
    assert gradcheck(lambda v: tvmax(v, (3, 4), 0.3, mask=mask), (x,))


@pytest.mark.parametrize(
    ("height", "width", "lam", "scale", "seeds"),
    [
        (8, 2, 0.01, 0.3, (0, 1, 2, 50, 155, 164, 533)),
        (8, 2, 0.01, 1.0, (0, 1, 122, 173, 228)),
        (9, 13, 0.1, 0.3, (0, 1, 2)),
    ],
)
def test_gradient_averages_over_the_exact_groups(
    height: int, width: int, lam: float, scale: float, seeds: tuple[int, ...]
) -> None:
    """The gradient is sparsemax's, then averaged over the exact prox's groups — also where FISTA stops at its
    tolerance before its groups are exact, so that its x differs inside a group by more than the ties' tolerance
    (the seeds past the first few: found among 1500 where the gradient was wrong before the prox was snapped to
    its groups, on the tensor path at 50, 155, 164, 122, 173, 228 and on the CPU path at 533)."""
    for seed in seeds:
        z, prox = _exact_prox(height, width, lam, scale, seed)
        diff = _grid_difference(height, width)
        fused = np.abs(diff @ prox) <= 1e-9
        _, labels = connected_components(np.abs(diff[fused]).T @ np.abs(diff[fused]), directed=False)
        upstream = np.random.default_rng(seed).standard_normal(height * width)
        weights = sparsemax(torch.from_numpy(prox), dim=-1).numpy()
        support = weights > 0
        centred = np.where(support, upstream - upstream[support].mean(), 0.0)
        expected = (np.bincount(labels, centred) / np.bincount(labels))[labels]
        scores = torch.from_numpy(z)[None].requires_grad_(True)
        (tvmax(scores, (height, width), lam) * torch.from_numpy(upstream)).sum().backward()
        assert np.abs(scores.grad[0].numpy() - expected).max() <= 1e-9, f"seed {seed}"


def test_group_means_agree_on_large_groups() -> None:
    """The breadth-first fill of the CPU kernels and the label propagation of the tensor path find the same groups
    of equal prox values."""
    height, width = 9, 13
    values = torch.randn(40, height * width, dtype=F64)
    bounds = tensor_path._edge_bounds(torch.rand(40, height * width) < 0.9, width, 0.1, F64)  # a few masked cells
    for levels in (40, 6, 2):  # prox values on few levels: from many small groups to a few spanning ones
        x = torch.randint(levels, (40, height * width)).to(F64) / levels
        fused = tuple((x[:, :-step] == x[:, step:]) & (b > 0) for step, b in zip((1, width), bounds, strict=True))
        expected = tensor_path._group_mean(values, fused, (1, width))
        assert (tvmax_cpu.group_mean(values, x, bounds, width) - expected).abs().max() <= 1e-12


def _padded(z: Tensor, valid_hw: tuple[int, int], padded_hw: tuple[int, int]) -> Tensor:
    """Place (..., h*w) scores into the top-left of a (..., H*W) grid filled with garbage."""
    (h, w), (height, width) = valid_hw, padded_hw
    grid = torch.randn(*z.shape[:-1], height, width, dtype=z.dtype) * 100
    grid[..., :h, :w] = z.view(*z.shape[:-1], h, w)
    return grid.flatten(-2)


def test_padded_grid_equals_cropped_grid() -> None:
    """A batch of images with different valid sizes on one padded grid equals each image on its cropped grid."""
    valid = [(3, 4), (5, 2), (0, 0)]
    heads, queries, padded_hw = 2, 3, (5, 6)
    crops = [torch.randn(heads, queries, h * w) for h, w in valid]
    scores = torch.stack([_padded(c, hw, padded_hw) for c, hw in zip(crops, valid, strict=True)])
    grid = KeyGrid(padded_hw, torch.tensor(valid))
    out = TVMax(lam=0.2)(scores, None, grid).view(len(valid), heads, queries, *padded_hw)
    for b, (h, w) in enumerate(valid):
        inside = out[b, ..., :h, :w].reshape(heads, queries, h * w)
        outside = torch.ones(padded_hw, dtype=torch.bool)
        outside[:h, :w] = False
        assert (out[b][..., outside] == 0).all()  # nothing outside the valid block
        if h * w:
            assert (inside - tvmax(crops[b], (h, w), 0.2)).abs().max() <= 1e-6
        else:
            assert (out[b] == 0).all()


def test_requires_key_grid_and_valid_arguments() -> None:
    with pytest.raises(ValueError, match="key_grid"):
        TVMax()(torch.randn(1, 1, 2, 6))
    with pytest.raises(ValueError, match="grid"):
        tvmax(torch.randn(2, 7), (2, 3), 0.1)
    with pytest.raises(ValueError, match="lam"):
        TVMax(lam=-1.0)
