"""``data check``: everything training would trip over, found up front and listed with ids.

The JSON part (structure, ids, every box against its image) is cheap; decoding every image (``decode=True``)
finds truncated or mis-sized files, and notes images with an EXIF orientation (read unturned, as training does).
Boxes partly outside their image are not problems (they are clipped, the same way in training and evaluation) but
are counted.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from .coco import CocoDetection, DatasetError
from .labels import LabelMode
from .orientation import exif_orientation

# COCO's area ranges (pixels²) of the small / medium / large AP numbers.
AREA_BUCKETS = (("small", 32**2), ("medium", 96**2), ("large", float("inf")))
MAX_LISTED = 20


@dataclass
class CheckReport:
    """The outcome of :func:`check_dataset`; ``ok`` when training with ``data.on_invalid=error`` would not fail."""

    annotation_file: Path
    images: int = 0
    images_without_boxes: int = 0  # background images (no box, or crowd / ignored boxes only)
    boxes_per_class: dict[str, int] = field(default_factory=dict)
    boxes_by_area: dict[str, int] = field(default_factory=dict)
    crowd: int = 0
    boxes_left_out: int = 0  # boxes of the images left out (missing or unreadable)
    clipped: int = 0
    images_decoded: bool = False
    exif_turned: list[str] = field(default_factory=list)  # images whose EXIF orientation a viewer would apply
    repeated_files: list[str] = field(default_factory=list)  # files listed under more than one image id
    dataset_name_category: dict | None = None  # a Roboflow export's category named like the dataset, not a class
    problems: list[str] = field(default_factory=list)  # each names the file / ids at fault
    problem_counts: dict[str, int] = field(default_factory=dict)  # reason -> count
    fatal: str = ""  # a problem that stops reading the file at all

    @property
    def ok(self) -> bool:
        return not self.fatal and not self.problems

    def format(self) -> str:
        """A plain-text summary for the terminal."""
        lines = [f"{self.annotation_file}"]
        if self.fatal:
            return "\n".join([*lines, f"FAILED: {self.fatal}"])
        decoded = "all decoded" if self.images_decoded else "not decoded (--no-decode)"
        empty = f"; {self.images_without_boxes} without boxes" if self.images_without_boxes else ""
        lines.append(f"images: {self.images} ({decoded}{empty})")
        left_out = f"; {self.boxes_left_out} on the images left out below" if self.boxes_left_out else ""
        lines.append(
            f"boxes:  {sum(self.boxes_per_class.values())} ({self.crowd} crowd/ignored, not counted{left_out})"
        )
        width = max((len(name) for name in self.boxes_per_class), default=0)
        lines += [f"  {name.ljust(width)}  {count}" for name, count in self.boxes_per_class.items()]
        sizes = ", ".join(f"{name} {count}" for name, count in self.boxes_by_area.items())
        lines.append(f"box sizes (COCO area: small < 32², medium < 96², large): {sizes}")
        if self.clipped:
            lines.append(f"clipped: {self.clipped} box(es) reach past their image and are clipped to it")
        if self.repeated_files:
            lines.append(
                f"repeated: {len(self.repeated_files)} image file(s) listed under more than one image id, so "
                "training sees each copy with only its own entry's boxes (the other copies' objects taught as "
                f"background); give each file one entry with all its boxes: {self.repeated_files[:3]}"
            )
        if self.exif_turned:
            lines.append(
                f"EXIF: {len(self.exif_turned)} image(s) carry an orientation tag, so viewers and some labelling "
                "tools show them turned; the JSON, training and predict use the stored pixels, not turned (boxes "
                f"drawn on the turned view would be off), e.g. {self.exif_turned[:3]}"
            )
        if category := self.dataset_name_category:
            lines.append(
                f"note: category {category['id']} {category['name']!r} has no boxes and is the supercategory of every "
                "other category: the dataset's own name in a Roboflow export, not a class, but training counts it as "
                f"one (model.num_classes must include it); `sparse-detector data import coco {self.annotation_file} "
                "--out NEW.json` leaves it out"
            )
        if self.ok:
            lines.append("OK: no problems found")
            return "\n".join(lines)
        lines.append(f"PROBLEMS: {len(self.problems)} {self.problem_counts}")
        lines += [f"  {problem}" for problem in self.problems[:MAX_LISTED]]
        if len(self.problems) > MAX_LISTED:
            lines.append(f"  ... and {len(self.problems) - MAX_LISTED} more")
        lines.append(
            "training with data.on_invalid=error (the default) would stop at the first of them; fix them, or "
            "train with data.on_invalid=skip data.check_images=true to leave them out (counted and logged)"
        )
        return "\n".join(lines)


def check_dataset(
    annotation_file: str | Path,
    images_dir: str | Path | None = None,
    decode: bool = True,
    label_mode: LabelMode = "contiguous",
) -> CheckReport:
    """Read a COCO JSON as training would, collecting every problem instead of stopping at the first."""
    report = CheckReport(Path(annotation_file), images_decoded=decode)
    try:
        dataset = CocoDetection(images_dir, annotation_file, None, label_mode, "skip", check_images=decode)
    except DatasetError as err:
        report.fatal = str(err)
        return report
    report.images = len(dataset)
    if not report.images and not dataset.skipped:
        report.fatal = f"{annotation_file} lists no images: training and evaluation need at least one"
        return report
    report.crowd, report.clipped, report.boxes_left_out = dataset.num_crowd, dataset.num_clipped, dataset.boxes_left_out
    report.problems, report.problem_counts = list(dataset.problems), dict(dataset.skipped)
    report.dataset_name_category = dataset.dataset_name_category
    per_class: Counter[str] = Counter({name: 0 for name in dataset.category_names})
    by_area: Counter[str] = Counter({name: 0 for name, _ in AREA_BUCKETS})
    for index in range(len(dataset)):
        target = dataset.raw_target(index)
        report.images_without_boxes += not len(target["labels"])
        per_class.update(dataset.labels.name(int(label)) for label in target["labels"])
        by_area.update(next(name for name, top in AREA_BUCKETS if area < top) for area in target["area"].tolist())
    report.boxes_per_class, report.boxes_by_area = dict(per_class), dict(by_area)
    ids_of: dict[Path, list[int]] = {}
    for index, image_id in enumerate(dataset.image_ids):
        ids_of.setdefault(dataset.image_path(index).resolve(), []).append(image_id)
    report.repeated_files = [f"{path} (image ids {ids})" for path, ids in ids_of.items() if len(ids) > 1]
    if decode:
        report.exif_turned = [str(path) for path in map(dataset.image_path, range(len(dataset))) if _turned(path)]
    return report


def _turned(path: Path) -> bool:
    """Whether an image's EXIF orientation asks viewers to rotate or mirror it."""
    return exif_orientation(path) != 1
