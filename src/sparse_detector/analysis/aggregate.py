"""Streaming mean ± std of attention metrics and PAIBB over a data set, mergeable across processes.

``MetricAggregator.result()`` is plain data (JSON-serialisable)::

    {
      "num_images": int,
      "support_mass": float,                        # mass fraction of support_90
      "sites": {site: {
          "num_layers": L, "num_heads": H,
          "zero_threshold": float,                  # zeros ratio counts keys with p <= this
          "metrics": {metric: {"per_head": STATS(L, H), "per_layer": STATS(L)}},
      }},
      "paibb": None | {                             # decoder cross attention, Hungarian-matched pairs
          "overall": {"per_head": STATS(L, H), "per_layer": STATS(L)},
          "by_size": {"small" | "medium" | "large": {"per_head": ..., "per_layer": ...}},
      },
      "per_image": [RECORD, ...],                   # only with keep_per_image=True
    }

``STATS(shape)`` is ``{"mean": nested list, "std": nested list, "count": nested list}`` with ``None`` for mean and
std where the count is 0; std is the population standard deviation. Layers are numbered from 0. For the sparsity
metrics ``per_layer`` pools the maps of all heads; for PAIBB it is the PAIBB of the head-averaged map (same mean,
std over matched pairs). Sites are ``encoder_self``, ``decoder_self``, ``decoder_cross``; metrics are ``METRICS``.

``RECORD`` is ``{"index": n-th image seen, "image_id": int | None, "metrics": {site: {metric: [per layer mean over
heads and queries]}}, "paibb": [{"query_index", "target_index", "size", "per_layer": [head-averaged PAIBB]}]}``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from ..models.matcher import MatchIndices
from .metrics import DENSE_ZERO_THRESHOLD, site_metrics
from .paibb import SIZE_BUCKETS, compute_paibb
from .recorder import AttentionMaps

PAIBB_SITE = "decoder_cross"


@dataclass
class RunningStats:
    """Count, mean and sum of squared deviations (M2) per entry, in float64 on the CPU.

    Partial results are combined with Chan et al.'s parallel formula, which stays accurate for long streams.
    """

    count: Tensor
    mean: Tensor
    m2: Tensor

    @classmethod
    def of(cls, values: Tensor, dims: tuple[int, ...], mask: Tensor | None = None) -> RunningStats:
        """Statistics of ``values`` reduced over ``dims``; ``mask`` (broadcastable, True = include) selects values."""
        values = values.detach().cpu().double()
        weight = torch.ones(()) if mask is None else mask.detach().cpu()
        values, weight = torch.broadcast_tensors(values, weight.double())
        count = weight.sum(dims, keepdim=True)
        mean = (values * weight).sum(dims, keepdim=True) / count.clamp_min(1.0)
        m2 = (weight * (values - mean).square()).sum(dims, keepdim=True)
        return cls(count.squeeze(dims), mean.squeeze(dims), m2.squeeze(dims))

    def reduce(self, dim: int) -> RunningStats:
        """Pool the entries along ``dim`` into one."""
        count = self.count.sum(dim)
        mean = (self.count * self.mean).sum(dim) / count.clamp_min(1.0)
        m2 = self.m2.sum(dim) + (self.count * (self.mean - mean.unsqueeze(dim)).square()).sum(dim)
        return RunningStats(count, mean, m2)

    def merge(self, other: RunningStats) -> RunningStats:
        """Statistics of the union of both streams (entry by entry)."""
        stacked = (torch.stack([a, b]) for a, b in zip(self._fields(), other._fields(), strict=True))
        return RunningStats(*stacked).reduce(0)

    def __getitem__(self, index: int) -> RunningStats:
        return RunningStats(*(t[index] for t in self._fields()))

    def _fields(self) -> tuple[Tensor, Tensor, Tensor]:
        return self.count, self.mean, self.m2

    def to_dict(self) -> dict[str, Any]:
        """``{"mean", "std", "count"}`` as nested lists, ``None`` where nothing was counted."""
        empty = self.count == 0
        std = (self.m2 / self.count.clamp_min(1.0)).sqrt()
        return {
            "mean": _nested(self.mean, empty),
            "std": _nested(std, empty),
            "count": self.count.long().tolist(),
        }


def _nested(values: Tensor, empty: Tensor) -> Any:
    """``values.tolist()`` with ``None`` where ``empty``."""
    if values.dim() == 0:
        return None if bool(empty) else float(values)
    return [_nested(v, e) for v, e in zip(values, empty, strict=True)]


def _merge_into(store: dict[str, RunningStats], key: str, stats: RunningStats) -> None:
    store[key] = store[key].merge(stats) if key in store else stats


class MetricAggregator:
    """Accumulates, batch by batch, the sparsity metrics of recorded attention maps and PAIBB of matched pairs.

    ``zero_threshold``: the zeros-ratio threshold of every site; None picks ``DENSE_ZERO_THRESHOLD`` for softmax
    sites and 0 (exact zeros) for sparse ones. ``support_mass``: the mass fraction of ``support_90``.
    ``keep_per_image``: also keep one record per image (see the module docstring).
    """

    def __init__(
        self, zero_threshold: float | None = None, support_mass: float = 0.9, keep_per_image: bool = False
    ) -> None:
        self.zero_threshold = zero_threshold
        self.support_mass = support_mass
        self.keep_per_image = keep_per_image
        self.num_images = 0
        self.zero_thresholds: dict[str, float] = {}
        self.per_image: list[dict[str, Any]] = []
        self._metrics: dict[str, dict[str, RunningStats]] = {}  # site -> metric -> (layers, heads)
        self._paibb: dict[str, RunningStats] = {}  # per_head: (buckets, layers, heads); per_layer: (buckets, layers)

    def _threshold(self, maps: AttentionMaps) -> float:
        if self.zero_threshold is not None:
            return self.zero_threshold
        return DENSE_ZERO_THRESHOLD if maps.dense else 0.0

    def update(
        self,
        maps: Mapping[str, AttentionMaps],
        targets: Sequence[Mapping[str, Tensor]] | None = None,
        indices: MatchIndices | None = None,
    ) -> None:
        """Add one batch: the recorder's ``maps`` and, for PAIBB, the targets with their matching ``indices``."""
        if (targets is None) != (indices is None):
            raise ValueError("PAIBB needs both targets and the matcher's indices")
        batch = next(iter(maps.values())).weights[0].shape[0]
        records = [self._new_record(b, targets) for b in range(batch)] if self.keep_per_image else []
        for site, site_maps in maps.items():
            threshold = self._threshold(site_maps)
            self.zero_thresholds[site] = threshold
            query_mask = site_maps.query_padding_mask
            include = None if query_mask is None else ~query_mask[None, :, None, :]
            store = self._metrics.setdefault(site, {})
            readings = site_metrics(site_maps, threshold, self.support_mass)
            stats = RunningStats.of(torch.stack(list(readings.values())), (2, 4), include)  # one pass, all metrics
            for index, (name, values) in enumerate(readings.items()):
                _merge_into(store, name, stats[index])
                if records:
                    image_means = RunningStats.of(values, (2, 3), include).mean  # (layers, B)
                    for record, layer_means in zip(records, image_means.T.tolist(), strict=True):
                        record["metrics"].setdefault(site, {})[name] = layer_means
        if targets is not None and indices is not None:
            if PAIBB_SITE not in maps:
                raise ValueError(f"PAIBB needs the {PAIBB_SITE} maps; record that site")
            self._add_paibb(maps[PAIBB_SITE], targets, indices, records)
        self.per_image.extend(records)
        self.num_images += batch

    def _new_record(self, index: int, targets: Sequence[Mapping[str, Tensor]] | None) -> dict[str, Any]:
        image_id = int(targets[index]["image_id"]) if targets is not None and "image_id" in targets[index] else None
        return {"index": self.num_images + index, "image_id": image_id, "metrics": {}, "paibb": []}

    def _add_paibb(
        self,
        maps: AttentionMaps,
        targets: Sequence[Mapping[str, Tensor]],
        indices: MatchIndices,
        records: list[dict[str, Any]],
    ) -> None:
        matched = compute_paibb(maps, targets, indices)
        buckets = torch.arange(len(SIZE_BUCKETS), device=matched.size_bucket.device)
        in_bucket = matched.size_bucket[None, :] == buckets[:, None]  # (buckets, M)
        _merge_into(self._paibb, "per_head", RunningStats.of(matched.values[None], (2,), in_bucket[:, None, :, None]))
        _merge_into(self._paibb, "per_layer", RunningStats.of(matched.head_mean[None], (2,), in_bucket[:, None, :]))
        if records:
            columns = zip(
                matched.image_index.tolist(),
                matched.query_index.tolist(),
                matched.target_index.tolist(),
                matched.size_bucket.tolist(),
                matched.head_mean.T.tolist(),
                strict=True,
            )
            for image, query, target, bucket, per_layer in columns:
                records[image]["paibb"].append(
                    {"query_index": query, "target_index": target, "size": SIZE_BUCKETS[bucket], "per_layer": per_layer}
                )

    def merge(self, other: MetricAggregator) -> None:
        """Add another aggregator's data (e.g. gathered from another process); its image indices are shifted."""
        for site, metrics in other._metrics.items():
            for name, stats in metrics.items():
                _merge_into(self._metrics.setdefault(site, {}), name, stats)
        for name, stats in other._paibb.items():
            _merge_into(self._paibb, name, stats)
        self.zero_thresholds.update(other.zero_thresholds)
        self.per_image.extend({**record, "index": record["index"] + self.num_images} for record in other.per_image)
        self.num_images += other.num_images

    def result(self) -> dict[str, Any]:
        """Plain-data summary; the structure is documented in the module docstring."""
        sites = {}
        for site, metrics in self._metrics.items():
            num_layers, num_heads = next(iter(metrics.values())).count.shape
            sites[site] = {
                "num_layers": num_layers,
                "num_heads": num_heads,
                "zero_threshold": self.zero_thresholds[site],
                "metrics": {
                    name: {"per_head": stats.to_dict(), "per_layer": stats.reduce(1).to_dict()}
                    for name, stats in metrics.items()
                },
            }
        paibb = None
        if self._paibb:
            per_head, per_layer = self._paibb["per_head"], self._paibb["per_layer"]
            paibb = {
                "overall": {"per_head": per_head.reduce(0).to_dict(), "per_layer": per_layer.reduce(0).to_dict()},
                "by_size": {
                    bucket: {
                        "per_head": per_head[i].to_dict(),
                        "per_layer": per_layer[i].to_dict(),
                    }
                    for i, bucket in enumerate(SIZE_BUCKETS)
                },
            }
        out: dict[str, Any] = {
            "num_images": self.num_images,
            "support_mass": self.support_mass,
            "sites": sites,
            "paibb": paibb,
        }
        if self.keep_per_image:
            out["per_image"] = self.per_image
        return out

    def to_rows(self) -> list[dict[str, Any]]:
        return result_rows(self.result())

    def to_markdown(self) -> str:
        return result_markdown(self.result())


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


def paibb_blocks(paibb: Mapping[str, Any] | None) -> dict[str, Mapping[str, Any]]:
    """PAIBB statistics by metric name: ``paibb`` (all pairs) and ``paibb_<size>``."""
    if paibb is None:
        return {}
    return {"paibb": paibb["overall"], **{f"paibb_{size}": block for size, block in paibb["by_size"].items()}}


def result_rows(result: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Flat rows (site, layer, head, metric, mean, std, count) of a ``result()``, for CSV; head is ``"mean"`` for
    the head-pooled (sparsity metrics) or head-averaged (PAIBB) reading of a layer."""
    rows = []
    for site, info in result["sites"].items():
        for metric, block in info["metrics"].items():
            rows.extend(_stats_rows(site, metric, block))
    for metric, block in paibb_blocks(result["paibb"]).items():
        rows.extend(_stats_rows(PAIBB_SITE, metric, block))
    return rows


def format_mean_std(block: Mapping[str, Any], layer: int) -> str:
    mean, std = block["per_layer"]["mean"][layer], block["per_layer"]["std"][layer]
    return "–" if mean is None else f"{mean:.3f} ± {std:.3f}"


def result_markdown(result: Mapping[str, Any]) -> str:
    """Markdown table of a ``result()``: one row per site and layer, head-averaged mean ± std of every metric."""
    metrics = list(dict.fromkeys(m for info in result["sites"].values() for m in info["metrics"]))
    paibb = paibb_blocks(result["paibb"])
    header = ["site", "layer", *metrics, *paibb]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for site, info in result["sites"].items():
        for layer in range(info["num_layers"]):
            cells = [site, str(layer)]
            cells += [format_mean_std(info["metrics"][m], layer) if m in info["metrics"] else "–" for m in metrics]
            cells += [format_mean_std(block, layer) if site == PAIBB_SITE else "–" for block in paibb.values()]
            lines.append("| " + " | ".join(cells) + " |")
    thresholds = ", ".join(f"{site} {info['zero_threshold']:g}" for site, info in result["sites"].items())
    lines += [
        "",
        f"Mean ± std (population) over all query maps of {result['num_images']} images, heads pooled; zeros ratio "
        f"threshold: {thresholds}; support_90 at mass {result['support_mass']:g}. PAIBB: head-averaged maps of "
        "Hungarian-matched queries (COCO size buckets by box area).",
    ]
    return "\n".join(lines)
