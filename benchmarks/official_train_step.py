"""DETR-R50 training step, ours against the official facebookresearch/detr code, side by side in one process.

    git clone https://github.com/facebookresearch/detr /tmp/detr_official
    PYTHONPATH=src:/tmp/detr_official OMP_WAIT_POLICY=PASSIVE python benchmarks/official_train_step.py --threads 2

Both models get the same weights (the official state dict loads into ours by name), the same images (512x512,
batch 2) and targets; one step = forward, matching + losses, backward, gradient clipping (0.1), AdamW (backbone
lr 1e-5, the rest 1e-4). Steps are interleaved (official, ours, official, ...) after warm-up, and the median of
``--repeats`` is reported with the ratio official / ours (> 1: ours is faster). The first losses are printed too.
"""

from __future__ import annotations

import argparse
import statistics
import time
from argparse import Namespace
from collections.abc import Callable

import torch

from sparse_detector import build_criterion, build_model, load_config
from sparse_detector.engine.optim import build_optimizer
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

    def step() -> float:
        start = time.perf_counter()
        losses = criterion(model(samples), targets)
        loss = sum(losses[k] * criterion.weight_dict[k] for k in losses if k in criterion.weight_dict)
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 0.1)
        optimizer.step()
        step.loss = loss.item()
        return time.perf_counter() - start

    return step, model.state_dict()


def our_step(
    args: argparse.Namespace,
    images: torch.Tensor,
    targets: list[dict],
    weights: dict,
    channels_last: bool = False,
    compile: bool = False,
) -> Callable:
    config = load_config("detr_r50", ["model.backbone.pretrained=false", f"model.transformer.dropout={args.dropout}"])
    model = build_model(config)
    model.load_state_dict(weights)
    model.train()
    if channels_last:
        model.to(memory_format=torch.channels_last)
    criterion = build_criterion(config).train()
    optimizer = build_optimizer(model, config)
    forward = torch.compile(model) if compile else model  # as train.compile=true does

    def step() -> float:
        start = time.perf_counter()
        loss = criterion.total_loss(criterion(forward(images), targets))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), config.optim.clip_max_norm)
        optimizer.step()
        step.loss = loss.item()
        return time.perf_counter() - start

    return step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--dropout", type=float, default=0.1)
    parser.add_argument("--channels-last", action="store_true", help="also time ours with channels-last weights")
    parser.add_argument(
        "--compile", action="store_true", help="also time ours with train.compile (compiled in warm-up)"
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.set_flush_denormal(True)
    torch.manual_seed(0)
    images = torch.randn(2, 3, 512, 512)
    targets = random_targets(2, 91, torch.device("cpu"))
    official, weights = official_step(args, images, targets)
    steps = {"official": official, "ours": our_step(args, images, targets, weights)}
    if args.channels_last:
        steps["ours, channels-last"] = our_step(args, images, targets, weights, channels_last=True)
    if args.compile:
        steps["ours, torch.compile"] = our_step(args, images, targets, weights, compile=True)
    for name, step in steps.items():
        torch.manual_seed(1)
        step()
        print(f"first loss {name}: {step.loss:.6f}")
    for _ in range(args.warmup - 1):
        for step in steps.values():
            step()
    times: dict[str, list[float]] = {name: [] for name in steps}
    for _ in range(args.repeats):
        for name, step in steps.items():
            times[name].append(step())
    medians = {name: statistics.median(values) for name, values in times.items()}
    print(f"threads {args.threads}, dropout {args.dropout}, torch {torch.__version__}, {args.repeats} steps each")
    print("| code | s/step (median) | ratio official / ours |\n|---|---:|---:|")
    for name, value in medians.items():
        print(f"| {name} | {value:.3f} | {medians['official'] / value:.2f} |")


if __name__ == "__main__":
    main()
