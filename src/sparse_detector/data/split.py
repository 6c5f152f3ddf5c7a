"""``data split``: one COCO JSON -> train / val (/ test) JSON files, seeded and stratified by class."""

from __future__ import annotations

import random
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

from ..text import counted
from .coco import DatasetError, load_json
from .importers.common import json_image_path, write_coco


def _stratum(category_ids: list[int], frequency: Counter[int]) -> int:
    """An image's stratum: its rarest category (0 for an image without boxes), so rare classes reach every split."""
    return min(category_ids, key=lambda c: (frequency[c], c)) if category_ids else 0


def _info_without_stats(data: dict) -> dict:
    """The source's ``info`` less its import statistics, which describe the whole set, not a split."""
    return {key: value for key, value in data.get("info", {}).items() if key != "stats"}


def split_coco(
    annotation_file: str | Path,
    out_dir: str | Path,
    val: float = 0.2,
    test: float = 0.0,
    seed: int = 0,
    images_dir: str | Path | None = None,
) -> dict[str, Path]:
    """Write ``train.json``, ``val.json`` (and ``test.json`` when ``test > 0``) into ``out_dir``.

    Images are grouped by their rarest category, each group shuffled with ``seed`` and cut so that every split
    gets its fraction of every group (rounded on the running total, so the split sizes add up exactly).
    Categories and ids are kept; image paths are rewritten for the new files' folder. Returns split -> path.
    """
    if not (0 <= val < 1 and 0 <= test < 1 and val + test < 1):
        raise ValueError(f"--val {val} and --test {test} must be fractions in [0, 1) that add up to less than 1")
    source = Path(annotation_file)
    data = load_json(source)
    images_dir = Path(images_dir) if images_dir else source.parent
    frequency = Counter(ann["category_id"] for ann in data["annotations"])
    categories_of: dict[Any, list[int]] = defaultdict(list)
    for ann in data["annotations"]:
        categories_of[ann["image_id"]].append(ann["category_id"])
    strata: dict[int, list[dict]] = defaultdict(list)
    for image in data["images"]:
        strata[_stratum(categories_of[image["id"]], frequency)].append(image)
    fractions = {"val": val, "test": test}
    chosen: dict[str, list[dict]] = {"train": [], "val": [], "test": []}
    seen = 0
    rng = random.Random(seed)
    for key in sorted(strata):
        group = strata[key]
        rng.shuffle(group)
        start = 0
        for split, fraction in fractions.items():
            # take this split's share of the running total, so rounding errors do not pile up over small groups
            wanted = round((seen + len(group)) * fraction) - round(seen * fraction)
            chosen[split] += group[start : start + wanted]
            start += wanted
        chosen["train"] += group[start:]
        seen += len(group)
    if not chosen["train"] or not chosen["val"] and val > 0:
        images = counted(len(data["images"]), "image")
        raise DatasetError(f"{source} has {images}: too few for a split with --val {val}")
    out = Path(out_dir)
    paths = {}
    for split, images in chosen.items():
        if split == "test" and test == 0:
            continue
        path = out / f"{split}.json"
        ids = {image["id"] for image in images}
        moved = [{**image, "file_name": json_image_path(images_dir / image["file_name"], path)} for image in images]
        write_coco(
            {
                **data,
                "info": {**_info_without_stats(data), "split": split, "split_of": str(source), "seed": seed},
                "images": sorted(moved, key=lambda image: image["id"]),
                "annotations": [ann for ann in data["annotations"] if ann["image_id"] in ids],
            },
            path,
        )
        paths[split] = path
    return paths
