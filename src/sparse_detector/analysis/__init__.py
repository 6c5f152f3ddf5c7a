"""Attention analysis: record a model's attention maps (asking the model for its sites), read their sparsity and
PAIBB, and aggregate over a data set. The metric functions take plain tensors and the key padding mask
(True = padding); nothing here imports the model stack.
"""

from .aggregate import MetricAggregator, RunningStats
from .maps import AttentionMaps
from .metrics import DENSE_ZERO_THRESHOLD, METRICS, entropy, gini, site_metrics, support_90, zeros_ratio
from .paibb import SIZE_BUCKETS, MatchedPaibb, box_coverage, compute_paibb, size_buckets, takes_paibb
from .recorder import AttentionRecorder, record_attention

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
    "record_attention",
    "site_metrics",
    "size_buckets",
    "support_90",
    "takes_paibb",
    "zeros_ratio",
]
