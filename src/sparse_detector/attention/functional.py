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
from torch import Tensor
from torch.autograd.function import FunctionCtx, once_differentiable

NEG_INF = float("-inf")
# Newton iterations are capped; on attention-like scores they take 2–8.
MAX_THRESHOLD_ITERS = 50
# The candidate matrix is repacked to the shrinking support only when at least this tall (see _repack): lower
# for the general α, whose Newton steps take a log and an exp per entry.
REPACK_HEIGHT = 128
REPACK_HEIGHT_POWERS = 32
# Newton steps of the entmax15 equation taken on the dense rows before packing, for α ≥ 1.5 (measured on 850 keys).
DENSE_STEPS = 3


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


def _positive_positions(keep: Tensor) -> Tensor:
    """Row-major flat positions of the positive entries of the float ``keep`` (≥ 0), in order.

    nonzero costs ~1 ns per entry scanned. A sparse mask is scanned as 8-byte words first, and then only the bytes
    of the nonzero words: about 3× faster when under ~3% of the words are nonzero, slower otherwise.
    """
    size = keep.numel()
    mask = torch.empty(-(-size // 8) * 8, dtype=torch.bool, device=keep.device)
    mask[size:] = False
    mask[:size].view(keep.shape).copy_(keep)  # positive → True (faster than a comparison kernel on CPU)
    words = mask.view(torch.int64)
    if 32 * int(torch.count_nonzero(words)) > size:
        return mask.nonzero().squeeze(1)
    hit = words.nonzero().squeeze(1)
    byte = mask.view(-1, 8).index_select(0, hit).view(-1).nonzero().squeeze(1)
    return hit.index_select(0, byte >> 3).mul_(8).add_(byte & 7)


@dataclass
class _Packing:
    """Selected entries of each row of a (rows, n) tensor, packed column-wise into a (K, rows) matrix.

    Row r's selected entries fill column r from the top, K being the largest count; the column layout makes the
    per-row reductions of the threshold solve run across rows (vectorised) instead of along short rows.
    """

    index: Tensor  # (M,) flat memory positions of the entries in the source
    slot: Tensor  # (M,) flat positions in the (K * rows) matrix
    shape: tuple[int, int]  # (K, rows)

    @staticmethod
    def select(keep: Tensor) -> _Packing:
        """Pack the entries where the (rows, n) float ``keep`` (a view of the source) is positive."""
        rows, n = keep.shape
        flat = _positive_positions(keep)
        row = flat.div(n, rounding_mode="floor")
        index = row * keep.stride(0) + (flat - row * n) * keep.stride(1)
        counts = torch.bincount(row, minlength=rows)
        width = max(1, int(counts.max()) if index.numel() else 0)
        position = torch.arange(index.numel(), device=keep.device) - (counts.cumsum(0) - counts).index_select(0, row)
        return _Packing(index, position * rows + row, (width, rows))

    def pack(self, source: Tensor, fill: float) -> Tensor:
        """The selected entries of the contiguous ``source`` as a (K, rows) matrix, ``fill`` in unused slots."""
        packed = source.new_full((self.shape[0] * self.shape[1],), fill)
        return packed.scatter_(0, self.slot, source.view(-1).index_select(0, self.index)).view(self.shape)

    def unpack(self, packed: Tensor, out: Tensor) -> Tensor:
        """Scatter a (K, rows) matrix into ``out`` (contiguous, the source's shape), zero elsewhere."""
        out.zero_().view(-1).scatter_(0, self.index, packed.view(-1).index_select(0, self.slot))
        return out

    def then(self, inner: _Packing) -> _Packing:
        """The packing of ``inner`` (a selection within this packed matrix) in terms of the original source."""
        origin = self.index.new_zeros(self.shape[0] * self.shape[1]).scatter_(0, self.slot, self.index)
        return _Packing(origin.index_select(0, inner.index), inner.slot, inner.shape)


def _powers(d: Tensor, exponent: float | Tensor) -> Tensor:
    """d^exponent for d ≥ 0 and exponent ≥ 0, exactly 0 where d = 0 (also for exponent 0).

    exp/log with the argument kept above −60: the CPU exp kernel is ~10× slower on underflowing arguments, and
    the entries it changes are below 1e-26, far under the precision of a probability that sums to 1.
    """
    log_d = d.clamp(min=torch.finfo(d.dtype).tiny).log_()
    return log_d.mul_(exponent).clamp_(min=-60.0).exp_().mul_(d.sign())


def _support_weights(p: Tensor, alpha: float | Tensor) -> Tensor:
    """s = p^{2−α} on the support of the packed p, 0 elsewhere: the weights of the α-entmax Jacobian."""
    return p.sign() if isinstance(alpha, float) and alpha == 2.0 else _powers(p, 2 - alpha)


def _repack(
    scores: Tensor, d: Tensor, packing: _Packing, support: Tensor, height: int
) -> tuple[Tensor, Tensor, _Packing]:
    """Drop the entries at or below τ (d = 0) once every column's ``support`` fits in half of the matrix.

    Newton iterates from below only rise, so such entries never return to the support. Repacking costs about two
    passes over the matrix: it is only done on a matrix at least ``height`` tall.
    """
    if scores.shape[0] < height or 2 * int(support.max()) > scores.shape[0]:
        return scores, d, packing
    inner = _Packing.select(d.t())
    return inner.pack(scores, NEG_INF), inner.pack(d, 0.0), packing.then(inner)


def _l2_step(d: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """A Newton step of ‖d‖₂ − 1 along dim 1 (d = [X − τ]₊, τ a lower bound), with the norm and sum it used.

    The step keeps τ a lower bound of the root of ‖[X − τ]₊‖₂ = 1 (convexity), hence of τ for every α ≥ 1.5, where
    d^{1/(α−1)} ≥ d² on [0, 1]. It needs reductions only, no full-size temporaries.
    """
    norm = torch.linalg.vector_norm(d, dim=1, keepdim=True)
    total = d.sum(1, keepdim=True)
    step = (norm - 1).mul_(norm).div_(total.clamp(min=torch.finfo(d.dtype).tiny))
    return step.clamp_(min=0), norm, total  # ≥ 0 but for rounding; below 0 every entry would turn positive


def _entmax15_threshold(d: Tensor, scratch: Tensor) -> None:
    """Make the dense d = [X − τ]₊ (τ a lower bound) exact for Σ [X − τ]₊² = 1 on each row, in place.

    Newton steps on ‖d‖₂ − 1 from below until one is under √eps, then the closed form on the support (the smaller
    root of Σ_S (X − τ)² = 1), exact when consistent with that support (no entry falls below it), else one more
    Newton step (error ~eps). ``scratch`` (like d) spares full-size temporaries, whose fresh pages cost more than
    the arithmetic.
    """
    settle = math.sqrt(torch.finfo(d.dtype).eps)
    for _ in range(MAX_THRESHOLD_ITERS):
        step, norm, total = _l2_step(d)
        if float(step.max()) <= settle:
            break
        d.sub_(step).clamp_(min=0)
    support = torch.sign(d, out=scratch).sum(1, keepdim=True)
    k = support.clamp(min=1)
    mean = total / k
    delta = (1 - norm.square() + total * mean) / k  # (1 − Σ_S (d − mean)²) / k
    closed = mean - delta.clamp(min=0).sqrt()
    slack = 8 * torch.finfo(d.dtype).eps
    kept = torch.sub(d, (closed - slack).clamp_(min=0), out=scratch).clamp_(min=0).sign_().sum(1, keepdim=True)
    shift = torch.where((delta >= 0) & (kept == support) & (support > 0), closed, step)
    d.sub_(shift.clamp_(min=0)).clamp_(min=0)


def _michelot_threshold(scores: Tensor, packing: _Packing, tau: Tensor) -> tuple[Tensor, Tensor, _Packing]:
    """Exact sparsemax τ (Σ [X − τ]₊ = 1) of each column of the packed X, from a lower bound ``tau`` (1, rows).

    Michelot's iteration τ ← (Σ_S X − 1)/|S| on the support S = {X > τ} is Newton's method from below; once the
    support stops changing τ is that closed form on it, i.e. exact. Returns τ and the (repacked) scores and packing.
    """
    previous = None
    for _ in range(MAX_THRESHOLD_ITERS):
        d = (scores - tau).clamp_(min=0)
        support = d.sign().sum(0, keepdim=True)
        if previous is not None and torch.equal(support, previous):
            break
        previous = support
        scores, d, packing = _repack(scores, d, packing, support, REPACK_HEIGHT)
        # columns without candidates (fully masked rows) stay finite; the step is ≥ 0 but for rounding
        tau += ((d.sum(0, keepdim=True) - 1) / support.clamp(min=1)).clamp_(min=0)
    return tau, scores, packing


def _newton_probabilities(
    scores: Tensor, packing: _Packing, alpha: float | Tensor, tau: Tensor
) -> tuple[Tensor, _Packing]:
    """p for any 1 < α ≤ 2 by Newton on h(τ) = ‖[X − τ]₊‖_q − 1, q = 1/(α−1), from a lower bound ``tau`` (1, rows).

    h is convex and decreasing, so the iterates rise to τ and converge quadratically: once a step is below √eps,
    p is evaluated after one more step (error ~eps) and renormalised. Returns p and its (repacked) packing.
    """
    q = 1 / (alpha - 1)
    tiny = torch.finfo(scores.dtype).tiny
    settle = math.sqrt(torch.finfo(scores.dtype).eps)
    settled = False
    for _ in range(MAX_THRESHOLD_ITERS):
        d = (scores - tau).clamp_(min=0)
        if scores.shape[0] >= REPACK_HEIGHT_POWERS:
            scores, d, packing = _repack(scores, d, packing, d.sign().sum(0), REPACK_HEIGHT_POWERS)
        powers = _powers(d, q - 1)
        slope = powers.sum(0, keepdim=True)  # −h'(τ) = Σ (d / ‖d‖_q)^{q−1}, times ‖d‖_q^{q−1}
        norm_q = powers.mul_(d).sum(0, keepdim=True)  # powers is now d^q
        if settled:
            break
        log_norm = norm_q.clamp_(min=tiny).log_().div_(q)
        slope = slope.mul_(torch.exp((1 - q) * log_norm)).clamp_(min=tiny)
        # τ ≥ −1 always (p ≤ 1); the clamp keeps columns without candidates at −1
        new_tau = (tau + torch.expm1(log_norm).div_(slope)).clamp_(min=-1.0)
        settled = bool((new_tau - tau).abs().max() <= settle)
        tau = new_tau
    return powers.div_(norm_q.clamp_(min=tiny)), packing


def _entmax_forward(z: Tensor, alpha: float | Tensor) -> tuple[Tensor, _Packing | None, Tensor]:
    """α-entmax of the contiguous (rows, n) scores ``z``: the output, and the packing and packed p behind it.

    entmax15 is solved exactly on the dense rows (no packing: cheaper there, as its iterations need no counts);
    sparsemax and the general α pack the candidates left by a first narrowing on the dense rows.
    """
    zmax = z.amax(dim=1, keepdim=True)
    shift = zmax.nan_to_num(neginf=0.0)  # fully masked rows: no shift
    # Support entries have p ≤ 1: X = (α−1)(z − zmax) > τ ≥ −1, i.e. z > zmax − 1/(α−1). The slack only absorbs
    # rounding and starts from τ0 = −1 − (α−1)·slack instead. Fully masked rows get a threshold of +inf.
    slack = 1e-3 / (alpha - 1) + 1e-5 * shift.abs()
    d = (z - (zmax - 1 / (alpha - 1) - slack).nan_to_num_(neginf=math.inf)).clamp_(min=0).mul_(alpha - 1)
    tau = -1 - (alpha - 1) * slack  # d = [X − τ]₊, the working rows, and the output buffer below
    if isinstance(alpha, float) and alpha == 1.5:
        p = torch.empty_like(d)
        _entmax15_threshold(d, p)
        return torch.mul(d, d, out=p), None, d  # p, and d = p^{1/2}: the Jacobian weights
    # Newton steps of ‖d‖₂ − 1 on the dense rows narrow the candidates before packing (a lower bound for α ≥ 1.5;
    # rows below keep τ0); one suffices for sparsemax, whose candidates are few.
    below = alpha < 1.5 if isinstance(alpha, Tensor) else None
    if isinstance(alpha, float):
        dense_steps = 1 if alpha == 2.0 else DENSE_STEPS if alpha >= 1.5 else 0
    else:
        dense_steps = 0 if bool(below.all()) else DENSE_STEPS
    for _ in range(dense_steps):
        step = _l2_step(d)[0]
        if below is not None:
            step.masked_fill_(below, 0.0)
        d.sub_(step).clamp_(min=0)
        tau = tau + step
    packing = _Packing.select(d)
    alpha_t = alpha.t() if isinstance(alpha, Tensor) else alpha
    scores = packing.pack(z, NEG_INF).sub_(shift.t()).mul_(alpha_t - 1)
    if isinstance(alpha, float) and alpha == 2.0:
        tau, scores, packing = _michelot_threshold(scores, packing, tau.t())
        p = (scores - tau).clamp_(min=0)
    else:
        p, packing = _newton_probabilities(scores, packing, alpha_t, tau.t())
    return packing.unpack(p, d), packing, p


def _jacobian_product(s: Tensor, grad: Tensor, dim: int) -> tuple[Tensor, Tensor]:
    """dz = s⊙(g − v), v = ⟨s,g⟩/Σs along ``dim``, for the Jacobian weights s = p^{2−α}; returns dz and v.

    Computed as s⊙g − s·v in the one output buffer: full-size temporaries cost more than the arithmetic.
    """
    dz = torch.mul(s, grad)
    v = dz.sum(dim, keepdim=True) / s.sum(dim, keepdim=True).clamp_(min=torch.finfo(s.dtype).tiny)
    return dz.addcmul_(s, v, value=-1), v


class EntmaxFunction(torch.autograd.Function):
    """α-entmax over the last dim of contiguous (rows, n) scores; ``alpha`` is a float or a (rows, 1) tensor."""

    @staticmethod
    def forward(ctx: FunctionCtx, z: Tensor, alpha: float | Tensor) -> Tensor:
        with torch.autocast(z.device.type, enabled=False):  # e.g. CPU autocast would run linalg ops in bf16
            out, packing, p = _entmax_forward(z, alpha)
        ctx.alpha = alpha if isinstance(alpha, float) else None
        ctx.packing = None if packing is None else (packing.shape,)
        if packing is None:  # dense entmax15: p holds the Jacobian weights p^{1/2}
            ctx.save_for_backward(p)
        else:
            ctx.save_for_backward(p, packing.index, packing.slot, alpha if isinstance(alpha, Tensor) else None)
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx: FunctionCtx, grad: Tensor) -> tuple[Tensor, Tensor | None]:
        if ctx.packing is None:
            return _jacobian_product(ctx.saved_tensors[0], grad, dim=1)[0], None
        p, index, slot, alpha_rows = ctx.saved_tensors
        packing = _Packing(index, slot, ctx.packing[0])
        alpha = ctx.alpha if alpha_rows is None else alpha_rows.t()
        g = packing.pack(grad.contiguous(), 0.0)
        dz, v = _jacobian_product(_support_weights(p, alpha), g, dim=0)
        d_alpha = None
        if alpha_rows is not None and ctx.needs_input_grad[1]:
            q = 1 / (alpha - 1)
            log_p = p.clamp(min=torch.finfo(p.dtype).tiny).log_()
            d_alpha = (q * ((q - log_p).mul_(p).mul_(g - v)).sum(0, keepdim=True)).t()
        return packing.unpack(dz, torch.empty_like(grad)), d_alpha


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
