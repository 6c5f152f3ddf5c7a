"""Optimiser and learning-rate schedule of the official recipe, with a parameter group for entmax alphas."""

from __future__ import annotations

import torch
from torch import nn

from ..config import Config

ALPHA_PARAM_SUFFIX = "pre_alpha"  # learnable alpha-entmax parameters (one per head per attention layer)
#: Deformable DETR's layers that place sampling points, trained at ``optim.lr_linear_proj_mult`` × lr (official).
LINEAR_PROJ_NAMES = ("reference_points", "sampling_offsets")


def parameter_groups(model: nn.Module, config: Config) -> list[dict]:
    """AdamW groups: transformer/heads, backbone (``model.backbone.lr``), alphas (lr multiplier, no decay) and
    Deformable DETR's sampling-point layers (``optim.lr_linear_proj_mult``)."""
    optim = config.optim
    groups: dict[str, list[nn.Parameter]] = {"default": [], "backbone": [], "alpha": [], "linear_proj": []}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        if name.endswith(ALPHA_PARAM_SUFFIX):
            groups["alpha"].append(param)
        elif name.startswith("backbone."):
            groups["backbone"].append(param)
        elif any(part in name for part in LINEAR_PROJ_NAMES):
            groups["linear_proj"].append(param)
        else:
            groups["default"].append(param)
    settings = {
        "default": {"lr": optim.lr, "weight_decay": optim.weight_decay},
        "backbone": {"lr": config.model.backbone.lr, "weight_decay": optim.weight_decay},
        "alpha": {"lr": optim.lr * optim.alpha_lr_mult, "weight_decay": 0.0},
        "linear_proj": {"lr": optim.lr * optim.lr_linear_proj_mult, "weight_decay": optim.weight_decay},
    }
    return [{"name": name, "params": params, **settings[name]} for name, params in groups.items() if params]


def build_optimizer(model: nn.Module, config: Config) -> torch.optim.AdamW:
    return torch.optim.AdamW(
        parameter_groups(model, config), lr=config.optim.lr, weight_decay=config.optim.weight_decay
    )


def build_scheduler(optimizer: torch.optim.Optimizer, config: Config) -> torch.optim.lr_scheduler.LambdaLR:
    """StepLR per epoch (``optim.lr_drop``, ``optim.lr_gamma``); alphas optionally keep a constant rate."""
    optim = config.optim

    def step_decay(epoch: int) -> float:
        return optim.lr_gamma ** (epoch // optim.lr_drop)

    def constant(epoch: int) -> float:
        return 1.0

    lambdas = [
        constant if group["name"] == "alpha" and not optim.alpha_lr_drop else step_decay
        for group in optimizer.param_groups
    ]
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambdas)
