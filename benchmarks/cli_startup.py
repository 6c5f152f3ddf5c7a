"""Start-up time of the ``sparse-detector`` command line: ``--help`` of the program and of every subcommand.

Each command runs in a fresh interpreter (what a user waits for), interleaved with the reference (a bare
``python -c pass``) and with ``python -c "import torch"`` (what every ``--help`` paid when the CLI imported torch
eagerly); median of ``--repeats`` runs each after one warm-up round.

    PYTHONPATH=src .venv/bin/python benchmarks/cli_startup.py --repeats 10
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time

COMMANDS = {
    "python -c pass (reference)": ["-c", "pass"],
    "python -c 'import torch'": ["-c", "import torch"],
    "sparse-detector --help": ["-m", "sparse_detector.cli", "--help"],
    "sparse-detector train --help": ["-m", "sparse_detector.cli", "train", "--help"],
    "sparse-detector evaluate --help": ["-m", "sparse_detector.cli", "evaluate", "--help"],
    "sparse-detector data import --help": ["-m", "sparse_detector.cli", "data", "import", "--help"],
    "sparse-detector analyze --help": ["-m", "sparse_detector.cli", "analyze", "--help"],
}


def seconds(args: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run([sys.executable, *args], check=True, stdout=subprocess.DEVNULL, env=os.environ)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=10, help="timed runs of each (>= 3)")
    args = parser.parse_args()
    times: dict[str, list[float]] = {name: [] for name in COMMANDS}
    for round_ in range(args.repeats + 1):  # round 0 warms the file cache
        for name, command in COMMANDS.items():
            elapsed = seconds(command)
            if round_:
                times[name].append(elapsed)
    reference = statistics.median(times["python -c pass (reference)"])
    print(f"median of {args.repeats} runs each, interleaved; Python {sys.version.split()[0]}\n")
    print("| command | median s | × bare python |")
    print("|---|---:|---:|")
    for name, values in times.items():
        median = statistics.median(values)
        print(f"| `{name}` | {median:.3f} | {median / reference:.1f} |")


if __name__ == "__main__":
    main()
