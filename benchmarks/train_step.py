"""Training-step throughput (images/s): DETR-R50 paper config at 512x512 or the COCO size, and the tiny preset.

    python benchmarks/train_step.py --device cpu --threads 2 --repeats 10
    python benchmarks/train_step.py --cases detr_r50 --cross-attention softmax sparsemax alpha_entmax
    python benchmarks/train_step.py --cases detr_r50_coco --variants softmax encoder_self=alpha_entmax \
        decoder_cross=tvmax --set model.attention.encoder_self.alpha_init=1.1
    python benchmarks/train_step.py --cases shapes_tiny_deformable --variants softmax \
        encoder_self=sparsemax+decoder_cross=sparsemax
    python benchmarks/train_step.py --cases deformable_detr_r50 shapes_tiny_deformable --plain-layers-ab

One step = forward, Hungarian matching + losses, backward, gradient clipping, AdamW step, on random images with
three random boxes each. Median over ``--repeats`` steps after ``--warmup`` steps. One model per variant is built
and their steps are taken in turn (so that load changes hit all alike), each reported as a ratio to the first.
A variant is ``softmax`` (every site softmax) or ``site=map[+site=map...]``; ``--cross-attention M ...`` is short
for the variants ``decoder_cross=M``.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time
from collections.abc import Callable

import torch

from sparse_detector import build_criterion, build_model, load_config
from sparse_detector.attention import fast_layers
from sparse_detector.engine.device import resolve_device
from sparse_detector.engine.optim import build_optimizer

CASES = {
    # name: (preset, overrides, batch size, image (height, width))
    "detr_r50": ("detr_r50", ["model.backbone.pretrained=false"], 2, (512, 512)),
    "detr_r50_coco": ("detr_r50", ["model.backbone.pretrained=false"], 1, (800, 1066)),
    "shapes_tiny": ("shapes_tiny", [], 16, (128, 128)),
    "shapes_tiny_deformable": ("shapes_tiny_deformable", [], 16, (128, 128)),
    "deformable_detr_r50": ("deformable_detr_r50", ["model.backbone.pretrained=false"], 2, (512, 512)),
}


def random_targets(batch: int, num_classes: int, device: torch.device) -> list[dict[str, torch.Tensor]]:
    generator = torch.Generator().manual_seed(0)
    targets = []
    for _ in range(batch):
        centers = torch.rand(3, 2, generator=generator) * 0.6 + 0.2
        sizes = torch.rand(3, 2, generator=generator) * 0.2 + 0.1
        labels = torch.randint(num_classes, (3,), generator=generator)
        targets.append({"labels": labels.to(device), "boxes": torch.cat([centers, sizes], 1).to(device)})
    return targets


def variant_overrides(variant: str) -> list[str]:
    """``softmax`` -> no change; ``site=map[+site=map...]`` -> the activation overrides of those sites."""
    if variant == "softmax":
        return []
    return [f"model.attention.{site}.activation={name}" for site, name in (p.split("=") for p in variant.split("+"))]


def make_step(
    preset: str,
    overrides: list[str],
    batch: int,
    size: tuple[int, int],
    device: torch.device,
    args: argparse.Namespace,
) -> Callable[[], float]:
    """A model, criterion and optimiser for the config; returns a function that runs one step and times it."""
    config = load_config(preset, [*overrides, *args.set])
    model = build_model(config).to(device).train()
    criterion = build_criterion(config).to(device)
    optimizer = build_optimizer(model, config)
    images = torch.randn(batch, 3, *size, device=device)
    targets = random_targets(batch, config.model.num_classes, device)

    def step() -> float:
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        loss = criterion.total_loss(criterion(model(images), targets))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), config.optim.clip_max_norm)
        optimizer.step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - start

    return step


def with_fast_layers(step: Callable[[], float], fast: bool) -> Callable[[], float]:
    """``step`` with :mod:`sparse_detector.attention.fast_layers` switched on or off (for A/B in one process)."""

    def switched() -> float:
        fast_layers.ONEDNN_ON_CPU = fast_layers.FAST_CPU_DROPOUT = fast
        return step()

    return switched


def time_steps(steps: dict[str, Callable[[], float]], args: argparse.Namespace) -> dict[str, float]:
    """Median seconds of one training step per map, the maps' steps taken in turn so that drift hits all alike."""
    for step in steps.values():
        for _ in range(args.warmup):
            step()
    times: dict[str, list[float]] = {name: [] for name in steps}
    for _ in range(args.repeats):
        for name, step in steps.items():
            times[name].append(step())
    return {name: statistics.median(values) for name, values in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--set", nargs="*", default=[], help="extra config overrides for every case")
    parser.add_argument("--cases", nargs="+", default=list(CASES), choices=list(CASES))
    parser.add_argument("--cross-attention", nargs="+", help="decoder cross-attention maps (see --variants)")
    parser.add_argument("--variants", nargs="+", default=["softmax"], help="softmax or site=map[+site=map...]")
    parser.add_argument(
        "--plain-layers-ab",
        action="store_true",
        help="per variant, also time the same model with fast_layers switched off (F.linear, nn.Dropout), interleaved",
    )
    args = parser.parse_args()
    variants = [f"decoder_cross={m}" for m in args.cross_attention] if args.cross_attention else args.variants
    torch.set_num_threads(args.threads)
    torch.set_flush_denormal(True)
    device = resolve_device(args.device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or platform.machine()
    print(f"device: {device} ({name}), threads {args.threads}, torch {torch.__version__}\n")
    print("| case | image | batch | maps | s/step | images/s | ratio |\n|---|---|---:|---|---:|---:|---:|")
    for case in args.cases:
        preset, overrides, batch, size = CASES[case]
        steps = {
            variant: make_step(preset, [*overrides, *variant_overrides(variant)], batch, size, device, args)
            for variant in variants
        }
        if args.plain_layers_ab:
            steps = {
                f"{variant}{label}": with_fast_layers(step, fast)
                for variant, step in steps.items()
                for label, fast in (("", True), (" (plain layers)", False))
            }
        seconds = time_steps(steps, args)
        reference = seconds[variants[0]]
        for variant, value in seconds.items():
            row = f"| {case} | {size[0]}x{size[1]} | {batch} | {variant} | {value:.3f} | {batch / value:.2f} |"
            print(f"{row} {value / reference:.2f} |")


if __name__ == "__main__":
    main()
