"""Evaluation: losses and COCO AP over a whole data loader.

The loader of :func:`~sparse_detector.data.build.build_loader` batches only images of one size, so no image is
padded and the numbers do not depend on the batch size.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader
from tqdm import tqdm

from ..data.batching import PaddedBatch
from ..data.labels import LabelMap
from ..models.criterion import SetCriterion, share_of_matched
from ..models.outputs import DetectionOutput
from ..models.postprocess import postprocessor_for
from ..text import counted
from .coco_eval import CocoEvaluator, CocoResult
from .distributed import gathered

# the loss terms logged as val_* besides the total val_loss
VAL_LOSS_TERMS = ("loss_ce", "loss_bbox", "loss_giou", "class_error", "cardinality_error")


def targets_to(targets: list[dict[str, Tensor]], device: torch.device) -> list[dict[str, Tensor]]:
    """The targets with every tensor moved to ``device``."""
    return [{k: v.to(device) for k, v in t.items()} for t in targets]


def outputs_finite(outputs: DetectionOutput) -> bool:
    """Whether the boxes and logits of every decoder layer (and a two-stage model's proposals) are finite."""
    parts = [outputs, *(outputs.aux_outputs or []), *([outputs.enc_outputs] if outputs.enc_outputs is not None else [])]
    return all(bool(torch.isfinite(p.pred_logits).all() and torch.isfinite(p.pred_boxes).all()) for p in parts)


def weights_reading(model: nn.Module) -> str:
    """What the weights look like after a non-finite result: which hold NaN / inf, else the largest magnitude."""
    nonfinite = [name for name, p in model.named_parameters() if not bool(torch.isfinite(p).all())]
    if nonfinite:
        tensors = counted(len(nonfinite), "parameter tensor")
        return f"the weights diverged: NaN or inf in {tensors} (first: {nonfinite[:3]})"
    size, name = max((float(p.detach().abs().max()), name) for name, p in model.named_parameters() if p.numel())
    return f"the weights are finite, the largest is |w| = {size:.3g} in {name}"


def weights_finite(model: nn.Module) -> bool:
    """Whether every parameter of ``model`` is finite (no NaN or inf)."""
    return all(bool(torch.isfinite(p).all()) for p in model.parameters())


class NonFiniteOutputsError(FloatingPointError):
    """The model's outputs on evaluation images hold NaN or inf: the weights of a training run that diverged."""

    def __init__(self, image_ids: list[int], model: nn.Module) -> None:
        self.image_ids = image_ids
        super().__init__(
            f"the model's outputs are NaN or inf on image ids {image_ids}; {weights_reading(model)}: the weights of "
            "a training run that diverged? Evaluate an earlier checkpoint of the run (checkpoint_best.pt, "
            "checkpoint_epochNNNN.pt)"
        )


def evaluator_for(loader: DataLoader, label_map: LabelMap | Mapping) -> CocoEvaluator:
    """A COCO evaluator over the ground truth of ``loader``'s dataset, mapping labels with ``label_map``."""
    return CocoEvaluator(loader.dataset.coco, LabelMap.coerce(label_map).evaluator_map)


@torch.no_grad()
def evaluation_batches(
    model: nn.Module, loader: DataLoader, device: torch.device, evaluator: CocoEvaluator, progress: bool = False
) -> Iterator[tuple[DetectionOutput, list[dict[str, Tensor]]]]:
    """Run ``model`` on every batch of ``loader`` and feed its post-processed predictions to ``evaluator``;
    yields each batch's raw outputs and its targets (on ``device``) for further per-batch readings."""
    postprocess = postprocessor_for(model)
    batch: PaddedBatch
    for batch, targets in tqdm(loader, desc="evaluate", disable=not progress, leave=False):
        if batch is None:  # every image of the batch was skipped as unreadable (data.on_invalid=skip)
            continue
        batch = batch.to(device)
        targets = targets_to(targets, device)
        outputs = model(batch)
        if not outputs_finite(outputs):  # COCOeval would stop at "Detection scores must not be NaN"
            raise NonFiniteOutputsError([int(t["image_id"]) for t in targets], model)
        orig_sizes = torch.stack([t["orig_size"] for t in targets])
        results = postprocess(outputs, orig_sizes)
        predictions = zip(targets, results, strict=True)
        evaluator.update({int(t["image_id"]): {k: v.cpu() for k, v in r.items()} for t, r in predictions})
        yield outputs, targets


@dataclass
class Evaluation:
    """The COCO result of a pass over a loader, its mean losses (with a criterion) and the detections."""

    coco: CocoResult
    losses: dict[str, float]
    evaluator: CocoEvaluator = field(repr=False)

    @cached_property
    def detections(self) -> list[dict[str, Any]]:
        """Every detection in the COCO results format, made when first asked for (half a million dicts for COCO
        val2017, seconds that an evaluation during training does not need)."""
        return self.evaluator.results()

    @property
    def stats(self) -> dict[str, float]:
        """The 12 COCO numbers and the ``val_*`` losses, as logged in ``metrics.jsonl``."""
        return {**self.coco.stats, **self.losses}


@torch.no_grad()
def run_evaluation(
    model: nn.Module,
    criterion: SetCriterion | None,
    loader: DataLoader,
    device: torch.device,
    label_map: LabelMap | Mapping,
    progress: bool = False,
) -> Evaluation:
    """COCO AP / AR of all predictions (one COCOeval run at the end), per-class AP, and with a criterion the
    mean losses over the images, each image's read alone (the same whatever the batch size).

    Under torch.distributed it is a collective: give each rank its own whole batches (every image in one batch of
    one rank); every rank returns the numbers of all of them, equal to one process running the same batches."""
    model.eval()
    evaluator = evaluator_for(loader, label_map)
    image_losses: list[dict[str, float]] = []
    training = criterion is not None and criterion.training
    if criterion is not None:
        criterion.eval()  # each image normalised by its own boxes, with no collective (see SetCriterion)
    for outputs, targets in evaluation_batches(model, loader, device, evaluator, progress):
        if criterion is not None:
            image_losses += [_image_losses(criterion, outputs.image(i), target) for i, target in enumerate(targets)]
    if criterion is not None:
        criterion.train(training)
    # under torch.distributed every rank's images (each in one batch of one rank): one mean over all of them
    image_losses = [losses for rank in gathered(image_losses) for losses in rank]
    return Evaluation(evaluator.evaluate(), _mean_losses(image_losses), evaluator)


def _image_losses(criterion: SetCriterion, outputs: DetectionOutput, target: dict[str, Tensor]) -> dict[str, float]:
    """The ``val_*`` readings of one image alone, and its number of matched queries (what ``class_error`` is a
    share of)."""
    losses = criterion(outputs, [target])
    matched = min(len(target["labels"]), outputs.pred_logits.shape[1])
    return {
        "loss": criterion.total_loss(losses).item(),
        **{k: losses[k].item() for k in VAL_LOSS_TERMS},
        "matched": matched,
    }


def _mean_losses(image_losses: list[dict[str, float]]) -> dict[str, float]:
    """``val_*``: the mean over images of each image's losses alone, so they do not depend on how the images were
    batched; ``class_error`` over the matched queries of all images (an image without objects has none), absent
    when no image has any: there is nothing it could be a share of."""
    if not image_losses:
        return {}
    weighted = [{**b, "class_error": b["class_error"] * b["matched"]} for b in image_losses]
    terms = ["loss", *VAL_LOSS_TERMS, "matched"]
    return share_of_matched({f"val_{k}": math.fsum(b[k] for b in weighted) / len(weighted) for k in terms}, "val_")
