"""TVMax (Martins et al. 2020): sparsemax of the 2-D total-variation prox of the scores on the key grid.

TVMax(z) = argmin_{p∈Δ} ½‖p − z‖² + λ Σ_{4-neighbours} |p_i − p_j| = sparsemax(prox_{λTV}(z)), per query, on its key
row laid out as the (H, W) feature grid. Masked keys (padding) are removed from the grid graph: their edges are
dropped, so a padded grid gives the same map as the cropped one, and they get 0.

The anisotropic TV prox is iterative: FISTA with adaptive (gradient) restart on the edge duals u ∈ [−λ, λ]^E of
min ½‖z − Dᵀu‖², x = z − Dᵀu, step ``tvmax_cpu.STEP`` = 1.3/8 (‖D‖² ≤ 8 on a 4-neighbour grid), for all maps at once
(batch × heads × queries). A map stops at its stated tolerance: a duality gap
Σ_e (λ|(Dx)_e| − u_e(Dx)_e) ≤ eps·(1 + max|z|)², eps of the dtype, which certifies ‖x − x*‖₂ ≤ √(2·gap), i.e.
≤ 4.9e-4·(1 + max|z|) in float32 (measured 5e-7 to 9e-5 on 25 × 34 grids) and ≤ 2.1e-8·(1 + max|z|) in float64
(tested within 1e-6 of a certified exact prox); finished maps leave the working set. At most
:func:`max_prox_iters` iterations run (more on larger grids, where FISTA needs more); a map stopped there above
the tolerance is reported in a ``RuntimeWarning``. On CUDA devices, with Triton installed, the iterations between
two gap checks run as one kernel launch (:mod:`.tvmax_triton`, one program per map) instead of ~30 tensor operations
per iteration; the gap checks stay tensor operations. On the CPU the same iteration runs per map in compiled loops
(:mod:`.tvmax_cpu`), which keep each map in cache and finish it exactly, under the same gap test, from the groups of
equal values FISTA has found (measured on 25 × 34 grids: after 20–75 % of the iterations the gap test alone
needs). For TVMax itself the CPU computes only what sparsemax needs, exactly, by minimum cuts
(:mod:`.tvmax_support`): the prox on the cells above a level that sparsemax's threshold cannot go below (few cells
unless the scores are near-uniform; those maps take the FISTA route), −inf elsewhere; TVMax is exact there to
rounding (tested within 1e-12 of a certified exact prox).

Backward: sparsemax backward, then the prox Jacobian, which averages the gradient over the connected groups of
4-neighbours with equal prox values (equal within ``tvmax_cpu.TIES``·eps·(1 + max|x|)).
"""

from __future__ import annotations

import functools
import importlib.util
import warnings
from collections.abc import Callable

import torch
from torch import Tensor
from torch.autograd.function import FunctionCtx

from . import tvmax_cpu
from .base import AttentionActivation, KeyGrid
from .functional import NEG_INF, EntmaxFunction, check_inputs, compute_dtype, first_order_only, uses_cpu_kernels
from .registry import register_activation

MAX_PROX_ITERS = 1000  # iterations before a map stops above the tolerance: at least this many, ...
PROX_ITERS_PER_SIDE = 50  # ... and this many per cell of the grid's longer side (FISTA's count grows with it: up to
# ~610 on 25 × 34, ~1500 on 50 × 67, DETR-DC5's grid, and ~30 per cell in random tests; benchmarks/RESULTS.md)
CHECK_EVERY = 10  # iterations between duality-gap checks

# Maps are flattened row-major to (N, H·W) rows: the horizontal edges join entries 1 apart, the vertical ones
# entries W apart, so both difference operators are contiguous slices; edges that would wrap around a row end,
# or touch a masked cell, get a bound of 0.
Edges = tuple[Tensor, Tensor]  # (horizontal, vertical)


def max_prox_iters(height: int, width: int) -> int:
    """The iteration cap of the prox on a height × width grid."""
    return max(MAX_PROX_ITERS, PROX_ITERS_PER_SIDE * max(height, width))


def _report_uncertified(count: int, maps: int, z: Tensor, width: int, cap: int) -> None:
    """Warn that ``count`` of ``maps`` proxes stopped at the iteration cap above the stated tolerance (z: maps of
    that call, for their grid and dtype)."""
    if count:
        warnings.warn(
            f"TVMax: {count} of {maps} maps on a {z.shape[1] // width} x {width} grid ({z.dtype}) stopped at the "
            f"prox's iteration cap ({cap} iterations) above its stated tolerance (a duality gap <= "
            "eps*(1 + max|score|)^2), so their prox is less exact than stated; please report this with the grid, "
            "dtype and lambda",
            RuntimeWarning,
            stacklevel=3,
        )


def _cpu_kernel(kernel: Callable[..., tuple], z: Tensor, width: int, *inputs: object) -> tuple[Tensor, ...]:
    """:func:`.tvmax_cpu.prox` or :func:`.tvmax_cpu.tvmax` of z under the grid's iteration cap; the maps it
    stopped there above the tolerance are reported."""
    cap = max_prox_iters(z.shape[1] // width, width)
    *results, uncertified = kernel(z, *inputs, width, cap, CHECK_EVERY)
    _report_uncertified(uncertified, z.shape[0], z, width, cap)
    return tuple(results)


def _diff(x: Tensor, step: int) -> Tensor:
    """(Dx)_e = x_i − x_{i+step} on the edges of one direction."""
    return x[:, :-step] - x[:, step:]


def _primal(z: Tensor, duals: Edges, steps: tuple[int, int]) -> Tensor:
    """x = z − Dᵀu."""
    x = z.clone()
    for u, step in zip(duals, steps, strict=True):
        x[:, :-step] -= u
        x[:, step:] += u
    return x


def _edge_bounds(valid: Tensor, width: int, lam: float, dtype: torch.dtype) -> Edges:
    """λ on the grid edges between valid cells of (N, H·W) ``valid``, 0 on the others (and across row ends)."""
    in_row = torch.arange(valid.shape[1] - 1, device=valid.device) % width != width - 1
    horizontal = valid[:, :-1] & valid[:, 1:] & in_row
    vertical = valid[:, :-width] & valid[:, width:]
    return horizontal.to(dtype) * lam, vertical.to(dtype) * lam


def _edge_gap(x: Tensor, u: Edges, bounds: Edges, steps: tuple[int, int]) -> Tensor:
    """Σ_e (bound_e |(Dx)_e| − u_e (Dx)_e) per map (N, 1): the duality gap of (x, u) when x = z − Dᵀu."""
    return sum(
        (b * g.abs() - ui * g).sum(1, keepdim=True)
        for ui, b, g in zip(u, bounds, (_diff(x, s) for s in steps), strict=True)
    )


def _maps_of(bounds: Edges, which: Tensor) -> Edges:
    """The bounds of the maps ``which`` selects (bounds of one row are shared by all maps)."""
    return tuple(b[which] if b.shape[0] > 1 else b for b in bounds)


def _tv_prox(z: Tensor, bounds: Edges, width: int) -> Tensor:
    """prox of Σ_e bound_e |(Dx)_e| for each row of z (N, H·W); bounds are (N or 1, edges) per direction."""
    n = z.shape[0]
    steps = (1, width)
    eps = torch.finfo(z.dtype).eps
    out = torch.empty_like(z)
    maps = torch.arange(n, device=z.device)  # maps still iterating
    gap_tol = eps * (1 + z.abs().amax(1, keepdim=True)).square()
    cap = max_prox_iters(z.shape[1] // width, width)
    u = tuple(z.new_zeros(n, b.shape[1]) for b in bounds)
    v = u  # the extrapolated (momentum) point
    t = z.new_ones(n, 1)
    for it in (*range(0, cap, CHECK_EVERY), cap):  # gap checks
        x = _primal(z, u, steps)
        gap = _edge_gap(x, u, bounds, steps)
        done = (gap <= gap_tol).view(-1) if it < cap else torch.ones_like(maps, dtype=torch.bool)
        if bool(done.any()):
            snapped, snap_gap = _snap_to_groups(
                z[done], x[done], tuple(a[done] for a in u), _maps_of(bounds, done), steps
            )
            # the group means where certified as well (a gap within x's own; see _snap_to_groups)
            out[maps[done]] = torch.where(snap_gap <= gap[done], snapped, x[done])
            if it == cap:
                uncertified = torch.minimum(snap_gap, gap[done]) > gap_tol[done]
                _report_uncertified(int(uncertified.sum()), n, z, width, cap)
            keep = ~done
            if not bool(keep.any()):
                break
            maps, z, t, gap_tol = maps[keep], z[keep], t[keep], gap_tol[keep]
            u, v = tuple(a[keep] for a in u), tuple(a[keep] for a in v)
            bounds = _maps_of(bounds, keep)
        u, v, t = _fista_steps_on_device(z, u, v, t, bounds, width, tvmax_cpu.STEP, min(CHECK_EVERY, cap - it))
    return out


def _fista_steps(
    z: Tensor, u: Edges, v: Edges, t: Tensor, bounds: Edges, width: int, step: float, iterations: int
) -> tuple[Edges, Edges, Tensor]:
    """``iterations`` FISTA iterations of every map from the duals u, the momentum point v and t (N, 1)."""
    steps = (1, width)
    for _ in range(iterations):
        x = _primal(z, v, steps)
        new = tuple(
            torch.add(vi, _diff(x, s), alpha=step).clamp_(min=-b, max=b)
            for vi, s, b in zip(v, steps, bounds, strict=True)
        )
        moves = tuple(ni - ui for ni, ui in zip(new, u, strict=True))
        # restart the momentum of a map whose step goes against its last move: ⟨v − u⁺, u⁺ − u⟩ > 0
        # (O'Donoghue & Candès 2015)
        restart = (
            sum(
                torch.linalg.vecdot(vi, m) - torch.linalg.vecdot(ni, m) for vi, ni, m in zip(v, new, moves, strict=True)
            ).unsqueeze(1)
            > 0
        )
        t = torch.where(restart, 1.0, t)
        t_next = (1 + torch.sqrt(1 + 4 * t * t)) / 2
        beta = (t - 1) / t_next
        v = tuple(torch.addcmul(ni, beta, m) for ni, m in zip(new, moves, strict=True))
        u, t = new, t_next
    return u, v, t


def _uses_triton(z: Tensor) -> bool:
    """Whether FISTA's iterations of maps on z's device run as the Triton kernel: a CUDA device Triton supports
    (compute capability 7.0 or later) with Triton installed, unless the kernel has failed before."""
    return (
        z.is_cuda
        and not TRITON_FAILURES
        and _triton_installed()
        and torch.cuda.get_device_capability(z.device) >= (7, 0)
    )


@functools.cache
def _triton_installed() -> bool:
    return importlib.util.find_spec("triton") is not None


TRITON_FAILURES: list[str] = []  # why the Triton kernel failed, if it has: the tensor operations run instead


def _fista_steps_on_device(
    z: Tensor, u: Edges, v: Edges, t: Tensor, bounds: Edges, width: int, step: float, iterations: int
) -> tuple[Edges, Edges, Tensor]:
    """:func:`_fista_steps` as the Triton kernel (:mod:`.tvmax_triton`) where :func:`_uses_triton`, else as tensor
    operations. A kernel that fails to compile or launch (it is not run on every GPU and Triton version this
    package meets) is reported in a warning once and the tensor operations go on from the same iterate."""
    if _uses_triton(z):
        try:
            from .tvmax_triton import fista_steps

            return fista_steps(z, u, v, t, bounds, width, step, iterations)
        except Exception as err:  # noqa: BLE001 - any failure of the optional kernel falls back, reported
            TRITON_FAILURES.append(f"{type(err).__name__}: {err}")
            warnings.warn(
                f"TVMax: the Triton kernel of the prox failed ({TRITON_FAILURES[0][:300]}); its iterations run as "
                "tensor operations from now on (slower, the same results); please report this with your GPU and "
                "Triton version",
                RuntimeWarning,
                stacklevel=2,
            )
    return _fista_steps(z, u, v, t, bounds, width, step, iterations)


def _snap_to_groups(z: Tensor, x: Tensor, u: Edges, bounds: Edges, steps: tuple[int, int]) -> tuple[Tensor, Tensor]:
    """The prox of the groups FISTA's duals u have found, and its duality gap with u (N, 1): the cells joined by
    edges with |u| < bound take their group's mean x̂ of z − Dᵀu_jump (u on the other edges), the CPU path's finish
    without its spanning-tree dual; P(x̂) − D(u) = Σ_e (bound_e |(Dx̂)_e| − u_e (Dx̂)_e) + ½‖x − x̂‖² for
    x = z − Dᵀu. x̂ is exactly constant on its groups and the backward's ties find them; x differs inside a group by
    FISTA's error, which can split it there and give a wrong gradient. (Accepting x̂ as soon as this gap is within
    the tolerance, before x's own is, halves the iterations at near-uniform scores but also accepts groups that
    FISTA has wrongly merged, off by up to 2e-4 in float32: benchmarks/RESULTS.md.)"""
    free = tuple(ui.abs() < b for ui, b in zip(u, bounds, strict=True))
    jumps = tuple(torch.where(f, 0.0, ui) for f, ui in zip(free, u, strict=True))
    snapped = _group_mean(_primal(z, jumps, steps), free, steps)
    return snapped, _edge_gap(snapped, u, bounds, steps) + 0.5 * (x - snapped).square().sum(1, keepdim=True)


def _group_mean(values: Tensor, fused: Edges, steps: tuple[int, int]) -> Tensor:
    """Average ``values`` (N, H·W) over the connected groups of cells joined by fused edges.

    Connected components by min-label propagation with pointer jumping, all maps at once.
    """
    size = values.numel()
    labels = torch.arange(size, device=values.device).view(values.shape)
    while True:
        new = labels.clone()
        for joined, step in zip(fused, steps, strict=True):
            across = torch.where(joined, torch.minimum(labels[:, :-step], labels[:, step:]), size)
            new[:, :-step] = torch.minimum(new[:, :-step], across)
            new[:, step:] = torch.minimum(new[:, step:], across)
        new = new.view(-1)[new.view(-1)].view(values.shape)
        if torch.equal(new, labels):
            break
        labels = new
    flat = labels.view(-1)
    sums = values.new_zeros(size).index_add_(0, flat, values.reshape(-1))
    counts = torch.bincount(flat, minlength=size).to(values.dtype)
    return (sums / counts.clamp_(min=1)).index_select(0, flat).view(values.shape)


class TVProxFunction(torch.autograd.Function):
    """prox_{λTV} on (N, H·W) maps; the backward averages the gradient over the groups of equal prox values."""

    @staticmethod
    def forward(ctx: FunctionCtx, z: Tensor, bound_h: Tensor, bound_v: Tensor, width: int) -> Tensor:
        with torch.autocast(z.device.type, enabled=False):  # e.g. CPU autocast would run vecdot in bf16
            if uses_cpu_kernels(z):
                (x,) = _cpu_kernel(tvmax_cpu.prox, z, width, (bound_h, bound_v))
            else:
                x = _tv_prox(z, (bound_h, bound_v), width)
        ctx.save_for_backward(x, bound_h, bound_v)
        ctx.width = width
        return x

    @staticmethod
    @first_order_only
    def backward(ctx: FunctionCtx, grad: Tensor) -> tuple[Tensor, None, None, None]:
        x, *bounds = ctx.saved_tensors
        if uses_cpu_kernels(grad):  # groups found around the gradient's nonzeros only
            return tvmax_cpu.group_mean(grad, x, tuple(bounds), ctx.width), None, None, None
        steps = (1, ctx.width)
        tol = tvmax_cpu.TIES * torch.finfo(x.dtype).eps * (1 + x.abs().amax(1, keepdim=True))
        fused = tuple((_diff(x, s).abs() <= tol) & (b > 0) for s, b in zip(steps, bounds, strict=True))
        if not any(bool(f.any()) for f in fused):
            return grad, None, None, None
        return _group_mean(grad.contiguous(), fused, steps), None, None, None


class TVMaxCPUFunction(torch.autograd.Function):
    """TVMax on (N, H·W) CPU maps in one pass of compiled loops (:func:`.tvmax_cpu.tvmax`): the prox only where
    sparsemax needs it, and sparsemax; the backward is sparsemax's, then the average over the groups."""

    @staticmethod
    def forward(ctx: FunctionCtx, z: Tensor, bound_h: Tensor, bound_v: Tensor, valid: Tensor, width: int) -> Tensor:
        with torch.autocast(z.device.type, enabled=False):
            weights, x = _cpu_kernel(tvmax_cpu.tvmax, z, width, (bound_h, bound_v), valid)
        ctx.save_for_backward(weights, x, bound_h, bound_v)
        ctx.width = width
        return weights

    @staticmethod
    @first_order_only
    def backward(ctx: FunctionCtx, grad: Tensor) -> tuple[Tensor, None, None, None, None]:
        weights, x, *bounds = ctx.saved_tensors
        return tvmax_cpu.group_mean(grad, x, tuple(bounds), ctx.width, weights), None, None, None, None


def tvmax(x: Tensor, grid_hw: tuple[int, int], lam: float, dim: int = -1, mask: Tensor | None = None) -> Tensor:
    """TVMax along ``dim``, whose entries are a row-major ``grid_hw`` = (H, W) grid; ``lam`` ≥ 0 is the TV weight.

    ``mask`` (True = padding, broadcastable to ``x``) removes keys from the grid graph and gives them 0.
    """
    check_inputs(x, dim, mask)
    if len(grid_hw) != 2 or any(isinstance(n, bool) or not isinstance(n, int) or n < 0 for n in grid_hw):
        raise ValueError(f"tvmax: grid_hw must be the keys' grid (height, width), two ints >= 0, got {grid_hw!r}")
    height, width = grid_hw
    if x.shape[dim] != height * width:
        raise ValueError(f"tvmax: {x.shape[dim]} keys along dim {dim} do not form a {height}x{width} grid")
    check_lam(lam)
    if x.numel() == 0:
        return x.clone()
    z = x.to(compute_dtype(x.dtype)).movedim(dim, -1)
    shape = z.shape
    if mask is None:
        valid = torch.ones(1, height * width, dtype=torch.bool, device=z.device)
    else:
        mask = torch.broadcast_to(mask, x.shape).movedim(dim, -1)
        z = z.masked_fill(mask, 0.0)  # keeps the prox finite; these cells have no edges and are masked below
        valid = ~mask.reshape(-1, height * width)
    bound_h, bound_v = _edge_bounds(valid, width, lam, z.dtype)
    if uses_cpu_kernels(z):
        p = TVMaxCPUFunction.apply(z.reshape(-1, height * width), bound_h, bound_v, valid, width)
    else:
        prox = TVProxFunction.apply(z.reshape(-1, height * width), bound_h, bound_v, width).view(shape)
        if mask is not None:
            prox = prox.masked_fill(mask, NEG_INF)
        p = EntmaxFunction.apply(prox.reshape(-1, shape[-1]), 2.0)
    return p.view(shape).movedim(-1, dim).to(x.dtype)


def check_lam(lam: float) -> None:
    """TVMax's weight λ must be a number >= 0 (NaN gave uniform maps), and not one that asks for a gradient."""
    if isinstance(lam, Tensor) and lam.requires_grad:
        raise ValueError(
            "TVMax: lam is not differentiable (it would get no gradient and never move); pass a float, e.g. lam.item()"
        )
    if not lam >= 0:
        raise ValueError(f"TVMax: lam must be >= 0, got {lam}")


@register_activation("tvmax")
class TVMax(AttentionActivation):
    """TVMax over the keys laid out on the feature grid given by ``key_grid`` (required)."""

    needs_key_grid = True

    def __init__(self, lam: float = 0.1) -> None:
        super().__init__()
        check_lam(lam)
        self.lam = lam

    def forward(
        self, scores: Tensor, key_padding_mask: Tensor | None = None, key_grid: KeyGrid | None = None
    ) -> Tensor:
        self.check_inputs(scores, key_padding_mask)
        if key_grid is None:
            raise ValueError("TVMax needs key_grid: the keys' (H, W) feature-grid layout and valid sizes")
        height, width = key_grid.padded_hw
        valid_hw = key_grid.valid_hw.to(scores.device)
        if valid_hw.shape != (scores.shape[0], 2):
            raise ValueError(
                f"TVMax: key_grid.valid_hw must be (B, 2) = {(scores.shape[0], 2)}, each image's valid grid "
                f"(height, width), got shape {tuple(valid_hw.shape)}"
            )
        rows = torch.arange(height, device=scores.device).view(1, height, 1)
        cols = torch.arange(width, device=scores.device).view(1, 1, width)
        padding = (rows >= valid_hw[:, :1, None]) | (cols >= valid_hw[:, 1:, None])
        padding = padding.reshape(-1, height * width)
        if key_padding_mask is not None:
            padding = padding | key_padding_mask
        mask = padding[:, None, None, :] if bool(padding.any()) else None  # no padding: one grid for all maps
        return tvmax(scores, key_grid.padded_hw, self.lam, dim=-1, mask=mask)

    def extra_repr(self) -> str:
        return f"lam={self.lam}"
