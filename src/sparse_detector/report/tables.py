"""Markdown and CSV tables of attention analyses (``MetricAggregator.result()`` and ``analysis.json`` records).

An analysis record is plain data::

    {"checkpoint": str, "data": str, "random_init": bool, "seed": int | None, "sites": [site, ...],
     "maps": {site: attention map}, "ap": {COCO stat: value}, "attention": MetricAggregator.result()}

(``maps`` is absent from records written before 2026-12-02.)

Rows, columns and sites come from the records themselves (the sites the model declared), never from a list here.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ..analysis import METRICS, SIZE_BUCKETS
from ..analysis.aggregate import keys_differ
from ..analysis.paibb import GRID_PAIBB, POINTS_PAIBB
from ..engine.coco_eval import format_table, metric_text
from ..files import write_atomically
from ..runs import ANALYSIS_FILE, analysis_labels
from ..text import counted, decimals

COMPARE_METRICS = (*METRICS, "paibb", *(f"paibb_{size}" for size in SIZE_BUCKETS), "sampling_spread")
DEFAULT_COMPARE_METRICS = ("gini", "zeros_ratio", "paibb")
MISSING = "–"
POINTS_NOTE = (
    f"PAIBB is the {POINTS_PAIBB}, and sampling_spread the weighted distance of the points from the reference point "
    "in box widths / heights"
)


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    """The lines of a Markdown table."""
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header), *("| " + " | ".join(r) + " |" for r in rows)]


def write_csv(rows: Sequence[Mapping[str, Any]], path: Path) -> None:
    """Rows of equal keys as CSV with a header line."""
    text = io.StringIO(newline="")
    writer = csv.DictWriter(text, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
    write_atomically(path, text.getvalue())


def paibb_blocks(site_info: Mapping[str, Any]) -> dict[str, Mapping[str, Any]]:
    """A site's matched-pair statistics by metric name: ``paibb`` (all pairs) and ``paibb_<size>``, and at
    sampling-point sites ``sampling_spread``; empty without PAIBB."""
    paibb = site_info.get("paibb")
    if paibb is None:
        return {}
    blocks = {"paibb": paibb["overall"], **{f"paibb_{size}": block for size, block in paibb["by_size"].items()}}
    if site_info.get("sampling_spread") is not None:
        blocks["sampling_spread"] = site_info["sampling_spread"]["overall"]
    return blocks


def _point_paibb(site_info: Mapping[str, Any]) -> bool:
    """Whether a site's PAIBB is read over sampling points (it then has a sampling spread)."""
    return site_info.get("sampling_spread") is not None


def _metric_blocks(site_info: Mapping[str, Any]) -> dict[str, Mapping[str, Any]]:
    """Every statistic of a site by metric name: the sparsity metrics, then PAIBB."""
    return {**site_info["metrics"], **paibb_blocks(site_info)}


def _stats_rows(site: str, metric: str, block: Mapping[str, Any]) -> list[dict[str, Any]]:
    per_head, per_layer = block["per_head"], block["per_layer"]
    rows = []
    for layer, heads in enumerate(per_head["mean"]):
        for head in range(len(heads)):
            stats = {key: per_head[key][layer][head] for key in ("mean", "std", "count")}
            rows.append({"site": site, "layer": layer, "head": head, "metric": metric, **stats})
        stats = {key: per_layer[key][layer] for key in ("mean", "std", "count")}
        rows.append({"site": site, "layer": layer, "head": "mean", "metric": metric, **stats})
    return rows


def result_rows(result: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Flat rows (site, layer, head, metric, mean, std, count) of a ``result()``, for CSV; head is ``"mean"`` for
    the head-pooled (sparsity metrics) or head-averaged (PAIBB) reading of a layer; the thesis-compatible PAIBB,
    where read, last."""
    sites = result["sites"].items()
    rows = [
        row
        for site, info in sites
        for metric, block in info["metrics"].items()
        for row in _stats_rows(site, metric, block)
    ]
    rows += [
        row
        for site, info in sites
        for metric, block in paibb_blocks(info).items()
        for row in _stats_rows(site, metric, block)
    ]
    return rows + [row for site, info in sites for row in _upsampled_paibb_rows(site, info)]


def _upsampled_paibb_rows(site: str, site_info: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The thesis-compatible PAIBB (``analyze --paibb-upsampled``) of a site, if read: ``paibb_upsampled`` and
    ``paibb_upsampled_<size>``, in the last layer's head-average row."""
    block = (site_info.get("paibb") or {}).get("upsampled_last_layer")
    if not block:
        return []
    stats = {"paibb_upsampled": block["overall"], **{f"paibb_upsampled_{k}": v for k, v in block["by_size"].items()}}
    layer = site_info["num_layers"] - 1
    return [{"site": site, "layer": layer, "head": "mean", "metric": name, **value} for name, value in stats.items()]


def format_mean_std(block: Mapping[str, Any] | None, layer: int) -> str:
    """Head-averaged ``mean ± std`` of one layer; ``–`` where not measured."""
    if block is None or layer >= len(block["per_layer"]["mean"]):
        return MISSING
    mean, std = block["per_layer"]["mean"][layer], block["per_layer"]["std"][layer]
    return MISSING if mean is None else f"{decimals(mean)} ± {decimals(std)}"


def result_markdown(result: Mapping[str, Any]) -> str:
    """Markdown table of a ``result()``: one row per site and layer, head-averaged mean ± std of every metric."""
    sites = result["sites"]
    columns = list(dict.fromkeys(metric for info in sites.values() for metric in _metric_blocks(info)))
    rows = []
    for site, info in sites.items():
        blocks = _metric_blocks(info)
        for layer in range(info["num_layers"]):
            rows.append([site, str(layer), *(format_mean_std(blocks.get(metric), layer) for metric in columns)])
    points_note = (
        f" At sampling-point sites {POINTS_NOTE}." if any(_point_paibb(info) for info in sites.values()) else ""
    )
    return "\n".join(
        [
            *markdown_table(["site", "layer", *columns], rows),
            "",
            f"Mean ± std (population) over all query maps of {counted(result['num_images'], 'image')}, heads "
            f"pooled; zeros ratio threshold: {zero_thresholds(sites)}; entropy in nats; support_90: keys holding "
            f"{result['support_mass']:g} of the mass." + paibb_note(sites, result.get("num_boxes")) + points_note,
        ]
    )


def zero_thresholds(sites: Mapping[str, Mapping[str, Any]], every_site: str = "") -> str:
    """The zeros-ratio threshold of every site (``encoder_self 1e-06, decoder_cross 0``); one number, followed by
    ``every_site``, where all sites share it."""
    thresholds = {site: info["zero_threshold"] for site, info in sites.items()}
    if len(set(thresholds.values())) == 1:
        return f"{next(iter(thresholds.values())):g}{every_site}"
    return ", ".join(f"{site} {threshold:g}" for site, threshold in thresholds.items())


def paibb_note(sites: Mapping[str, Mapping[str, Any]], num_boxes: int | None = None) -> str:
    """What the PAIBB columns are averaged over, with the number of matched pairs per site and, where ``num_boxes``
    (the ground-truth boxes) is more, how many boxes no query was matched to; empty without PAIBB."""
    pairs = {
        site: count[0] if (count := info["paibb"]["overall"]["per_layer"]["count"]) else 0
        for site, info in sites.items()
        if info.get("paibb")
    }
    if not pairs:
        return ""
    counts = ", ".join(f"{counted(count, 'matched pair')} at {site}" for site, count in pairs.items())
    unmatched = max(num_boxes - min(pairs.values()), 0) if num_boxes is not None else 0
    left_out = (
        f"; {counted(unmatched, 'ground-truth box', 'ground-truth boxes')} of {num_boxes} matched to no query and "
        "not read: images held more boxes than the model has queries"
        if unmatched
        else ""
    )
    return (
        f" PAIBB: head-averaged maps of Hungarian-matched queries ({counts}{left_out}; COCO size buckets by box area "
        "in original-image pixels)."
    )


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
    parts = [title, format_table(record["ap"]), result_markdown(record["attention"])]
    return "\n\n".join(parts + upsampled_paibb_lines(record["attention"])) + "\n"


def upsampled_paibb_lines(result: Mapping[str, Any]) -> list[str]:
    """A line per site with the thesis-compatible PAIBB (``analyze --paibb-upsampled``), if it was read."""
    lines = []
    for site, info in result["sites"].items():
        block = (info.get("paibb") or {}).get("upsampled_last_layer")
        if block and block["overall"]["mean"] is not None:
            stats = block["overall"]
            lines.append(
                f"Thesis-compatible PAIBB at {site} (last layer, head average, bilinearly upsampled to the image "
                f"size): {decimals(stats['mean'])} ± {decimals(stats['std'])} over {stats['count']:.0f} matched pairs."
            )
    return lines


def write_analysis(record: Mapping[str, Any], output_dir: Path) -> list[Path]:
    """Write ``analysis.json``, ``analysis.csv`` and ``analysis.md`` into ``output_dir``; returns their paths."""
    output_dir.mkdir(parents=True, exist_ok=True)
    json_path = output_dir / ANALYSIS_FILE
    csv_path, md_path = json_path.with_suffix(".csv"), json_path.with_suffix(".md")
    json_path.unlink(missing_ok=True)  # a write cut short leaves no old record beside new tables (study redoes it)
    write_csv(analysis_rows(record), csv_path)
    write_atomically(md_path, analysis_markdown(record))
    write_atomically(json_path, json.dumps(record, indent=2))  # last: the record other commands read says all is there
    return [json_path, csv_path, md_path]


def compare_markdown(records: Sequence[Mapping[str, Any]], metrics: Sequence[str] = DEFAULT_COMPARE_METRICS) -> str:
    """One Markdown table of several analysis records: rows = (site, layer) of every site any run recorded,
    columns = metric × run (head-averaged mean ± std), then a COCO AP row (in the first metric's columns)."""
    unknown = sorted(set(metrics) - set(COMPARE_METRICS))
    if unknown:
        raise ValueError(f"unknown metrics {unknown}; choose among {list(COMPARE_METRICS)}")
    if not records:
        raise ValueError("nothing to compare: no analysis records")
    labels = analysis_labels(records)
    results = [record["attention"] for record in records]
    header = ["site", "layer", *(f"{metric}: {label}" for metric in metrics for label in labels)]
    rows = []
    for site in dict.fromkeys(site for result in results for site in result["sites"]):
        infos = [result["sites"].get(site) for result in results]
        blocks = [{} if info is None else _metric_blocks(info) for info in infos]
        num_layers = max(info["num_layers"] for info in infos if info is not None)
        for layer in range(num_layers):
            cells = [format_mean_std(run.get(metric), layer) for metric in metrics for run in blocks]
            rows.append([site, str(layer), *cells])
    ap_cells = [metric_text("AP", record["ap"]["AP"]) for record in records] + [""] * (len(header) - 2 - len(records))
    rows.append(["COCO AP", "", *ap_cells])
    sources = "; ".join(
        f"{label}: {record['checkpoint']} on {record['data']} ({counted(record['attention']['num_images'], 'image')})"
        for label, record in zip(labels, records, strict=True)
    )
    lines = [
        *markdown_table(header, rows),
        "",
        f"Mean ± std (population) over all query maps, heads pooled (PAIBB: head-averaged maps of matched pairs); "
        f"entropy in nats.{_compared_maps(labels, records)}"
        f"{' ' + runs_zero_thresholds(labels, results) if 'zeros_ratio' in metrics else ''}"
        f"{_compared_points(labels, results) if any(m.startswith(('paibb', 'sampling')) for m in metrics) else ''}"
        f"{_compared_keys(labels, results) if set(metrics) & set(METRICS) else ''}"
        f" Runs — {sources}.",
    ]
    return "\n".join(lines) + "\n"


def runs_zero_thresholds(labels: Sequence[str], results: Sequence[Mapping[str, Any]]) -> str:
    """The zeros-ratio thresholds of several runs' results side by side: softmax maps count p <= 1e-6 as zero,
    sparse ones p <= 0, so a zeros ratio means nothing without its threshold."""
    per_run = [zero_thresholds(result["sites"]) for result in results if result["sites"]]
    if len(set(per_run)) <= 1:
        return f"Zeros ratio threshold: {per_run[0] if per_run else '–'}."
    readings = "; ".join(
        f"{label}: {zero_thresholds(result['sites'], ' at every site')}"
        for label, result in zip(labels, results, strict=True)
        if result["sites"]
    )
    return f"Zeros ratio thresholds differ between runs: {readings}."


def _compared_maps(labels: Sequence[str], records: Sequence[Mapping[str, Any]]) -> str:
    """Each compared run's attention map per site (``softmax`` at every site where it has no other), from the
    records that name them; empty where none does."""
    readings = []
    for label, record in zip(labels, records, strict=True):
        maps = record.get("maps")
        if not maps:
            continue
        if len(set(maps.values())) == 1:
            readings.append(f"{label}: {next(iter(maps.values()))} at every site")
        else:
            readings.append(f"{label}: {', '.join(f'{site} {name}' for site, name in maps.items())}")
    return f" Attention maps — {'; '.join(readings)}." if readings else ""


def _compared_keys(labels: Sequence[str], results: Sequence[Mapping[str, Any]]) -> str:
    """The sites at which the compared runs attend over different keys (:func:`keys_differ`), whose sparsity
    metrics (Gini, zeros ratio, entropy, support_90) therefore cannot be compared; empty where none."""
    by_label = dict(zip(labels, results, strict=True))
    differ = [
        f"{site} ({kinds})"
        for site in dict.fromkeys(site for result in results for site in result["sites"])
        if (kinds := keys_differ(by_label, site))
    ]
    return f" Sparsity NOT comparable where the keys attended over differ: {'; '.join(differ)}." if differ else ""


def _compared_points(labels: Sequence[str], results: Sequence[Mapping[str, Any]]) -> str:
    """Which compared runs read PAIBB over sampling points (a Deformable DETR's ``decoder_cross``) rather than as
    attention mass on the feature grid, the two being set in one row; the grid's reading is named only where a
    site reads PAIBB so."""
    points = [
        f"{label} {', '.join(site for site, info in result['sites'].items() if _point_paibb(info))}"
        for label, result in zip(labels, results, strict=True)
        if any(_point_paibb(info) for info in result["sites"].values())
    ]
    if not points:
        return ""
    grid = any(info.get("paibb") and not _point_paibb(info) for result in results for info in result["sites"].values())
    elsewhere = f"; elsewhere PAIBB is the attention {GRID_PAIBB}" if grid else ""  # only where a site reads it so
    return f" At sampling-point sites ({'; '.join(points)}) {POINTS_NOTE}{elsewhere}."
