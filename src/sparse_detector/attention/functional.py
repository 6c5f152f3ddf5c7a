"""Shared machinery of the attention maps: input preparation, masked softmax and the exact α-entmax family.

sparsemax (α = 2), entmax15 (α = 1.5) and α-entmax are p = [(α−1)z − τ]₊^{1/(α−1)} with the threshold τ chosen
so that p sums to 1. They are hand-written rather than taken from the ``entmax`` library (which is the reference
in the tests, not the implementation) because the library sorts every full row, or bisects 50 times over full
rows, which makes it 10–100× slower than softmax on CPU. Here τ is found by Newton iterations from a lower bound
(every support entry has p ≤ 1, so τ ≥ max − 1 in X = (α−1)z), which rise monotonically to τ, without any sort:

* entmax15: Newton on ‖[X − τ]₊‖₂ − 1 on the dense rows (reductions only) until a step is below √eps; the closed
  form of τ on the support found is then exact when consistent with it (the sort/threshold result);
* sparsemax: one such step on the dense rows narrows the candidates, which are packed into a small (K × rows)
  matrix (K the largest candidate count of a row); Michelot's iteration (Newton for Σ [X − τ]₊ = 1) runs on it
  until the support stops changing, which makes τ exact;
* any other α (float, or a tensor such as one α per head): where α ≥ 1.5, a few such steps on the dense rows (still
  lower bounds there, as d^{1/(α−1)} ≥ d² on [0, 1]) narrow the candidates, which are packed; Newton then runs on
  h(τ) = ‖[X − τ]₊‖_q − 1, q = 1/(α−1), which is convex and decreasing, so the iterates converge quadratically
  from below; once a step is below √eps, p is evaluated after one more step (error ~eps) and renormalised.

Backward passes are closed form: s = p^{2−α} on the support, dz = s⊙g − (⟨s,g⟩/Σs)·s, and for α (Correia et al.
2019) ∂p/∂α = q·(w − s·Σw/Σs) with w = s⊙z − p⊙log p; the shift invariance of that expression lets z be replaced
on the support by p^{α−1}/(α−1), so w = p⊙(q − log p) and dL/dα = q·Σ w⊙(g − ⟨s,g⟩/Σs).

Everything runs in fp32 (fp64 inputs stay fp64) and is returned in the input dtype; inputs are cast explicitly and
the forward passes run with autocast disabled (CPU autocast would run linalg reductions in bf16).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.autograd.function import FunctionCtx, once_differentiable

NEG_INF = float("-inf")
# Newton iterations are capped; on attention-like scores they take 2–8.
MAX_THRESHOLD_ITERS = 50
# Keys per block, and Newton steps on the block maxima, of the lower bound that selects the candidates
# (see _candidates); measured on 850 keys.
BLOCK = 8
BOUND_STEPS = 3


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


def softmax(x: Tensor, dim: int = -1, mask: Tensor | None = None) -> Tensor:
    """Softmax in fp32 with masked entries (True = padding, broadcastable to ``x``) at 0; a fully masked row is 0."""
    z = x.to(compute_dtype(x.dtype))
    if mask is None:
        return torch.softmax(z, dim).to(x.dtype)
    # A fully masked row is NaN after the softmax; every one of its entries is masked, so the fill clears it
    # (and its gradient, which the masked_fill backward zeroes).
    p = torch.softmax(z.masked_fill(mask, NEG_INF), dim).masked_fill(mask, 0.0)
    return p.to(x.dtype)


def check_alpha(alpha: float | Tensor) -> None:
    """α-entmax is solved for 1 < α ≤ 2 (where the threshold equation is convex); raise otherwise."""
    low, high = (alpha, alpha) if isinstance(alpha, float) else (alpha.min().item(), alpha.max().item())
    if not 1.0 < low <= high <= 2.0:
        raise ValueError(f"alpha must lie in (1, 2], got values in [{low}, {high}]")


def _block_maxima(z: Tensor) -> Tensor:
    """(rows, ⌈n / BLOCK⌉) maxima of consecutive blocks of BLOCK keys of the (rows, n) ``z`` (the last may be short)."""
    return F.max_pool1d(z.unsqueeze(1), BLOCK, BLOCK, ceil_mode=True).squeeze(1)


def _blocks(z: Tensor) -> Tensor:
    """The contiguous (rows, n) ``z`` as (rows · ⌈n / BLOCK⌉, BLOCK) blocks: a view, or a −inf padded copy."""
    rows, n = z.shape
    width = -(-n // BLOCK) * BLOCK
    if width != n:
        z = torch.cat([z, z.new_full((rows, width - n), NEG_INF)], dim=1)
    return z.view(-1, BLOCK)


def _powers(d: Tensor, exponent: float | Tensor) -> Tensor:
    """d^exponent for d ≥ 0 and exponent ≥ 0, exactly 0 where d = 0 (also for exponent 0).

    exp/log with the argument kept above −60: the CPU exp kernel is ~10× slower on underflowing arguments, and
    the entries it changes are below 1e-26, far under the precision of a probability that sums to 1.
    """
    log_d = d.clamp(min=torch.finfo(d.dtype).tiny).log_()
    return log_d.mul_(exponent).clamp_(min=-60.0).exp_().mul_(d.sign())


def _newton_step(d: Tensor, q: float | Tensor, dim: int) -> Tensor:
    """The Newton step in τ for ‖[X − τ]₊‖_q = 1 along ``dim``, given d = [X − τ]₊ with τ below the root.

    h(τ) = ‖d‖_q − 1 is convex and decreasing for q ≥ 1, so the step (≥ 0 but for rounding, clamped) keeps τ a
    lower bound and the iterates rise to the root quadratically. q = 1 (sparsemax) is Michelot's step and q = 2
    (entmax15) needs no powers; a row without entries (fully masked) gets a zero step.
    """
    tiny = torch.finfo(d.dtype).tiny
    if isinstance(q, float) and q == 1.0:
        count = d.sign().sum(dim, keepdim=True).clamp_(min=1)
        return (d.sum(dim, keepdim=True) - 1).div_(count).clamp_(min=0)
    if isinstance(q, float) and q == 2.0:
        norm = torch.linalg.vector_norm(d, dim=dim, keepdim=True)
        return (norm - 1).mul_(norm).div_(d.sum(dim, keepdim=True).clamp_(min=tiny)).clamp_(min=0)
    powers = _powers(d, q - 1)
    slope = powers.sum(dim, keepdim=True)  # Σ d^{q−1} = −h'(τ) · ‖d‖_q^{q−1}
    log_norm = powers.mul_(d).sum(dim, keepdim=True).clamp_(min=tiny).log_().div_(q)
    slope = slope.mul_(torch.exp((1 - q) * log_norm)).clamp_(min=tiny)
    return torch.expm1(log_norm).div_(slope).clamp_(min=0)


@dataclass
class _Packing:
    """Selected entries of each row of a (rows, n) tensor, packed column-wise into a (K, rows) matrix.

    Row r's selected entries fill column r from the top, K being the largest count; the column layout makes the
    per-row reductions of the threshold solve run across rows (vectorised) instead of along short rows.
    """

    index: Tensor  # (M,) flat positions of the entries in a contiguous (rows, n) tensor
    slot: Tensor  # (M,) flat positions in the (K · rows) matrix
    shape: tuple[int, int]  # (K, rows)

    def pack(self, source: Tensor, fill: float) -> Tensor:
        """The selected entries of the contiguous (rows, n) ``source`` as a (K, rows) matrix, ``fill`` elsewhere."""
        packed = source.new_full((self.shape[0] * self.shape[1],), fill)
        return packed.scatter_(0, self.slot, source.view(-1).index_select(0, self.index)).view(self.shape)

    def unpack(self, packed: Tensor, rows: int, n: int) -> Tensor:
        """A (K, rows) matrix back as a (rows, n) tensor, zero outside the selected entries."""
        out = packed.new_zeros(rows * n)
        return out.scatter_(0, self.index, packed.view(-1).index_select(0, self.slot)).view(rows, n)


def _candidates(z: Tensor, alpha: float | Tensor) -> tuple[Tensor, _Packing, Tensor]:
    """The entries of the (rows, n) scores that may be in the support, packed, and a lower bound of τ.

    Returns X = (α−1)(z − max z) on the candidates as a (K, rows) matrix (−inf in unused slots), the packing, and
    τ0 (1, rows). The row maxima of blocks of BLOCK keys are a subset of the row, whose threshold is a lower bound
    of the row's (fewer positive terms need a lower τ to sum to 1); a few Newton steps on it from τ = −1 (the
    support has p ≤ 1, so τ ≥ max X − 1 = −1) give τ0, and only entries above τ0 can be in the support. On
    attention-like rows this keeps about as many candidates as the support has entries, from one pass over z.
    """
    rows, n = z.shape
    maxima = _block_maxima(z)
    width = maxima.shape[1]
    shift = maxima.amax(1, keepdim=True).nan_to_num_(neginf=0.0)  # a fully masked row stays −inf, unshifted
    scale = alpha - 1
    block_x = (maxima - shift).mul_(scale)
    q = 1 / scale
    tau = torch.full_like(shift, -1.0)
    for _ in range(BOUND_STEPS):
        tau += _newton_step((block_x - tau).clamp_(min=0), q, dim=1)
    block_row, block = (block_x > tau).nonzero().unbind(1)
    if isinstance(scale, Tensor):
        scale = scale.index_select(0, block_row)
    x = (_blocks(z).index_select(0, block_row * width + block) - shift.index_select(0, block_row)).mul_(scale)
    entry = (x > tau.index_select(0, block_row)).view(-1).nonzero().squeeze(1)
    row = block_row.index_select(0, entry.div(BLOCK, rounding_mode="floor"))
    column = block.index_select(0, entry.div(BLOCK, rounding_mode="floor")) * BLOCK + entry.remainder(BLOCK)
    counts = torch.bincount(row, minlength=rows)
    height = max(1, int(counts.max()) if entry.numel() else 0)
    position = torch.arange(entry.numel(), device=z.device) - (counts.cumsum(0) - counts).index_select(0, row)
    packing = _Packing(row * n + column, position * rows + row, (height, rows))
    packed = x.new_full((height * rows,), NEG_INF).scatter_(0, packing.slot, x.view(-1).index_select(0, entry))
    return packed.view(height, rows), packing, tau.t()


def _solve(x: Tensor, alpha: float | Tensor, tau: Tensor) -> Tensor:
    """p = [X − τ]₊^{1/(α−1)} for each column of the packed X (K, rows), τ found from the lower bound ``tau``.

    Newton steps (see :func:`_newton_step`) until one is below √eps, then:
    * sparsemax: Michelot's iteration goes on until the support stops changing, when τ is the closed form on
      that support and consistent with it, i.e. exact (the sort/threshold result);
    * entmax15: the closed form on the support found (the smaller root of Σ_S (X − τ)² = 1) when consistent
      with that support (no entry falls below it), else one more step;
    * any other α: one more step (error ~eps), and p renormalised.
    """
    q = 1 / (alpha - 1)
    settle = math.sqrt(torch.finfo(x.dtype).eps)
    sparsemax = isinstance(q, float) and q == 1.0
    previous = None
    for _ in range(MAX_THRESHOLD_ITERS):
        d = (x - tau).clamp_(min=0)
        if sparsemax:
            support = d.sign().sum(0, keepdim=True)
            if previous is not None and torch.equal(support, previous):
                return d
            previous = support
        step = _newton_step(d, q, dim=0)
        if not sparsemax and float(step.max()) <= settle:
            break
        tau = tau + step
    if isinstance(q, float) and q == 2.0:
        return _entmax15_finish(x, d, tau, step)
    d = (x - tau - step).clamp_(min=0)
    p = _powers(d, q)
    return p.div_(p.sum(0, keepdim=True).clamp_(min=torch.finfo(p.dtype).tiny))


def _entmax15_finish(x: Tensor, d: Tensor, tau: Tensor, step: Tensor) -> Tensor:
    """entmax15's p from d = [X − τ]₊ near the root: the closed form on the support when consistent, else τ + step."""
    support = d.sign().sum(0, keepdim=True)
    k = support.clamp(min=1)
    total = d.sum(0, keepdim=True)
    mean = total / k
    # the smaller root of Σ_S (d − t)² = 1, i.e. t = mean − √((1 − Σ_S (d − mean)²) / k)
    delta = (1 - d.square().sum(0, keepdim=True) + total * mean) / k
    closed = mean - delta.clamp(min=0).sqrt()
    slack = 8 * torch.finfo(d.dtype).eps
    kept = (d - (closed - slack).clamp(min=0)).clamp_(min=0).sign_().sum(0, keepdim=True)
    shift = torch.where((delta >= 0) & (kept == support) & (support > 0), closed, step).clamp_(min=0)
    return (x - tau - shift).clamp_(min=0).square_()


def _support_weights(p: Tensor, alpha: float | Tensor) -> Tensor:
    """s = p^{2−α} on the support of p, 0 elsewhere: the weights of the α-entmax Jacobian."""
    if isinstance(alpha, float) and alpha == 2.0:
        return p.sign()
    if isinstance(alpha, float) and alpha == 1.5:
        return p.sqrt()
    return _powers(p, 2 - alpha)


def _jacobian_product(s: Tensor, grad: Tensor, dim: int) -> tuple[Tensor, Tensor]:
    """dz = s⊙(g − v), v = ⟨s,g⟩/Σs along ``dim``, for the Jacobian weights s = p^{2−α}; returns dz and v."""
    dz = torch.mul(s, grad)
    v = dz.sum(dim, keepdim=True) / s.sum(dim, keepdim=True).clamp_(min=torch.finfo(s.dtype).tiny)
    return dz.addcmul_(s, v, value=-1), v


class EntmaxFunction(torch.autograd.Function):
    """α-entmax over the last dim of contiguous (rows, n) scores; ``alpha`` is a float or a (rows, 1) tensor."""

    @staticmethod
    def forward(ctx: FunctionCtx, z: Tensor, alpha: float | Tensor) -> Tensor:
        with torch.autocast(z.device.type, enabled=False):  # e.g. CPU autocast would run linalg ops in bf16
            x, packing, tau = _candidates(z, alpha)
            alpha_packed = alpha.t() if isinstance(alpha, Tensor) else alpha
            p = _solve(x, alpha_packed, tau)
        ctx.alpha = alpha if isinstance(alpha, float) else None
        ctx.shapes = (packing.shape, z.shape)
        ctx.save_for_backward(p, packing.index, packing.slot, alpha if isinstance(alpha, Tensor) else None)
        return packing.unpack(p, *z.shape)

    @staticmethod
    @once_differentiable
    def backward(ctx: FunctionCtx, grad: Tensor) -> tuple[Tensor, Tensor | None]:
        p, index, slot, alpha_rows = ctx.saved_tensors
        packed_shape, shape = ctx.shapes
        packing = _Packing(index, slot, packed_shape)
        alpha = ctx.alpha if alpha_rows is None else alpha_rows.t()
        g = packing.pack(grad.contiguous(), 0.0)
        dz, v = _jacobian_product(_support_weights(p, alpha), g, dim=0)
        d_alpha = None
        if alpha_rows is not None and ctx.needs_input_grad[1]:
            q = 1 / (alpha - 1)
            log_p = p.clamp(min=torch.finfo(p.dtype).tiny).log_()
            d_alpha = (q * ((q - log_p).mul_(p).mul_(g - v)).sum(0, keepdim=True)).t()
        return packing.unpack(dz, *shape), d_alpha


def entmax_rows(x: Tensor, alpha: float | Tensor, dim: int, mask: Tensor | None) -> Tensor:
    """α-entmax of ``x`` along ``dim`` (α float, or a tensor broadcastable to ``x`` with size 1 along ``dim``)."""
    if x.numel() == 0:
        return x.clone()
    z, shape = as_rows(x, dim, mask)
    if isinstance(alpha, Tensor):
        batch_shape = list(x.shape)
        batch_shape[dim] = 1
        alpha = alpha.to(z.dtype).expand(batch_shape).movedim(dim, -1).reshape(-1, 1)
    return from_rows(EntmaxFunction.apply(z, alpha), shape, dim, x.dtype)
