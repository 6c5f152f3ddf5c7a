"""Drop-in ``nn.Linear`` and ``nn.Dropout`` (same parameters, names and semantics) that are faster on the CPU.

``linear`` / ``Linear``: fp32 CPU products in oneDNN, not in MKL. Why a replacement for a core op: PyTorch computes
fp32 matrix products on the CPU with MKL's sgemm, and on the 2-core AMD EPYC this project is benchmarked on MKL
gains nothing from its second thread at the transformer's shapes (a 512×256 by 256×2048 product: about 110
GFLOP/s on one thread, 80 on two), while oneDNN — the library behind PyTorch's CPU convolutions — runs the same
product as a 1×1 convolution over the rows laid out channels-last at about 210 GFLOP/s on two. Results equal
``F.linear``'s up to fp32 rounding. On other devices, for other dtypes and under autocast it is ``F.linear``.

``Dropout``: the mask drawn as ``uniform ≥ p`` instead of by ``bernoulli_``, whose CPU kernel is about 2× slower than
``rand_like`` (7.5 against 2.2 ms for a million numbers on one thread); forward + backward of a (2, 256, 2048)
dropout take about a third of ``F.dropout``'s. Same distribution: each element is kept with probability 1 − p and
scaled by 1 / (1 − p). On other devices it is ``nn.Dropout`` (CUDA has a fused kernel).

Measurements in ``benchmarks/RESULTS.md`` (the DETR-R50 training step against the official code).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

ONEDNN_ON_CPU = True
"""Route fp32 CPU products through oneDNN (``False``: always ``F.linear``; benchmarks switch it off for A/B)."""
FAST_CPU_DROPOUT = True
"""Draw CPU dropout masks with ``rand_like`` (``False``: always ``nn.Dropout``'s; for A/B in benchmarks)."""


def linear(x: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor:
    """``F.linear(x, weight, bias)``; on the CPU in fp32, computed as a oneDNN 1×1 convolution."""
    on_cpu_fp32 = x.device.type == "cpu" and x.dtype == torch.float32 and not torch.is_autocast_enabled("cpu")
    if not (ONEDNN_ON_CPU and on_cpu_fp32) or x.numel() == 0:  # (a convolution needs at least one row)
        return F.linear(x, weight, bias)
    in_features, out_features = weight.shape[1], weight.shape[0]
    rows = x.reshape(1, -1, 1, in_features).permute(0, 3, 1, 2)  # (1, in, rows, 1) in channels-last memory
    out = F.conv2d(rows, weight[:, :, None, None], bias)  # (1, out, rows, 1), channels-last
    return out.permute(0, 2, 3, 1).reshape(*x.shape[:-1], out_features)


class Linear(nn.Linear):
    """``nn.Linear`` (same parameters and names) computed by :func:`linear`."""

    def forward(self, x: Tensor) -> Tensor:
        return linear(x, self.weight, self.bias)


class Dropout(nn.Dropout):
    """``nn.Dropout`` whose CPU mask comes from ``rand_like`` (see the module's docstring)."""

    def forward(self, x: Tensor) -> Tensor:
        if not self.training or self.p == 0:
            return x
        if not FAST_CPU_DROPOUT or x.device.type != "cpu" or self.p == 1 or self.inplace:
            return super().forward(x)
        return x * torch.rand_like(x).ge_(self.p).div_(1 - self.p)
