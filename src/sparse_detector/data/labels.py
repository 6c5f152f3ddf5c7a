"""Model labels <-> data set category ids and names: the one place that knows the mapping.

Two modes (``data.label_mode``):
- ``contiguous`` (user data sets): labels 0..C-1 follow the sorted category ids;
- ``coco_ids`` (official-compat): the label *is* the category id, ``num_classes = max id + 1`` (91 for COCO).

A :class:`LabelMap` travels in every checkpoint as the plain dict of :meth:`LabelMap.to_dict` (safe for
``torch.load(weights_only=True)``); :meth:`LabelMap.coerce` accepts either form.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

LabelMode = Literal["contiguous", "coco_ids"]
LABEL_MODES = ("contiguous", "coco_ids")
COCO_NUM_CLASSES = 91  # official DETR: raw COCO category ids 1..90, plus id 0 unused


@dataclass(frozen=True)
class LabelMap:
    """How model labels map to category ids and names."""

    label_mode: LabelMode
    num_classes: int
    label_to_category_id: dict[int, int] = field(default_factory=dict)  # empty in coco_ids mode
    category_names: list[str] = field(default_factory=list)  # by label; may be empty (official checkpoints)

    @classmethod
    def from_categories(cls, names_by_id: Mapping[int, str], label_mode: LabelMode = "contiguous") -> LabelMap:
        """The map of a data set's categories (id -> name)."""
        if label_mode not in LABEL_MODES:
            raise ValueError(f"label_mode must be one of {LABEL_MODES}, got {label_mode!r}")
        ids = sorted(names_by_id)
        if label_mode == "contiguous":
            return cls("contiguous", len(ids), dict(enumerate(ids)), [names_by_id[c] for c in ids])
        names = [names_by_id.get(i, "N/A") for i in range(ids[-1] + 1)]
        return cls("coco_ids", len(names), {c: c for c in ids}, names)

    @classmethod
    def official_coco(cls, num_classes: int = COCO_NUM_CLASSES) -> LabelMap:
        """Official DETR checkpoints: labels are raw COCO ids, no names stored."""
        return cls("coco_ids", num_classes)

    @classmethod
    def coerce(cls, value: LabelMap | Mapping[str, Any]) -> LabelMap:
        """A ``LabelMap`` from itself or from its checkpoint dict."""
        if isinstance(value, LabelMap):
            return value
        return cls(
            value["label_mode"],
            int(value["num_classes"]),
            {int(k): int(v) for k, v in value.get("label_to_category_id", {}).items()},
            list(value.get("category_names", [])),
        )

    def to_dict(self) -> dict[str, Any]:
        """Plain data for checkpoints."""
        return {
            "label_mode": self.label_mode,
            "num_classes": self.num_classes,
            "label_to_category_id": dict(self.label_to_category_id),
            "category_names": list(self.category_names),
        }

    def differences(self, data: LabelMap) -> list[str]:
        """Why this map's predictions cannot be scored on a data set with map ``data``: each of its category ids
        that is named differently there or is absent; empty when they fit or this map holds no names (official
        checkpoints). Categories only the data set has are fine."""
        ours = {self.category_id(label): name for label, name in enumerate(self.category_names) if name != "N/A"}
        theirs = {data.category_id(label): name for label, name in enumerate(data.category_names) if name != "N/A"}
        return [f"id {i}: {name!r} vs {theirs.get(i, 'absent')!r}" for i, name in ours.items() if theirs.get(i) != name]

    @property
    def evaluator_map(self) -> dict[int, int] | None:
        """label -> category id for the COCO evaluator; ``None`` when labels are category ids already."""
        return None if self.label_mode == "coco_ids" else dict(self.label_to_category_id)

    @property
    def category_to_label(self) -> dict[int, int]:
        return {c: label for label, c in self.label_to_category_id.items()}

    def category_id(self, label: int) -> int:
        if self.label_mode == "coco_ids":
            return int(label)
        return self.label_to_category_id[int(label)]

    def category_ids(self, labels: Sequence[int]) -> list[int]:
        return [self.category_id(label) for label in labels]

    def name(self, label: int) -> str:
        """The category name of a label (its number when the map holds no names)."""
        names = self.category_names
        return names[label] if 0 <= label < len(names) else str(label)
