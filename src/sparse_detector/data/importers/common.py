"""What every importer shares: a COCO JSON builder that reports what it kept and dropped."""

from __future__ import annotations

import codecs
import json
import logging
import os
from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path, PureWindowsPath
from typing import Any

from ...files import write_atomically
from ...text import counted
from .. import heif
from ..coco import (
    MAX_EXAMPLES,
    UNREADABLE_IMAGE_ERRORS,
    DatasetError,
    file_in,
    in_other_case,
    lacks_extent,
    open_image,
)
from ..orientation import labelled_turned

logger = logging.getLogger(__name__)

# .jfif / .jpe: JPEG as browsers and Windows save it from the web; .mpo (a camera's JPEG pair) and .pfm (float) as
# Ultralytics reads them; .gif read by its first frame (Pillow's, as every image is read: data.coco.read_rgb)
IMAGE_SUFFIXES = (
    ".jpg",
    ".jpeg",
    ".jfif",
    ".jpe",
    ".png",
    ".bmp",
    ".webp",
    ".tif",
    ".tiff",
    ".avif",
    ".mpo",
    ".pfm",
    ".gif",
    *(heif.SUFFIXES if heif.INSTALLED else ()),
)
# Photos of formats Pillow does not read (cameras' raw DNG; phones' HEIC without pillow-heif): named when left out of
# a folder's images
OTHER_IMAGE_SUFFIXES = (".dng", *(() if heif.INSTALLED else heif.SUFFIXES))


def is_hidden(name: str) -> bool:
    """Whether a file or folder name is hidden (``.name``: ``.DS_Store``, the ``._photo.jpg`` resource forks that
    archives made on a Mac carry) or macOS's ``__MACOSX`` folder of them: none is data."""
    return name.startswith(".") or name == "__MACOSX"


def files_under(folder: Path, suffixes: Sequence[str] | None) -> list[Path]:
    """The files under ``folder`` and its subfolders whose suffix (any case) is among ``suffixes`` (``None``:
    every file), hidden files and folders (:func:`is_hidden`) left out, in path order. Linked folders are followed
    (``images/train`` a link to another disk), each real folder once (a link to a folder above does not loop)."""
    found, seen = [], set()
    for top, folders, files in os.walk(folder, followlinks=True):
        real = os.path.realpath(top)
        if real in seen:
            folders.clear()
            continue
        seen.add(real)
        folders[:] = [name for name in folders if not is_hidden(name)]
        found += [
            Path(top, name)
            for name in files
            if (suffixes is None or Path(name).suffix.lower() in suffixes) and not is_hidden(name)
        ]
    return sorted(path for path in found if path.is_file())


def image_files_under(folder: Path, skip: Path | None = None, name_other_files: bool = False) -> list[Path]:
    """The images under ``folder`` (:func:`files_under` of ``IMAGE_SUFFIXES``), none under ``skip`` (a resolved
    folder, e.g. outputs written inside ``folder``); photos of a format Pillow does not read there are named in a
    warning, not left out without a word, and so, with ``name_other_files`` (a folder of photos, not a data set's
    whose labels lie beside its images), are files that are not images at all (``notes.txt``)."""
    found = files_under(folder, None if name_other_files else (*IMAGE_SUFFIXES, *OTHER_IMAGE_SUFFIXES))
    if skip is not None:
        found = [path for path in found if not path.resolve().is_relative_to(skip)]
    if others := [path for path in found if path.suffix.lower() in OTHER_IMAGE_SUFFIXES]:
        logger.warning(
            "%s: left out %d image(s) of a format Pillow does not read (%s), e.g. %s; convert them to JPEG or PNG "
            "to use them%s",
            folder,
            len(others),
            ", ".join(sorted({path.suffix.lower() for path in others})),
            [str(path) for path in others[:MAX_EXAMPLES]],
            f", or {heif.INSTALL_HINT}" if any(path.suffix.lower() in heif.SUFFIXES for path in others) else "",
        )
    if not_images := [path for path in found if path.suffix.lower() not in (*IMAGE_SUFFIXES, *OTHER_IMAGE_SUFFIXES)]:
        names = [str(path.relative_to(folder)) for path in not_images[:MAX_EXAMPLES]]
        logger.warning(
            "%s: left out %s: %s%s",
            folder,
            counted(len(not_images), "file that is not an image", "files that are not images"),
            ", ".join(names),
            ", ..." if len(not_images) > len(names) else "",
        )
    return [path for path in found if path.suffix.lower() in IMAGE_SUFFIXES]


def _absolute(name: str) -> bool:
    """Whether a file name is an absolute path, of this system or of Windows (C:\\photos\\a.jpg)."""
    return Path(name).is_absolute() or bool(PureWindowsPath(name).drive)


def image_file(images_dir: Path, name: str) -> Path:
    """The image file a ``file_name`` names: relative to ``images_dir`` (or absolute); an absolute path that does
    not exist here (the labelling machine's, /home/alice/data/a.jpg) is the file of that name in ``images_dir``
    when there is one; a name whose letter case differs from its file's (Windows does not tell) is that file."""
    path = file_in(images_dir, name)
    if path.is_file():
        return path
    if _absolute(name) and (here := images_dir / PureWindowsPath(name).name).is_file():  # whichever separator
        return here
    return in_other_case(path) or path


def warn_found_by_name(source: str | Path, images_dir: Path, found: list[str]) -> None:
    """Log the images :func:`image_file` found by name ('given -> found' each)."""
    if found:
        logger.warning(
            "%s: %d image(s) are named by a path that does not exist here (the labelling machine's: absolute, or in "
            "another letter case); each is the file of that name in %s, e.g. %s",
            source,
            len(found),
            images_dir,
            found[:MAX_EXAMPLES],
        )


def warn_images_left_out(images_dir: Path, taken: Iterable[Path], lacking: str, fix: str = "") -> list[str]:
    """The images of ``images_dir`` (not its subfolders) not among ``taken``, named in a warning: they have no
    ``lacking`` (an XML, a CSV row) and are not imported (``fix``: how to import them)."""
    kept = {path.resolve() for path in taken}
    left_out = sorted(
        str(p)
        for p in images_dir.iterdir()
        if p.suffix.lower() in IMAGE_SUFFIXES and not is_hidden(p.name) and p.resolve() not in kept
    )
    if left_out:
        logger.warning(
            "%s: %d image(s) have no %s and are not imported, e.g. %s%s",
            images_dir,
            len(left_out),
            lacking,
            left_out[:MAX_EXAMPLES],
            f"; {fix}" if fix else "",
        )
    return left_out


def image_size(path: Path) -> tuple[int, int]:
    """(width, height) from the image header, without decoding the pixels (``data check`` decodes)."""
    try:
        with open_image(path) as image:
            return image.size
    except UNREADABLE_IMAGE_ERRORS as err:
        raise DatasetError(f"cannot read the header of image {path}: {err}") from err


def resized_scale(
    labelled: tuple[int, int], stored: tuple[int, int], boxes: Sequence[Sequence[float]]
) -> tuple[float, float]:
    """(x, y) factors from the pixels of the image as labelled (``labelled``: width, height) to the stored image's
    when the image is a resized copy of the one labelled: the same shape (within 1%), and (x0, y0, x1, y1) boxes
    that reach past the image but fit in ``labelled``; else (1, 1): the labels' size may be wrong, not the boxes."""
    (lw, lh), (width, height) = labelled, stored
    sx, sy = width / lw, height / lh
    past_image = any(x1 > width + 1 or y1 > height + 1 for _, _, x1, y1 in boxes)
    in_labelled = all(x1 <= lw + 1 and y1 <= lh + 1 for _, _, x1, y1 in boxes)
    same_shape = abs(sx - sy) <= 0.01 * max(sx, sy)
    return (sx, sy) if same_shape and past_image and in_labelled else (1.0, 1.0)


def labelled_frame(
    path: Path, labelled: tuple[int, int], stored: tuple[int, int], boxes: Sequence[Sequence[float]]
) -> tuple[int, tuple[float, float], str]:
    """How boxes drawn on an image the labels say is ``labelled`` (width, height) reach its ``stored`` pixels:
    (EXIF orientation to turn them by, (x, y) scale, what differs). What differs: "" (nothing), "turned" (labelled
    on the EXIF-turned view a viewer shows), "scaled" (resized after labelling, :func:`resized_scale`) or
    "differs" (kept as they are: the labels' size may be wrong)."""
    if not (all(labelled) and all(stored)) or labelled == stored:
        return 1, (1.0, 1.0), ""
    if (orientation := labelled_turned(path, labelled, stored)) != 1:
        return orientation, (1.0, 1.0), "turned"
    scale = resized_scale(labelled, stored, boxes)
    return 1, scale, "scaled" if scale != (1.0, 1.0) else "differs"


def warn_size_mismatches(source: str, what: str, mismatches: dict[str, list[str]]) -> None:
    """Log the images whose labels give another size than their file (``what``: where the labels give it), by
    :func:`labelled_frame`'s kind."""
    messages = {
        "turned": f"were labelled on their EXIF-turned view (the {what} is the turned image's): their boxes are "
        "turned to the stored pixels, which training and predict read",
        "scaled": f"are smaller than their {what} (the same shape) and their boxes reach past them: resized after "
        "labelling, so their boxes are scaled to the image",
        "differs": f"are not the size their {what} says; the JSON takes the image's size and the boxes as they are "
        "(if the images were resized after labelling, these boxes are off)",
    }
    for kind, message in messages.items():
        if found := mismatches.get(kind):
            logger.warning("%s: %d image(s) %s, e.g. %s", source, len(found), message, found[:MAX_EXAMPLES])


def listing(items: Sequence[str]) -> str:
    """The first few of ``items``, '; '-separated, and how many more there are."""
    more = f"; ... and {len(items) - MAX_EXAMPLES} more" if len(items) > MAX_EXAMPLES else ""
    return "; ".join(items[:MAX_EXAMPLES]) + more


def find_image(images_dir: Path, stem: str) -> Path | None:
    """The image ``<stem>.<suffix>`` in ``images_dir`` for any usual image suffix (either case), if there is one."""
    for suffix in IMAGE_SUFFIXES:
        for candidate in (images_dir / f"{stem}{suffix}", images_dir / f"{stem}{suffix.upper()}"):
            if candidate.is_file():
                return candidate
    return None


def read_text(path: Path) -> str:
    """A text file written as UTF-8 (a BOM allowed, as Excel's "CSV UTF-8" writes) or UTF-16 with its BOM (Excel's
    "Unicode Text"); other encodings are an error naming the file and line."""
    data = path.read_bytes()
    if data.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        return data.decode("utf-16")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        line = data[: err.start].count(b"\n") + 1
        raise DatasetError(
            f"{path}:{line}: not UTF-8 text (byte {data[err.start]:#x} at offset {err.start}); save the file as UTF-8 "
            "(in Excel: 'CSV UTF-8'; elsewhere e.g. iconv -f latin1 -t utf-8)"
        ) from None


def read_list_file(path: Path) -> list[str]:
    """Non-empty lines of a list file, first whitespace-separated field each (VOC ``ImageSets`` style)."""
    if not path.is_file():
        raise DatasetError(f"list file {path} does not exist")
    return [line.split()[0] for line in read_text(path).splitlines() if line.strip()]


def json_image_path(image: Path, out_file: Path) -> str:
    """How the JSON names an image: relative to the JSON's folder when the image is inside it, else absolute,
    so the JSON works from any working directory."""
    image, folder = image.resolve(), out_file.resolve().parent
    return str(image.relative_to(folder)) if image.is_relative_to(folder) else str(image)


class CocoBuilder:
    """Collects images and boxes (absolute x0, y0, x1, y1 pixels) and writes a COCO instances JSON.

    Categories get ids 1..C in ``class_names`` order when given (an unknown class is then an error), else sorted
    by name over everything added. Boxes with no extent (``zero_area``), corners the wrong way round
    (``inverted``: x1 < x0 or y1 < y0) or repeating a box of the same class on the same image (``duplicate``, as
    Ultralytics drops them) are dropped, counted in ``dropped`` and logged; boxes reaching past the
    image are kept as they are (training and evaluation clip them, ``data check`` counts them). Image ids are
    1..N in the order images are added.
    """

    def __init__(self, source: str, class_names: Sequence[str] | None = None) -> None:
        self.source = source
        self.class_names = list(class_names) if class_names is not None else None
        self._images: list[tuple[Path, int, int]] = []
        self._boxes: list[dict[str, Any]] = []
        self._seen: set[tuple] = set()  # (image id, class, x0, y0, x1, y1) of every box kept
        self.dropped: Counter[str] = Counter()
        self.examples: list[str] = []
        self.unreadable: list[str] = []  # images whose header cannot be read: the import fails, naming them all

    def add_image(self, path: Path) -> int:
        """Register an image (its size read from the header); returns its id. An unreadable image gets size 0 x 0
        and is listed in ``unreadable``; :meth:`build` then fails naming every one."""
        try:
            width, height = image_size(path)
        except DatasetError as err:
            self.unreadable.append(str(err))
            width = height = 0
        self._images.append((path, width, height))
        return len(self._images)

    def image(self, image_id: int) -> tuple[Path, int, int]:
        """(path, width, height) of an added image."""
        return self._images[image_id - 1]

    def add_box(self, image_id: int, name: str, box: Sequence[float], where: str, **extra: Any) -> None:
        """Add a box of class ``name``; ``where`` names its origin (file, line or object) in messages."""
        if self.class_names is not None and name not in self.class_names:
            raise DatasetError(f"{where}: class {name!r} is not among the given classes {self.class_names}")
        x0, y0, x1, y1 = (float(v) for v in box)
        if x1 < x0 or y1 < y0:
            self.drop("inverted", f"{where}: box {[x0, y0, x1, y1]} has x2 < x1 or y2 < y1")
            return
        if lacks_extent(x0, y0, x1, y1):
            self.drop("zero_area", f"{where}: box {[x0, y0, x1, y1]}")
            return
        if (key := (image_id, name, x0, y0, x1, y1)) in self._seen:  # a label saved twice: one object, not two
            self.drop("duplicate", f"{where}: box {[x0, y0, x1, y1]} of {name!r} repeats an earlier one on its image")
            return
        self._seen.add(key)
        self._boxes.append({"image_id": image_id, "name": name, "bbox": [x0, y0, x1 - x0, y1 - y0], **extra})

    def drop(self, reason: str, detail: str) -> None:
        """Count a box left out (``reason``), keeping the first few ``detail`` lines as examples."""
        self.dropped[reason] += 1
        if len(self.examples) < MAX_EXAMPLES:
            self.examples.append(detail)

    def build(self, out_file: str | Path) -> dict[str, Any]:
        """The COCO dict, with image paths as :func:`json_image_path` writes them for ``out_file``."""
        if self.unreadable:
            raise DatasetError(
                f"{len(self.unreadable)} image(s) cannot be read; replace or remove them: {listing(self.unreadable)}"
            )
        out = Path(out_file)
        names = self.class_names if self.class_names is not None else sorted({b["name"] for b in self._boxes})
        category_ids = {name: i + 1 for i, name in enumerate(names)}
        spellings: dict[str, list[str]] = {}
        for name in names:
            spellings.setdefault(" ".join(name.casefold().split()), []).append(name)
        alike = [group for group in spellings.values() if len(group) > 1]
        if alike:
            logger.warning(
                "%s: class names that differ only in case or spacing are separate classes: %s; if each group is one "
                "class, make its labels alike in the source files and import again",
                self.source,
                "; ".join(" / ".join(repr(n) for n in group) for group in alike),
            )
        if self.dropped:
            inverted = " (are the columns x1,y1,x2,y2, not x,y,width,height? a header file,x,y,w,h,label reads those)"
            hint = inverted if self.dropped["inverted"] else ""
            logger.warning(
                "%s: dropped %d box(es) (zero or negative extent, or repeating another) %s, e.g. %s%s",
                self.source,
                self.dropped.total(),
                dict(self.dropped),
                self.examples,
                hint,
            )
        per_class = Counter({name: 0 for name in names})
        annotations = []
        for box in self._boxes:
            name = box.pop("name")
            per_class[name] += 1
            w, h = box["bbox"][2:]
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "category_id": category_ids[name],
                    "area": w * h,
                    "iscrowd": 0,
                    **box,
                }
            )
        return {
            "info": {
                "description": f"imported from {self.source}",
                "stats": {
                    "images": len(self._images),
                    "annotations": len(annotations),
                    "per_class": dict(per_class),
                    "alike_class_names": alike,
                    "dropped": dict(self.dropped),
                    "dropped_examples": self.examples,
                },
            },
            "licenses": [],
            "images": [
                {"id": i + 1, "file_name": json_image_path(path, out), "width": w, "height": h}
                for i, (path, w, h) in enumerate(self._images)
            ],
            "annotations": annotations,
            "categories": [{"id": i, "name": name, "supercategory": "none"} for name, i in category_ids.items()],
        }

    def write(self, out_file: str | Path) -> dict[str, Any]:
        """Build and write the JSON (folders created, written to a temporary file then renamed)."""
        return write_coco(self.build(out_file), out_file)


def write_coco(coco: dict[str, Any], out_file: str | Path) -> dict[str, Any]:
    """Write a COCO dict as JSON atomically; returns it."""
    out = Path(out_file)
    if out.is_dir():
        raise DatasetError(f"{out} is a folder; the output is a JSON file, e.g. {out / 'annotations.json'}")
    out.parent.mkdir(parents=True, exist_ok=True)
    write_atomically(out, json.dumps(coco))
    return coco
