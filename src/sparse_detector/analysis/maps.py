"""``AttentionMaps``: one site's attention weights for one batch, layer by layer, as plain tensors.

This is what the metrics, PAIBB and the aggregator read; ``from_records`` makes it from the records a site's modules
emitted (see :mod:`sparse_detector.attention.sites`), whatever their key kind.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace

from torch import Tensor

from ..attention.sites import AttentionRecord, AttentionSite, KeyKind, QueryKind


@dataclass
class AttentionMaps:
    """The attention weights of one site for one batch.

    ``weights``: per layer, (B, heads, Lq, K), detached, the keys of each query in the last dimension.
    ``key_padding_mask`` (B, K), True = padding, or None (no padded keys). Where the keys are the row-major padded
    feature grid (``keys == "grid"``), ``padded_hw`` is that grid and ``grid_hw`` (B, 2) each image's valid (h, w),
    its top-left block. ``query_padding_mask`` (B, Lq) marks padded queries where the queries are grid cells too
    (``queries == "grid"``), else None. ``dense`` is True for softmax maps, which have no exact zeros.
    ``keys``/``queries`` default to what the other fields imply; ``records`` keeps the site's raw records (their
    kind-specific fields, e.g. sampling locations), when the maps come from a recorder. ``key_strides``: the
    model-input pixels per key cell of every level where the keys are image cells (the site's ``key_strides``),
    or None.
    """

    weights: list[Tensor]
    key_padding_mask: Tensor | None = None
    grid_hw: Tensor | None = None
    padded_hw: tuple[int, int] | None = None
    query_padding_mask: Tensor | None = None
    dense: bool = False
    keys: KeyKind | None = None
    queries: QueryKind | None = None
    records: Sequence[AttentionRecord] | None = field(default=None, repr=False)
    key_strides: tuple[int, ...] | None = None

    def __post_init__(self) -> None:
        if self.keys is None:
            self.keys = "grid" if self.padded_hw is not None else "queries"
        if self.queries is None:
            self.queries = "grid" if self.query_padding_mask is not None else "queries"

    @classmethod
    def from_records(cls, site: AttentionSite, records: Sequence[AttentionRecord]) -> AttentionMaps:
        """The maps of ``site`` from its records, one per layer (first layer first)."""
        first = records[0]
        grid = getattr(first, "key_grid", None)
        return cls(
            weights=[record.key_weights() for record in records],
            key_padding_mask=first.key_padding_mask,
            grid_hw=None if grid is None else grid.valid_hw,
            padded_hw=None if grid is None else grid.padded_hw,
            query_padding_mask=first.query_padding_mask,
            dense=any(record.dense for record in records),
            keys=site.keys,
            queries=site.queries,
            records=records,
            key_strides=site.key_strides,
        )

    @property
    def num_layers(self) -> int:
        return len(self.weights)

    def image(self, index: int) -> AttentionMaps:
        """The maps of one image with its padding cropped out, as if it had been run alone (batch size 1)."""
        weights = [w[index : index + 1] for w in self.weights]
        if self.key_padding_mask is None or self.grid_hw is None:
            return replace(self, weights=weights, records=None)
        h, w = (int(v) for v in self.grid_hw[index])
        keep = (~self.key_padding_mask[index]).nonzero().squeeze(1)
        weights = [x.index_select(-1, keep) for x in weights]
        if self.query_padding_mask is not None:
            weights = [x.index_select(-2, keep) for x in weights]
        no_padding = self.key_padding_mask.new_zeros(1, h * w)
        return replace(
            self,
            weights=weights,
            key_padding_mask=no_padding,
            grid_hw=self.grid_hw[index : index + 1],
            padded_hw=(h, w),
            query_padding_mask=no_padding if self.query_padding_mask is not None else None,
            records=None,
        )
