"""Loading trained or official models for evaluation and prediction; prediction on image files."""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from torch import nn

from ..config import Config, config_from_dict
from ..data.labels import LabelMap
from ..data.transforms import make_transforms
from ..models.build import build_model
from ..models.postprocess import PostProcess
from ..models.weights import infer_official_config, load_state_dict_checked, read_state_dict
from .checkpoint import load_checkpoint
from .device import resolve_device

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")
PREDICT_FORMATS = ("json", "coco")


@dataclass
class LoadedModel:
    model: nn.Module
    config: Config
    label_map: LabelMap
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
        label_map = LabelMap.official_coco(config.model.num_classes)
    else:
        checkpoint = load_checkpoint(source)
        if "config" not in checkpoint:
            raise ValueError(f"{source} has no 'config': for an official DETR checkpoint pass --official")
        config = config_from_dict(checkpoint["config"])
        config.model.backbone.pretrained = False  # the checkpoint holds the weights
        state_dict, label_map = checkpoint["model"], LabelMap.coerce(checkpoint["label_map"])
    model = build_model(config)
    load_state_dict_checked(model, state_dict, str(source))
    return LoadedModel(model.eval(), config, label_map, source)


def image_files(inputs: Sequence[str | Path]) -> list[Path]:
    """The image files named in ``inputs`` (files, or folders whose images are taken in name order)."""
    files: list[Path] = []
    for item in map(Path, inputs):
        if item.is_dir():
            files += sorted(p for p in item.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        elif item.is_file():
            files.append(item)
        else:
            raise FileNotFoundError(f"input {item} is neither an image file nor a folder")
    if not files:
        raise FileNotFoundError(f"no images ({', '.join(IMAGE_SUFFIXES)}) in {[str(i) for i in inputs]}")
    return files


@dataclass
class Predictions:
    """What :func:`predict_images` wrote: one record per readable image, and the files it could not read."""

    records: list[dict[str, Any]] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)  # path -> why
    written: list[Path] = field(default_factory=list)


@torch.no_grad()
def predict_images(
    loaded: LoadedModel,
    inputs: Sequence[str | Path],
    out_dir: str | Path,
    threshold: float = 0.5,
    device: str = "auto",
    output_format: str = "json",
    pictures: bool = True,
) -> Predictions:
    """Detect objects in image files; write ``<stem>_pred.png`` pictures and the detections of every readable
    image, even when some cannot be read (those are listed in ``failed``).

    ``output_format="json"``: ``predictions.json``, one record per image (file, size, detections with label,
    category id and name, score, absolute xyxy box). ``"coco"``: ``detections_coco.json`` in the COCO results
    format (``image_id`` = position of the image in the input list, from 1; ``file_name`` added), which
    ``COCO.loadRes`` reads.
    """
    from ..viz.boxes import draw_boxes

    if output_format not in PREDICT_FORMATS:
        raise ValueError(f"unknown prediction format {output_format!r}; choose from {PREDICT_FORMATS}")
    data = loaded.config.data
    transforms = make_transforms(False, val_size=data.val_size, max_size=data.max_size, normalize=data.normalize)
    torch_device = resolve_device(device)
    model = loaded.model.to(torch_device).eval()
    labels_map = loaded.label_map
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    result = Predictions()
    coco_results: list[dict[str, Any]] = []
    for image_id, path in enumerate(image_files(inputs), start=1):
        try:
            with Image.open(path) as file:
                image = file.convert("RGB")
        except (OSError, SyntaxError, Image.DecompressionBombError) as err:
            result.failed[str(path)] = str(err)
            log.warning("cannot read image %s (%s); skipped", path, err)
            continue
        empty = {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)}
        tensor, _ = transforms(image, empty)
        outputs = model([tensor.to(torch_device)])
        detected = PostProcess()(outputs, torch.tensor([[image.height, image.width]], device=torch_device))[0]
        keep = detected["scores"] >= threshold
        boxes, labels, scores = (detected[k][keep].cpu() for k in ("boxes", "labels", "scores"))
        detections = [
            {
                "label": int(label),
                "category_id": labels_map.category_id(int(label)),
                "category": labels_map.name(int(label)),
                "score": round(float(score), 4),
                "box_xyxy": [round(float(v), 2) for v in box],
            }
            for box, label, score in zip(boxes.tolist(), labels.tolist(), scores.tolist(), strict=True)
        ]
        coco_results += [
            {
                "image_id": image_id,
                "file_name": str(path),
                "category_id": d["category_id"],
                "bbox": [x0, y0, x1 - x0, y1 - y0],
                "score": d["score"],
            }
            for d in detections
            for x0, y0, x1, y1 in [d["box_xyxy"]]
        ]
        record = {"image": str(path), "width": image.width, "height": image.height, "detections": detections}
        if pictures:
            picture = out / f"{path.stem}_pred.png"
            names = [d["category"] for d in detections]
            draw_boxes(image, boxes.tolist(), labels.tolist(), names, scores.tolist()).save(picture)
            record["picture"] = str(picture)
        result.records.append(record)
    if output_format == "coco":
        target, content = out / "detections_coco.json", coco_results
    else:
        target, content = out / "predictions.json", result.records
    target.write_text(json.dumps(content, indent=2))
    result.written.append(target)
    return result
