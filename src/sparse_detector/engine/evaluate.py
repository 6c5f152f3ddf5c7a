"""Evaluation: losses and COCO AP over a whole data loader."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterator, Mapping

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader
from tqdm import tqdm

from ..data.batching import PaddedBatch
from ..models.criterion import SetCriterion
from ..models.outputs import DetectionOutput
from ..models.postprocess import PostProcess
from .coco_eval import CocoEvaluator


def targets_to(targets: list[dict[str, Tensor]], device: torch.device) -> list[dict[str, Tensor]]:
    return [{k: v.to(device) for k, v in t.items()} for t in targets]


def label_to_category_map(label_map: Mapping) -> dict[int, int] | None:
    """The evaluator's label -> category id map; ``None`` in official-compat mode (labels are category ids)."""
    if label_map.get("label_mode") == "coco_ids":
        return None
    return {int(k): int(v) for k, v in label_map["label_to_category_id"].items()}


@torch.no_grad()
def evaluation_batches(
    model: nn.Module, loader: DataLoader, device: torch.device, evaluator: CocoEvaluator, progress: bool = False
) -> Iterator[tuple[DetectionOutput, list[dict[str, Tensor]]]]:
    """Run ``model`` on every batch of ``loader`` and feed its post-processed predictions to ``evaluator``;
    yields each batch's raw outputs and its targets (on ``device``) for further per-batch readings."""
    postprocess = PostProcess()
    batch: PaddedBatch
    for batch, targets in tqdm(loader, desc="evaluate", disable=not progress, leave=False):
        batch = batch.to(device)
        targets = targets_to(targets, device)
        outputs = model(batch)
        orig_sizes = torch.stack([t["orig_size"] for t in targets])
        results = postprocess(outputs, orig_sizes)
        predictions = zip(targets, results, strict=True)
        evaluator.update({int(t["image_id"]): {k: v.cpu() for k, v in r.items()} for t, r in predictions})
        yield outputs, targets


@torch.no_grad()
def evaluate(
    model: nn.Module,
    criterion: SetCriterion | None,
    loader: DataLoader,
    device: torch.device,
    label_map: Mapping,
    progress: bool = False,
) -> dict[str, float]:
    """COCO AP / AR of all predictions (one COCOeval run at the end) and, with a criterion, the mean losses."""
    model.eval()
    evaluator = CocoEvaluator(loader.dataset.coco, label_to_category_map(label_map))
    loss_sums: dict[str, float] = defaultdict(float)
    batches = 0
    for outputs, targets in evaluation_batches(model, loader, device, evaluator, progress):
        if criterion is not None:
            losses = criterion(outputs, targets)
            loss_sums["loss"] += criterion.total_loss(losses).item()
            for key in ("loss_ce", "loss_bbox", "loss_giou", "class_error", "cardinality_error"):
                loss_sums[key] += losses[key].item()
            batches += 1
    stats = evaluator.summarize()
    stats.update({f"val_{k}": v / max(batches, 1) for k, v in loss_sums.items()})
    return stats
