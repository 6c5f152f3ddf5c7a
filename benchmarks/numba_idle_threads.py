"""How much numba's idle OpenMP threads slow torch's next operations, and what passive waiting buys.

numba's parallel kernels run on the system's GNU libgomp, a second OpenMP runtime beside torch's own. Each case runs
in a fresh process: 20 rounds of (entmax15 on the decoder shape, then 20 small products + adds timed), the products
alone timed the same way for reference. "spinning" is libgomp's default (the variable removed before numba loads its
runtime: what the package did before it set ``OMP_WAIT_POLICY=PASSIVE`` for numba), "passive" the package's default.

    python benchmarks/numba_idle_threads.py --rounds 5
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"


def child(spinning: bool) -> None:
    """Time torch products alone and right after numba kernels; print the two totals in seconds."""
    import torch

    from sparse_detector.attention.entmax import entmax15

    if spinning:
        os.environ.pop("OMP_WAIT_POLICY", None)  # before numba's first parallel loop loads libgomp
    torch.set_num_threads(2)
    scores, matrix = torch.randn(2, 8, 100, 850), torch.randn(256, 256)
    entmax15(scores, dim=-1)

    def products_time(after_kernel: bool) -> float:
        total = 0.0
        for _ in range(20):
            if after_kernel:
                entmax15(scores, dim=-1)
            start = time.perf_counter()
            for _ in range(20):
                matrix @ matrix + 1
            total += time.perf_counter() - start
        return total

    products_time(True)
    print(products_time(False), products_time(True))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5, help="fresh processes per case, interleaved")
    parser.add_argument("--child", choices=["spinning", "passive"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child == "spinning")
        return
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    env["PYTHONPATH"] = str(SRC)
    results: dict[str, list[tuple[float, float]]] = {"spinning": [], "passive": []}
    for _ in range(args.rounds):
        for case in results:
            out = subprocess.run([sys.executable, __file__, "--child", case], env=env, capture_output=True, text=True)
            alone, after = map(float, out.stdout.split())
            results[case].append((alone, after))
    print("| numba's idle threads | products alone (s) | right after a kernel (s) | slowest round after (s) |")
    print("|---|---:|---:|---:|")
    for case, rows in results.items():
        alone, after = statistics.median(r[0] for r in rows), statistics.median(r[1] for r in rows)
        print(f"| {case} | {alone:.3f} | {after:.3f} | {max(r[1] for r in rows):.3f} |")


if __name__ == "__main__":
    main()
