"""The model a command reads: the options naming a checkpoint (ours or official) and how they are read."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ..engine.inference import LoadedModel


def add_model_source(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--checkpoint",
        required=True,
        help="run directory or checkpoint file (with --official also a Hugging Face transformers DETR folder)",
    )
    parser.add_argument(
        "--official", action="store_true", help="the checkpoint is an official one (COCO ids) or a Hugging Face DETR"
    )
    add_official_reading(parser)
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N | mps")


def add_official_reading(parser: argparse.ArgumentParser) -> None:
    """How an --official checkpoint is read (:func:`official_options`)."""
    parser.add_argument("--arch", default="detr", help="registered model (model.arch) of an --official checkpoint")
    parser.add_argument(
        "--nheads",
        type=int,
        default=None,
        help="attention heads of an official checkpoint (default: its stored args or Hugging Face config.json, else "
        "the official 8)",
    )
    parser.add_argument(
        "--dilation", action="store_true", default=None, help="an official DC5 checkpoint (default: its stored args)"
    )


def refuse_model_overrides(overrides: list[str]) -> None:
    """evaluate, analyze, predict and visualize run the checkpoint's model as it is: a ``--set model.*`` would change
    nothing."""
    for override in overrides:
        key = override.split("=", 1)[0].strip()
        if key.startswith("model."):
            raise ValueError(
                f"--set {key}: the model is the checkpoint's, built from its own config, so this would change "
                "nothing; --set here takes data, loss and evaluation settings (e.g. data.val_size=512)"
            )


def official_options(args: argparse.Namespace) -> dict:
    """How to read an --official checkpoint (through the model registry)."""
    return {"arch": args.arch, "nheads": args.nheads, "dilation": args.dilation} if args.official else {}


def load_model(args: argparse.Namespace) -> LoadedModel:
    from ..engine.inference import load_trained_model

    return load_trained_model(args.checkpoint, official=args.official, **official_options(args))
