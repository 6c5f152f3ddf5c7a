"""DETR set loss: Hungarian matching, then cross-entropy, L1 and GIoU on matched pairs (plus auxiliary layers)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.ops import box_convert, generalized_box_iou

from ..text import counted
from .matcher import HungarianMatcher, MatchIndices


def _matched_query_index(indices: MatchIndices) -> tuple[Tensor, Tensor]:
    batch_idx = torch.cat([torch.full_like(src, i) for i, (src, _) in enumerate(indices)])
    query_idx = torch.cat([src for src, _ in indices])
    return batch_idx, query_idx


@torch.no_grad()
def label_readings(
    logits: Tensor, matched: tuple[Tensor, Tensor], matched_labels: Tensor, targets: Sequence[dict]
) -> dict[str, Tensor]:
    """The logged ``class_error`` (percent of matched queries whose best class is not their object's) and
    ``cardinality_error``: mean absolute difference, per image, between the number of queries whose best logit is not
    the last one and the number of objects, the official definition (DETR's and Deformable DETR's alike, whose
    sigmoid logits have no "no object" class but are counted the same way)."""
    if matched_labels.numel() == 0:
        accuracy = logits.new_zeros(())
    else:
        accuracy = (logits[matched].argmax(-1) == matched_labels).float().mean() * 100
    num_predicted = (logits.argmax(-1) != logits.shape[-1] - 1).sum(1)
    num_targets = torch.as_tensor([len(t["labels"]) for t in targets], device=logits.device)
    return {"class_error": 100 - accuracy, "cardinality_error": F.l1_loss(num_predicted.float(), num_targets.float())}


def share_of_matched(values: dict[str, float], prefix: str = "") -> dict[str, float]:
    """``values`` whose ``{prefix}class_error`` is given times its number of matched queries, and that number as
    ``{prefix}matched`` (summed, or averaged over images, steps or processes, alike), with ``class_error`` made the
    share of all those queries again; absent when none was matched: a batch or image without objects has no query
    it could be a share of (the official DETR logs 100 there, as if every one were wrong)."""
    values = dict(values)  # an epoch without a step taken has neither
    of_matched, matched = values.pop(f"{prefix}class_error", 0.0), values.pop(f"{prefix}matched", 0)
    if matched:
        values[f"{prefix}class_error"] = of_matched / matched
    return values


class SetCriterion(nn.Module):
    """Losses ``loss_ce``, ``loss_bbox``, ``loss_giou`` and the logged ``class_error``, ``cardinality_error``.

    For auxiliary outputs the same keys get a ``_{layer}`` suffix (no ``class_error``). ``weight_dict`` gives the
    coefficient of every loss key that enters the total (see :meth:`total_loss`).

    In training mode under torch.distributed the normalisers (box count, class-weight total) are averaged over the
    processes, so data-parallel training optimises one process's loss; in eval mode each batch is its own (ranks
    evaluate different numbers of batches, and no collective may wait for a rank that has none left).
    """

    def __init__(
        self,
        num_classes: int,
        matcher: HungarianMatcher,
        eos_coef: float = 0.1,
        ce_loss_coef: float = 1.0,
        bbox_loss_coef: float = 5.0,
        giou_loss_coef: float = 2.0,
        num_aux_layers: int = 0,
    ) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.matcher = matcher
        self.eos_coef = eos_coef
        empty_weight = torch.ones(num_classes + 1)
        empty_weight[-1] = eos_coef
        self.register_buffer("empty_weight", empty_weight)
        base = {"loss_ce": ce_loss_coef, "loss_bbox": bbox_loss_coef, "loss_giou": giou_loss_coef}
        self.weight_dict = dict(base)
        for i in range(num_aux_layers):
            self.weight_dict.update({f"{k}_{i}": v for k, v in base.items()})

    def _label_losses(
        self, outputs: dict, targets: Sequence[dict], indices: MatchIndices, num_boxes: float
    ) -> dict[str, Tensor]:
        logits = outputs["pred_logits"]
        idx = _matched_query_index(indices)
        matched_labels = torch.cat([t["labels"][j] for t, (_, j) in zip(targets, indices, strict=True)])
        target_classes = torch.full(logits.shape[:2], self.num_classes, dtype=torch.int64, device=logits.device)
        target_classes[idx] = matched_labels
        # The weighted mean of the cross-entropy, normalised by the weight total averaged over processes (as the box
        # losses are by the number of boxes), so data-parallel training optimises the same loss as one process.
        weighted = F.cross_entropy(logits.transpose(1, 2).float(), target_classes, self.empty_weight, reduction="none")
        loss_ce = weighted.sum() / self._mean_over_processes(self.empty_weight[target_classes].sum())
        return {"loss_ce": loss_ce, **label_readings(logits, idx, matched_labels, targets)}

    def _mean_over_processes(self, value: Tensor) -> Tensor:
        """The mean of a scalar over the processes of a distributed run, in training mode; else ``value``."""
        if self.training and dist.is_available() and dist.is_initialized():
            value = value.detach().clone()
            dist.all_reduce(value)
            value /= dist.get_world_size()
        return value

    def _box_losses(
        self, outputs: dict, targets: Sequence[dict], indices: MatchIndices, num_boxes: float
    ) -> dict[str, Tensor]:
        src_boxes = outputs["pred_boxes"][_matched_query_index(indices)].float()
        target_boxes = torch.cat([t["boxes"][j] for t, (_, j) in zip(targets, indices, strict=True)]).float()
        loss_bbox = F.l1_loss(src_boxes, target_boxes, reduction="none").sum() / num_boxes
        giou = generalized_box_iou(
            box_convert(src_boxes, "cxcywh", "xyxy"), box_convert(target_boxes, "cxcywh", "xyxy")
        )
        loss_giou = (1 - torch.diag(giou)).sum() / num_boxes
        return {"loss_bbox": loss_bbox, "loss_giou": loss_giou}

    def _num_boxes(self, targets: Sequence[dict], device: torch.device) -> float:
        """The number of target boxes (averaged over processes in training; at least 1), normalising the box losses."""
        num_boxes = torch.as_tensor(float(sum(len(t["labels"]) for t in targets)), device=device)
        return torch.clamp(self._mean_over_processes(num_boxes), min=1).item()

    def forward(self, outputs: dict, targets: Sequence[dict], indices: MatchIndices | None = None) -> dict[str, Tensor]:
        """``targets``: per image ``labels`` (N,) int64 and ``boxes`` (N, 4) normalised cxcywh."""
        self.check_targets(outputs, targets)
        if indices is None:
            indices = self.matcher(outputs, targets)
        num_boxes = self._num_boxes(targets, outputs["pred_logits"].device)
        losses = self._label_losses(outputs, targets, indices, num_boxes)
        losses.update(self._box_losses(outputs, targets, indices, num_boxes))
        for i, aux in enumerate(outputs.get("aux_outputs", [])):
            aux_indices = self.matcher(aux, targets)
            aux_losses = self._label_losses(aux, targets, aux_indices, num_boxes)
            del aux_losses["class_error"]
            aux_losses.update(self._box_losses(aux, targets, aux_indices, num_boxes))
            losses.update({f"{k}_{i}": v for k, v in aux_losses.items()})
        return losses

    def check_targets(self, outputs: dict, targets: Sequence[dict]) -> None:
        """A clear error for targets the losses cannot read: one per image, ``labels`` (N,) integer classes in
        [0, num_classes), ``boxes`` (N, 4)."""
        batch = outputs["pred_logits"].shape[0]
        if len(targets) != batch:
            given = f"{counted(len(targets), 'target')} for {counted(batch, 'image')}"
            raise ValueError(f"got {given}: give one dict per image")
        for index, target in enumerate(targets):
            missing = [key for key in ("labels", "boxes") if key not in target]
            if missing:
                raise ValueError(f"target {index} has no {missing}: each needs 'labels' (N,) and 'boxes' (N, 4)")
            labels, boxes = target["labels"], target["boxes"]
            if labels.dim() != 1 or labels.is_floating_point() or boxes.shape != (len(labels), 4):
                raise ValueError(
                    f"target {index}: expected integer 'labels' (N,) and 'boxes' (N, 4) normalised cxcywh, got labels "
                    f"{tuple(labels.shape)} {labels.dtype} and boxes {tuple(boxes.shape)}"
                )
        labels = torch.cat([target["labels"] for target in targets])
        if len(labels) and not (labels.min().item() >= 0 and labels.max().item() < self.num_classes):
            index = next(
                i for i, t in enumerate(targets) if ((t["labels"] < 0) | (t["labels"] >= self.num_classes)).any()
            )
            raise ValueError(
                f"target {index}: labels must be in [0, {self.num_classes}) (model.num_classes), got "
                f"{targets[index]['labels'].tolist()}"
            )

    def total_loss(self, losses: dict[str, Tensor]) -> Tensor:
        """The weighted sum that is optimised."""
        return sum(losses[k] * w for k, w in self.weight_dict.items() if k in losses)
