"""Record the attention maps of a model's forward pass, per site and layer, by asking the model for its sites.

``with AttentionRecorder(model, sites=[...]) as rec: model(images)`` then ``rec.maps[site]`` (an
:class:`AttentionMaps`) or ``rec.records[site]`` (the raw records, one per layer). The modules of each site hand
their records to the recorder themselves (see :mod:`sparse_detector.attention.sites`); nothing depends on the
model's ``forward`` signature. ``record_attention(model, images)`` is the one-call form.
"""

from __future__ import annotations

from collections.abc import Iterable
from functools import partial
from types import TracebackType
from typing import Any

from torch import nn

from ..attention.sites import AttentionRecord, RecordingModule, RecordSink, select_sites
from .maps import AttentionMaps


def _keep(slots: list[AttentionRecord | None], layer: int, record: AttentionRecord) -> None:
    slots[layer] = record


class AttentionRecorder:
    """Context manager that keeps the attention records of the requested sites (default: all the model's sites).

    Only the modules of the requested sites record; their previous sinks are restored on exit, also after an
    exception. ``maps`` and ``records`` hold the last record of every layer (the last forward pass run inside the
    block); a site whose layers did not all run is left out.
    """

    def __init__(self, model: nn.Module, sites: Iterable[str] | None = None) -> None:
        self._sites = select_sites(model, None if sites is None else list(sites))
        self.sites = tuple(site.name for site in self._sites)
        self._slots: dict[str, list[AttentionRecord | None]] = {}
        self._previous: list[tuple[RecordingModule, RecordSink | None]] = []

    def __enter__(self) -> AttentionRecorder:
        for site in self._sites:
            slots: list[AttentionRecord | None] = [None] * site.num_layers
            self._slots[site.name] = slots
            for layer, module in enumerate(site.modules):
                self._previous.append((module, module.record_to(partial(_keep, slots, layer))))
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, traceback: TracebackType | None
    ) -> None:
        for module, sink in reversed(self._previous):
            module.record_to(sink)
        self._previous.clear()

    @property
    def records(self) -> dict[str, list[AttentionRecord]]:
        """Site -> the record of every layer."""
        return {
            name: list(slots)  # type: ignore[arg-type]
            for name, slots in self._slots.items()
            if all(record is not None for record in slots)
        }

    @property
    def maps(self) -> dict[str, AttentionMaps]:
        """Site -> its :class:`AttentionMaps`."""
        sites = {site.name: site for site in self._sites}
        return {name: AttentionMaps.from_records(sites[name], records) for name, records in self.records.items()}


def record_attention(
    model: nn.Module, *inputs: Any, sites: Iterable[str] | None = None
) -> tuple[Any, dict[str, AttentionMaps]]:
    """``model(*inputs)`` with the records of ``sites`` (default: all) in the output's ``attention`` field, and
    the maps of those sites."""
    with AttentionRecorder(model, sites) as recorder:
        outputs = model(*inputs)
    outputs.attention = recorder.records
    return outputs, recorder.maps
