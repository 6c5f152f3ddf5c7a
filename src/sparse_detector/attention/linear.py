"""``linear`` / ``Linear``: ``F.linear`` / ``nn.Linear`` whose fp32 CPU products run in oneDNN, not in MKL.

Why a replacement for a core op: PyTorch computes fp32 matrix products on the CPU with MKL's sgemm, and on the
2-core AMD EPYC this project is benchmarked on MKL gains nothing from its second thread at the transformer's
shapes (a 512×256 by 256×2048 product: about 110 GFLOP/s on one thread, 80 on two), while oneDNN — the library
behind PyTorch's CPU convolutions — runs the same product as a 1×1 convolution over the rows laid out
channels-last at about 210 GFLOP/s on two (``benchmarks/RESULTS.md``). Results equal ``F.linear``'s up to fp32
rounding. On other devices, for other dtypes and under autocast it is ``F.linear`` itself.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

ONEDNN_ON_CPU = True
"""Route fp32 CPU products through oneDNN (``False``: always ``F.linear``; benchmarks switch it off for A/B)."""


def linear(x: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor:
    """``F.linear(x, weight, bias)``; on the CPU in fp32, computed as a oneDNN 1×1 convolution."""
    if not ONEDNN_ON_CPU or x.device.type != "cpu" or x.dtype != torch.float32 or torch.is_autocast_enabled("cpu"):
        return F.linear(x, weight, bias)
    in_features, out_features = weight.shape[1], weight.shape[0]
    rows = x.reshape(1, -1, 1, in_features).permute(0, 3, 1, 2)  # (1, in, rows, 1) in channels-last memory
    out = F.conv2d(rows, weight[:, :, None, None], bias)  # (1, out, rows, 1), channels-last
    return out.permute(0, 2, 3, 1).reshape(*x.shape[:-1], out_features)


class Linear(nn.Linear):
    """``nn.Linear`` (same parameters and names) computed by :func:`linear`."""

    def forward(self, x: Tensor) -> Tensor:
        return linear(x, self.weight, self.bias)
