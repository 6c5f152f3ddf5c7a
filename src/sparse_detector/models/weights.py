"""Loading weights: strict state-dict loading with readable errors, and official DETR checkpoints.

``infer_official_config`` is DETR's official-checkpoint reader, registered with the ``detr`` arch;
``load_official`` dispatches through the model registry by arch.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ..config import Config
from .registry import build_model, official_config

# Blocks per stage and block type of the torchvision ResNets, to recognise a backbone from its weights.
_RESNET_LAYOUTS = {
    ("basic", 2, 2): "resnet18",
    ("basic", 3, 6): "resnet34",
    ("bottleneck", 3, 6): "resnet50",
    ("bottleneck", 3, 23): "resnet101",
}


class CheckpointMismatchError(RuntimeError):
    """A state dict whose keys or shapes do not fit the model."""


def load_state_dict_checked(model: nn.Module, state_dict: Mapping[str, Tensor], source: str = "checkpoint") -> None:
    """``load_state_dict(strict=True)`` that names missing/unexpected keys and the first shape mismatch."""
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(expected))
    mismatched = [
        (k, tuple(state_dict[k].shape), tuple(v.shape))
        for k, v in expected.items()
        if k in state_dict and state_dict[k].shape != v.shape
    ]
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing keys (first: {missing[:5]})")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected keys (first: {unexpected[:5]})")
    if mismatched:
        key, got, want = mismatched[0]
        problems.append(f"{len(mismatched)} shape mismatches (first: {key}: checkpoint {got}, model {want})")
    if problems:
        raise CheckpointMismatchError(
            f"{source} does not fit the model: " + "; ".join(problems) + ". Check that the config (classes, "
            "queries, layers, backbone) matches the one the checkpoint was trained with."
        )
    model.load_state_dict(state_dict, strict=True)


def read_state_dict(path_or_state_dict: str | Path | Mapping[str, Tensor]) -> tuple[dict[str, Tensor], str]:
    """A checkpoint file (dict with a ``model`` key, or a bare state dict) or an in-memory state dict."""
    if isinstance(path_or_state_dict, str | Path):
        source = str(path_or_state_dict)
        try:
            data = torch.load(path_or_state_dict, map_location="cpu", weights_only=True)
        except FileNotFoundError:
            raise FileNotFoundError(f"checkpoint {source} does not exist") from None
    else:
        source, data = "state dict", path_or_state_dict
    if isinstance(data, Mapping) and "model" in data and isinstance(data["model"], Mapping):
        data = data["model"]
    if not isinstance(data, Mapping) or not all(isinstance(v, Tensor) for v in data.values()):
        raise CheckpointMismatchError(f"{source} is not a state dict nor a checkpoint with a 'model' state dict")
    return dict(data), source


def _count_indices(state_dict: Mapping[str, Tensor], prefix: str) -> int:
    pattern = re.compile(re.escape(prefix) + r"(\d+)\.")
    found = {int(m.group(1)) for k in state_dict if (m := pattern.match(k))}
    return max(found) + 1 if found else 0


def infer_official_config(state_dict: Mapping[str, Tensor], nheads: int = 8, dilation: bool = False) -> Config:
    """The :class:`Config` of an official DETR checkpoint, read from its tensor shapes.

    The number of heads and the DC5 dilation cannot be seen in the weights and are given (official defaults 8,
    False). Pre-norm is recognised by the encoder's final LayerNorm, which only pre-norm models have.
    """
    body = "backbone.0.body."
    block = "bottleneck" if f"{body}layer1.0.conv3.weight" in state_dict else "basic"
    layout = (
        block,
        _count_indices(state_dict, f"{body}layer1."),
        _count_indices(state_dict, f"{body}layer3."),
    )
    if layout not in _RESNET_LAYOUTS:
        raise CheckpointMismatchError(f"backbone with blocks {layout} is not a torchvision ResNet-18/34/50/101")
    config = Config()
    model = config.model
    model.backbone.name = _RESNET_LAYOUTS[layout]
    model.backbone.dilation = dilation
    model.backbone.return_layer = "layer4" if _count_indices(state_dict, f"{body}layer4.") else "layer3"
    model.num_queries, hidden_dim = state_dict["query_embed.weight"].shape
    model.num_classes = state_dict["class_embed.weight"].shape[0] - 1
    model.position_embedding = "learned" if "backbone.1.row_embed.weight" in state_dict else "sine"
    t = model.transformer
    t.hidden_dim, t.nheads = hidden_dim, nheads
    t.enc_layers = _count_indices(state_dict, "transformer.encoder.layers.")
    t.dec_layers = _count_indices(state_dict, "transformer.decoder.layers.")
    t.dim_feedforward = state_dict["transformer.encoder.layers.0.linear1.weight"].shape[0]
    t.pre_norm = "transformer.encoder.norm.weight" in state_dict
    return config


def load_official(
    path_or_state_dict: str | Path | Mapping[str, Tensor],
    arch: str = "detr",
    reader_options: Mapping[str, Any] | None = None,
    **overrides,
) -> tuple[nn.Module, Config]:
    """An official checkpoint of ``arch`` in a model built to fit it (eval mode), and that model's config.

    ``reader_options`` go to the arch's official reader (DETR: ``nheads``, ``dilation``, which the weights do not
    show); ``overrides`` set other model fields (e.g. ``pre_norm=True``, ``aux_loss=False``) on the inferred
    config: top-level :class:`ModelConfig` fields or :class:`TransformerConfig` fields.
    """
    state_dict, source = read_state_dict(path_or_state_dict)
    config = official_config(arch, state_dict, **(reader_options or {}))
    for key, value in overrides.items():
        for section in (config.model, config.model.transformer):
            if hasattr(section, key):
                setattr(section, key, value)
                break
        else:
            raise TypeError(f"load_official got unknown override {key!r}")
    model = build_model(config)
    load_state_dict_checked(model, state_dict, source)
    return model.eval(), config


def detr_from_official(
    path_or_state_dict: str | Path | Mapping[str, Tensor], *, nheads: int = 8, dilation: bool = False, **overrides
) -> nn.Module:
    """Load an official facebookresearch/detr checkpoint into a model built to fit it; returned in eval mode
    (``load_official`` with ``arch="detr"``)."""
    return load_official(path_or_state_dict, "detr", {"nheads": nheads, "dilation": dilation}, **overrides)[0]
