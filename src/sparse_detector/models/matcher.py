"""Hungarian matching of predictions to ground truth (class, L1 and GIoU costs)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from scipy.optimize import linear_sum_assignment
from torch import Tensor, nn
from torchvision.ops import box_convert, generalized_box_iou

MatchIndices = list[tuple[Tensor, Tensor]]  # per image: (query indices, target indices), int64


class HungarianMatcher(nn.Module):
    """One-to-one assignment minimising ``cost_class * -p(class) + cost_bbox * L1 + cost_giou * -GIoU``."""

    def __init__(self, cost_class: float = 1.0, cost_bbox: float = 5.0, cost_giou: float = 2.0) -> None:
        super().__init__()
        if cost_class == 0 and cost_bbox == 0 and cost_giou == 0:
            raise ValueError("all matching costs are 0; set at least one of loss.set_cost_*")
        self.cost_class = cost_class
        self.cost_bbox = cost_bbox
        self.cost_giou = cost_giou

    def class_cost(self, logits: Tensor, target_labels: Tensor) -> Tensor:
        """(N, T) cost of giving each of N predictions (logits (N, C+1)) each target's class: -p(class)."""
        return -logits.softmax(-1)[:, target_labels]

    @torch.no_grad()
    def forward(self, outputs: dict, targets: Sequence[dict]) -> MatchIndices:
        batch, num_queries = outputs["pred_logits"].shape[:2]
        out_logits = outputs["pred_logits"].flatten(0, 1).float()
        out_bbox = outputs["pred_boxes"].flatten(0, 1).float()
        tgt_ids = torch.cat([t["labels"] for t in targets])
        tgt_bbox = torch.cat([t["boxes"] for t in targets]).float()
        cost = (
            self.cost_bbox * torch.cdist(out_bbox, tgt_bbox, p=1)
            + self.cost_class * self.class_cost(out_logits, tgt_ids)
            - self.cost_giou
            * generalized_box_iou(box_convert(out_bbox, "cxcywh", "xyxy"), box_convert(tgt_bbox, "cxcywh", "xyxy"))
        )
        cost = cost.view(batch, num_queries, -1).cpu()
        if not torch.isfinite(cost).all():
            raise FloatingPointError("non-finite matching cost: the model outputs contain NaN or inf")
        sizes = [len(t["boxes"]) for t in targets]
        indices = [linear_sum_assignment(c[i]) for i, c in enumerate(cost.split(sizes, -1))]
        return [(torch.as_tensor(i, dtype=torch.int64), torch.as_tensor(j, dtype=torch.int64)) for i, j in indices]
