"""Loading trained or official models for evaluation and prediction, prediction on image files, and recording
the attention of one batch.

``record_run_batch("runs/mine")`` is "load a run -> model -> one batch -> recorded maps" as one library call (what
figures and notebooks start from).
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from torch import Tensor, nn

from ..analysis import AttentionMaps, record_attention
from ..config import (
    DEFAULT_SCORE_THRESHOLD,
    Config,
    ConfigError,
    check_score_threshold,
    config_from_dict,
    config_to_dict,
    override_config,
    run_config_here,
    without_pretrained,
)
from ..data.batching import PaddedBatch, collate_detection
from ..data.build import build_dataset, config_transforms
from ..data.coco import UNREADABLE_IMAGE_ERRORS, DatasetError, load_json, read_rgb, to_rgb
from ..data.importers.common import IMAGE_SUFFIXES, image_files_under, is_hidden
from ..data.labels import LabelMap
from ..data.orientation import exif_orientation
from ..data.transforms import image_tensor
from ..files import write_atomically
from ..models import DetectionOutput, build_model
from ..models.huggingface import huggingface_label_map
from ..models.postprocess import postprocessor_for
from ..models.weights import load_official, load_state_dict_checked, read_state_dict
from ..runs import resolve_checkpoint
from ..text import closest_name, counted
from .checkpoint import load_checkpoint
from .coco_eval import MAX_DETECTIONS
from .device import resolve_device
from .evaluate import targets_to

log = logging.getLogger(__name__)

PREDICT_FORMATS = ("json", "coco")
PICTURE_COMPRESS_LEVEL = 1  # of the PNG pictures predict draws (lossless at every level)


@dataclass
class Detections:
    """One image's detections scoring at least a threshold: boxes in the image's own pixels."""

    boxes: Tensor  # (N, 4) xyxy, in pixels of the image as stored (before any EXIF turn)
    scores: Tensor  # (N,)
    labels: Tensor  # (N,) the model's class indices
    names: list[str]  # each detection's class name
    category_ids: list[int]  # each detection's category id in the training data (COCO ids for official models)
    queries: list[int]  # the object queries the detections came from
    model_input: Tensor = field(repr=False)  # (3, h, w): the resized, normalised image the model saw

    def as_records(self) -> list[dict[str, Any]]:
        """The detections as JSON-ready dicts (label, category_id, category, score, box_xyxy; rounded)."""
        return [
            {
                "label": label,
                "category_id": category_id,
                "category": name,
                "score": round(score, 4),
                "box_xyxy": [round(v, 2) for v in box],
            }
            for box, label, score, name, category_id in zip(
                self.boxes.tolist(),
                self.labels.tolist(),
                self.scores.tolist(),
                self.names,
                self.category_ids,
                strict=True,
            )
        ]


@dataclass
class LoadedModel:
    """A model ready for inference with its config, label map and the file it was read from."""

    model: nn.Module
    config: Config
    label_map: LabelMap
    source: Path

    def with_overrides(self, overrides: Iterable[str]) -> LoadedModel:
        """This model with ``key=value`` overrides of its config's data settings (``data.val_size``, ``data.val.*``);
        the weights are the checkpoint's, so a ``model.*`` override would change nothing."""
        overrides = list(overrides)
        return replace(self, config=override_config(self.config, overrides)) if overrides else self

    @torch.no_grad()
    def detect(self, image: Image.Image | str | Path, threshold: float = DEFAULT_SCORE_THRESHOLD) -> Detections:
        """The objects in one image (a PIL image or an image file) scoring at least ``threshold``, found on the
        device the model is on, with the evaluation transform of its config (``data.val_size``, ``max_size``).

        Images are run one at a time: a padded batch would change what the backbone sees near the padding."""
        check_score_threshold(threshold)
        if not isinstance(image, Image.Image | str | Path):
            raise TypeError(
                f"detect takes a PIL image or an image file, not a {type(image).__name__}; for an array of pixels pass "
                "PIL.Image.fromarray(array), in RGB order (OpenCV reads BGR: array[..., ::-1])"
            )
        bit_depth = self.config.data.bit_depth
        image = to_rgb(image, bit_depth) if isinstance(image, Image.Image) else read_rgb(Path(image), bit_depth)
        tensor = image_tensor(config_transforms(self.config, train=False), image)
        device = next(self.model.parameters()).device
        self.model.eval()
        outputs = self.model([tensor.to(device)])
        size = torch.tensor([[image.height, image.width]], device=device)
        detected = postprocessor_for(self.model)(outputs, size)[0]
        keep = detected["scores"] >= threshold
        labels = detected["labels"][keep].cpu()
        return Detections(
            boxes=detected["boxes"][keep].cpu(),
            scores=detected["scores"][keep].cpu(),
            labels=labels,
            names=[self.label_map.name(label) for label in labels.tolist()],
            category_ids=[self.label_map.category_id(label) for label in labels.tolist()],
            queries=keep.nonzero().flatten().tolist(),
            model_input=tensor,
        )


def load_trained_model(path: str | Path, official: bool = False, arch: str = "detr", **official_options) -> LoadedModel:
    """A model from one of our checkpoints / run directories, or (``official=True``) an official checkpoint of
    ``arch``, read through the model registry (``official_options``: e.g. DETR's ``nheads``, ``dilation``).

    Official checkpoints carry no config: sizes are read from the weights, labels are raw COCO ids (named by a
    Hugging Face checkpoint's ``id2label``).
    """
    source = resolve_checkpoint(path)
    if official:
        model, config = load_official(source, arch, official_options)
        config.data.label_mode = "coco_ids"
        label_map = huggingface_label_map(source) or LabelMap.official_coco(config.model.num_classes)
        return LoadedModel(model, config, label_map, source)
    checkpoint = load_checkpoint(source)
    if "config" not in checkpoint:
        read_state_dict(checkpoint, str(source))  # weights in another layout are named as such
        raise ValueError(
            f"{source} has no 'config': for an official checkpoint pass --official (for a Hugging Face transformers "
            "DETR one too)"
        )
    try:
        config = config_from_dict(checkpoint["config"])
    except ConfigError as err:  # another project's 'config': nothing of ours to build
        raise ConfigError(
            f"{source} carries a 'config' that is not one of this package's ({err}); for an official DETR / "
            "Deformable DETR checkpoint pass --official"
        ) from err
    config = config_from_dict(run_config_here(config_to_dict(config), source.parent))  # its data where it is now
    config = without_pretrained(config)  # the checkpoint holds the weights (and a model built from it again too)
    model = build_model(config)
    load_state_dict_checked(model, checkpoint["model"], str(source))
    return LoadedModel(model.eval(), config, LabelMap.coerce(checkpoint["label_map"]), source)


@dataclass
class RecordedBatch:
    """One batch run through a loaded model with its attention recorded."""

    loaded: LoadedModel
    images: PaddedBatch
    targets: list[dict[str, Tensor]]
    outputs: DetectionOutput
    maps: dict[str, AttentionMaps]


@torch.no_grad()
def record_run_batch(
    run: str | Path,
    image_indices: Sequence[int] = (0, 1),
    sites: Iterable[str] | None = None,
    split: str = "val",
    device: str | torch.device = "cpu",
    overrides: Iterable[str] = (),
) -> RecordedBatch:
    """Load a run (directory or checkpoint), take the images ``image_indices`` of its ``split`` data (config
    ``overrides`` may point elsewhere, e.g. ``data.val.images=...``), run the model on them as one padded batch and
    return the outputs with the recorded maps of ``sites`` (default: all the model's sites).

    Images of different sizes are padded to the largest, which the backbone sees as image content: the smaller
    images' maps (and metrics from them) can then differ slightly from ``analyze``'s, which batches only images of
    one size; a warning says so. Pass indices of images of one size (or one index) for the same maps."""
    loaded = load_trained_model(run)
    config = override_config(loaded.config, overrides)
    dataset = build_dataset(config, split)
    outside = [index for index in image_indices if not -len(dataset) <= index < len(dataset)]
    if outside or not image_indices:
        raise IndexError(
            f"record_run_batch: image_indices {list(image_indices)} must be positions in the {split} data, which "
            f"holds {counted(len(dataset), 'image')} ({dataset.annotation_file}): 0 to {len(dataset) - 1}"
        )
    items = [dataset[index] for index in image_indices]
    if unread := [index for index, item in zip(image_indices, items, strict=True) if item is None]:
        raise DatasetError(f"record_run_batch: images {unread} of the {split} data cannot be read (see the warnings)")
    sizes = {tuple(item[0].shape[-2:]) for item in items}
    if len(sizes) > 1:
        log.warning(
            "record_run_batch: images %s have %d sizes, padded to one batch: the smaller images' maps can differ "
            "slightly from analyze's (which batches images of one size); pass images of one size for the same maps",
            list(image_indices),
            len(sizes),
        )
    images, targets = collate_detection(items)
    images, targets = images.to(device), targets_to(targets, torch.device(device))
    outputs, maps = record_attention(loaded.model.to(device), images, sites=sites)
    return RecordedBatch(loaded, images, targets, outputs, maps)


def image_files(inputs: Sequence[str | Path], skip: Path | None = None) -> list[Path]:
    """The image files named in ``inputs``: files, or folders whose images (subfolders too, hidden ones and macOS's
    ``__MACOSX`` left out) are taken in path order, the other files there named in a warning. Nothing under
    ``skip`` (e.g. the output folder, so earlier outputs written inside an input folder are not read back as inputs)
    is taken from a folder."""
    skip = skip.resolve() if skip is not None else None
    files: list[Path] = []
    for item in map(Path, inputs):
        if item.is_dir():
            files += image_files_under(item, skip, name_other_files=True)
        elif item.is_file():
            files.append(item)
        elif not item.exists():
            raise FileNotFoundError(f"input {item} does not exist{_closest_file(item)}")
        else:
            raise FileNotFoundError(f"input {item} is neither an image file nor a folder")
    if not files:
        raise FileNotFoundError(
            f"no images ({', '.join(IMAGE_SUFFIXES)}) in {[str(i) for i in inputs]} or their subfolders"
        )
    return files


def _closest_file(path: Path) -> str:
    """`` (did you mean FOLDER/NAME?)`` with the name in ``path``'s folder closest to its mistyped one, else
    nothing."""
    names = [child.name for child in path.parent.iterdir() if not is_hidden(child.name)] if path.parent.is_dir() else []
    close = closest_name(path.name, names)
    return f" (did you mean {path.parent / close}?)" if close else ""


def output_names(files: Sequence[Path]) -> dict[Path, str]:
    """A distinct name for each file's outputs: its stem, unless inputs share it (``a.jpg`` and ``a.png``, or one
    name in two folders), then the stem with the suffix and, where still shared, a number."""
    stems = Counter(path.stem for path in files)
    names: dict[Path, str] = {}
    taken: set[str] = set()
    for path in files:
        name = path.stem if stems[path.stem] == 1 else f"{path.stem}_{path.suffix.lstrip('.')}"
        base, number = name, 1
        while name in taken:
            number += 1
            name = f"{base}_{number}"
        taken.add(name)
        names[path] = name
    return names


def coco_image_ids(annotation_file: str | Path, files: Sequence[Path]) -> dict[Path, int]:
    """The id each of ``files`` has in a COCO JSON, so that predictions score against that file's ground truth.

    A file matches the image entry whose ``file_name`` (relative to the JSON's folder, or absolute) is the same
    file, or else the one entry with the same file name; an input with no match is an error naming it.
    """
    annotation_file = Path(annotation_file)
    entries = load_json(annotation_file).get("images", [])
    by_path: dict[Path, int] = {}
    by_name: dict[str, list[int]] = {}
    for entry in entries:
        if not isinstance(entry, dict) or "id" not in entry or "file_name" not in entry:
            raise DatasetError(f"{annotation_file}: image entry {entry!r} lacks an id or a file_name")
        path = annotation_file.parent / str(entry["file_name"])
        by_path[path.resolve()] = entry["id"]
        by_name.setdefault(path.name, []).append(entry["id"])
    ids: dict[Path, int] = {}
    unmatched: list[str] = []
    for file in files:
        if (image_id := by_path.get(file.resolve())) is not None:
            ids[file] = image_id
        elif len(candidates := by_name.get(file.name, [])) == 1:
            ids[file] = candidates[0]
        else:
            unmatched.append(f"{file} ({'several entries share its name' if candidates else 'no entry'})")
    if unmatched:
        raise DatasetError(
            f"{len(unmatched)} input image(s) have no single image entry in {annotation_file}: {unmatched[:5]}; "
            "predict only images the file lists, or leave out --image-ids to number them by position"
        )
    return ids


def read_input_image(path: Path, bit_depth: int, failed: dict[str, str]) -> Image.Image | None:
    """An input image file as RGB, or None when it cannot be read: then ``failed`` maps it to why and a warning
    names it, so that ``predict`` and the figures skip it and go on with the others."""
    try:
        return read_rgb(path, bit_depth)
    except UNREADABLE_IMAGE_ERRORS as err:
        failed[str(path)] = str(err)
        log.warning("cannot read image %s (%s); skipped", path, err)
        return None


def warn_turned(turned: Sequence[str], outputs: str) -> None:
    """Name the input images that carry an EXIF orientation (:func:`exif_orientation`, else 1): viewers show them
    turned, while ``outputs`` (what the caller wrote of them) are in their stored pixels."""
    if turned:
        log.warning(
            "%d image(s) carry an EXIF orientation, so viewers show them turned; %s, e.g. %s",
            len(turned),
            outputs,
            list(turned[:3]),
        )


@dataclass
class Predictions:
    """What :func:`predict_images` wrote: one record per readable image, and the files it could not read."""

    records: list[dict[str, Any]] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)  # path -> why
    written: list[Path] = field(default_factory=list)


@torch.no_grad()
def predict_images(
    loaded: LoadedModel,
    inputs: Sequence[str | Path],
    out_dir: str | Path,
    threshold: float = DEFAULT_SCORE_THRESHOLD,
    device: str = "auto",
    output_format: str = "json",
    after_image: Callable[[str, Tensor, list[int]], Path | None] | None = None,
    image_ids: str | Path | None = None,
) -> Predictions:
    """Detect objects in image files; write ``<name>_pred.png`` pictures (``name``: :func:`output_names`, the
    stem unless two inputs share it) and the detections of every readable image, even when some cannot be read
    (those are listed in ``failed``).

    ``output_format="json"``: ``predictions.json``, one record per image (file, size, detections with label,
    category id and name, score, absolute xyxy box). ``"coco"``: ``detections_coco.json`` in the COCO results
    format (``file_name`` added; each image's ``MAX_DETECTIONS`` highest-scoring of those at ``threshold`` or above:
    at 0, as ``evaluate`` scores them, else named in a warning, for the AP is then lower), which ``COCO.loadRes``
    reads; ``image_id`` is the image's id in the COCO JSON ``image_ids`` names (see :func:`coco_image_ids`), or
    else its position in the input list, from 1.
    ``after_image(name, model_input, kept_queries)``, if given, runs after each image (e.g. to draw the kept
    queries' attention); the file it returns is recorded as the image's ``"attention"``.
    """
    from ..viz.boxes import draw_boxes  # here: it imports matplotlib, which evaluate and analyze never need

    check_score_threshold(threshold)
    if output_format not in PREDICT_FORMATS:
        raise ValueError(f"unknown prediction format {output_format!r}; choose from {PREDICT_FORMATS}")
    if output_format == "coco" and threshold > 0:  # tests and users took its AP for evaluate's
        log.warning(
            "the COCO results keep only detections scoring >= %s (the threshold), so their AP is lower than "
            "evaluate's, which scores every query; a threshold of 0 (--threshold 0) keeps them all",
            threshold,
        )
    torch_device = resolve_device(device)
    loaded.model.to(torch_device)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    files = image_files(inputs, skip=out)
    file_names = output_names(files)
    ids = coco_image_ids(image_ids, files) if image_ids is not None else {f: i for i, f in enumerate(files, 1)}
    result = Predictions()
    coco_results: list[dict[str, Any]] = []
    turned: list[str] = []  # images that viewers show turned (EXIF orientation)
    for path in files:
        if (image := read_input_image(path, loaded.config.data.bit_depth, result.failed)) is None:
            continue
        found = loaded.detect(image, threshold)
        detections = found.as_records()
        # COCO's limit of 100 per image, as evaluate scores them; scores unrounded: 4 decimals made ties that
        # COCOeval breaks by file order, so the AP differed from evaluate's
        best = found.scores.argsort(descending=True, stable=True)[:MAX_DETECTIONS].tolist()
        coco_results += [
            {
                "image_id": ids[path],
                "file_name": str(path),
                "category_id": d["category_id"],
                "bbox": [x0, y0, round(x1 - x0, 2), round(y1 - y0, 2)],  # as box_xyxy, without float noise
                "score": float(found.scores[i]),
            }
            for i in best
            for d in [detections[i]]
            for x0, y0, x1, y1 in [d["box_xyxy"]]
        ]
        record = {"image": str(path), "width": image.width, "height": image.height, "detections": detections}
        if (orientation := exif_orientation(path)) != 1:
            record["exif_orientation"] = orientation
            turned.append(str(path))
        picture = out / f"{file_names[path]}_pred.png"
        drawn = draw_boxes(image, found.boxes.tolist(), found.labels.tolist(), found.names, found.scores.tolist())
        # zlib level 1: the same pixels, a file about 20% larger, 4-5x faster to write than PIL's default 6, which
        # took longer than the model for a 640x480 photo (benchmarks/RESULTS.md); whole or not at all, as every figure
        write_atomically(picture, partial(drawn.save, format="PNG", compress_level=PICTURE_COMPRESS_LEVEL))
        record["picture"] = str(picture)
        if after_image is not None and (extra := after_image(file_names[path], found.model_input, found.queries)):
            record["attention"] = str(extra)
        result.records.append(record)
    warn_turned(
        turned,
        "their boxes are in the stored pixels (as the pictures show them; 'exif_orientation' in predictions.json)",
    )
    if output_format == "coco":
        target, content = out / "detections_coco.json", coco_results
    else:
        target, content = out / "predictions.json", result.records
    write_atomically(target, json.dumps(content, indent=2))
    result.written.append(target)
    return result
