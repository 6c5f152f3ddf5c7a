"""``sparse-detector data``: dataset tools (import, check, split, shapes)."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from ..config import DataConfig
from ..data.labels import LABEL_MODES
from ..text import counted
from .parsing import HelpFormatter, Subparsers, add_command, non_negative_int, positive_int
from .presets import SHAPES_DATA_COMMAND

if TYPE_CHECKING:
    from ..data.check import CheckReport


def add_data_command(commands: Subparsers) -> None:
    data = commands.add_parser("data", help="dataset tools", formatter_class=HelpFormatter)
    data.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help="show full tracebacks")
    tools = data.add_subparsers(dest="data_command", required=True, metavar="TOOL")
    for add in DATA_COMMANDS:
        add(tools)


def add_data_shapes_command(tools: Subparsers) -> None:
    parser = add_command(
        tools,
        "shapes",
        "generate the synthetic shapes dataset (images + COCO JSON)",
        SHAPES_DATA_COMMAND,
        _data_shapes,
    )
    parser.add_argument("out", help="output folder (images/ and annotations/ inside)")
    parser.add_argument("--num-images", type=positive_int, default=1000, help="training images")
    parser.add_argument(
        "--num-val", type=non_negative_int, default=0, help="also write a held-out val split of this size"
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the generated images")
    parser.add_argument("--image-size", type=positive_int, default=128, help="side of the square images in pixels")
    parser.add_argument(
        "--classes", choices=["color", "shape", "shape_color"], default="color", help="what the class labels are"
    )


def _data_shapes(args: argparse.Namespace) -> int:
    from ..data.shapes import SHAPE_SIZES, generate_shapes, generate_shapes_splits

    if args.image_size < SHAPE_SIZES[1]:  # the library's message names its parameters, not this option
        smallest, largest = SHAPE_SIZES
        raise ValueError(
            f"--image-size {args.image_size}: the shapes are {smallest} to {largest} px, so the images need "
            f"--image-size {largest} or more"
        )
    options = {"image_size": args.image_size, "classes": args.classes}
    if args.num_val:
        paths = generate_shapes_splits(args.out, args.num_images, args.num_val, seed=args.seed, **options)
    else:
        paths = {"train": generate_shapes(args.out, args.num_images, seed=args.seed, **options)}
    for split, path in paths.items():
        print(f"{split}: {path}")
    print(f"images: {Path(args.out) / 'images'}")
    return 0


def add_data_import_command(tools: Subparsers) -> None:
    parser = add_command(
        tools,
        "import",
        "convert VOC, YOLO, CSV or COCO annotations to one COCO JSON (checked, paths usable from anywhere)",
        "sparse-detector data import voc --images my/images --annotations my/xml --out data/all.json",
        _data_import,
    )
    parser.description = (
        f"{parser.description}.\n\nformats:\n"
        "  voc   standard: VOC_ROOT --split trainval; any layout: --annotations XML_DIR [--images DIR] [--list FILE]\n"
        "        (XML matched to images by <filename>, else by file name)\n"
        "  yolo  IMG_DIR [--classes classes.txt|data.yaml] [--labels DIR] (one <stem>.txt per image)\n"
        "  csv   CSV_FILE [--images DIR] [--classes FILE]: rows file,x1,y1,x2,y2,label in pixels\n"
        "  coco  JSON_FILE [--images DIR]: ids renumbered where needed, image paths rewritten\n"
        "The output is written only where --out says; image paths in it are absolute or relative to it."
    )
    parser.add_argument("format", choices=["voc", "yolo", "csv", "coco"], help="annotation format")
    parser.add_argument(
        "source", nargs="?", help="VOC root (standard layout), YOLO images folder or export root, CSV file or COCO JSON"
    )
    parser.add_argument("--out", required=True, help="output COCO JSON")
    parser.add_argument("--images", help="images folder")
    parser.add_argument("--annotations", help="voc: folder of XML files (any layout)")
    parser.add_argument("--list", help="voc: file listing the image names (stems) to import")
    parser.add_argument("--split", default="trainval", help="voc standard layout: ImageSets/Main/<split>.txt")
    parser.add_argument(
        "--classes",
        help="yolo: classes.txt or data.yaml (default: one in the images folder or up to 2 above); voc, csv: file "
        "fixing the class order",
    )
    parser.add_argument("--labels", help="yolo: folder of label .txt files (default: found next to the images)")
    parser.add_argument("--exclude-difficult", action="store_true", help="voc: mark difficult objects as ignored")
    parser.add_argument("--no-decode", action="store_true", help="skip decoding every image in the check after import")


# The class names files of YOLO exports (Ultralytics / Roboflow, LabelImg / Label Studio, CVAT), in that order.
YOLO_CLASS_FILES = ("data.yaml", "data.yml", "classes.txt", "obj.names")


def _class_names_file(images: Path) -> Path | None:
    """The class names file a YOLO export keeps in its images folder or up to two folders above it (data.yaml
    beside images/train or train/images), if there is one (said)."""
    for folder in (images, *list(images.resolve().parents)[:2]):
        if found := next((folder / name for name in YOLO_CLASS_FILES if (folder / name).is_file()), None):
            print(f"classes: {found} (--classes picks another file)")
            return found
    return None


def _import_to_coco(args: argparse.Namespace) -> dict:
    """Run the importer of ``args.format``; the written COCO dict."""
    from ..data import importers
    from ..data.coco import DatasetError

    def need(value: str | None, what: str) -> str:
        if not value:
            raise DatasetError(f"data import {args.format} needs {what}; see `sparse-detector data import --help`")
        return value

    if args.format == "voc":
        classes = importers.read_class_names(args.classes) if args.classes else None
        include = not args.exclude_difficult
        if args.annotations:
            return importers.import_voc(args.annotations, args.out, args.images, args.list, classes, include)
        root = need(args.source, "a VOC root (standard layout) or --annotations XML_DIR (any layout)")
        return importers.import_voc_root(root, args.out, args.split, classes, include)
    if args.format == "yolo":
        images = need(args.images or args.source, "--images DIR (or the folder as its source)")
        classes = args.classes or _class_names_file(Path(images))
        return importers.import_yolo(
            images,
            args.out,
            need(classes, f"--classes classes.txt|data.yaml (none in {images} or the 2 folders above)"),
            args.labels,
        )
    if args.format == "csv":
        classes = importers.read_class_names(args.classes) if args.classes else None
        return importers.import_csv(need(args.source, "the CSV file"), args.out, args.images, classes)
    return importers.import_coco(need(args.source, "the COCO JSON file"), args.out, args.images)


#: What ``data import`` says after the summary for each count in the import's stats that is not 0 (``{n}`` the
#: count, ``{images}`` the count of images in words), in this order.
IMPORT_NOTES = {
    "sizes_from_files": "sizes from files: {n} image(s) had no width/height",
    "found_by_name": (
        "paths: {n} image(s) named by another machine's path (absolute, or in another case), found by name"
    ),
    "boxes_from_segmentation": "boxes from segmentation: {n} annotation(s) had no bbox",
    "normalised_coordinates": (
        "coordinates: all within [0, 1], read as fractions of each image's width and height (not pixels)"
    ),
    "turned_from_exif": (
        "EXIF: {images} labelled on the turned view (listed above): boxes turned to the stored pixels"
    ),
    "scaled_to_resized_image": "sizes: {images} resized after labelling (listed above): boxes scaled to the image",
    "size_differs_from_xml": "sizes: {n} image(s) differ from their XML <size> (listed above)",
    "size_differs_from_csv": "sizes: {n} image(s) differ from their CSV width/height (listed above)",
    "images_without_xml": "not imported: {n} image(s) without an XML file (listed above)",
    "images_without_row": "not imported: {n} image(s) without a CSV row (listed above)",
    "images_without_label_file": "no labels: {n} image(s) without a label file, imported without boxes",
    "label_files_without_image": "not imported: {n} label file(s) without an image (listed above)",
}


def _data_import(args: argparse.Namespace) -> int:
    from ..data.check import check_dataset

    stats = _import_to_coco(args)["info"]["stats"]
    print(f"written: {args.out} ({counted(stats['images'], 'image')}, {counted(stats['annotations'], 'box', 'boxes')})")
    if stats.get("dropped"):
        reasons = ", ".join(f"{count} {reason.replace('_', ' ')}" for reason, count in stats["dropped"].items())
        print(f"dropped: {sum(stats['dropped'].values())} box(es) ({reasons}; listed in the warning above)")
    if category := stats.get("dataset_name_category"):
        print(
            f"left out: category {category['id']} {category['name']!r}, not a class: no box uses it and every other "
            "category names it as its supercategory (a Roboflow export's dataset name)"
        )
    if renumbered := stats.get("renumbered_categories"):
        pairs = ", ".join(f"{old} -> {new}" for old, new in renumbered.items())
        print(f"category ids renumbered ({pairs}): detections and evaluation use the new ids, those of --out")
    for key, note in IMPORT_NOTES.items():
        if stats.get(key):
            print(note.format(n=stats[key], images=counted(stats[key], "image")))
    return _print_check(check_dataset(args.out, decode=not args.no_decode))


def add_data_check_command(tools: Subparsers) -> None:
    parser = add_command(
        tools,
        "check",
        "read a COCO JSON as training would: every image decoded, every box and id checked, a summary",
        "sparse-detector data check data/all.json",
        _data_check,
    )
    parser.description = (
        f"{parser.description}.\nExit status 0: training would not fail on this data; 1: problems (listed)."
    )
    parser.add_argument("annotations", help="COCO instances JSON")
    parser.add_argument("--images", help="folder its file names are relative to (default: the JSON's folder)")
    parser.add_argument("--no-decode", action="store_true", help="check the JSON only, do not decode the images")
    parser.add_argument("--label-mode", choices=LABEL_MODES, default=DataConfig.label_mode, help="data.label_mode")


def _data_check(args: argparse.Namespace) -> int:
    from ..data.check import check_dataset

    return _print_check(
        check_dataset(args.annotations, args.images, decode=not args.no_decode, label_mode=args.label_mode)
    )


def _print_check(report: CheckReport) -> int:
    """Print a data check's report; the exit status: 0 when training would not fail on the data, else 1."""
    print(report.format())
    return 0 if report.ok else 1


def add_data_split_command(tools: Subparsers) -> None:
    parser = add_command(
        tools,
        "split",
        "split one COCO JSON into train / val (/ test) files, seeded, stratified by class",
        "sparse-detector data split data/all.json --val 0.2 --out-dir data/splits",
        _data_split,
    )
    parser.add_argument("annotations", help="COCO instances JSON")
    parser.add_argument("--out-dir", required=True, help="folder for train.json, val.json (, test.json)")
    parser.add_argument(
        "--val", type=float, default=0.2, help="images for val: a fraction (0.2) or a number of images (50)"
    )
    parser.add_argument(
        "--test", type=float, default=0.0, help="images for test: a fraction or a number (0: no test split)"
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the random split")
    parser.add_argument("--images", help="folder its file names are relative to (default: the JSON's folder)")


def _data_split(args: argparse.Namespace) -> int:
    from ..data.coco import load_json
    from ..data.split import split_coco

    paths = split_coco(args.annotations, args.out_dir, args.val, args.test, args.seed, args.images)
    for split, path in paths.items():
        data = load_json(path)
        images, boxes = counted(len(data["images"]), "image"), counted(len(data["annotations"]), "box", "boxes")
        print(f"{split}: {path} ({images}, {boxes})")
    return 0


DATA_COMMANDS: list[Callable[[Subparsers], None]] = [
    add_data_import_command,
    add_data_check_command,
    add_data_split_command,
    add_data_shapes_command,
]
