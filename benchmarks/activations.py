"""Time the attention activations against softmax and the ``entmax`` library, in one process, on the same inputs.

Shapes: decoder cross-attention (batch 2 × 8 heads, 100 queries, 850 keys) and encoder self-attention
(2 × 8, 850 × 850 keys); TVMax lays the 850 keys out as a 25 × 34 grid, at the decoder shape only unless
``--tvmax-encoder`` (about 2 s per call there on 2 CPU cores). Forward and forward+backward (with the α gradient for the
learnable α-entmax) of each map are timed round-robin with softmax, so that load changes on a shared machine hit
both alike, and the library's counterpart apart; the table reports medians after warm-up, as ratios to softmax and
to the library.

    python benchmarks/activations.py --threads 2 --repeats 20
    python benchmarks/activations.py --device cuda --repeats 50     # on a GPU: the tensor-operation path
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
from collections.abc import Callable

import entmax
import torch
from torch import Tensor

from sparse_detector.attention import AlphaEntmax, entmax15, sparsemax, tvmax

SHAPES = {"decoder": (2, 8, 100, 850), "encoder": (2, 8, 850, 850)}
GRID = (25, 34)
TV_LAMBDA = 0.1


def _maps(
    heads: int, alpha: float, device: torch.device
) -> dict[str, tuple[Callable[[Tensor], Tensor], Callable[[Tensor], Tensor] | None]]:
    """name -> (ours, the entmax library's counterpart or None); ``alpha`` is the learnable α's initial value."""
    learnable = AlphaEntmax(num_heads=heads, alpha_init=alpha).to(device)
    library_alpha = torch.full((1, heads, 1, 1), alpha, device=device, requires_grad=True)
    return {
        "softmax": (lambda x: torch.softmax(x, dim=-1), None),
        "sparsemax": (sparsemax, lambda x: entmax.sparsemax(x, dim=-1)),
        "entmax15": (entmax15, lambda x: entmax.entmax15(x, dim=-1)),
        f"alpha_entmax (learnable α = {alpha})": (
            learnable,
            lambda x: entmax.entmax_bisect(x, library_alpha.expand(*x.shape[:-1], 1), dim=-1),
        ),
        "tvmax (λ=0.1, 25×34)": (lambda x: tvmax(x, GRID, TV_LAMBDA), None),
    }


def _cpu_name() -> str:
    """The CPU model name (as ``lscpu`` shows it) where /proc/cpuinfo exists, else the platform's processor."""
    try:
        with open("/proc/cpuinfo") as info:
            for line in info:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _time(fn: Callable[[], object]) -> float:
    synchronize = torch.cuda.synchronize if torch.cuda.is_initialized() else lambda: None
    synchronize()
    start = time.perf_counter()
    fn()
    synchronize()
    return time.perf_counter() - start


Medians = dict[tuple[str, str], float]  # (implementation, pass) -> median seconds


def _round_robin(calls: dict[tuple[str, str], Callable[[], object]], repeats: int, warmup: int) -> Medians:
    """Median seconds per call, the calls timed in turn so that load changes hit all of them alike."""
    for _ in range(warmup):
        for call in calls.values():
            call()
    times: dict[tuple[str, str], list[float]] = {key: [] for key in calls}
    for _ in range(repeats):
        for key, call in calls.items():
            times[key].append(_time(call))
    return {key: statistics.median(values) for key, values in times.items()}


def run(
    shape: tuple[int, ...], names: list[str], alpha: float, device: torch.device, repeats: int, warmup: int
) -> dict[str, Medians]:
    """Per map: ours timed round-robin with softmax (the ratio's reference), then the library's counterpart alone.

    The library is timed apart because its full-row sorts churn memory, which would disturb the other timings.
    """
    x = torch.randn(shape, device=device)
    x_grad = x.clone().requires_grad_()
    grad = torch.randn(shape, device=device)

    def passes(impl: str, f: Callable[[Tensor], Tensor]) -> dict[tuple[str, str], Callable[[], object]]:
        return {(impl, "fwd"): lambda: f(x), (impl, "fwd+bwd"): lambda: f(x_grad).backward(grad)}

    maps = _maps(shape[1], alpha, device)
    softmax = maps["softmax"][0]
    results = {}
    for name, (ours, library) in maps.items():
        if name == "softmax" or name.split()[0] not in names:
            continue
        results[name] = _round_robin({**passes("softmax", softmax), **passes("ours", ours)}, repeats, warmup)
        if library is not None:
            results[name].update(_round_robin(passes("library", library), repeats, warmup))
    return results


def table(results: dict[str, dict[str, Medians]]) -> str:
    lines = [
        "| shape | map | fwd ms | fwd+bwd ms | softmax fwd / fwd+bwd ms | fwd / softmax | fwd+bwd / softmax | "
        "library fwd+bwd ms | library / ours fwd | library / ours fwd+bwd |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for shape_name, per_map in results.items():
        for name, medians in per_map.items():
            ours = {p: medians[("ours", p)] for p in ("fwd", "fwd+bwd")}
            soft = {p: medians[("softmax", p)] for p in ("fwd", "fwd+bwd")}
            library = {p: medians.get(("library", p)) for p in ("fwd", "fwd+bwd")}
            cells = [
                shape_name,
                name,
                f"{1e3 * ours['fwd']:.2f}",
                f"{1e3 * ours['fwd+bwd']:.2f}",
                f"{1e3 * soft['fwd']:.2f} / {1e3 * soft['fwd+bwd']:.2f}",
                f"{ours['fwd'] / soft['fwd']:.2f}×",
                f"{ours['fwd+bwd'] / soft['fwd+bwd']:.2f}×",
                "–" if library["fwd+bwd"] is None else f"{1e3 * library['fwd+bwd']:.1f}",
                "–" if library["fwd"] is None else f"{library['fwd'] / ours['fwd']:.1f}×",
                "–" if library["fwd+bwd"] is None else f"{library['fwd+bwd'] / ours['fwd+bwd']:.1f}×",
            ]
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", help="cpu (default), cuda or cuda:N")
    parser.add_argument("--threads", type=int, default=2, help="torch intra-op threads (default 2)")
    parser.add_argument("--repeats", type=int, default=20, help="timed runs per case, median reported (>= 10)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed runs per case first")
    parser.add_argument("--shapes", nargs="+", choices=sorted(SHAPES), default=["decoder", "encoder"])
    parser.add_argument("--alpha", type=float, default=1.5, help="initial value of the learnable α (default 1.5)")
    parser.add_argument("--tvmax-encoder", action="store_true", help="also time TVMax at the encoder shape")
    parser.add_argument(
        "--maps",
        nargs="+",
        choices=["sparsemax", "entmax15", "alpha_entmax", "tvmax"],
        default=["sparsemax", "entmax15", "alpha_entmax", "tvmax"],
        help="maps to time, each against softmax",
    )
    args = parser.parse_args()
    if args.repeats < 10:
        parser.error("--repeats must be at least 10")
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    device = torch.device(args.device)
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else f"{args.threads} threads"
    print(
        f"torch {torch.__version__}, entmax {entmax.__version__}, {where}, "
        f"{_cpu_name()} ({os.cpu_count()} CPUs), median of {args.repeats} after {args.warmup} warm-up"
    )
    results = {}
    for shape in args.shapes:
        maps = [m for m in args.maps if m != "tvmax" or shape == "decoder" or args.tvmax_encoder]
        results[f"{shape} {SHAPES[shape]}"] = run(SHAPES[shape], maps, args.alpha, device, args.repeats, args.warmup)
    print(table(results))


if __name__ == "__main__":
    main()
