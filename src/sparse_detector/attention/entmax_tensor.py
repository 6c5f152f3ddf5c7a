"""α-entmax forward and backward with tensor operations only: the path for GPUs (and any non-CPU device).

Every step is a whole-tensor operation, so it runs wherever PyTorch does; on the CPU :mod:`.entmax_cpu` is used
instead (see :data:`.functional.CPU_KERNELS`), which does the same per row in compiled loops, faster there.

The threshold τ of p = [X − τ]₊^{1/(α−1)}, X = (α−1)(z − max z), is found without sorting:

* candidates: the maxima of blocks of BLOCK keys are a subset of the row, whose threshold is a lower bound of the
  row's (fewer positive terms need a lower τ to sum to 1); a few Newton steps on them from τ = −1 (the support
  has p ≤ 1, so τ ≥ max X − 1 = −1) give τ0, and only entries above τ0 can be in the support. This costs one
  pass over the scores and keeps about as many candidates as the support has entries; they are packed
  column-wise into a small (K × rows) matrix (K the largest candidate count of a row);
* Newton steps on ‖[X − τ]₊‖_q = 1, q = 1/(α−1), from below (convex and decreasing in τ: the iterates rise to
  τ quadratically) until one is below √eps (and, where q = 1, the support is unchanged since the last); then
  sparsemax goes on with Michelot's iteration until the support stops changing (τ is then the closed form on it,
  exact), entmax15 takes the closed form on the support found when consistent with it (else one more step), and
  any other α takes one more step; p is then renormalised.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

NEG_INF = -math.inf
# Newton iterations are capped; on attention-like scores they take 2–8.
MAX_THRESHOLD_ITERS = 50
# Keys per block, and Newton steps on the block maxima, of the lower bound that selects the candidates.
BLOCK = 8
BOUND_STEPS = 3


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
    the entries it changes are below 1e-26, far under the precision of a probability that sums to 1. Arguments
    below −60 give exactly 0: with an exponent ≥ 60/|log tiny| that zeroes d = 0 too, with no pass for sign(d).
    """
    log_d = d.clamp(min=torch.finfo(d.dtype).tiny).log_()
    floor = float(exponent if isinstance(exponent, float) else exponent.min()) * math.log(torch.finfo(d.dtype).tiny)
    if floor <= -60.0:
        return F.threshold_(log_d.mul_(exponent), -60.0, NEG_INF).exp_()
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
class Packing:
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


def _candidates(z: Tensor, alpha: float | Tensor) -> tuple[Tensor, Packing, Tensor]:
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
    packing = Packing(row * n + column, position * rows + row, (height, rows))
    packed = x.new_full((height * rows,), NEG_INF).scatter_(0, packing.slot, x.view(-1).index_select(0, entry))
    return packed.view(height, rows), packing, tau.t()


def _solve(x: Tensor, alpha: float | Tensor, tau: Tensor) -> Tensor:
    """p = [X − τ]₊^{1/(α−1)} for each column of the packed X (K, rows), τ found from the lower bound ``tau``.

    Newton steps (see :func:`_newton_step`) until one is below √eps (where q = 1 with the support settled), then:
    * sparsemax: Michelot's iteration goes on until the support stops changing, when τ is the closed form on
      that support and consistent with it, i.e. exact (the sort/threshold result);
    * entmax15: the closed form on the support found (the smaller root of Σ_S (X − τ)² = 1) when consistent
      with that support (no entry falls below it), else one more step and p renormalised;
    * any other α: one more step (error ~eps), and p renormalised.
    """
    q = 1 / (alpha - 1)
    settle = math.sqrt(torch.finfo(x.dtype).eps)
    sparsemax = isinstance(q, float) and q == 1.0
    # Michelot's steps (q = 1: sparsemax, or a tensor α of 2 in some row) do not converge quadratically: there a
    # small step ends the solve only once the support has settled too (then τ is exact on it)
    michelot = sparsemax or (isinstance(q, Tensor) and bool((q == 1).any()))
    previous = None
    for _ in range(MAX_THRESHOLD_ITERS):
        d = (x - tau).clamp_(min=0)
        settled = True
        if michelot:
            support = (d > 0).sum(0, keepdim=True)  # NaN rows count 0 and settle: NaN out
            settled = previous is not None and torch.equal(support, previous)
            previous = support
            if sparsemax and settled:
                return d
        step = _newton_step(d, q, dim=0)
        if not sparsemax and settled and float(step.nan_to_num(nan=0.0).max()) <= settle:  # NaN rows: NaN out
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
    p = (x - tau - shift).clamp_(min=0).square_()
    # exact sum on the closed form; after the extra step, fp32 rounding of a long support can leave ~1e-4
    return p.div_(p.sum(0, keepdim=True).clamp_(min=torch.finfo(p.dtype).tiny))


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


def forward(z: Tensor, alpha: float | Tensor) -> tuple[Tensor, Packing, Tensor]:
    """α-entmax of the contiguous (rows, n) scores ``z``: the output, and the packing and packed p behind it.

    A row with a NaN or +inf score gives NaN (so that a non-finite loss is caught upstream); a row of −inf gives
    zeros.
    """
    x, packing, tau = _candidates(z, alpha)
    p = _solve(x, alpha.t() if isinstance(alpha, Tensor) else alpha, tau)
    out = packing.unpack(p, *z.shape)
    not_finite = ~(z.amax(1, keepdim=True) < math.inf)  # NaN (amax propagates it) or +inf
    return out.masked_fill_(not_finite, math.nan), packing, p


def backward(
    p: Tensor, packing: Packing, grad: Tensor, alpha: float | Tensor, with_alpha: bool
) -> tuple[Tensor, Tensor | None]:
    """dz for the gradient ``grad`` of the output, and dL/dα per row ((rows, 1), when ``with_alpha``)."""
    alpha = alpha.t() if isinstance(alpha, Tensor) else alpha
    g = packing.pack(grad.contiguous(), 0.0)
    dz, v = _jacobian_product(_support_weights(p, alpha), g, dim=0)
    d_alpha = None
    if with_alpha:
        q = 1 / (alpha - 1)
        log_p = p.clamp(min=torch.finfo(p.dtype).tiny).log_()
        d_alpha = (q * ((q - log_p).mul_(p).mul_(g - v)).sum(0, keepdim=True)).t()
    return packing.unpack(dz, *grad.shape), d_alpha
