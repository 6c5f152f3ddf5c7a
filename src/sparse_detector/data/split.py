"""``data split``: one COCO JSON -> train / val (/ test) JSON files, seeded and stratified by class."""

from __future__ import annotations

import random
from collections import Counter, defaultdict
from pathlib import Path

from ..text import counted
from .coco import DatasetError, id_or_none, load_json, require_keys, whole_number
from .importers.common import json_image_path, listing, write_coco


def _stratum(category_ids: list[int | None], frequency: Counter[int | None]) -> int:
    """An image's stratum: its rarest category (0 for an image without boxes, or whose boxes' category ids are no
    whole numbers), so rare classes reach every split."""
    known = [c for c in category_ids if c is not None]
    return min(known, key=lambda c: (frequency[c], c)) if known else 0


def _categories_of_images(data: dict, source: Path) -> dict[int, list[int | None]]:
    """Image id -> the category ids of its annotations (None for one that is no whole number: the box still goes
    with its image). An annotation that names no image would go into no split: an error naming it."""
    require_keys(data, ("images", "annotations", "categories"), "the file", source)
    categories_of: dict[int, list[int | None]] = {}
    for image in data["images"]:
        require_keys(image, ("id", "file_name"), f"image entry {image.get('id', image)}", source)
        if (image_id := whole_number(image["id"], "image id", source)) in categories_of:
            raise DatasetError(f"{source}: image id {image['id']} appears twice in 'images'; give each image one id")
        categories_of[image_id] = []
    orphans = []
    for ann in data["annotations"]:
        require_keys(ann, ("image_id", "category_id"), f"annotation {ann.get('id', '?')}", source)
        if (image_id := id_or_none(ann["image_id"])) in categories_of:
            categories_of[image_id].append(id_or_none(ann["category_id"]))
        else:
            orphans.append(f"annotation {ann.get('id', '?')} (image_id {ann['image_id']!r})")
    if orphans:
        raise DatasetError(
            f"{source}: {len(orphans)} annotation(s) name an image id that is not in 'images', so they would go "
            f"into no split: {listing(orphans)}; fix their image_id, or remove them (`sparse-detector data check "
            f"{source}` lists every problem of the file)"
        )
    return categories_of


def _info_without_stats(data: dict) -> dict:
    """The source's ``info`` less its import statistics, which describe the whole set, not a split."""
    return {key: value for key, value in data.get("info", {}).items() if key != "stats"}


def split_size(option: str, value: float, total: int) -> int:
    """How many of ``total`` images ``--val`` / ``--test`` asks for: a fraction (0 < value < 1) of them, rounded,
    or a number of images (a whole number >= 1); 0 for 0."""
    if value == 0:
        return 0
    if value < 0 or (value >= 1 and value != int(value)):
        raise ValueError(
            f"{option} {value:g}: give a fraction of the images (between 0 and 1, e.g. 0.2) or a number of images "
            "(a whole number, e.g. 50)"
        )
    return int(value) if value >= 1 else round(total * value)


def _shares(group_sizes: list[int], fractions: dict[str, float]) -> list[dict[str, int]]:
    """How many images of each group (of ``group_sizes`` images) every split takes: its fraction of the running
    total (so rounding errors do not pile up over small groups, and each split's counts add up to its fraction of all
    images, rounded). A small group wanted by several splits beyond its size gives the excess, the last split's
    first, to the first groups with room (the splits ask for fewer images than there are in all, so they have room)."""
    shares, owed, seen = [], dict.fromkeys(fractions, 0), 0
    for size in group_sizes:
        counts = {split: round((seen + size) * f) - round(seen * f) for split, f in fractions.items()}
        for split in reversed(counts):
            cut = min(counts[split], max(sum(counts.values()) - size, 0))
            counts[split] -= cut
            owed[split] += cut
        shares.append(counts)
        seen += size
    for size, counts in zip(group_sizes, shares, strict=True):
        for split in counts:
            given = min(owed[split], size - sum(counts.values()))
            counts[split] += given
            owed[split] -= given
    return shares


def split_coco(
    annotation_file: str | Path,
    out_dir: str | Path,
    val: float = 0.2,
    test: float = 0.0,
    seed: int = 0,
    images_dir: str | Path | None = None,
) -> dict[str, Path]:
    """Write ``train.json``, ``val.json`` (and ``test.json`` when ``test > 0``) into ``out_dir``.

    ``val`` and ``test`` are fractions of the images (0 < f < 1) or numbers of images (whole numbers >= 1, see
    :func:`split_size`); val, and test when asked for, must get at least one image and leave train one. Images
    are grouped by their rarest category, each group shuffled with ``seed`` and cut so that every split
    gets its fraction of every group (rounded on the running total, so the split sizes add up exactly).
    Categories and ids are kept; image paths are rewritten for the new files' folder. Returns split -> path.
    """
    source = Path(annotation_file)
    data = load_json(source)
    categories_of = _categories_of_images(data, source)
    images_dir = Path(images_dir) if images_dir else source.parent
    total = len(data["images"])
    sizes = {"val": split_size("--val", val, total), "test": split_size("--test", test, total)}
    images = counted(total, "image")  # the source's, in the messages
    if total < 2:
        raise DatasetError(f"{source} has {images}: too few for a split (train and val need one image each)")
    if sizes["val"] == 0:
        given = f"--val {val:g} of {images} is 0 images" if val else "--val 0 leaves the val split empty"
        raise ValueError(
            f"{given}; training evaluates on val, so give it at least one image: a larger fraction or a number "
            "of images (e.g. --val 1)"
        )
    if sizes["test"] == 0 and test:
        raise ValueError(f"--test {test:g} of {images} is 0 images; give a larger fraction, a number of images, or 0")
    if sizes["val"] + sizes["test"] >= total:
        asked = " and ".join(f"{counted(n, 'image')} for {split}" for split, n in sizes.items() if n)
        raise ValueError(f"{source} has {images}: {asked} leave none for train; ask for fewer")
    # ids as ints: an id written as a string ("3") is the same image or category, as training reads it
    frequency = Counter(category for categories in categories_of.values() for category in categories)
    strata: dict[int, list[dict]] = defaultdict(list)
    for image in data["images"]:
        strata[_stratum(categories_of[int(image["id"])], frequency)].append(image)
    # a fraction as given (the split a fraction made before counts were taken), a count as its fraction
    fractions = {split: given if given < 1 else sizes[split] / total for split, given in (("val", val), ("test", test))}
    groups = [strata[key] for key in sorted(strata)]
    chosen: dict[str, list[dict]] = {"train": [], "val": [], "test": []}
    rng = random.Random(seed)
    for group, counts in zip(groups, _shares([len(group) for group in groups], fractions), strict=True):
        rng.shuffle(group)
        start = 0
        for split, wanted in counts.items():
            chosen[split] += group[start : start + wanted]
            start += wanted
        chosen["train"] += group[start:]
    out = Path(out_dir)
    paths = {}
    for split, images in chosen.items():
        if split == "test" and not sizes["test"]:
            continue
        path = out / f"{split}.json"
        ids = {int(image["id"]) for image in images}
        moved = [{**image, "file_name": json_image_path(images_dir / image["file_name"], path)} for image in images]
        write_coco(
            {
                **data,
                "info": {**_info_without_stats(data), "split": split, "split_of": str(source), "seed": seed},
                "images": sorted(moved, key=lambda image: int(image["id"])),
                "annotations": [ann for ann in data["annotations"] if int(ann["image_id"]) in ids],
            },
            path,
        )
        paths[split] = path
    return paths
