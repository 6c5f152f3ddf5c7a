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
# COCO 2017 detection categories by id: 80 of the ids 1..90 (12, 26, 29, 30, 45, 66, 68, 69, 71 and 83 are unused)
COCO_CATEGORY_NAMES = {
    1: "person", 2: "bicycle", 3: "car", 4: "motorcycle", 5: "airplane", 6: "bus", 7: "train", 8: "truck",
    9: "boat", 10: "traffic light", 11: "fire hydrant", 13: "stop sign", 14: "parking meter", 15: "bench",
    16: "bird", 17: "cat", 18: "dog", 19: "horse", 20: "sheep", 21: "cow", 22: "elephant", 23: "bear",
    24: "zebra", 25: "giraffe", 27: "backpack", 28: "umbrella", 31: "handbag", 32: "tie", 33: "suitcase",
    34: "frisbee", 35: "skis", 36: "snowboard", 37: "sports ball", 38: "kite", 39: "baseball bat",
    40: "baseball glove", 41: "skateboard", 42: "surfboard", 43: "tennis racket", 44: "bottle", 46: "wine glass",
    47: "cup", 48: "fork", 49: "knife", 50: "spoon", 51: "bowl", 52: "banana", 53: "apple", 54: "sandwich",
    55: "orange", 56: "broccoli", 57: "carrot", 58: "hot dog", 59: "pizza", 60: "donut", 61: "cake", 62: "chair",
    63: "couch", 64: "potted plant", 65: "bed", 67: "dining table", 70: "toilet", 72: "tv", 73: "laptop",
    74: "mouse", 75: "remote", 76: "keyboard", 77: "cell phone", 78: "microwave", 79: "oven", 80: "toaster",
    81: "sink", 82: "refrigerator", 84: "book", 85: "clock", 86: "vase", 87: "scissors", 88: "teddy bear",
    89: "hair drier", 90: "toothbrush",
}  # fmt: skip


@dataclass(frozen=True)
class LabelMap:
    """How model labels map to category ids and names."""

    label_mode: LabelMode
    num_classes: int
    label_to_category_id: dict[int, int] = field(default_factory=dict)  # empty in coco_ids mode
    category_names: list[str] = field(default_factory=list)  # by label; empty for official checkpoints

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
        """Official DETR checkpoints: labels are raw COCO ids, named by :data:`COCO_CATEGORY_NAMES` (no names are
        stored, so a data set scored with them keeps its own names; :meth:`coco_differences` lists those that
        differ)."""
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

    def coco_differences(self, data: LabelMap) -> list[str]:
        """For an official checkpoint's map (raw COCO ids, no names stored): each category of a data set with map
        ``data`` whose id is another class in COCO (names compared ignoring case), so that the model's class of
        that id would be scored as the data's; empty for other maps."""
        if self.category_names or self.label_mode != "coco_ids":
            return []
        found = [(data.category_id(label), name) for label, name in enumerate(data.category_names) if name != "N/A"]
        return [
            f"id {i}: {name!r} vs COCO {COCO_CATEGORY_NAMES.get(i, 'none')!r}"
            for i, name in found
            if name.lower() != COCO_CATEGORY_NAMES.get(i, "").lower()
        ]

    def unknown_categories(self, data: LabelMap) -> list[tuple[int, str]]:
        """The categories (id, name) of a data set with map ``data`` that this map lacks: its boxes of them
        have no class of the model, so the Hungarian matcher cannot pair them with queries by class; empty when
        there are none or this map holds no names (official checkpoints)."""
        if not self.category_names:
            return []
        ours = {self.category_id(label) for label in range(len(self.category_names))}
        return [
            (data.category_id(label), name)
            for label, name in enumerate(data.category_names)
            if name != "N/A" and data.category_id(label) not in ours
        ]

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
        """The category name of a label: the map's, COCO's for an official checkpoint's map (raw COCO ids, no names
        stored), else its number."""
        names = self.category_names
        if 0 <= label < len(names):
            return names[label]
        if self.label_mode == "coco_ids" and not names:
            return COCO_CATEGORY_NAMES.get(int(label), str(label))
        return str(label)
