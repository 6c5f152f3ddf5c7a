"""Shared machinery of the attention maps: input preparation, masked softmax and the exact α-entmax family.

sparsemax (α = 2), entmax15 (α = 1.5) and α-entmax are p = [(α−1)z − τ]₊^{1/(α−1)} with the threshold τ chosen
so that p sums to 1. They are hand-written rather than taken from the ``entmax`` library (the reference in the
tests, not the implementation) because the library sorts every full row, or bisects 50 times over full rows,
which makes it 10–100× slower than softmax on CPU. τ is found exactly (Newton's method from below with a
closed-form finish, no sort) by :mod:`.entmax_cpu` (compiled loops per row, on the CPU) or :mod:`.entmax_tensor`
(tensor operations, on other devices); both are tested against the library.

Backward passes are closed form: s = p^{2−α} on the support, dz = s⊙g − (⟨s,g⟩/Σs)·s, and for α (Correia et al.
2019) ∂p/∂α = q·(w − s·Σw/Σs) with w = s⊙z − p⊙log p; the shift invariance of that expression lets z be replaced
on the support by p^{α−1}/(α−1), so w = p⊙(q − log p) and dL/dα = q·Σ w⊙(g − ⟨s,g⟩/Σs).

Everything runs in fp32 (fp64 inputs stay fp64) and is returned in the input dtype; inputs are cast explicitly and
the forward passes run with autocast disabled (CPU autocast would run linalg reductions in bf16).
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import torch
from torch import Tensor
from torch.autograd.function import FunctionCtx

from . import entmax_cpu, entmax_tensor

NEG_INF = float("-inf")
#: Use the compiled per-row loops of :mod:`.entmax_cpu` for CPU tensors (tests switch it off to check the other path).
CPU_KERNELS = True


def uses_cpu_kernels(x: Tensor) -> bool:
    """Whether maps of ``x`` run in the compiled CPU loops (:mod:`.entmax_cpu`, :mod:`.tvmax_cpu`)."""
    return x.device.type == "cpu" and CPU_KERNELS


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype the maps are computed in: float64 stays float64, everything else runs in float32."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def as_rows(x: Tensor, dim: int, mask: Tensor | None) -> tuple[Tensor, torch.Size]:
    """``x`` as contiguous (rows, n) in the compute dtype with masked entries at −inf, and the shape to restore."""
    z = x.to(compute_dtype(x.dtype))
    if mask is not None:
        z = z.masked_fill(mask, NEG_INF)
    z = z.movedim(dim, -1)
    return z.reshape(-1, z.shape[-1]).contiguous(), z.shape


def from_rows(rows: Tensor, shape: torch.Size, dim: int, dtype: torch.dtype) -> Tensor:
    """Inverse of :func:`as_rows`: back to the original layout and dtype."""
    return rows.view(shape).movedim(-1, dim).to(dtype)


def key_mask(key_padding_mask: Tensor | None) -> Tensor | None:
    """A (B, Lk) key padding mask as a mask broadcastable to (B, H, Lq, Lk) scores."""
    return None if key_padding_mask is None else key_padding_mask[:, None, None, :]


def broadcasts_to(shape: torch.Size, target: torch.Size) -> bool:
    """Whether a tensor of ``shape`` broadcasts to ``target`` without enlarging it."""
    try:
        return torch.broadcast_shapes(shape, target) == target
    except RuntimeError:
        return False


def check_inputs(x: Tensor, dim: int, mask: Tensor | None, alpha: float | Tensor | None = None) -> None:
    """Raise a clear error for scores ``x`` that are not floating point or have no ``dim``, a ``mask`` that is not
    bool or does not broadcast to ``x``'s shape, or an ``alpha`` tensor that does not broadcast to ``x`` with size 1
    along ``dim``."""
    if not x.is_floating_point():
        raise TypeError(f"the scores must be a floating-point tensor, got {x.dtype}; convert them, e.g. x.float()")
    if not -x.dim() <= dim < max(x.dim(), 1):
        raise IndexError(f"dim {dim} is out of range for scores of shape {tuple(x.shape)}")
    if x.dim() == 0:
        raise ValueError("the scores must have at least one dimension (the keys along dim), got a 0-d tensor")
    if mask is not None:
        if mask.dtype != torch.bool:
            raise TypeError(f"mask must be a bool tensor (True = padding, masked out), got {mask.dtype}")
        if not broadcasts_to(mask.shape, x.shape):
            raise ValueError(
                f"mask of shape {tuple(mask.shape)} does not broadcast to the scores' shape {tuple(x.shape)}; "
                "give it the scores' shape or size 1 in the dimensions it shares (e.g. (B, 1, 1, Lk) for keys)"
            )
    if isinstance(alpha, Tensor):
        size = x.shape[dim]
        shape = list(x.shape)
        shape[dim] = 1
        if not broadcasts_to(alpha.shape, torch.Size(shape)):
            raise ValueError(
                f"alpha of shape {tuple(alpha.shape)} does not broadcast to the scores' shape {tuple(x.shape)} "
                f"with size 1 along dim {dim} (the {size} keys): one α per row, e.g. (1, H, 1, 1) for one per head "
                "of (B, H, Lq, Lk) scores"
            )


def softmax(x: Tensor, dim: int = -1, mask: Tensor | None = None) -> Tensor:
    """Softmax in fp32 with masked entries (True = padding, broadcastable to ``x``) at 0; a fully masked row is 0."""
    check_inputs(x, dim, mask)
    z = x.to(compute_dtype(x.dtype))
    if mask is None:
        return torch.softmax(z, dim).to(x.dtype)
    # A fully masked row is NaN after the softmax; every one of its entries is masked, so the fill clears it
    # (and its gradient, which the masked_fill backward zeroes).
    p = torch.softmax(z.masked_fill(mask, NEG_INF), dim).masked_fill(mask, 0.0)
    return p.to(x.dtype)


class SecondOrderError(torch.autograd.Function):
    """Stands between a first-order-only backward's result and the tensors it depends on, so that differentiating
    that result again raises instead of giving zero (``once_differentiable`` detaches it: ``autograd.grad`` then
    finds it unused and ``hessian`` reads that as zero)."""

    @staticmethod
    def forward(ctx: FunctionCtx, result: Tensor, *depends_on: Tensor) -> Tensor:
        return result.clone()

    @staticmethod
    def backward(ctx: FunctionCtx, *grads: Tensor) -> None:
        raise RuntimeError(
            "the sparse attention maps (sparsemax, entmax15, α-entmax, TVMax) have first-order gradients only: a "
            "second derivative through them (create_graph=True followed by another backward, "
            "torch.autograd.functional.hessian, gradgradcheck) is not supported; keep these maps out of the "
            "twice-differentiated part of the graph or use softmax there"
        )


def first_order_only(backward: Callable[..., tuple]) -> Callable[..., tuple]:
    """Decorates an ``autograd.Function`` backward that is not itself differentiable: it runs without grad, and
    under ``create_graph=True`` its results are tied by :class:`SecondOrderError` to the incoming gradients and
    saved tensors, so a second derivative raises a clear error (first-order use of ``create_graph`` still works)."""

    @functools.wraps(backward)
    def wrapper(ctx: FunctionCtx, *grads: Tensor) -> tuple:
        with torch.no_grad():
            results = backward(ctx, *grads)
        if not torch.is_grad_enabled():
            return results
        depends_on = [t for t in (*grads, *ctx.saved_tensors) if isinstance(t, Tensor) and t.requires_grad]
        if not depends_on:
            return results
        return tuple(SecondOrderError.apply(r, *depends_on) if isinstance(r, Tensor) else r for r in results)

    return wrapper


def check_alpha(alpha: float | Tensor) -> None:
    """α-entmax is solved for 1 < α ≤ 2 (where the threshold equation is convex); raise otherwise."""
    if isinstance(alpha, Tensor) and alpha.numel() == 0:  # no rows
        return
    low, high = (alpha, alpha) if isinstance(alpha, float) else (alpha.min().item(), alpha.max().item())
    if not 1.0 < low <= high <= 2.0:
        raise ValueError(f"alpha must lie in (1, 2], got values in [{low}, {high}]")


class EntmaxFunction(torch.autograd.Function):
    """α-entmax over the last dim of contiguous (rows, n) scores; ``alpha`` is a float or a (rows, 1) tensor."""

    @staticmethod
    def forward(ctx: FunctionCtx, z: Tensor, alpha: float | Tensor) -> Tensor:
        ctx.alpha = alpha if isinstance(alpha, float) else None
        alpha_rows = alpha if isinstance(alpha, Tensor) else None
        ctx.cpu = uses_cpu_kernels(z)
        with torch.autocast(z.device.type, enabled=False):  # e.g. CPU autocast would run linalg ops in bf16
            if ctx.cpu:
                out = entmax_cpu.forward(z, alpha)
                ctx.save_for_backward(out, alpha_rows)
                return out
            out, packing, p = entmax_tensor.forward(z, alpha)
        ctx.packed_shape = packing.shape
        ctx.save_for_backward(p, alpha_rows, packing.index, packing.slot)
        return out

    @staticmethod
    @first_order_only
    def backward(ctx: FunctionCtx, grad: Tensor) -> tuple[Tensor, Tensor | None]:
        p, alpha_rows, *packing = ctx.saved_tensors
        alpha = ctx.alpha if alpha_rows is None else alpha_rows
        with_alpha = alpha_rows is not None and ctx.needs_input_grad[1]
        if ctx.cpu:
            dz, d_alpha = entmax_cpu.backward(p, grad.contiguous(), alpha, with_alpha)
            return dz, d_alpha.to(alpha_rows.dtype) if with_alpha else None
        packing = entmax_tensor.Packing(*packing, ctx.packed_shape)
        return entmax_tensor.backward(p, packing, grad, alpha, with_alpha)


def entmax_rows(x: Tensor, alpha: float | Tensor, dim: int, mask: Tensor | None) -> Tensor:
    """α-entmax of ``x`` along ``dim`` (α float, or a tensor broadcastable to ``x`` with size 1 along ``dim``)."""
    check_inputs(x, dim, mask, alpha)
    if x.numel() == 0:
        return x.clone()
    z, shape = as_rows(x, dim, mask)
    if isinstance(alpha, Tensor):
        batch_shape = list(x.shape)
        batch_shape[dim] = 1
        alpha = alpha.to(z.dtype).expand(batch_shape).movedim(dim, -1).reshape(-1, 1)
    return from_rows(EntmaxFunction.apply(z, alpha), shape, dim, x.dtype)
