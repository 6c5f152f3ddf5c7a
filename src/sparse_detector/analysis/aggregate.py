"""Streaming mean ± std of attention metrics and PAIBB over a data set, mergeable across processes.

``MetricAggregator.result()`` is plain data (JSON-serialisable)::

    {
      "num_images": int,
      "num_boxes": int,                             # ground-truth boxes of the targets given (crowd ones are none)
      "support_mass": float,                        # mass fraction of support_90
      "sites": {site: {
          "keys": "grid" | "queries" | "points",    # what the site's keys and queries are (the model's declaration)
          "queries": "grid" | "queries",
          "num_layers": L, "num_heads": H,
          "zero_threshold": float,                  # zeros ratio counts keys with p <= this
          "metrics": {metric: {"per_head": STATS(L, H), "per_layer": STATS(L)}},
          "paibb": None | {                         # sites of object queries over the grid, matched pairs
              "overall": {"per_head": STATS(L, H), "per_layer": STATS(L)},
              "by_size": {"small" | "medium" | "large": {"per_head": ..., "per_layer": ...}},
              "upsampled_last_layer": {"overall": STATS(), "by_size": {...}},   # only with paibb_upsampled=True
          },
          "sampling_spread": None | {"overall": ..., "by_size": ...},  # sampling-point sites, as "paibb"
      }},
      "per_image": [RECORD, ...],                   # only with keep_per_image=True
    }

``STATS(shape)`` is ``{"mean": nested list, "std": nested list, "count": nested list}`` with ``None`` for mean and
std where the count is 0; std is the population standard deviation. Layers are numbered from 0. For the sparsity
metrics ``per_layer`` pools the maps of all heads; for PAIBB it is the PAIBB of the head-averaged map (same mean,
std over matched pairs). Sites are the model's; metrics are ``METRICS``.

``RECORD`` is ``{"index": n-th image seen, "image_id": int | None, "metrics": {site: {metric: [per layer mean over
heads and queries]}}, "paibb": {site: [{"query_index", "target_index", "size", "per_layer": [head-averaged
PAIBB]}]}}``; after ``order_per_image`` (as ``analyze`` does) the records follow the data set's order and
``index`` is the image's position in it. Tables of a result are made by :mod:`sparse_detector.report`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from ..attention.sites import SIDE_NAMES
from .maps import AttentionMaps
from .metrics import DENSE_ZERO_THRESHOLD, site_metrics
from .paibb import SIZE_BUCKETS, MatchIndices, compute_paibb, takes_paibb, upsampled_paibb


def runs_by_keys(results: Mapping[str, Mapping], site: str) -> dict[str, list[str]]:
    """What the keys of ``site`` are (``grid``, ``points``, ``queries``) -> the runs (label -> ``result()``) whose
    site has such keys."""
    runs: dict[str, list[str]] = {}
    for label, result in results.items():
        keys = (result["sites"].get(site) or {}).get("keys")
        if keys:
            runs.setdefault(keys, []).append(label)
    return runs


def keys_differ(results: Mapping[str, Mapping], site: str) -> str:
    """Where the runs' ``site`` attends over different keys (a DETR's hundreds of grid cells, a Deformable DETR's 12
    sampling points), which runs attend over which (``feature-grid cells: a; sampling points: b``): their sparsity
    metrics, whose range depends on the number of keys, are not comparable. Empty where the keys are alike."""
    runs = runs_by_keys(results, site)
    if len(runs) < 2:
        return ""
    return "; ".join(f"{SIDE_NAMES.get(keys, keys)}: {', '.join(labels)}" for keys, labels in runs.items())


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
        values = values.where(weight > 0, 0.0)  # a left-out value (e.g. NaN Gini of an empty padded row) counts 0 times
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
    ``keep_per_image``: also keep one record per image (see the module docstring). ``paibb_upsampled``: also read
    the prior thesis's PAIBB (``paibb.upsampled_paibb``; ``paibb.upsampled_last_layer`` in the result).
    """

    def __init__(
        self,
        zero_threshold: float | None = None,
        support_mass: float = 0.9,
        keep_per_image: bool = False,
        paibb_upsampled: bool = False,
    ) -> None:
        self.zero_threshold = zero_threshold
        self.paibb_upsampled = paibb_upsampled
        self.support_mass = support_mass
        self.keep_per_image = keep_per_image
        self.num_images = 0
        self.num_boxes = 0  # the targets' boxes: PAIBB reads those a query was matched to
        self.zero_thresholds: dict[str, float] = {}
        self.per_image: list[dict[str, Any]] = []
        self.kinds: dict[str, dict[str, str]] = {}  # site -> {"keys": ..., "queries": ...}
        self._metrics: dict[str, dict[str, RunningStats]] = {}  # site -> metric -> (layers, heads)
        # site -> per_head: (buckets, layers, heads); per_layer: (buckets, layers)
        self._paibb: dict[str, dict[str, RunningStats]] = {}
        self._spread: dict[str, dict[str, RunningStats]] = {}  # same layout, sampling-point sites only

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
        """Add one batch: the recorder's ``maps`` and, for PAIBB (at every site that takes it), the targets with
        their matching ``indices``."""
        if (targets is None) != (indices is None):
            raise ValueError("PAIBB needs both targets and the matcher's indices")
        batch = next(iter(maps.values())).weights[0].shape[0]
        records = [self._new_record(b, targets) for b in range(batch)] if self.keep_per_image else []
        for site, site_maps in maps.items():
            threshold = self._threshold(site_maps)
            self.zero_thresholds[site] = threshold
            self.kinds[site] = {"keys": str(site_maps.keys), "queries": str(site_maps.queries)}
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
            paibb_sites = [site for site, site_maps in maps.items() if takes_paibb(site_maps)]
            if not paibb_sites:
                raise ValueError(
                    f"PAIBB needs the maps of a site of object queries over the feature grid; got only {list(maps)}"
                )
            for site in paibb_sites:
                self._add_paibb(site, maps[site], targets, indices, records)
            self.num_boxes += sum(len(target["boxes"]) for target in targets)
        self.per_image.extend(records)
        self.num_images += batch

    def _new_record(self, index: int, targets: Sequence[Mapping[str, Tensor]] | None) -> dict[str, Any]:
        image_id = int(targets[index]["image_id"]) if targets is not None and "image_id" in targets[index] else None
        return {"index": self.num_images + index, "image_id": image_id, "metrics": {}, "paibb": {}}

    def _add_paibb(
        self,
        site: str,
        maps: AttentionMaps,
        targets: Sequence[Mapping[str, Tensor]],
        indices: MatchIndices,
        records: list[dict[str, Any]],
    ) -> None:
        matched = compute_paibb(maps, targets, indices)
        buckets = torch.arange(len(SIZE_BUCKETS), device=matched.size_bucket.device)
        in_bucket = matched.size_bucket[None, :] == buckets[:, None]  # (buckets, M)
        readings = [(self._paibb, matched.values)]
        if matched.spread is not None:
            readings.append((self._spread, matched.spread))
        for target, values in readings:
            store = target.setdefault(site, {})
            _merge_into(store, "per_head", RunningStats.of(values[None], (2,), in_bucket[:, None, :, None]))
            _merge_into(store, "per_layer", RunningStats.of(values.mean(-1)[None], (2,), in_bucket[:, None, :]))
        if self.paibb_upsampled and maps.keys == "grid":
            upsampled = upsampled_paibb(maps, targets, indices).to(in_bucket.device)
            _merge_into(self._paibb[site], "upsampled", RunningStats.of(upsampled[None], (1,), in_bucket))
        for record in records:  # an image without matched boxes has an empty list, not a missing site
            record["paibb"].setdefault(site, [])
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
                records[image]["paibb"][site].append(
                    {"query_index": query, "target_index": target, "size": SIZE_BUCKETS[bucket], "per_layer": per_layer}
                )

    def order_per_image(self, image_ids: Sequence[int]) -> None:
        """Put the per-image records in the order of ``image_ids`` (the data set's), each ``index`` the image's
        position there, so they do not depend on the order in which batches of images came."""
        position = {int(image_id): index for index, image_id in enumerate(image_ids)}
        records = ({**record, "index": position[record["image_id"]]} for record in self.per_image)
        self.per_image = sorted(records, key=lambda record: record["index"])

    def merge(self, other: MetricAggregator) -> None:
        """Add another aggregator's data (e.g. gathered from another process); its image indices are shifted."""
        for site, metrics in other._metrics.items():
            for name, stats in metrics.items():
                _merge_into(self._metrics.setdefault(site, {}), name, stats)
        for mine, theirs in ((self._paibb, other._paibb), (self._spread, other._spread)):
            for site, paibb in theirs.items():
                for name, stats in paibb.items():
                    _merge_into(mine.setdefault(site, {}), name, stats)
        self.zero_thresholds.update(other.zero_thresholds)
        self.kinds.update(other.kinds)
        self.per_image.extend({**record, "index": record["index"] + self.num_images} for record in other.per_image)
        self.num_images += other.num_images
        self.num_boxes += other.num_boxes

    def result(self) -> dict[str, Any]:
        """Plain-data summary; the structure is documented in the module docstring."""
        sites = {}
        for site, metrics in self._metrics.items():
            num_layers, num_heads = next(iter(metrics.values())).count.shape
            sites[site] = {
                **self.kinds[site],
                "num_layers": num_layers,
                "num_heads": num_heads,
                "zero_threshold": self.zero_thresholds[site],
                "metrics": {
                    name: {"per_head": stats.to_dict(), "per_layer": stats.reduce(1).to_dict()}
                    for name, stats in metrics.items()
                },
                "paibb": _paibb_result(self._paibb[site]) if site in self._paibb else None,
                "sampling_spread": _paibb_result(self._spread[site]) if site in self._spread else None,
            }
        out: dict[str, Any] = {
            "num_images": self.num_images,
            "num_boxes": self.num_boxes,
            "support_mass": self.support_mass,
            "sites": sites,
        }
        if self.keep_per_image:
            out["per_image"] = self.per_image
        return out


def _paibb_result(stats: Mapping[str, RunningStats]) -> dict[str, Any]:
    per_head, per_layer = stats["per_head"], stats["per_layer"]
    result = {
        "overall": {"per_head": per_head.reduce(0).to_dict(), "per_layer": per_layer.reduce(0).to_dict()},
        "by_size": {
            bucket: {"per_head": per_head[i].to_dict(), "per_layer": per_layer[i].to_dict()}
            for i, bucket in enumerate(SIZE_BUCKETS)
        },
    }
    if "upsampled" in stats:
        upsampled = stats["upsampled"]
        result["upsampled_last_layer"] = {
            "overall": upsampled.reduce(0).to_dict(),
            "by_size": {bucket: upsampled[i].to_dict() for i, bucket in enumerate(SIZE_BUCKETS)},
        }
    return result
