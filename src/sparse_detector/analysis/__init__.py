"""Attention analysis: record attention maps, read their sparsity, PAIBB, and aggregate over a data set."""

from .aggregate import MetricAggregator, RunningStats, result_markdown, result_rows
from .metrics import DENSE_ZERO_THRESHOLD, METRICS, entropy, gini, site_metrics, support_90, zeros_ratio
from .paibb import SIZE_BUCKETS, MatchedPaibb, box_coverage, compute_paibb, size_buckets
from .recorder import AttentionMaps, AttentionRecorder, site_modules

__all__ = [
    "DENSE_ZERO_THRESHOLD",
    "METRICS",
    "SIZE_BUCKETS",
    "AttentionMaps",
    "AttentionRecorder",
    "MatchedPaibb",
    "MetricAggregator",
    "RunningStats",
    "box_coverage",
    "compute_paibb",
    "entropy",
    "gini",
    "result_markdown",
    "result_rows",
    "site_metrics",
    "site_modules",
    "size_buckets",
    "support_90",
    "zeros_ratio",
]
