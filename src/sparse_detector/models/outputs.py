"""Typed detector outputs that still read like official DETR's dict (``outputs["pred_logits"]``)."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, fields
from typing import Any

import torch
from torch import Tensor

from ..attention.sites import AttentionRecord


@dataclass
class DetectionOutput(Mapping[str, Any]):
    """What every detector returns for a batch.

    ``pred_logits`` (B, Q, C + 1), the last class being "no object" — or (B, Q, C) independent sigmoid logits for
    models with ``sigmoid_scores`` (Deformable DETR); ``pred_boxes`` (B, Q, 4) normalised
    (cx, cy, w, h) in [0, 1] of each image's valid area; ``aux_outputs`` one ``DetectionOutput`` per intermediate
    decoder layer (None when the model has no auxiliary losses); ``attention`` the recorded attention records by
    site, one per layer, when recording was asked for (see ``sparse_detector.analysis.record_attention``);
    ``enc_outputs`` the encoder's class-agnostic proposals of a two-stage model (trained with their own loss).

    As a read-only mapping it holds the fields that are not None, so official-style code keeps working:
    ``outputs["aux_outputs"][i]["pred_boxes"]``, ``"aux_outputs" in outputs``, ``outputs.get("aux_outputs", [])``.
    """

    pred_logits: Tensor
    pred_boxes: Tensor
    aux_outputs: list[DetectionOutput] | None = None
    attention: dict[str, list[AttentionRecord]] | None = None
    enc_outputs: DetectionOutput | None = None

    def __getitem__(self, key: str) -> Any:
        value = getattr(self, key, None) if key in _FIELDS else None
        if value is None:
            raise KeyError(key)
        return value

    def __iter__(self) -> Iterator[str]:
        return (name for name in _FIELDS if getattr(self, name) is not None)

    def __len__(self) -> int:
        return sum(1 for _ in self)

    def image(self, index: int) -> DetectionOutput:
        """The outputs of image ``index`` of the batch, as a batch of one (its logits and boxes at every decoder
        layer and of the proposals; no attention records)."""
        return DetectionOutput(
            self.pred_logits[index : index + 1],
            self.pred_boxes[index : index + 1],
            aux_outputs=None if self.aux_outputs is None else [aux.image(index) for aux in self.aux_outputs],
            enc_outputs=None if self.enc_outputs is None else self.enc_outputs.image(index),
        )


_FIELDS = tuple(f.name for f in fields(DetectionOutput))
# A pytree node, so torch.export / torch.compile / DDP see the tensors inside.
torch.export.register_dataclass(DetectionOutput, serialized_type_name="sparse_detector.DetectionOutput")
