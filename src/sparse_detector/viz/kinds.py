"""The figure kinds of ``sparse-detector visualize KIND RUN [INPUT ...]``: from runs and images to files.

Each kind is a function ``(VisualizeRequest) -> list of files written``, registered by name with ``@figure_kind``;
a new model family adds its own kinds the same way. The figure functions themselves (``viz.attention``,
``viz.curves``, ...) take plain arrays and records; this module reads runs, runs models and names the files.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from matplotlib.figure import Figure
from torch import Tensor

from ..analysis import AttentionMaps, record_attention
from ..attention.sites import SIDE_NAMES, AttentionSite, QueryKind, model_sites, select_sites
from ..config import DEFAULT_SCORE_THRESHOLD, Config, load_config, load_run_config
from ..data.batching import collate_detection
from ..data.build import build_dataset, config_transforms
from ..data.coco import CocoDetection, DatasetError
from ..data.labels import LabelMap
from ..data.orientation import exif_orientation
from ..data.transforms import image_tensor
from ..engine.analyze import check_matchable
from ..engine.device import resolve_device, seed_everything
from ..engine.diagnostics import read_diagnostics
from ..engine.inference import LoadedModel, load_trained_model, output_names, read_input_image, warn_turned
from ..models import build_criterion
from ..models.postprocess import query_scores
from ..runs import (
    CONFIG_FILE,
    METRICS_FILE,
    analysis_labels,
    distinct_names,
    holds_checkpoint,
    read_analyses,
    read_metrics,
)
from ..text import counted
from .alpha import alpha_figure, alpha_history
from .attention import AttentionPanel, attention_figure, attention_panels_figure
from .curves import curves_figure
from .data import Sample, data_figure
from .deformable import references_figure, sampling_figure
from .diagnostics import diagnostics_figure
from .figure import (
    PREDICTION_COLOR,
    TRUTH_COLOR,
    LabelledBox,
    cxcywh_to_pixels,
    display_image,
    replace_previous_figures,
    save_figure,
    saved_figures,
)
from .matching import matching_figure
from .sparsity import sparsity_figure

log = logging.getLogger(__name__)


@dataclass
class VisualizeRequest:
    """What a ``visualize`` call draws: ``runs`` (run directories or checkpoints; for ``data`` also configs),
    ``images`` to draw on (default: the first ``num_images`` of the first run's validation data)."""

    runs: list[Path]
    output: Path
    images: list[Path] = field(default_factory=list)
    fmt: str = "png"
    num_images: int = 3
    queries: list[int] | None = None  # attention: these queries (default: score >= threshold, at least the best)
    threshold: float = DEFAULT_SCORE_THRESHOLD
    max_queries: int = 0  # attention: at most this many of the queries passing the threshold, best first (0: all)
    # said in a warning naming the images where max_queries left queries out (the caller's options); "": no warning
    left_out_advice: str = ""
    pixels: list[tuple[float, float]] | None = None  # encoder: (x, y) in original-image pixels (default: most attended)
    site: str | None = None  # default: the model's first site over the feature grid with the kind's queries
    official: bool = False
    official_options: dict = field(default_factory=dict)  # how to read an official checkpoint: arch, nheads, ...
    device: str = "cpu"
    overrides: list[str] = field(default_factory=list)  # key=value data settings of the runs' (or config's) config
    # filled while drawing: the given images that could not be read (path -> why), skipped as predict skips them
    unreadable: dict[str, str] = field(default_factory=dict)


FigureKind = Callable[[VisualizeRequest], list[Path]]
FIGURE_KINDS: dict[str, FigureKind] = {}


def figure_kind(name: str) -> Callable[[FigureKind], FigureKind]:
    """Register a figure kind under ``name`` (``sparse-detector visualize NAME``)."""

    def register(function: FigureKind) -> FigureKind:
        FIGURE_KINDS[name] = function
        return function

    return register


def visualize(kind: str, request: VisualizeRequest) -> list[Path]:
    """Draw the figures of ``kind``; returns the files written. The kind's files from its last drawing in the same
    folder that it did not draw again are deleted (:func:`.figure.replace_previous_figures`); where drawing fails
    halfway, the files it wrote are recorded as the kind's, so that they are never taken for a user's file, and a
    folder made for a kind that fails (a mistyped run, whose default folder is beside it) is removed while empty."""
    if kind not in FIGURE_KINDS:
        raise ValueError(f"unknown figure kind {kind!r}; choose from {sorted(FIGURE_KINDS)}")
    made = not request.output.exists()
    request.output.mkdir(parents=True, exist_ok=True)
    with saved_figures() as saved:
        try:
            written = FIGURE_KINDS[kind](request)
        except BaseException:
            replace_previous_figures(request.output, kind, saved, failed=True)
            if made and not any(request.output.iterdir()):
                request.output.rmdir()
            raise
    replace_previous_figures(request.output, kind, written)
    return written


def run_label(run: Path) -> str:
    """A run's name in titles: its directory (a checkpoint file's folder; a quickstart's with its folder), or the
    file of a checkpoint outside a run directory (an official one: its folder, e.g. Downloads, names no run)."""
    return run_labels([run])[0]


def run_labels(runs: Sequence[Path]) -> list[str]:
    """Several runs' names in legends and file names (:func:`run_label`), told apart by their parents if need be."""
    return distinct_names([run if _outside_a_run(run) else _run_dir(run) for run in runs])


def _outside_a_run(run: Path) -> bool:
    """Whether ``run`` is a checkpoint file whose folder is no run directory (no config.yaml)."""
    return run.is_file() and not (run.parent / CONFIG_FILE).is_file()


def _run_dir(run: Path) -> Path:
    """A run directory, or the one holding a checkpoint file."""
    return run.parent if run.is_file() else run


def _records_dir(run: Path) -> Path:
    """The run directory whose records a figure reads: ``run``, or the folder of a checkpoint file given instead."""
    folder = _run_dir(run)
    if run.is_file() and not (folder / METRICS_FILE).is_file():
        raise FileNotFoundError(
            f"{run} is a file, and its folder {folder} holds no {METRICS_FILE}: give a run directory (the folder "
            "train wrote) or a checkpoint in one"
        )
    return folder


# ---------------------------------------------------------------------------------------------------------------
# Images and recorded maps


@dataclass
class ImageItem:
    """One image as the model sees it, with its ground truth when it belongs to the validation data."""

    name: str
    tensor: Tensor  # (3, H, W) normalised model input
    target: dict[str, Tensor] | None  # boxes normalised cxcywh, labels, orig_size; None for an unannotated image
    picture: np.ndarray  # (H, W, 3) in [0, 1], the model input un-normalised
    orig_size: tuple[int, int]  # (h, w) of the image file, before the transforms
    truth_names: list[str] = field(default_factory=list)  # the ground truth's category names, by the data set

    @property
    def height(self) -> int:
        return self.picture.shape[0]

    @property
    def width(self) -> int:
        return self.picture.shape[1]


def _val_index_by_path(dataset: CocoDetection) -> dict[Path, int]:
    """Each validation image's index by its file (resolved): by file name, a photo of another folder named like one
    (IMG_0001.JPG) would be drawn as that validation image."""
    return {dataset.image_path(i).resolve(): i for i in range(len(dataset))}


def readable_samples(dataset: CocoDetection, count: int) -> dict[int, tuple[Tensor, dict[str, Tensor]]]:
    """The first ``count`` samples of ``dataset`` by index, an image it skips as unreadable (``data.on_invalid=skip``;
    its warning names it) replaced by the next one; an error when it holds images but none can be read."""
    samples = {}
    for index in range(len(dataset)):
        if len(samples) == count:
            break
        if (sample := dataset[index]) is not None:
            samples[index] = sample
    if len(dataset) and not samples:
        raise DatasetError(f"no image of {dataset.annotation_file} could be read (each is named in a warning above)")
    return samples


def load_images(config: Config, request: VisualizeRequest, matched: Sequence[LabelMap] = ()) -> list[ImageItem]:
    """The request's images (with ground truth when the validation data holds them), or the first
    ``num_images`` validation images; each named (for its figures' files) by its file's stem, kept distinct.
    A given image that cannot be read is skipped, named in a warning and in ``request.unreadable`` (an error when
    none can be read); those that carry an EXIF orientation are named in a warning, as ``predict`` names them.
    ``matched``: the label maps of the models whose matcher pairs the ground truth with queries
    (:func:`check_matchable`)."""
    data = config.data
    try:
        dataset = build_dataset(config, "val")
    except (ValueError, OSError):
        dataset = None
        if not request.images:
            raise
    for label_map in matched if dataset is not None else ():
        check_matchable(label_map, dataset)
    items = []
    if not request.images:
        samples = readable_samples(dataset, request.num_images)
        names = output_names([dataset.image_path(index) for index in samples])
        for index, (tensor, target) in samples.items():
            size = tuple(target["orig_size"].tolist())
            picture = display_image(tensor, data.normalize)
            truth_names = _category_names(dataset, target)
            items.append(ImageItem(names[dataset.image_path(index)], tensor, target, picture, size, truth_names))
        return items
    by_path = _val_index_by_path(dataset) if dataset is not None else {}
    transforms = config_transforms(config, train=False)
    names = output_names(request.images)
    turned = []
    for path in request.images:
        if (image := read_input_image(path, data.bit_depth, request.unreadable)) is None:
            continue
        if exif_orientation(path) != 1:
            turned.append(str(path))
        truth_names = []
        index = by_path.get(path.resolve())
        if index is not None and (sample := dataset.sample(index, image)) is not None:  # the image read once
            tensor, target = sample
            size, truth_names = tuple(target["orig_size"].tolist()), _category_names(dataset, target)
        else:
            tensor, target, size = image_tensor(transforms, image), None, (image.height, image.width)
        picture = display_image(tensor, data.normalize)
        items.append(ImageItem(names[path], tensor, target, picture, size, truth_names))
    if not items:  # every given image unreadable: nothing to draw
        raise OSError("; ".join(f"cannot read image {path}: {why}" for path, why in request.unreadable.items()))
    warn_turned(turned, "the figures show their stored pixels, unturned")
    return items


def _category_names(dataset: CocoDetection, target: dict[str, Tensor]) -> list[str]:
    """The data set's names of a target's labels (an official checkpoint's COCO names may not be the data's)."""
    return [dataset.labels.name(int(label)) for label in target["labels"]]


KEY_PHRASES = {**SIDE_NAMES, "grid": "the feature grid"}  # keys read as one whole: "over the feature grid"
GRID_QUERY_KINDS = {"queries": "attention", "grid": "encoder"}  # the kind that draws a grid-keyed site's queries


def described_sites(sites: Mapping[str, AttentionSite]) -> str:
    """The sites of a model for a message: ``name (its queries over its keys)``, e.g. ``encoder_self (feature-grid
    cells over sampling points)``."""
    return ", ".join(
        f"{name} ({SIDE_NAMES[site.queries]} over {KEY_PHRASES[site.keys]})" for name, site in sites.items()
    )


def grid_site(loaded: LoadedModel, queries: QueryKind, requested: str | None) -> str:
    """The site to draw over the image: ``requested`` (checked against the model's sites), else the model's first
    site whose keys are the feature grid and whose queries are ``queries`` (object queries or grid cells)."""
    sites = model_sites(loaded.model)
    if requested is not None:
        site = select_sites(loaded.model, [requested])[0]
        if site.keys == "grid" and site.queries == queries:
            return site.name
        if site.keys != "grid":
            problem = f"site {site.name} has {site.keys} keys; these figures draw sites whose keys are the feature grid"
        else:  # the figure's queries are object queries (attention, compare) or grid cells (encoder)
            kind = GRID_QUERY_KINDS[site.queries]
            problem = (
                f"the queries of site {site.name} are {SIDE_NAMES[site.queries]}, not {SIDE_NAMES[queries]}; "
                f"draw it with: sparse-detector visualize {kind} {loaded.source} --site {site.name}"
            )
    else:
        for site in sites.values():
            if site.keys == "grid" and site.queries == queries:
                return site.name
        problem = (
            f"the model has no site of {SIDE_NAMES[queries]} over the feature grid to draw (its sites: "
            f"{described_sites(sites)})"
        )
    if object_query_kind(loaded.model) == "deformable":
        pixels = " --pixels X,Y" if queries == "grid" else ""
        problem += (
            f"; draw its sampling points instead with: sparse-detector visualize deformable {loaded.source}{pixels}"
        )
    raise ValueError(f"{loaded.source} ({loaded.config.model.arch}): {problem}")


@torch.no_grad()
def recorded_forward(loaded: LoadedModel, item: ImageItem, site: str, device: torch.device) -> tuple:
    """The model's outputs for one image and the maps of ``site`` as an array (layers, heads, queries, h, w) on the
    image's valid feature grid."""
    outputs, maps = record_attention(loaded.model.to(device).eval(), [item.tensor.to(device)], sites=[site])
    return outputs, grid_array(maps[site])


def grid_stride(model: torch.nn.Module, site: str) -> int | None:
    """Pixels of the model input per cell of ``site``'s keys (their finest level), or None where the model does not
    say (the figures then stretch the grid over the image)."""
    strides = model_sites(model)[site].key_strides
    return None if strides is None else strides[0]


def grid_array(maps: AttentionMaps) -> np.ndarray:
    """One image's grid-keyed maps as (layers, heads, queries, h, w) on its valid grid."""
    maps = maps.image(0)
    weights = torch.stack([w[0] for w in maps.weights]).float().cpu().numpy()
    return weights.reshape(*weights.shape[:3], *maps.padded_hw)


def _scores_labels(outputs: dict, model: torch.nn.Module) -> tuple[Tensor, Tensor]:
    return query_scores(model, outputs["pred_logits"][0])


def _truth_boxes(item: ImageItem) -> list[LabelledBox]:
    if item.target is None:
        return []
    boxes = cxcywh_to_pixels(item.target["boxes"], item.height, item.width)
    return [LabelledBox(box, name) for box, name in zip(boxes, item.truth_names, strict=True)]


def _prediction_boxes(outputs: dict, item: ImageItem, loaded: LoadedModel) -> list[LabelledBox]:
    """Every query's box, captioned ``q<index> <class> <score>``."""
    scores, labels = _scores_labels(outputs, loaded.model)
    boxes = cxcywh_to_pixels(outputs["pred_boxes"][0], item.height, item.width)
    return [
        LabelledBox(box, f"q{q} {loaded.label_map.name(int(label))} {float(score):.2f}")
        for q, (box, label, score) in enumerate(zip(boxes, labels, scores, strict=True))
    ]


def _load(run: Path, request: VisualizeRequest) -> LoadedModel:
    loaded = load_trained_model(run, official=request.official, **request.official_options)
    return loaded.with_overrides(request.overrides)


def _first_run(request: VisualizeRequest) -> tuple[LoadedModel, torch.device]:
    """The model of the request's (first) run and the device it runs on, for a kind that draws one run."""
    return _load(request.runs[0], request), resolve_device(request.device)


def _layer_labels(site: str, layers: int) -> list[str]:
    return [f"{site} layer {i}" for i in range(layers)]


# ---------------------------------------------------------------------------------------------------------------
# Kinds drawn on images


@figure_kind("attention")
def attention_kind(request: VisualizeRequest) -> list[Path]:
    """Per image and chosen query: the site's maps per layer × head and head-averaged, with boxes."""
    loaded, device = _first_run(request)
    site = grid_site(loaded, "queries", request.site)
    written = []
    for item in load_images(loaded.config, request):
        outputs, maps = recorded_forward(loaded, item, site, device)
        scores, _ = _scores_labels(outputs, loaded.model)
        predictions, truth = _prediction_boxes(outputs, item, loaded), _truth_boxes(item)
        for q in _chosen_queries(request, scores, item.name):
            figure = attention_figure(
                item.picture,
                maps[:, :, q],
                _layer_labels(site, maps.shape[0]),
                [predictions[q]],
                truth,
                title=f"{run_label(request.runs[0])}: {site}, {item.name}, query {q}",
                stride=grid_stride(loaded.model, site),
            )
            written.append(save_figure(figure, request.output / f"attention_{site}_{item.name}_q{q}", request.fmt))
    return written


DETECTIONS_PER_ROW = 6  # predict --attention: 50 detections in one row made a picture 75 inches wide


def detection_attention(
    loaded: LoadedModel, image: Tensor, queries: Sequence[int], path: Path, device: torch.device
) -> Path | None:
    """``predict --attention``: one panel per detection (``queries``) with its head-averaged map of the last layer
    of the model's object-query site over the grid; ``image`` is the model input. None when nothing was detected."""
    if not queries:
        return None
    picture = display_image(image, loaded.config.data.normalize)
    item = ImageItem(path.stem, image, None, picture, picture.shape[:2])
    site = grid_site(loaded, "queries", None)
    outputs, maps = recorded_forward(loaded, item, site, device)
    predictions = _prediction_boxes(outputs, item, loaded)
    stride = grid_stride(loaded.model, site)
    drawn = [
        AttentionPanel(maps[-1, :, q].mean(axis=0), [predictions[q]], stride=stride, title=predictions[q].text)
        for q in queries
    ]
    panels = [drawn[i : i + DETECTIONS_PER_ROW] for i in range(0, len(drawn), DETECTIONS_PER_ROW)]
    title = f"{site}, last layer, head average, per detection"
    figure = attention_panels_figure(item.picture, panels, [""] * len(panels), [""] * DETECTIONS_PER_ROW, title)
    return save_figure(figure, path, "png")


def object_query_kind(model: torch.nn.Module) -> str:
    """The figure kind that draws a model's object queries over the image: ``attention`` where a site of object
    queries has grid keys, ``deformable`` where it samples points."""
    keys = {site.keys for site in model_sites(model).values() if site.queries == "queries"}
    return "attention" if "grid" in keys else "deformable"


def _chosen_queries(request: VisualizeRequest, scores: Tensor, image: str) -> list[int]:
    """The request's queries, else those scoring at least its threshold (best first, at most ``max_queries``, the
    ones left out counted in a warning when the request has advice for them), at least the best-scoring one."""
    passing = [q for q in scores.argsort(descending=True).tolist() if scores[q] >= request.threshold]
    queries = request.queries or passing[: request.max_queries or None] or [int(scores.argmax())]
    if request.left_out_advice and not request.queries and len(passing) > len(queries):
        log.warning(
            "%s: drew the %d best of %d queries scoring >= %s; %s",
            image,
            len(queries),
            len(passing),
            request.threshold,
            request.left_out_advice,
        )
    for q in queries:
        if not 0 <= q < len(scores):
            raise ValueError(f"query {q} does not exist: the model has {len(scores)} queries")
    return queries


@figure_kind("deformable")
def deformable_kind(request: VisualizeRequest) -> list[Path]:
    """Per image, chosen query and layer: the query's sampling points at a site of object queries over sampling
    points (default: the model's first), per head, with the query's box and the ground truth."""
    loaded, device = _first_run(request)
    sites = model_sites(loaded.model)
    candidates = [s.name for s in sites.values() if s.keys == "points" and s.queries == "queries"]
    site = request.site or (candidates[0] if candidates else None)
    if site not in candidates:
        if candidates:
            problem = f"site {site} is not one of object queries over sampling points: {', '.join(candidates)}"
        else:
            problem = (
                f"the model has no site of object queries over sampling points (its sites: {described_sites(sites)}); "
                f"draw its attention with: sparse-detector visualize attention {loaded.source}"
            )
        raise ValueError(f"{loaded.source} ({loaded.config.model.arch}): {problem}")
    encoder = _encoder_points_site(sites) if request.pixels else None
    written = []
    for item in load_images(loaded.config, request):
        recorded = [site] + ([encoder] if encoder else [])
        with torch.no_grad():
            outputs, _ = record_attention(loaded.model.to(device).eval(), [item.tensor.to(device)], sites=recorded)
        scores, _ = _scores_labels(outputs, loaded.model)
        predictions, truth = _prediction_boxes(outputs, item, loaded), _truth_boxes(item)
        for q in _chosen_queries(request, scores, item.name):
            boxes = [(b.box, TRUTH_COLOR) for b in truth] + [(predictions[q].box, PREDICTION_COLOR)]
            for layer, record in enumerate(outputs.attention[site]):
                title = f"{run_label(request.runs[0])}: {site} layer {layer}, {item.name}, {predictions[q].text}"
                figure = sampling_figure(item.picture, record, 0, q, boxes, title, sites[site].key_strides)
                name = f"deformable_{site}_{item.name}_q{q}_layer{layer}"
                written.append(save_figure(figure, request.output / name, request.fmt))
            title = f"{run_label(request.runs[0])}: {site}, {item.name}, {predictions[q].text}"
            figure = references_figure(
                item.picture, outputs.attention[site], 0, q, boxes, title, sites[site].key_strides
            )
            name = f"deformable_references_{site}_{item.name}_q{q}"
            written.append(save_figure(figure, request.output / name, request.fmt))
        if encoder:
            written += _encoder_sampling(
                request, encoder, outputs.attention[encoder], item, truth, sites[encoder].key_strides
            )
    return written


def _encoder_points_site(sites: dict) -> str:
    """The model's site whose queries are grid cells and whose keys are sampling points (the encoder's)."""
    candidates = [s.name for s in sites.values() if s.keys == "points" and s.queries == "grid"]
    if not candidates:
        raise ValueError(f"--pixels draws a site of grid cells over sampling points; the model's sites: {list(sites)}")
    return candidates[0]


def pixel_cell(
    item: ImageItem, x: float, y: float, rows: int, columns: int, stride: float | None = None
) -> tuple[int, int]:
    """(row, column) of the cell of an image's valid ``rows`` × ``columns`` grid, of ``stride`` model-input pixels
    per cell (None: the grid stretched over the image), holding pixel (x, y) of the original image; a pixel outside
    the image is an error."""
    height, width = item.orig_size
    if not (0 <= x < width and 0 <= y < height):
        raise ValueError(
            f"--pixels {x:g},{y:g} is outside {item.name} ({width:g} x {height:g} px); pixels are X,Y in the original "
            "image's coordinates"
        )
    if stride is None:
        return min(int(y / height * rows), rows - 1), min(int(x / width * columns), columns - 1)
    row, column = int(y / height * item.height // stride), int(x / width * item.width // stride)
    return min(row, rows - 1), min(column, columns - 1)


def cell_centre(item: ImageItem, row: int, column: int, rows: int, columns: int, stride: float | None) -> tuple:
    """(x, y) in model-input pixels of the centre of the part of cell (``row``, ``column``) inside the image."""
    if stride is None:
        return (column + 0.5) * item.width / columns, (row + 0.5) * item.height / rows
    return (
        (column * stride + min((column + 1) * stride, item.width)) / 2,
        (row * stride + min((row + 1) * stride, item.height)) / 2,
    )


def _encoder_sampling(
    request: VisualizeRequest,
    site: str,
    records: Sequence,
    item: ImageItem,
    truth: list[LabelledBox],
    level_strides: Sequence[int] | None,
) -> list[Path]:
    """Per requested pixel and layer: the sampling points of the first feature level's grid cell containing it."""
    (height, width), (ratio_w, ratio_h) = records[0].level_shapes[0].tolist(), records[0].valid_ratios[0, 0].tolist()
    valid_h, valid_w = max(round(ratio_h * height), 1), max(round(ratio_w * width), 1)
    boxes = [(b.box, TRUTH_COLOR) for b in truth]
    written = []
    for x, y in request.pixels:
        row, column = pixel_cell(item, x, y, valid_h, valid_w, level_strides[0] if level_strides else None)
        for layer, record in enumerate(records):
            title = (
                f"{run_label(request.runs[0])}: {site} layer {layer}, {item.name}, cell (row {row}, column {column})"
            )
            figure = sampling_figure(item.picture, record, 0, row * width + column, boxes, title, level_strides)
            name = f"deformable_{site}_{item.name}_r{row}c{column}_layer{layer}"
            written.append(save_figure(figure, request.output / name, request.fmt))
    return written


MOST_ATTENDED_CELLS = 2  # visualize encoder without --pixels draws these many cells


def _most_attended_cells(maps: np.ndarray, count: int) -> list[int]:
    """Flat indices of the grid cells that receive the most attention (last layer, summed over heads and queries)."""
    received = maps[-1].sum(axis=(0, 1)).flatten()
    return [int(i) for i in np.argsort(-received)[:count]]


@figure_kind("encoder")
def encoder_kind(request: VisualizeRequest) -> list[Path]:
    """Per image and chosen pixel (or the most attended cells): what that grid cell attends to, per layer × head."""
    loaded, device = _first_run(request)
    site = grid_site(loaded, "grid", request.site)
    written = []
    for item in load_images(loaded.config, request):
        _, maps = recorded_forward(loaded, item, site, device)
        layers, heads, _, h, w = maps.shape
        stride = grid_stride(loaded.model, site)
        if request.pixels:
            cells = [
                row * w + column for row, column in (pixel_cell(item, x, y, h, w, stride) for x, y in request.pixels)
            ]
            chosen = ""
        else:  # the title says why these cells: a user who gave no --pixels could not tell
            cells = _most_attended_cells(maps, MOST_ATTENDED_CELLS)
            chosen = f", one of the {MOST_ATTENDED_CELLS} cells most attended in the last layer (--pixels picks others)"
        truth = _truth_boxes(item)
        for cell in cells:
            row, column = divmod(cell, w)
            centre = cell_centre(item, row, column, h, w, stride)
            figure = attention_figure(
                item.picture,
                maps[:, :, cell],
                _layer_labels(site, layers),
                ground_truth=truth,
                points=[centre],
                title=f"{run_label(request.runs[0])}: {site}, {item.name}, query cell (row {row}, "
                f"column {column}) marked ×{chosen}",
                stride=stride,
            )
            written.append(save_figure(figure, request.output / f"encoder_{item.name}_r{row}c{column}", request.fmt))
    return written


def _matched_queries(loaded: LoadedModel, outputs: dict, target: dict) -> dict[int, int]:
    """Ground-truth index -> the query the model's Hungarian matcher assigns to it."""
    matcher = build_criterion(loaded.config).matcher
    device = outputs["pred_logits"].device
    queries, truths = matcher(outputs, [{k: v.to(device) for k, v in target.items()}])[0]
    return {int(t): int(q) for q, t in zip(queries, truths, strict=True)}


MAX_COMPARE_OBJECTS = 8  # rows of a compare figure


@figure_kind("compare")
def compare_kind(request: VisualizeRequest) -> list[Path]:
    """Per annotated image: rows = ground-truth objects (the first ``MAX_COMPARE_OBJECTS``), columns = runs, the
    head-averaged map of the last layer of the query each run's matcher assigned to that object. Images without boxes
    are skipped."""
    if len(request.runs) < 2:
        raise ValueError("visualize compare needs two or more runs (run directories or checkpoints)")
    device = resolve_device(request.device)
    models = [_load(run, request) for run in request.runs]
    site = grid_site(models[0], "queries", request.site)
    for loaded in models[1:]:  # every run draws the same site over its feature grid
        grid_site(loaded, "queries", site)
    written, unannotated = [], []
    for item in load_images(models[0].config, request, [loaded.label_map for loaded in models]):
        if item.target is None or not len(item.target["boxes"]):
            unannotated.append(item.name)
            continue
        every = _truth_boxes(item)
        truth = every[:MAX_COMPARE_OBJECTS]  # a row per object: 50 objects made a figure 76 inches tall
        shown = "each object" if len(truth) == len(every) else f"objects 0-{len(truth) - 1} of {len(every)}"
        panels: list[list[AttentionPanel | None]] = [[] for _ in truth]
        for loaded in models:
            outputs, maps = recorded_forward(loaded, item, site, device)
            predictions = _prediction_boxes(outputs, item, loaded)
            matched = _matched_queries(loaded, outputs, item.target)
            stride = grid_stride(loaded.model, site)
            for t, row in enumerate(panels):  # an object no query of this run matched: an empty panel in its column
                q = matched.get(t)
                row.append(
                    None
                    if q is None
                    else AttentionPanel(maps[-1, :, q].mean(axis=0), [predictions[q]], [truth[t]], stride=stride)
                )
        figure = attention_panels_figure(
            item.picture,
            panels,
            [f"object {t}: {box.text}" for t, box in enumerate(truth)],
            run_labels(request.runs),
            title=f"{item.name}: {site}, last layer, head average,\nof the query matched to {shown}",
            empty_note="no query of this run\nmatched this object",
        )
        written.append(save_figure(figure, request.output / f"compare_{site}_{item.name}", request.fmt))
    if unannotated:
        skipped = f"{', '.join(unannotated)} (no annotated boxes to match queries to)"
        if not written:
            raise ValueError(f"visualize compare matches queries to ground truth; nothing to draw: {skipped}")
        log.warning("visualize compare: skipped %s", skipped)
    return written


@figure_kind("matching")
def matching_kind(request: VisualizeRequest) -> list[Path]:
    """Per annotated image: the Hungarian assignment of the model's queries to the ground truth."""
    loaded, device = _first_run(request)
    model = loaded.model.to(device).eval()
    written = []
    for item in load_images(loaded.config, request, [loaded.label_map]):
        if item.target is None:
            continue
        with torch.no_grad():
            outputs = model([item.tensor.to(device)])
        pairs = sorted((q, t) for t, q in _matched_queries(loaded, outputs, item.target).items())
        figure = matching_figure(
            item.picture,
            _prediction_boxes(outputs, item, loaded),
            _truth_boxes(item),
            pairs,
            title=f"{run_label(request.runs[0])}: {item.name}",
        )
        written.append(save_figure(figure, request.output / f"matching_{item.name}", request.fmt))
    if not written:
        raise ValueError("visualize matching needs annotated images: give images of the validation data, or none")
    return written


def _config_of(source: Path, request: VisualizeRequest) -> Config:
    """A run's config (run directory or checkpoint) or a YAML config / preset name."""
    if source.is_dir() and (source / CONFIG_FILE).is_file():
        return load_run_config(source, request.overrides)
    if source.suffix in (".yaml", ".yml") or not source.exists():
        return load_config(str(source), request.overrides)
    if source.is_dir() and not holds_checkpoint(source):  # e.g. the data's folder
        raise FileNotFoundError(
            f"{source} is not a run directory (no config.yaml or checkpoint): visualize data draws the data.train of "
            "a run, a checkpoint or a config (YAML or preset), e.g. sparse-detector visualize data my.yaml --set "
            f"data.train.annotations=FILE.json data.train.images={source}"
        )
    return _load(source, request).config


@figure_kind("data")
def data_kind(request: VisualizeRequest) -> list[Path]:
    """The first ``num_images`` training samples after the training transforms, padded as one batch."""
    config = _config_of(request.runs[0], request)
    seed_everything(config.train.seed)
    dataset = build_dataset(config, "train")
    batch, targets = collate_detection(list(readable_samples(dataset, max(request.num_images, 1)).values()))
    image_ids = [int(target["image_id"]) for target in targets]
    # two IMG_0001.JPG of different folders are told apart by their folders
    files = distinct_names([Path(dataset.coco.imgs[image_id]["file_name"]) for image_id in image_ids])
    drawn = []
    for tensor, mask, target, file, image_id in zip(batch.tensors, batch.mask, targets, files, image_ids, strict=True):
        valid_h, valid_w = (int(v) for v in (~mask).nonzero().max(0).values + 1)
        boxes = cxcywh_to_pixels(target["boxes"], valid_h, valid_w)  # normalised to the valid (unpadded) area
        names = _category_names(dataset, target)
        drawn.append(
            Sample(
                display_image(tensor, config.data.normalize),
                mask.numpy(),
                [LabelledBox(box, name) for box, name in zip(boxes, names, strict=True)],
                f"{file} (id {image_id})",
            )
        )
    figure = data_figure(drawn, title=f"{dataset.annotation_file}: {counted(len(dataset), 'image')}")
    return [save_figure(figure, request.output / "data_train", request.fmt)]


# ---------------------------------------------------------------------------------------------------------------
# Kinds drawn from run records


@figure_kind("curves")
def curves_kind(request: VisualizeRequest) -> list[Path]:
    """Losses, class error and AP of every run in one figure."""
    labels = run_labels(request.runs)
    runs = {label: read_metrics(_records_dir(run)) for label, run in zip(labels, request.runs, strict=True)}
    return [save_figure(curves_figure(runs), request.output / "curves", request.fmt)]


def _per_run(request: VisualizeRequest, name: str, draw: Callable[[Path], Figure]) -> list[Path]:
    """One figure per run, ``<name>_<run>``, drawn from its run directory."""
    return [
        save_figure(draw(_records_dir(run)), request.output / f"{name}_{label.replace('/', '_')}", request.fmt)
        for label, run in zip(run_labels(request.runs), request.runs, strict=True)
    ]


@figure_kind("alpha")
def alpha_kind(request: VisualizeRequest) -> list[Path]:
    """Per run with learnable α: the α heat map and α over steps."""

    def draw(run: Path) -> Figure:
        records = read_metrics(run)
        if not alpha_history(records)[1]:
            raise ValueError(
                f"{run} logged no learnable α: it has no alpha_entmax attention (model.attention.<site>.activation="
                "alpha_entmax); give visualize alpha only such runs"
            )
        return alpha_figure(records, title=run_label(run))

    return _per_run(request, "alpha", draw)


@figure_kind("diagnostics")
def diagnostics_kind(request: VisualizeRequest) -> list[Path]:
    """Per run trained with ``train.diagnostics_every``: gradients, weight histograms and attention entropy."""
    return _per_run(request, "diagnostics", lambda run: diagnostics_figure(read_diagnostics(run), title=run_label(run)))


@figure_kind("sparsity")
def sparsity_kind(request: VisualizeRequest) -> list[Path]:
    """Gini, zeros ratio and PAIBB per layer across runs, from their ``analyze`` output."""
    records = read_analyses(request.runs)
    labels = analysis_labels(records)
    figure = sparsity_figure({label: r["attention"] for label, r in zip(labels, records, strict=True)})
    return [save_figure(figure, request.output / "sparsity", request.fmt)]
