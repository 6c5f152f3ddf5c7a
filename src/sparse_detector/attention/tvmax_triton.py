"""FISTA's iterations of the TV prox (:func:`.tvmax._tv_prox`) as one Triton kernel per batch of iterations.

The tensor-operation iteration launches ~30 kernels per iteration, each streaming all maps through memory; here one
program per map runs ``iterations`` iterations on its map, which stays in the GPU's caches, and the batch of maps is
one launch. Written by hand because no library offers a batched small-grid TV prox on the GPU. Same step, restart
rule and arithmetic as the tensor operations (the state goes back to them between launches, where the duality gap is
checked), so the stopping test and its certificate are the tensor path's: a wrong iterate here could cost
iterations, never exactness.

Layout: the tensor path's. Maps are rows of length ``cells`` = H·W; the horizontal duals (N, cells − 1) belong to
the edges (c, c + 1), the vertical ones (N, cells − W) to (c, c + W); bounds (N or 1 rows) are 0 on the edges that do
not exist. Neighbours' values are exchanged through global memory (each program's own rows: the dual point and a
scratch copy of x) with a barrier between store and load, since a Triton program cannot shift its registers.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor


@triton.jit
def _fista_kernel(
    z_ptr,
    uh_ptr,
    uv_ptr,
    yh_ptr,
    yv_ptr,
    t_ptr,
    bh_ptr,
    bv_ptr,
    x_ptr,
    bh_stride,
    bv_stride,
    cells,
    width,
    step,
    iterations,
    BLOCK: tl.constexpr,
):
    m = tl.program_id(0).to(tl.int64)
    c = tl.arange(0, BLOCK)
    inside = c < cells
    on_h = c < cells - 1  # cells with an edge to their right neighbour's slot (bounds 0 across row ends)
    on_v = c < cells - width  # cells with an edge to the cell below
    h_row = m * (cells - 1)
    v_row = m * (cells - width)
    z = tl.load(z_ptr + m * cells + c, mask=inside, other=0.0)
    bh = tl.load(bh_ptr + m * bh_stride + c, mask=on_h, other=0.0)
    bv = tl.load(bv_ptr + m * bv_stride + c, mask=on_v, other=0.0)
    uh = tl.load(uh_ptr + h_row + c, mask=on_h, other=0.0)
    uv = tl.load(uv_ptr + v_row + c, mask=on_v, other=0.0)
    yh = tl.load(yh_ptr + h_row + c, mask=on_h, other=0.0)
    yv = tl.load(yv_ptr + v_row + c, mask=on_v, other=0.0)
    t = tl.load(t_ptr + m)
    for _ in range(iterations):
        # x = z − Dᵀy: x_c = z_c − yh_c + yh_{c−1} − yv_c + yv_{c−W}
        tl.store(yh_ptr + h_row + c, yh, mask=on_h)
        tl.store(yv_ptr + v_row + c, yv, mask=on_v)
        tl.debug_barrier()
        left = tl.load(yh_ptr + h_row + c - 1, mask=(c >= 1) & inside, other=0.0)
        up = tl.load(yv_ptr + v_row + c - width, mask=(c >= width) & inside, other=0.0)
        x = z - yh + left - yv + up
        tl.store(x_ptr + m * cells + c, x, mask=inside)
        tl.debug_barrier()
        right = tl.load(x_ptr + m * cells + c + 1, mask=on_h, other=0.0)
        down = tl.load(x_ptr + m * cells + c + width, mask=on_v, other=0.0)
        new_h = tl.minimum(tl.maximum(yh + step * (x - right), -bh), bh)
        new_v = tl.minimum(tl.maximum(yv + step * (x - down), -bv), bv)
        move_h = new_h - uh
        move_v = new_v - uv
        # restart the momentum when the step goes against the last move: ⟨y − u⁺, u⁺ − u⟩ > 0
        restart = tl.sum((yh - new_h) * move_h + (yv - new_v) * move_v, axis=0) > 0
        t = tl.where(restart, 1.0, t)
        t_next = (1 + tl.sqrt(1 + 4 * t * t)) / 2
        beta = (t - 1) / t_next
        yh = new_h + beta * move_h
        yv = new_v + beta * move_v
        uh = new_h
        uv = new_v
        t = t_next  # (the next iteration's first barrier also orders this one's reads of x before its writes)
    tl.store(uh_ptr + h_row + c, uh, mask=on_h)
    tl.store(uv_ptr + v_row + c, uv, mask=on_v)
    tl.store(yh_ptr + h_row + c, yh, mask=on_h)
    tl.store(yv_ptr + v_row + c, yv, mask=on_v)
    tl.store(t_ptr + m, t)


def fista_steps(
    z: Tensor,
    duals: tuple[Tensor, Tensor],
    momentum: tuple[Tensor, Tensor],
    t: Tensor,
    bounds: tuple[Tensor, Tensor],
    width: int,
    step: float,
    iterations: int,
) -> tuple[tuple[Tensor, Tensor], tuple[Tensor, Tensor], Tensor]:
    """``iterations`` FISTA iterations of every map (rows of z); returns the new duals, momentum point and t."""
    n, cells = z.shape
    z = z.contiguous()
    duals = tuple(d.contiguous().clone() for d in duals)
    momentum = tuple(y.contiguous().clone() for y in momentum)
    t = t.contiguous().clone()
    bounds = tuple(b.contiguous() for b in bounds)
    scratch = torch.empty_like(z)
    block = triton.next_power_of_2(cells)
    _fista_kernel[(n,)](
        z,
        *duals,
        *momentum,
        t,
        *bounds,
        scratch,
        bounds[0].shape[1] if bounds[0].shape[0] > 1 else 0,
        bounds[1].shape[1] if bounds[1].shape[0] > 1 else 0,
        cells,
        width,
        step,
        iterations,
        BLOCK=block,
        num_warps=min(16, max(4, block // 256)),
    )
    return duals, momentum, t
