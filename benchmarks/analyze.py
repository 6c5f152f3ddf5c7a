"""Wall time of ``analyze`` (COCO evaluation + attention metrics of all sites + PAIBB) against plain ``evaluate``.

Both run the same random-init ``shapes_tiny`` DETR over the same loader of generated shapes images (the time does
not depend on training). Median of ``--repeats`` runs of each, interleaved, after one warm-up run of each.

    PYTHONPATH=src .venv/bin/python benchmarks/analyze.py --images 200 --threads 2
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch

from sparse_detector import build_criterion, build_model, load_config
from sparse_detector.data import generate_shapes
from sparse_detector.data.build import build_dataset, build_loader
from sparse_detector.engine.analyze import analyze
from sparse_detector.engine.evaluate import run_evaluation


def seconds(run: Callable[[], object]) -> float:
    start = time.perf_counter()
    run()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=200)
    parser.add_argument("--threads", type=int, default=2, help="torch intra-op threads")
    parser.add_argument("--repeats", type=int, default=5, help="timed runs of each (>= 3)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="config overrides")
    args = parser.parse_args()
    if args.repeats < 3:
        parser.error("--repeats must be at least 3")
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    with tempfile.TemporaryDirectory() as tmp:
        annotations = generate_shapes(tmp, args.images, seed=0, split_name="val")
        config = load_config(
            "shapes_tiny", [f"data.val.images={Path(tmp) / 'images'}", f"data.val.annotations={annotations}", *args.set]
        )
        torch.manual_seed(0)
        model = build_model(config).to(device).eval()
        matcher = build_criterion(config).matcher
        dataset = build_dataset(config, "val")
        loader = build_loader(dataset, config, train=False)
        runs = {
            "evaluate": lambda: run_evaluation(model, None, loader, device, dataset.label_map).stats,
            "analyze (all sites + PAIBB)": lambda: analyze(model, matcher, loader, device, dataset.label_map),
        }
        for run in runs.values():
            run()  # warm-up
        times: dict[str, list[float]] = {name: [] for name in runs}
        for _ in range(args.repeats):
            for name, run in runs.items():
                times[name].append(seconds(run))
    medians = {name: statistics.median(values) for name, values in times.items()}
    reference = medians["evaluate"]
    print(
        f"torch {torch.__version__}, {args.threads} threads, device {device}, {args.images} images, "
        f"batch {config.train.eval_batch_size}, median of {args.repeats} runs after a warm-up\n"
    )
    print("| run | median s | min s | images/s | ratio |")
    print("|---|---:|---:|---:|---:|")
    for name, values in times.items():
        median = medians[name]
        print(f"| {name} | {median:.2f} | {min(values):.2f} | {args.images / median:.1f} | {median / reference:.2f}× |")


if __name__ == "__main__":
    main()
