"""The attention-site contract: where a model computes attention weights, and the records its modules emit.

A model declares its sites with ``attention_sites() -> tuple[AttentionSite, ...]``. A site has a name (a role
shared across models, so one config override works on every model that has the site), what its keys are
(``KeyKind``), what its queries are (``QueryKind``) and the attention module of each layer, first layer first.
Config validation, the recorder, the metrics, PAIBB, figures and the CLI ask the model for its sites; none of them
keeps a list of site names.

Recording: each attention module of a site is a :class:`RecordingModule`. ``module.record_to(sink)`` makes the
module hand one record per forward call to ``sink``; ``module.record_to(None)`` turns that off again (the default,
which costs nothing: the module runs as if recording did not exist). The record is a type per key kind:

- :class:`GridRecord` — keys are the flattened (row-major) padded image feature grid;
- :class:`QueriesRecord` — keys are the object queries (no padding, no layout);
- :class:`PointsRecord` — keys are multi-scale sampling points (deformable attention).

Every record answers ``kind``, ``dense``, ``key_weights()`` — (B, heads, Lq, K), the weights with the keys of one
query flattened into the last dimension, what the sparsity metrics read —, ``key_padding_mask`` (B, K) and
``query_padding_mask`` (B, Lq), both ``True`` = padding or ``None``. A new key kind plugs in as a new record type
with these members; the recorder never looks inside a record.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import ClassVar, Literal, Protocol, runtime_checkable

from torch import Tensor, nn

from ..text import did_you_mean
from .base import KeyGrid

KeyKind = Literal["grid", "queries", "points"]
"""What a site's keys are: the image feature grid, the object queries, or multi-scale sampling points."""
KEY_KINDS: tuple[KeyKind, ...] = ("grid", "queries", "points")

QueryKind = Literal["grid", "queries"]
"""What a site's queries are: cells of the image feature grid (encoder self attention) or the object queries."""

#: What a site's queries or keys (:data:`QueryKind`, :data:`KeyKind`) are, in words.
SIDE_NAMES = {"grid": "feature-grid cells", "points": "sampling points", "queries": "object queries"}


@runtime_checkable
class AttentionRecord(Protocol):
    """What every record answers, whatever its key kind (see the module docstring)."""

    kind: ClassVar[KeyKind]
    dense: bool
    key_padding_mask: Tensor | None
    query_padding_mask: Tensor | None

    def key_weights(self) -> Tensor: ...


@dataclass
class GridRecord:
    """Dense attention whose keys are the flattened padded feature grid.

    ``weights`` (B, heads, Lq, Lk) with Lk = H * W of ``key_grid.padded_hw``; ``key_padding_mask`` (B, Lk);
    ``query_padding_mask`` (B, Lq) where the queries are grid cells too, else None. ``dense`` marks maps without
    exact zeros (softmax).
    """

    kind: ClassVar[KeyKind] = "grid"
    weights: Tensor
    key_padding_mask: Tensor
    key_grid: KeyGrid
    query_padding_mask: Tensor | None = None
    dense: bool = False

    def key_weights(self) -> Tensor:
        return self.weights


@dataclass
class QueriesRecord:
    """Dense attention whose keys are the object queries: ``weights`` (B, heads, Lq, Lk), no padding."""

    kind: ClassVar[KeyKind] = "queries"
    weights: Tensor
    dense: bool = False
    key_padding_mask: Tensor | None = None
    query_padding_mask: Tensor | None = None

    def key_weights(self) -> Tensor:
        return self.weights


@dataclass
class PointsRecord:
    """Deformable attention over multi-scale sampling points.

    ``weights`` (B, Lq, heads, L, P): each query's weights over L levels x P points per head (summing to 1 over
    L x P); ``sampling_locations`` (B, Lq, heads, L, P, 2) as (x, y) in [0, 1] of each level's valid area;
    ``reference_points`` (B, Lq, L, 2) or (B, Lq, L, 4); ``level_shapes`` (L, 2) the padded (h, w) of every level;
    ``valid_ratios`` (B, L, 2) each image's valid fraction (w, h) of every level; ``query_padding_mask`` (B, Lq)
    where the queries are grid cells (encoder), else None. Every sampling point is a key: no key padding.
    """

    kind: ClassVar[KeyKind] = "points"
    weights: Tensor
    sampling_locations: Tensor
    reference_points: Tensor
    level_shapes: Tensor
    valid_ratios: Tensor
    query_padding_mask: Tensor | None = None
    dense: bool = False
    key_padding_mask: Tensor | None = None

    def key_weights(self) -> Tensor:
        """(B, heads, Lq, L * P)."""
        batch, queries, heads = self.weights.shape[:3]
        return self.weights.reshape(batch, queries, heads, -1).transpose(1, 2)


RecordSink = Callable[[AttentionRecord], None]


class RecordingModule(nn.Module):
    """An attention module that can hand its records to a sink (see the module docstring).

    Subclasses call ``self.emit(record)`` after computing their weights when ``self.recording`` is True; they may
    skip work needed only for records (materialising weights of a fused kernel) when it is False.
    """

    def __init__(self) -> None:
        super().__init__()
        self._sink: RecordSink | None = None

    @property
    def recording(self) -> bool:
        return self._sink is not None

    def record_to(self, sink: RecordSink | None) -> RecordSink | None:
        """Send this module's records to ``sink`` (None: stop); returns the previous sink, to restore it later."""
        previous, self._sink = self._sink, sink
        return previous

    def emit(self, record: AttentionRecord) -> None:
        if self._sink is not None:
            self._sink(record)


@dataclass(frozen=True)
class AttentionSite:
    """One place of a model where attention weights are computed.

    ``name``: the role (``model.attention.<name>`` in the config, the key of recorded maps and analysis results);
    ``keys``/``queries``: what the keys and queries are; ``modules``: the attention module of every layer.
    ``key_strides``: where the keys are image feature cells, the model-input pixels per cell of every level (one
    for the feature grid, one per level, finest first, for sampling points): cell j of a level covers pixels
    [j * stride, (j + 1) * stride]. None where the model does not say (PAIBB then takes each image's valid grid to
    cover exactly the image).
    """

    name: str
    keys: KeyKind
    queries: QueryKind
    modules: tuple[RecordingModule, ...]
    key_strides: tuple[int, ...] | None = None

    def __post_init__(self) -> None:
        if self.keys not in KEY_KINDS:
            raise ValueError(f"site {self.name}: keys must be one of {list(KEY_KINDS)}, got {self.keys!r}")
        if self.queries not in ("grid", "queries"):
            raise ValueError(f"site {self.name}: queries must be 'grid' or 'queries', got {self.queries!r}")
        if self.key_strides is not None and (self.keys == "queries" or any(s <= 0 for s in self.key_strides)):
            raise ValueError(
                f"site {self.name}: key_strides (pixels per feature cell) need image-cell keys and positive strides, "
                f"got {self.key_strides!r} for {self.keys!r} keys"
            )

    @property
    def num_layers(self) -> int:
        return len(self.modules)


def with_key_strides(sites: Sequence[AttentionSite], strides: Sequence[int]) -> tuple[AttentionSite, ...]:
    """``sites`` with ``key_strides`` set to ``strides`` where their keys are image feature cells (grid or sampling
    points); a model that knows its backbone's strides declares them this way."""
    return tuple(
        site if site.keys == "queries" else replace(site, key_strides=tuple(int(s) for s in strides)) for site in sites
    )


@runtime_checkable
class HasAttentionSites(Protocol):
    """A model that declares its attention sites."""

    def attention_sites(self) -> tuple[AttentionSite, ...]: ...


def model_sites(model: nn.Module) -> dict[str, AttentionSite]:
    """The sites ``model`` declares, by name, in its order; an error for a model that declares none."""
    if not isinstance(model, HasAttentionSites):
        raise TypeError(f"{type(model).__name__} declares no attention sites (it has no attention_sites() method)")
    return {site.name: site for site in model.attention_sites()}


def select_sites(model: nn.Module, names: Sequence[str] | None = None) -> list[AttentionSite]:
    """The sites of ``model`` named in ``names`` (None: all that have layers), in the order given; an unknown name,
    or a site without layers (a transformer of 0 encoder layers: nothing computes attention there), is an error that
    lists the model's sites."""
    sites = model_sites(model)
    if names is None:
        return [site for site in sites.values() if site.num_layers]
    unknown = [name for name in names if name not in sites]
    if unknown:
        meant = did_you_mean(unknown[0], sites)
        raise ValueError(f"unknown attention site {unknown[0]!r}{meant} for this model; its sites are {list(sites)}")
    if empty := [name for name in names if not sites[name].num_layers]:
        with_layers = [name for name, site in sites.items() if site.num_layers]
        raise ValueError(
            f"attention site {empty[0]!r} has no layers in this model; its sites with layers: {with_layers}"
        )
    return [sites[name] for name in dict.fromkeys(names)]
