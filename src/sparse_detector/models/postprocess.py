"""Model outputs -> per-image scores, labels and absolute (x0, y0, x1, y1) boxes in original-image pixels."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.ops import box_convert


class PostProcess(nn.Module):
    """Best non-"no object" class per query, boxes scaled to each image's ``(height, width)``."""

    @torch.no_grad()
    def forward(self, outputs: dict, target_sizes: Tensor) -> list[dict[str, Tensor]]:
        logits, boxes = outputs["pred_logits"], outputs["pred_boxes"]
        if len(logits) != len(target_sizes) or target_sizes.shape[1] != 2:
            raise ValueError(f"target_sizes must be (batch={len(logits)}, 2), got {tuple(target_sizes.shape)}")
        scores, labels = F.softmax(logits, -1)[..., :-1].max(-1)
        img_h, img_w = target_sizes.unbind(1)
        scale = torch.stack([img_w, img_h, img_w, img_h], dim=1).to(boxes.dtype)
        boxes = box_convert(boxes, "cxcywh", "xyxy") * scale[:, None, :]
        return [{"scores": s, "labels": lab, "boxes": b} for s, lab, b in zip(scores, labels, boxes, strict=True)]


class TopKPostProcess(nn.Module):
    """Sigmoid-scored models (Deformable DETR): the ``k`` best (query, class) pairs of each image, boxes scaled to
    each image's ``(height, width)``; a query may appear with several classes."""

    def __init__(self, k: int = 100) -> None:
        super().__init__()
        self.k = k

    @torch.no_grad()
    def forward(self, outputs: dict, target_sizes: Tensor) -> list[dict[str, Tensor]]:
        logits, boxes = outputs["pred_logits"], outputs["pred_boxes"]
        if len(logits) != len(target_sizes) or target_sizes.shape[1] != 2:
            raise ValueError(f"target_sizes must be (batch={len(logits)}, 2), got {tuple(target_sizes.shape)}")
        num_classes = logits.shape[2]
        scores, flat = torch.topk(logits.sigmoid().flatten(1), min(self.k, logits[0].numel()), dim=1)
        queries, labels = flat // num_classes, flat % num_classes
        boxes = torch.gather(box_convert(boxes, "cxcywh", "xyxy"), 1, queries[..., None].expand(-1, -1, 4))
        img_h, img_w = target_sizes.unbind(1)
        scale = torch.stack([img_w, img_h, img_w, img_h], dim=1).to(boxes.dtype)
        boxes = boxes * scale[:, None, :]
        return [{"scores": s, "labels": lab, "boxes": b} for s, lab, b in zip(scores, labels, boxes, strict=True)]


def query_scores(model: nn.Module, logits: Tensor) -> tuple[Tensor, Tensor]:
    """Each query's best class and its score from (..., Q, classes) ``logits``: sigmoid scores for models that
    declare ``sigmoid_scores`` (Deformable DETR), else softmax without the last ("no object") class."""
    if getattr(model, "sigmoid_scores", False):
        return logits.float().sigmoid().max(-1)
    return logits.float().softmax(-1)[..., :-1].max(-1)


def postprocessor_for(model: nn.Module) -> nn.Module:
    """The post-processing that fits ``model``'s class scores: top-k over sigmoid scores for models that declare
    ``sigmoid_scores`` (Deformable DETR), the best softmax class per query otherwise (DETR)."""
    return TopKPostProcess() if getattr(model, "sigmoid_scores", False) else PostProcess()
