"""DETR-R50 training step, ours against the official facebookresearch/detr code, side by side in one process.

    git clone https://github.com/facebookresearch/detr /tmp/detr_official
    PYTHONPATH=src:/tmp/detr_official OMP_WAIT_POLICY=PASSIVE python benchmarks/official_train_step.py --threads 2

Both models get the same weights (the official state dict loads into ours by name), the same images (512x512,
batch 2) and targets; one step = forward, matching + losses, backward, gradient clipping (0.1), AdamW (backbone
lr 1e-5, the rest 1e-4). Steps are interleaved (official, ours, official, ...; each round starts one code further)
after warm-up, and the median of ``--repeats`` is reported with the ratio official / ours (> 1: ours is faster),
the median of the per-round ratios (steps of one round are seconds apart, so a load change elsewhere on the machine
hits them alike) and the process CPU time per step. The first losses are printed too. ``--without CHANGE`` also
times ours with one of its speed-ups switched off (A/B in the same process).
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import time
from argparse import Namespace
from collections.abc import Callable
from unittest import mock

import torch

from sparse_detector import build_criterion, build_model, load_config
from sparse_detector.attention import fast_layers
from sparse_detector.engine.optim import build_optimizer
from sparse_detector.models import backbone
from train_step import random_targets  # benchmarks/train_step.py, beside this script


def official_args(dropout: float) -> Namespace:
    """The official ``main.py`` defaults for DETR-R50 on COCO."""
    return Namespace(
        dataset_file="coco", device="cpu", num_queries=100, aux_loss=True, masks=False, frozen_weights=None,
        bbox_loss_coef=5, giou_loss_coef=2, eos_coef=0.1, set_cost_class=1, set_cost_bbox=5, set_cost_giou=2,
        hidden_dim=256, position_embedding="sine", lr_backbone=1e-5, backbone="resnet50", dilation=False,
        dropout=dropout, nheads=8, dim_feedforward=2048, enc_layers=6, dec_layers=6, pre_norm=False,
    )  # fmt: skip


def official_step(args: argparse.Namespace, images: torch.Tensor, targets: list[dict]) -> tuple[Callable, dict]:
    import models.backbone  # the official repository, on PYTHONPATH
    from models import build_model as build_official
    from util.misc import nested_tensor_from_tensor_list

    models.backbone.is_main_process = lambda: False  # its ResNet would otherwise download ImageNet weights
    model, criterion, _ = build_official(official_args(args.dropout))
    model.train()
    criterion.train()
    groups = [
        {"params": [p for n, p in model.named_parameters() if "backbone" not in n and p.requires_grad]},
        {"params": [p for n, p in model.named_parameters() if "backbone" in n and p.requires_grad], "lr": 1e-5},
    ]
    optimizer = torch.optim.AdamW(groups, lr=1e-4, weight_decay=1e-4)
    samples = nested_tensor_from_tensor_list(list(images))

    def step() -> None:
        losses = criterion(model(samples), targets)
        loss = sum(losses[k] * criterion.weight_dict[k] for k in losses if k in criterion.weight_dict)
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 0.1)
        optimizer.step()
        step.loss = loss.item()

    return step, model.state_dict()


ABLATIONS = {
    # name: what "ours without it" patches while the model is built and stepped
    "fold": lambda: mock.patch.object(backbone, "fold_frozen_batch_norms", lambda resnet: None),
    "channels-last": lambda: mock.patch.object(backbone, "MEMORY_FORMAT", torch.contiguous_format),
    "onednn-linear": lambda: mock.patch.object(fast_layers, "ONEDNN_ON_CPU", False),
    "fast-dropout": lambda: mock.patch.object(fast_layers, "FAST_CPU_DROPOUT", False),
}
"""Changes of ours that ``--without`` switches off, one at a time, for an A/B in the same process."""


def our_step(
    args: argparse.Namespace,
    images: torch.Tensor,
    targets: list[dict],
    weights: dict,
    compile: bool = False,
    without: str | None = None,
) -> Callable:
    config = load_config("detr_r50", ["model.backbone.pretrained=false", f"model.transformer.dropout={args.dropout}"])
    ablation = ABLATIONS[without]() if without else contextlib.nullcontext()
    with ablation:
        model = build_model(config)
    model.load_state_dict(weights)
    model.train()
    criterion = build_criterion(config).train()
    optimizer = build_optimizer(model, config)
    forward = torch.compile(model) if compile else model  # as train.compile=true does

    def step() -> None:
        with ablation:
            outputs = forward(images)
        loss = criterion.total_loss(criterion(outputs, targets))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), config.optim.clip_max_norm)
        optimizer.step()
        step.loss = loss.item()

    return step


def timed(step: Callable[[], None]) -> tuple[float, float]:
    """Wall-clock and process CPU seconds of one step."""
    wall, cpu = time.perf_counter(), time.process_time()
    step()
    return time.perf_counter() - wall, time.process_time() - cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--dropout", type=float, default=0.1)
    parser.add_argument(
        "--compile", action="store_true", help="also time ours with train.compile (compiled in warm-up)"
    )
    parser.add_argument(
        "--without", nargs="*", default=[], choices=list(ABLATIONS), help="also time ours without each of these"
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.set_flush_denormal(True)
    torch.manual_seed(0)
    images = torch.randn(2, 3, 512, 512)
    targets = random_targets(2, 91, torch.device("cpu"))
    official, weights = official_step(args, images, targets)
    steps = {"official": official, "ours": our_step(args, images, targets, weights)}
    if args.compile:
        steps["ours, torch.compile"] = our_step(args, images, targets, weights, compile=True)
    for change in args.without:
        steps[f"ours without {change}"] = our_step(args, images, targets, weights, without=change)
    for name, step in steps.items():
        torch.manual_seed(1)
        step()
        print(f"first loss {name}: {step.loss:.6f}")
    for _ in range(args.warmup - 1):
        for step in steps.values():
            step()
    names = list(steps)
    wall: dict[str, list[float]] = {name: [] for name in names}
    cpu: dict[str, list[float]] = {name: [] for name in names}
    for round_ in range(args.repeats):  # interleaved, each round starting one further (no code always follows another)
        for name in names[round_ % len(names) :] + names[: round_ % len(names)]:
            seconds, cpu_seconds = timed(steps[name])
            wall[name].append(seconds)
            cpu[name].append(cpu_seconds)
    print(f"threads {args.threads}, dropout {args.dropout}, torch {torch.__version__}, {args.repeats} steps each")
    print("| code | s/step (median) | ratio official / ours | median of per-round ratios | CPU s/step (median) |")
    print("|---|---:|---:|---:|---:|")
    official_wall, official_cpu = statistics.median(wall["official"]), statistics.median(cpu["official"])
    for name in names:
        paired = statistics.median(o / t for o, t in zip(wall["official"], wall[name], strict=True))
        median_wall, median_cpu = statistics.median(wall[name]), statistics.median(cpu[name])
        print(
            f"| {name} | {median_wall:.3f} | {official_wall / median_wall:.2f} | {paired:.2f} | "
            f"{median_cpu:.2f} ({official_cpu / median_cpu:.2f}) |"
        )
    for name in names:
        print(f"{name} s/step:", " ".join(f"{value:.2f}" for value in wall[name]))


if __name__ == "__main__":
    main()
