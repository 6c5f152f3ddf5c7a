"""Loading trained or official models for evaluation and prediction, and recording the attention of one batch.

``record_run_batch("runs/mine")`` is "load a run -> model -> one batch -> recorded maps" as one library call (what
figures and notebooks start from).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

from ..analysis import AttentionMaps, record_attention
from ..config import Config, config_from_dict, override_config
from ..data.batching import PaddedBatch, collate_detection
from ..data.build import build_dataset
from ..models import DetectionOutput, build_model
from ..models.weights import load_official, load_state_dict_checked
from ..runs import resolve_checkpoint
from .checkpoint import load_checkpoint
from .evaluate import targets_to

COCO_OFFICIAL_LABEL_MAP = {
    "label_mode": "coco_ids",
    "num_classes": 91,
    "label_to_category_id": {},
    "category_names": [],
}


@dataclass
class LoadedModel:
    model: nn.Module
    config: Config
    label_map: dict
    source: Path


def load_trained_model(path: str | Path, official: bool = False, arch: str = "detr", **official_options) -> LoadedModel:
    """A model from one of our checkpoints / run directories, or (``official=True``) an official checkpoint of
    ``arch``, read through the model registry (``official_options``: e.g. DETR's ``nheads``, ``dilation``).

    Official checkpoints carry no config: sizes are read from the weights, labels are raw COCO ids.
    """
    source = resolve_checkpoint(path)
    if official:
        model, config = load_official(source, arch, official_options)
        config.data.label_mode = "coco_ids"
        return LoadedModel(model, config, dict(COCO_OFFICIAL_LABEL_MAP, num_classes=config.model.num_classes), source)
    checkpoint = load_checkpoint(source)
    if "config" not in checkpoint:
        raise ValueError(f"{source} has no 'config': for an official checkpoint pass --official")
    config = config_from_dict(checkpoint["config"])
    config.model.backbone.pretrained = False  # the checkpoint holds the weights
    model = build_model(config)
    load_state_dict_checked(model, checkpoint["model"], str(source))
    return LoadedModel(model.eval(), config, checkpoint["label_map"], source)


@dataclass
class RecordedBatch:
    """One batch run through a loaded model with its attention recorded."""

    loaded: LoadedModel
    images: PaddedBatch
    targets: list[dict[str, Tensor]]
    outputs: DetectionOutput
    maps: dict[str, AttentionMaps]


@torch.no_grad()
def record_run_batch(
    run: str | Path,
    image_indices: Sequence[int] = (0, 1),
    sites: Iterable[str] | None = None,
    split: str = "val",
    device: str | torch.device = "cpu",
    overrides: Iterable[str] = (),
) -> RecordedBatch:
    """Load a run (directory or checkpoint), take the images ``image_indices`` of its ``split`` data (config
    ``overrides`` may point elsewhere, e.g. ``data.val.images=...``), run the model on them as one padded batch and
    return the outputs with the recorded maps of ``sites`` (default: all the model's sites)."""
    loaded = load_trained_model(run)
    config = override_config(loaded.config, overrides)
    dataset = build_dataset(config, split)
    images, targets = collate_detection([dataset[index] for index in image_indices])
    images, targets = images.to(device), targets_to(targets, torch.device(device))
    outputs, maps = record_attention(loaded.model.to(device), images, sites=sites)
    return RecordedBatch(loaded, images, targets, outputs, maps)


def category_name(label_map: dict, label: int) -> str:
    names = label_map.get("category_names") or []
    return names[label] if 0 <= label < len(names) else str(label)


def category_id(label_map: dict, label: int) -> int:
    if label_map.get("label_mode") == "coco_ids":
        return label
    return int(label_map["label_to_category_id"][label])
