"""Time the attention maps against softmax in one process, on the score distributions a DETR produces.

Shapes: decoder cross-attention (batch 2 × 8 heads, 100 queries, 850 keys) and encoder self-attention
(2 × 8, 850 × 850 keys); TVMax lays the 850 keys out as a 25 × 34 grid. Scores are N(0, σ²) with σ = 0.1
(``uniform``: near-uniform, an untrained model), 1 (``normal``) or 3 (``peaked``: a trained model); α-entmax is
timed for each α of ``--alphas`` as one α tensor per head with its gradient (the learnable α's path), TVMax for
each λ of ``--tv-lambdas`` (the prox fuses more of the grid as λ/σ grows; on a GPU also with the prox's iterations
as tensor operations instead of its Triton kernel). Forward and forward+backward of each map are timed in turn with
softmax's (so that load changes on a shared machine hit both alike), inputs and upstream gradients made before the
timed region; medians after warm-up, as ratios to softmax.
``--library`` also times the ``entmax`` library's counterpart, apart (its full-row sorts churn memory);
``--adasplash`` (a GPU only) times AdaSplash's Triton entmax (``pip install adasplash``; one α per call, no ∂/∂α,
a fixed number of threshold iterations) apart and prints its largest error and ours against a float64 solve.

    OMP_WAIT_POLICY=PASSIVE python benchmarks/activations.py --threads 2 --repeats 10 --shapes decoder
    python benchmarks/activations.py --maps alpha_entmax --alphas 1.01 1.1 1.5 --scores uniform
    python benchmarks/activations.py --device cuda --repeats 50     # on a GPU: the tensor-operation path
    python benchmarks/activations.py --device cuda --repeats 50 --adasplash --maps sparsemax entmax15 alpha_entmax
    python benchmarks/activations.py --maps tvmax --clock cpu       # CPU time instead of wall time (shared machine)
    python benchmarks/activations.py --maps tvmax --tv-lambdas 0.1 1 --scores uniform
"""

from __future__ import annotations

import argparse
import importlib
import os
import platform
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from types import ModuleType
from unittest import mock

import entmax
import torch
from torch import Tensor

from sparse_detector.attention import entmax15, entmax_alpha, sparsemax, tvmax

SHAPES = {"decoder": (2, 8, 100, 850), "encoder": (2, 8, 850, 850)}
SCORES = {"uniform": 0.1, "normal": 1.0, "peaked": 3.0}  # σ of N(0, σ²) scores
GRID = (25, 34)
MAPS = ["sparsemax", "entmax15", "alpha_entmax", "tvmax"]

Map = Callable[[Tensor], Tensor]


@dataclass
class Case:
    """One row: our map, its exact float64 value (None: no reference), and other implementations timed apart."""

    ours: Map
    exact: Callable[[Tensor], Tensor] | None = None
    others: dict[str, Map] = field(default_factory=dict)


def _adasplash() -> ModuleType | None:
    """AdaSplash's Triton entmax, or None where it is not installed."""
    try:
        return importlib.import_module("adasplash")
    except ImportError:
        return None


def _maps(
    names: list[str], alphas: list[float], tv_lambdas: list[float], heads: int, device: torch.device, adasplash: bool
) -> dict[str, Case]:
    """Row label -> the case of each requested map (``adasplash``: with AdaSplash's counterpart)."""
    triton = _adasplash() if adasplash else None
    maps: dict[str, Case] = {}
    if "sparsemax" in names:
        maps["sparsemax"] = Case(sparsemax, lambda x: entmax.sparsemax(x, dim=-1), {"library": entmax.sparsemax})
        if triton:
            maps["sparsemax"].others["adasplash"] = triton.triton_sparsemax
    if "entmax15" in names:
        maps["entmax15"] = Case(entmax15, lambda x: entmax.entmax15(x, dim=-1), {"library": entmax.entmax15})
        if triton:
            maps["entmax15"].others["adasplash"] = triton.triton_entmax15
    for alpha in alphas if "alpha_entmax" in names else []:
        per_head = torch.full((1, heads, 1, 1), alpha, device=device, requires_grad=True)
        case = Case(
            lambda x, a=per_head: entmax_alpha(x, a),
            lambda x, a=alpha: entmax.entmax_bisect(x, a, dim=-1, n_iter=100),
            {"library": lambda x, a=per_head: entmax.entmax_bisect(x, a.expand(*x.shape[:-1], 1), dim=-1)},
        )
        if triton:  # one float α per call
            case.others["adasplash"] = lambda x, a=alpha: triton.triton_entmax(x, alpha=a)
        maps[f"α-entmax, α = {alpha} (per-head tensor)"] = case
    for lam in tv_lambdas if "tvmax" in names else []:
        case = Case(lambda x, lam=lam: tvmax(x, GRID, lam))
        if device.type == "cuda":  # the prox's iterations as tensor operations, without the Triton kernel
            case.others["tensor ops"] = lambda x, lam=lam: _without_triton(lambda: tvmax(x, GRID, lam))
        maps[f"TVMax (λ = {lam}, {GRID[0]} × {GRID[1]} grid)"] = case
    return maps


def _without_triton(call: Callable[[], Tensor]) -> Tensor:
    """call() with TVMax's FISTA iterations as tensor operations (see ``sparse_detector.attention.tvmax``)."""
    with mock.patch.object(importlib.import_module("sparse_detector.attention.tvmax"), "_uses_triton", lambda z: False):
        return call()


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


CLOCKS = {"wall": time.perf_counter, "cpu": time.process_time}  # cpu: the process's CPU time, all threads


def _time(fn: Callable[[], object], clock: Callable[[], float] = time.perf_counter) -> float:
    synchronize = torch.cuda.synchronize if torch.cuda.is_initialized() else lambda: None
    synchronize()
    start = clock()
    fn()
    synchronize()
    return clock() - start


Medians = dict[tuple[str, str], float]  # (implementation, pass) -> median seconds


def _round_robin(
    calls: dict[tuple[str, str], Callable[[], object]],
    repeats: int,
    warmup: int,
    clock: Callable[[], float] = time.perf_counter,
) -> Medians:
    """Median seconds per call, the calls timed in turn so that load changes hit all of them alike."""
    for _ in range(warmup):
        for call in calls.values():
            call()
    times: dict[tuple[str, str], list[float]] = {key: [] for key in calls}
    for _ in range(repeats):
        for key, call in calls.items():
            times[key].append(_time(call, clock))
    return {key: statistics.median(values) for key, values in times.items()}


@dataclass
class Row:
    """One map's medians, and the largest |p − exact| per implementation where measured."""

    medians: Medians
    errors: dict[str, float] = field(default_factory=dict)


def run(shape: tuple[int, ...], scale: float, maps: dict[str, Case], args: argparse.Namespace) -> dict[str, Row]:
    """Per map: ours timed round-robin with softmax (the ratio's reference), then each other implementation alone."""
    x = torch.randn(shape, device=args.device) * scale
    x_grad = x.clone().requires_grad_()
    grad = torch.randn(shape, device=args.device)

    def passes(impl: str, f: Map) -> dict[tuple[str, str], Callable[[], object]]:
        return {(impl, "fwd"): lambda: f(x), (impl, "fwd+bwd"): lambda: f(x_grad).backward(grad)}

    softmax = lambda z: torch.softmax(z, dim=-1)  # noqa: E731
    results = {}
    for name, case in maps.items():
        clock = CLOCKS[args.clock]
        row = Row(
            _round_robin({**passes("softmax", softmax), **passes("ours", case.ours)}, args.repeats, args.warmup, clock)
        )
        others = {impl: f for impl, f in case.others.items() if impl != "library" or args.library}
        for impl, f in others.items():
            row.medians.update(_round_robin(passes(impl, f), args.repeats, args.warmup, clock))
        if "adasplash" in others and case.exact is not None:  # its threshold is iterated a fixed number of times
            with torch.no_grad():
                exact = case.exact(x.double())
                for impl, f in {"ours": case.ours, "adasplash": others["adasplash"]}.items():
                    row.errors[impl] = (f(x).double() - exact).abs().max().item()
        results[name] = row
    return results


def tables(results: dict[str, dict[str, dict[str, Row]]], scores: list[str]) -> str:
    """The forward+backward ratio to softmax per map and score distribution, then every median in ms, then the
    other implementations' times over ours and the largest errors where measured."""
    head = "| shape | map | " + " | ".join(f"N(0, {SCORES[s]}²) ({s})" for s in scores) + " |"
    lines = ["forward+backward / softmax's:", "", head, "|---|---|" + "---:|" * len(scores)]
    for shape, per_map in results.items():
        for name in next(iter(per_map.values())):
            cells = []
            for s in scores:
                medians = per_map[s][name].medians
                cells.append(f"{medians[('ours', 'fwd+bwd')] / medians[('softmax', 'fwd+bwd')]:.2f}×")
            lines.append(f"| {shape} | {name} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "medians in ms (fwd / fwd+bwd); other implementations' fwd+bwd over ours, and max |p − exact| (float64 "
        "solve) where measured:",
        "",
        "| shape | scores | map | softmax | ours | fwd / softmax | other / ours fwd+bwd | max error |",
        "|---|---|---|---:|---:|---:|---|---|",
    ]
    for shape, per_map in results.items():
        for s, per_name in per_map.items():
            for name, row in per_name.items():
                m = row.medians
                soft, ours = ((m[(impl, "fwd")], m[(impl, "fwd+bwd")]) for impl in ("softmax", "ours"))
                others = sorted({impl for impl, _ in m} - {"softmax", "ours"})
                cells = [
                    shape,
                    s,
                    name,
                    f"{1e3 * soft[0]:.2f} / {1e3 * soft[1]:.2f}",
                    f"{1e3 * ours[0]:.2f} / {1e3 * ours[1]:.2f}",
                    f"{ours[0] / soft[0]:.2f}×",
                    ", ".join(f"{impl} {m[(impl, 'fwd+bwd')] / ours[1]:.2f}×" for impl in others) or "–",
                    ", ".join(f"{impl} {err:.1e}" for impl, err in row.errors.items()) or "–",
                ]
                lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", help="cpu (default), cuda or cuda:N")
    parser.add_argument("--threads", type=int, default=2, help="torch intra-op threads (default 2)")
    parser.add_argument("--repeats", type=int, default=10, help="timed runs per case, median reported (>= 10)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed runs per case first")
    parser.add_argument("--shapes", nargs="+", choices=sorted(SHAPES), default=["decoder", "encoder"])
    parser.add_argument("--scores", nargs="+", choices=list(SCORES), default=list(SCORES), help="score distributions")
    parser.add_argument("--alphas", nargs="+", type=float, default=[1.1, 1.3, 1.5], help="α-entmax's α, in (1, 2]")
    parser.add_argument("--tv-lambdas", nargs="+", type=float, default=[0.1], help="TVMax's λ (default 0.1)")
    parser.add_argument("--maps", nargs="+", choices=MAPS, default=MAPS, help="maps to time, each against softmax")
    parser.add_argument("--library", action="store_true", help="also time the entmax library's counterparts")
    parser.add_argument(
        "--adasplash", action="store_true", help="also time AdaSplash's Triton entmax and compare errors (GPU only)"
    )
    parser.add_argument(
        "--clock",
        choices=sorted(CLOCKS),
        default="wall",
        help="wall (default) or cpu: the process's CPU time over all threads, steadier on a shared machine",
    )
    args = parser.parse_args()
    if args.clock == "cpu" and args.device.startswith("cuda"):
        parser.error("--clock cpu times the CPU only; use the wall clock on a GPU")
    if args.adasplash and not args.device.startswith("cuda"):
        parser.error("--adasplash runs Triton kernels: use it with --device cuda")
    if args.adasplash and _adasplash() is None:
        parser.error("--adasplash: the adasplash package is not installed (pip install adasplash)")
    if args.repeats < 10:
        parser.error("--repeats must be at least 10")
    if any(lam < 0 for lam in args.tv_lambdas):
        parser.error(f"--tv-lambdas must be >= 0, got {args.tv_lambdas}")
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    args.device = torch.device(args.device)
    where = torch.cuda.get_device_name(args.device) if args.device.type == "cuda" else f"{args.threads} threads"
    print(
        f"torch {torch.__version__}, entmax {entmax.__version__}, {where}, {_cpu_name()} ({os.cpu_count()} CPUs), "
        f"OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', 'unset')}, "
        f"{args.clock} clock, median of {args.repeats} after {args.warmup} warm-up"
    )
    results = {}
    for shape in args.shapes:
        maps = _maps(args.maps, args.alphas, args.tv_lambdas, SHAPES[shape][1], args.device, args.adasplash)
        results[f"{shape} {SHAPES[shape]}"] = {s: run(SHAPES[shape], SCORES[s], maps, args) for s in args.scores}
    print(tables(results, args.scores))


if __name__ == "__main__":
    main()
