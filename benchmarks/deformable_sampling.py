"""Multi-scale deformable sampling, forward + backward, against the official pure-PyTorch algorithm.

    OMP_WAIT_POLICY=PASSIVE python benchmarks/deformable_sampling.py --threads 2 --repeats 10

Shape: Deformable DETR's encoder on an 800x1066 image (levels of stride 8, 16, 32, 64: 100x134, 50x67, 25x34,
13x17; every cell is a query), batch 2, 8 heads of 32 channels, 4 points per level. The reference is the official
repository's pure-PyTorch algorithm (``ms_deform_attn_core_pytorch``, written out below): one ``grid_sample`` per
level, all levels' samples stacked, then weighted and summed. Ours is
:func:`sparse_detector.attention.deformable.ms_deform_attn_sample`: one ``grid_sample`` per level, weighted and
summed level by level; with sparse weights (``--zeros``: the share of zero weights, as sparsemax gives) it samples
only the points of nonzero weight. Inputs and upstream gradients are made outside the timed region; the two run
in turn (reference, ours, reference, ...), median of ``--repeats`` after ``--warmup``.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F

from sparse_detector.attention.deformable import ms_deform_attn_sample

LEVELS = [(100, 134), (50, 67), (25, 34), (13, 17)]


def official_algorithm(value, shapes, locations, weights):
    """The official reference algorithm: per-level grid_sample, stack every level's samples, weight, sum."""
    batch, _, heads, dim = value.shape
    _, queries, _, levels, points, _ = locations.shape
    per_level = value.split([h * w for h, w in shapes], dim=1)
    grids = 2 * locations - 1
    samples = []
    for level, (h, w) in enumerate(shapes):
        level_value = per_level[level].flatten(2).transpose(1, 2).reshape(batch * heads, dim, h, w)
        grid = grids[:, :, :, level].transpose(1, 2).flatten(0, 1)
        samples.append(F.grid_sample(level_value, grid, mode="bilinear", padding_mode="zeros", align_corners=False))
    weights = weights.transpose(1, 2).reshape(batch * heads, 1, queries, levels * points)
    out = (torch.stack(samples, dim=-2).flatten(-2) * weights).sum(-1).view(batch, heads * dim, queries)
    return out.transpose(1, 2).contiguous()


def make_inputs(zeros: float, generator: torch.Generator) -> tuple[list[torch.Tensor], torch.Tensor]:
    shapes = torch.tensor(LEVELS)
    length = int(shapes.prod(1).sum())
    value = torch.randn(2, length, 8, 32, generator=generator)
    locations = torch.rand(2, length, 8, 4, 4, 2, generator=generator)
    logits = torch.randn(2, length, 8, 16, generator=generator)
    if zeros > 0:  # zero the smallest weights of every row, then renormalise (as a sparse map would)
        threshold = logits.quantile(zeros, dim=-1, keepdim=True)
        logits = logits.masked_fill(logits <= threshold, float("-inf"))
    weights = torch.softmax(logits, -1).view(2, length, 8, 4, 4)
    grad = torch.randn(2, length, 8 * 32, generator=generator)
    return [value, locations, weights], grad


def timed(function: Callable, inputs: list[torch.Tensor], grad: torch.Tensor) -> float:
    leaves = [x.clone().requires_grad_(True) for x in inputs]
    start = time.perf_counter()
    function(*leaves).backward(grad)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--zeros", type=float, nargs="+", default=[0.0, 0.75], help="shares of zero weights")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"CPU ({platform.processor() or platform.machine()}), threads {args.threads}, torch {torch.__version__}\n")
    print("| zero weights | official s | ours s | ours / official |\n|---:|---:|---:|---:|")
    shapes = torch.tensor(LEVELS)
    for zeros in args.zeros:
        inputs, grad = make_inputs(zeros, torch.Generator().manual_seed(0))
        functions = {
            "official": lambda v, loc, w: official_algorithm(v, LEVELS, loc, w),
            "ours": lambda v, loc, w, skip=zeros > 0: ms_deform_attn_sample(v, shapes, loc, w, skip_zero_weights=skip),
        }
        times: dict[str, list[float]] = {name: [] for name in functions}
        for repeat in range(args.warmup + args.repeats):
            for name, function in functions.items():
                seconds = timed(function, inputs, grad)
                if repeat >= args.warmup:
                    times[name].append(seconds)
        official, ours = (statistics.median(times[name]) for name in functions)
        print(f"| {zeros:.2f} | {official:.3f} | {ours:.3f} | {ours / official:.2f} |")


if __name__ == "__main__":
    main()
