"""Speed cost of batch-size-invariant evaluation: batches of one image size (no padding) against the old padded
batches, on the mixed-size images of tiny COCO.

Both run the same random-init small DETR (``shapes_tiny`` model, 80 classes) over the same images; reference =
padded batches of ``--batch-size`` in file order, ours = :func:`~sparse_detector.data.build.build_loader`'s
size-grouped batches. Interleaved, median of ``--repeats`` runs after one warm-up run of each. Also prints the
AP of both (the padded one is what changed with the batch size).

    PYTHONPATH=src .venv/bin/python benchmarks/eval_batching.py --threads 2 --repeats 10
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from sparse_detector import build_model, load_config
from sparse_detector.data.batching import collate_detection
from sparse_detector.data.build import build_dataset, build_loader
from sparse_detector.engine.evaluate import run_evaluation

TINY_COCO = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "tiny_coco"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=TINY_COCO, help="folder with train2017/ and annotations/")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--threads", type=int, default=2, help="torch intra-op threads")
    parser.add_argument("--repeats", type=int, default=10, help="timed runs of each (>= 3)")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    data = [
        f"data.val.images={args.data / 'train2017'}",
        f"data.val.annotations={args.data / 'annotations' / 'instances_train2017.json'}",
        "data.val_size=256",
        "data.max_size=384",
        "data.num_workers=0",
        "model.num_classes=80",
        f"train.eval_batch_size={args.batch_size}",
    ]
    config = load_config("shapes_tiny", data)
    torch.manual_seed(0)
    model = build_model(config).to(device).eval()
    dataset = build_dataset(config, "val")
    loaders = {
        "padded batches (reference)": DataLoader(dataset, batch_size=args.batch_size, collate_fn=collate_detection),
        "one size per batch (ours)": build_loader(dataset, config, train=False),
    }
    times: dict[str, list[float]] = {name: [] for name in loaders}
    aps = {}
    for round_ in range(args.repeats + 1):  # round 0 is the warm-up
        for name, loader in loaders.items():
            start = time.perf_counter()
            aps[name] = run_evaluation(model, None, loader, device, dataset.label_map).stats["AP"]
            if round_:
                times[name].append(time.perf_counter() - start)
    reference = statistics.median(times["padded batches (reference)"])
    print(f"{len(dataset)} images, batch size {args.batch_size}, {args.threads} threads, {args.device}")
    counts = ", ".join(f"{name} {len(loader)}" for name, loader in loaders.items())
    print(f"batches: {counts}\n")
    print("| loader | median s | × reference | AP |")
    print("|---|---:|---:|---:|")
    for name, values in times.items():
        median = statistics.median(values)
        print(f"| {name} | {median:.2f} | {median / reference:.2f} | {aps[name]:.5f} |")


if __name__ == "__main__":
    main()
