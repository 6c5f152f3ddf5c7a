"""Deformable DETR's set loss: sigmoid focal loss for the classes (and its matching cost), L1 + GIoU for boxes.

Two-stage models add the encoder proposals' losses (class-agnostic: every target counts as class 0) with the
suffix ``_enc``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor
from torchvision.ops import sigmoid_focal_loss

from ..criterion import SetCriterion, _matched_query_index, label_readings
from ..matcher import HungarianMatcher, MatchIndices

FOCAL_GAMMA = 2.0


class FocalHungarianMatcher(HungarianMatcher):
    """Hungarian matching whose class cost is the focal loss of the positive minus that of the negative."""

    def __init__(self, cost_class: float = 2.0, cost_bbox: float = 5.0, cost_giou: float = 2.0, alpha: float = 0.25):
        super().__init__(cost_class, cost_bbox, cost_giou)
        self.alpha = alpha

    def class_cost(self, logits: Tensor, target_labels: Tensor) -> Tensor:
        prob = logits.sigmoid()[:, target_labels]
        negative = (1 - self.alpha) * prob**FOCAL_GAMMA * -(1 - prob + 1e-8).log()
        positive = self.alpha * (1 - prob) ** FOCAL_GAMMA * -(prob + 1e-8).log()
        return positive - negative


class FocalSetCriterion(SetCriterion):
    """:class:`SetCriterion` with the sigmoid focal loss as ``loss_ce`` (logits have no "no object" class).

    The two-stage encoder proposals' losses are always computed (and logged) but, as officially, enter the total only
    with ``train_proposals`` (the official model ties them to ``aux_loss``)."""

    def __init__(
        self,
        num_classes: int,
        matcher: HungarianMatcher,
        focal_alpha: float = 0.25,
        train_proposals: bool = True,
        **coefs,
    ) -> None:
        super().__init__(num_classes, matcher, **coefs)
        self.focal_alpha = focal_alpha
        if train_proposals:
            base = {k: v for k, v in self.weight_dict.items() if k in ("loss_ce", "loss_bbox", "loss_giou")}
            self.weight_dict.update({f"{k}_enc": v for k, v in base.items()})

    def _label_losses(
        self, outputs: dict, targets: Sequence[dict], indices: MatchIndices, num_boxes: float
    ) -> dict[str, Tensor]:
        logits = outputs["pred_logits"].float()
        idx = _matched_query_index(indices)
        matched_labels = torch.cat([t["labels"][j] for t, (_, j) in zip(targets, indices, strict=True)])
        onehot = torch.zeros_like(logits)
        onehot[idx[0], idx[1], matched_labels] = 1.0
        # Official normalisation: mean over queries, sum over the rest, times the query count, over num_boxes.
        focal = sigmoid_focal_loss(logits, onehot, alpha=self.focal_alpha, gamma=FOCAL_GAMMA, reduction="none")
        loss_ce = focal.sum() / num_boxes
        return {"loss_ce": loss_ce, **label_readings(logits, idx, matched_labels, targets)}

    def forward(self, outputs: dict, targets: Sequence[dict], indices: MatchIndices | None = None) -> dict[str, Tensor]:
        losses = super().forward(outputs, targets, indices)
        if "enc_outputs" in outputs:
            enc = outputs["enc_outputs"]
            agnostic = [{**t, "labels": torch.zeros_like(t["labels"])} for t in targets]
            enc_indices = self.matcher(enc, agnostic)
            num_boxes = self._num_boxes(agnostic, enc["pred_logits"].device)
            enc_losses = self._label_losses(enc, agnostic, enc_indices, num_boxes)
            del enc_losses["class_error"]
            enc_losses.update(self._box_losses(enc, agnostic, enc_indices, num_boxes))
            losses.update({f"{k}_enc": v for k, v in enc_losses.items()})
        return losses
