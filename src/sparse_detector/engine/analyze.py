"""Attention analysis of a detector on a data set (COCO AP and attention metrics in one pass), and run comparison.

An analysis record (``analysis.json``) is plain data::

    {"checkpoint": str, "data": str, "random_init": bool, "seed": int | None, "sites": [site, ...],
     "ap": {COCO stat: value}, "attention": MetricAggregator.result()}
"""

from __future__ import annotations

import csv
import dataclasses
import json
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader

from ..analysis import METRICS, SIZE_BUCKETS, AttentionRecorder, MetricAggregator, result_markdown, result_rows
from ..analysis.aggregate import PAIBB_SITE, format_mean_std, paibb_blocks
from ..models.build import ATTENTION_SITES, build_model
from ..models.matcher import HungarianMatcher
from .coco_eval import format_table
from .device import seed_everything
from .evaluate import evaluation_batches, evaluator_for
from .inference import LoadedModel, load_trained_model

ANALYSIS_FILE = "analysis.json"
OUTPUT_DIRS = {False: "analysis", True: "analysis-random-init"}  # by random_init, inside the run directory
COMPARE_METRICS = (*METRICS, "paibb", *(f"paibb_{size}" for size in SIZE_BUCKETS))
DEFAULT_COMPARE_METRICS = ("gini", "zeros_ratio", "paibb")


def load_analysis_model(
    checkpoint: str | Path,
    official: bool = False,
    nheads: int = 8,
    dilation: bool = False,
    random_init: bool = False,
    seed: int = 0,
) -> LoadedModel:
    """The model of a checkpoint (see ``load_trained_model``) or, with ``random_init``, the same architecture with
    fresh weights drawn after seeding with ``seed`` (the "before training" baseline)."""
    loaded = load_trained_model(checkpoint, official=official, nheads=nheads, dilation=dilation)
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
    label_map: Mapping,
    sites: Iterable[str] = ATTENTION_SITES,
    zero_threshold: float | None = None,
    keep_per_image: bool = False,
    progress: bool = False,
) -> tuple[dict[str, float], MetricAggregator]:
    """COCO AP / AR and attention metrics of ``model`` on ``loader``, from one forward pass per batch.

    The maps of ``sites`` feed a ``MetricAggregator``; with a ``matcher`` and ``decoder_cross`` among the sites,
    PAIBB is read for the Hungarian-matched (query, box) pairs. Returns the COCO stats and the aggregator.
    """
    model.eval()
    evaluator = evaluator_for(loader, label_map)
    aggregator = MetricAggregator(zero_threshold, keep_per_image=keep_per_image)
    with AttentionRecorder(model, sites) as recorder:
        with_paibb = matcher is not None and PAIBB_SITE in recorder.sites
        for outputs, targets in evaluation_batches(model, loader, device, evaluator, progress):
            if with_paibb:
                aggregator.update(recorder.maps, targets, matcher(outputs, targets))
            else:
                aggregator.update(recorder.maps)
    return evaluator.summarize(), aggregator


def default_output_dir(checkpoint: Path, random_init: bool) -> Path:
    """``analysis`` (or ``analysis-random-init``) beside the checkpoint, i.e. in its run directory."""
    return checkpoint.parent / OUTPUT_DIRS[random_init]


def analysis_rows(record: Mapping[str, Any]) -> list[dict[str, Any]]:
    """CSV rows (site, layer, head, metric, mean, std, count): the COCO stats (site ``coco``, count = images),
    then ``result_rows`` of the attention metrics."""
    images = record["attention"]["num_images"]
    coco = [
        {"site": "coco", "layer": "", "head": "", "metric": name, "mean": value, "std": "", "count": images}
        for name, value in record["ap"].items()
    ]
    return coco + result_rows(record["attention"])


def analysis_markdown(record: Mapping[str, Any]) -> str:
    """The COCO table, then the attention table (one row per site and layer)."""
    kind = "random-init weights" if record["random_init"] else "trained weights"
    title = f"# Attention analysis: {record['checkpoint']} ({kind}) on {record['data']}"
    return "\n\n".join([title, format_table(record["ap"]), result_markdown(record["attention"])]) + "\n"


def write_analysis(record: Mapping[str, Any], output_dir: Path) -> list[Path]:
    """Write ``analysis.json``, ``analysis.csv`` and ``analysis.md`` into ``output_dir``; returns their paths."""
    output_dir.mkdir(parents=True, exist_ok=True)
    json_path, csv_path, md_path = (output_dir / f"analysis.{suffix}" for suffix in ("json", "csv", "md"))
    json_path.write_text(json.dumps(record, indent=2))
    rows = analysis_rows(record)
    with csv_path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    md_path.write_text(analysis_markdown(record))
    return [json_path, csv_path, md_path]


def find_analyses(inputs: Iterable[str | Path]) -> list[Path]:
    """``analysis.json`` files: given directly, or found in an analysis folder or in a run directory's
    ``analysis/`` and ``analysis-random-init/``."""
    found: list[Path] = []
    for path in map(Path, inputs):
        if path.is_file():
            found.append(path)
            continue
        candidates = [path / ANALYSIS_FILE, *(path / name / ANALYSIS_FILE for name in OUTPUT_DIRS.values())]
        hits = [candidate for candidate in candidates if candidate.is_file()]
        if not hits:
            raise FileNotFoundError(f"{path} is not an {ANALYSIS_FILE} nor a folder holding one (run analyze first)")
        found += hits
    return found


def run_label(record: Mapping[str, Any]) -> str:
    """The run directory's name (the checkpoint's folder), plus `` (random init)`` for a random-init baseline."""
    name = Path(record["checkpoint"]).parent.name
    return f"{name} (random init)" if record["random_init"] else name


def _cell(result: Mapping[str, Any], site: str, layer: int, metric: str) -> str:
    """Head-averaged mean ± std of ``metric`` at (site, layer) of one ``result()``; ``–`` where not measured."""
    if metric.startswith("paibb"):
        block = paibb_blocks(result["paibb"]).get(metric) if site == PAIBB_SITE else None
    else:
        block = result["sites"].get(site, {}).get("metrics", {}).get(metric)
    if block is None or layer >= len(block["per_layer"]["mean"]):
        return "–"
    return format_mean_std(block, layer)


def compare_markdown(records: Sequence[Mapping[str, Any]], metrics: Sequence[str] = DEFAULT_COMPARE_METRICS) -> str:
    """One Markdown table of several analysis records: rows = (site, layer), columns = metric × run (head-averaged
    mean ± std), then a COCO AP row (in the first metric's columns)."""
    unknown = sorted(set(metrics) - set(COMPARE_METRICS))
    if unknown:
        raise ValueError(f"unknown metrics {unknown}; choose among {list(COMPARE_METRICS)}")
    if not records:
        raise ValueError("nothing to compare: no analysis records")
    labels = [run_label(record) for record in records]
    results = [record["attention"] for record in records]
    header = ["site", "layer", *(f"{metric}: {label}" for metric in metrics for label in labels)]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for site in ATTENTION_SITES:
        num_layers = max((r["sites"][site]["num_layers"] for r in results if site in r["sites"]), default=0)
        for layer in range(num_layers):
            cells = [_cell(result, site, layer, metric) for metric in metrics for result in results]
            lines.append("| " + " | ".join([site, str(layer), *cells]) + " |")
    ap_cells = [f"{record['ap']['AP']:.3f}" for record in records] + [""] * (len(header) - 2 - len(records))
    lines.append("| " + " | ".join(["COCO AP", "", *ap_cells]) + " |")
    sources = "; ".join(
        f"{label}: {record['checkpoint']} on {record['data']} ({record['attention']['num_images']} images)"
        for label, record in zip(labels, records, strict=True)
    )
    lines += ["", f"Mean ± std over all query maps, heads pooled (PAIBB: head-averaged maps). Runs — {sources}."]
    return "\n".join(lines) + "\n"
