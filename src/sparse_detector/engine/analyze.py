"""Attention analysis of a detector on a data set: COCO AP and attention metrics in one pass.

The sites come from the model (``attention_sites()``); PAIBB is read at every recorded site of object queries over
the feature grid. Records are written by :func:`sparse_detector.report.write_analysis` (layout in
:mod:`sparse_detector.report.tables`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import DataLoader

from ..analysis import AttentionRecorder, MetricAggregator
from ..analysis.paibb import takes_paibb
from ..data.coco import CocoDetection, DatasetError
from ..data.labels import LabelMap
from ..models import HungarianMatcher, build_model
from .device import seed_everything
from .evaluate import evaluation_batches, evaluator_for
from .inference import LoadedModel, load_trained_model


def check_matchable(label_map: LabelMap, dataset: CocoDetection) -> None:
    """The matcher pairs ground truth with queries by the model's class of each box: an error naming the data set's
    categories the model was not trained on (it would index past the model's classes, or pair the wrong ones)."""
    if unknown := [f"id {i}: {name!r}" for i, name in label_map.unknown_categories(dataset.labels)]:
        raise DatasetError(
            f"{dataset.annotation_file} has categories the checkpoint was not trained on ({'; '.join(unknown[:5])}), "
            "so its boxes cannot be matched to the model's queries by class (PAIBB, matching figures); use data with "
            "the checkpoint's categories only (`sparse-detector evaluate` scores AP on this data)"
        )


def load_analysis_model(
    checkpoint: str | Path, official: bool = False, random_init: bool = False, seed: int = 0, **official_options
) -> LoadedModel:
    """The model of a checkpoint (see ``load_trained_model``) or, with ``random_init``, the same architecture with
    fresh weights drawn after seeding with ``seed`` (the "before training" baseline)."""
    loaded = load_trained_model(checkpoint, official=official, **official_options)
    if not random_init:
        return loaded
    seed_everything(seed)
    return dataclasses.replace(loaded, model=build_model(loaded.config).eval())


@torch.no_grad()
def analyze(
    model: nn.Module,
    matcher: HungarianMatcher | None,
    loader: DataLoader,
    device: torch.device,
    label_map: LabelMap | Mapping,
    sites: Iterable[str] | None = None,
    zero_threshold: float | None = None,
    keep_per_image: bool = False,
    paibb_upsampled: bool = False,
    progress: bool = False,
) -> tuple[dict[str, float], MetricAggregator]:
    """COCO AP / AR and attention metrics of ``model`` on ``loader``, from one forward pass per batch.

    The maps of ``sites`` (default: all the model's sites) feed a ``MetricAggregator``; with a ``matcher``, PAIBB
    is read for the Hungarian-matched (query, box) pairs at the sites that take it. Returns the COCO stats and the
    aggregator.
    """
    model.eval()
    evaluator = evaluator_for(loader, label_map)
    aggregator = MetricAggregator(zero_threshold, keep_per_image=keep_per_image, paibb_upsampled=paibb_upsampled)
    with AttentionRecorder(model, sites) as recorder:
        for outputs, targets in evaluation_batches(model, loader, device, evaluator, progress):
            maps = recorder.maps
            if matcher is not None and any(takes_paibb(site_maps) for site_maps in maps.values()):
                aggregator.update(maps, targets, matcher(outputs, targets))
            else:
                aggregator.update(maps)
    if keep_per_image:  # evaluation batches group images by size: records back in the data set's order
        aggregator.order_per_image(loader.dataset.image_ids)
    return evaluator.summarize(), aggregator
