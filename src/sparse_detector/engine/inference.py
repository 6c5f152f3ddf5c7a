"""Loading trained or official models for evaluation and prediction."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from torch import nn

from ..config import Config, config_from_dict
from ..models.build import build_model
from ..models.weights import infer_official_config, load_state_dict_checked, read_state_dict
from .checkpoint import load_checkpoint

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


def resolve_checkpoint(path: str | Path) -> Path:
    """A checkpoint file, or a run directory (its best checkpoint, else its last)."""
    path = Path(path)
    if path.is_dir():
        for name in ("checkpoint_best.pt", "checkpoint_last.pt"):
            if (path / name).is_file():
                return path / name
        raise FileNotFoundError(f"run directory {path} holds no checkpoint_best.pt or checkpoint_last.pt")
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    return path


def load_trained_model(
    path: str | Path, official: bool = False, nheads: int = 8, dilation: bool = False
) -> LoadedModel:
    """A model from one of our checkpoints / run directories, or (``official=True``) an official DETR checkpoint.

    Official checkpoints carry no config: sizes are read from the weights, labels are raw COCO ids.
    """
    source = resolve_checkpoint(path)
    if official:
        state_dict, _ = read_state_dict(source)
        config = infer_official_config(state_dict, nheads=nheads, dilation=dilation)
        config.data.label_mode = "coco_ids"
        label_map = dict(COCO_OFFICIAL_LABEL_MAP, num_classes=config.model.num_classes)
    else:
        checkpoint = load_checkpoint(source)
        if "config" not in checkpoint:
            raise ValueError(f"{source} has no 'config': for an official DETR checkpoint pass --official")
        config = config_from_dict(checkpoint["config"])
        config.model.backbone.pretrained = False  # the checkpoint holds the weights
        state_dict, label_map = checkpoint["model"], checkpoint["label_map"]
    model = build_model(config)
    load_state_dict_checked(model, state_dict, str(source))
    return LoadedModel(model.eval(), config, label_map, source)


def category_name(label_map: dict, label: int) -> str:
    names = label_map.get("category_names") or []
    return names[label] if 0 <= label < len(names) else str(label)


def category_id(label_map: dict, label: int) -> int:
    if label_map.get("label_mode") == "coco_ids":
        return label
    return int(label_map["label_to_category_id"][label])
