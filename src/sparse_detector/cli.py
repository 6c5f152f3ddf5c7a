"""The ``sparse-detector`` command line."""

from __future__ import annotations

import argparse
import sys
import time

import torch

from .config import load_config
from .models import build_criterion, build_model


def _quickstart(args: argparse.Namespace) -> int:
    """Forward pass, losses and a few optimisation steps of a small DETR on random images."""
    torch.manual_seed(args.seed)
    config = load_config(
        None,
        [
            "model.backbone.name=resnet18",
            "model.transformer.hidden_dim=64",
            "model.transformer.nheads=4",
            "model.transformer.enc_layers=2",
            "model.transformer.dec_layers=2",
            "model.transformer.dim_feedforward=128",
            "model.num_queries=10",
            "model.num_classes=3",
        ],
    )
    model = build_model(config).train()
    criterion = build_criterion(config)
    images = [torch.rand(3, 128, 160), torch.rand(3, 96, 128)]
    targets = [
        {"labels": torch.tensor([0, 2]), "boxes": torch.tensor([[0.3, 0.3, 0.2, 0.2], [0.7, 0.6, 0.3, 0.4]])},
        {"labels": torch.tensor([1]), "boxes": torch.tensor([[0.5, 0.5, 0.4, 0.3]])},
    ]
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    start = time.perf_counter()
    for step in range(args.steps):
        losses = criterion(model(images), targets)
        total = criterion.total_loss(losses)
        optimizer.zero_grad()
        total.backward()
        optimizer.step()
        print(f"step {step}: loss {total.item():.4f}  loss_ce {losses['loss_ce'].item():.4f}")
    print(f"{args.steps} steps in {time.perf_counter() - start:.1f}s")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sparse-detector", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    quickstart = commands.add_parser("quickstart", help="a short end-to-end demo")
    quickstart.add_argument("--steps", type=int, default=5)
    quickstart.add_argument("--seed", type=int, default=0)
    quickstart.set_defaults(func=_quickstart)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
