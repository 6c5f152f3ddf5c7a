"""Record the attention maps of a DETR forward pass, per site and layer, without user-written hooks.

``with AttentionRecorder(model, sites=["decoder_cross"]) as rec: model(images)`` then ``rec.maps["decoder_cross"]``.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, replace
from types import TracebackType
from typing import Any

from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle

from ..attention.base import KeyGrid
from ..attention.multihead import MultiheadAttention
from ..models.build import ATTENTION_SITES

GRID_SITES = ("encoder_self", "decoder_cross")  # sites whose keys are the flattened padded feature grid


@dataclass
class AttentionMaps:
    """The attention weights of one site for one batch.

    ``weights``: per layer, (B, heads, Lq, Lk), detached. For grid sites (encoder self, decoder cross) the keys are
    the row-major padded feature grid ``padded_hw``; ``key_padding_mask`` is (B, Lk) True = padding and ``grid_hw``
    (B, 2) each image's valid grid (h, w), its top-left block. Decoder self attention has no padding: those three
    are None. ``query_padding_mask`` (B, Lq) marks padded queries (encoder self attention, whose queries are grid
    cells too), else None. ``dense`` is True for softmax maps, which have no exact zeros.
    """

    weights: list[Tensor]
    key_padding_mask: Tensor | None = None
    grid_hw: Tensor | None = None
    padded_hw: tuple[int, int] | None = None
    query_padding_mask: Tensor | None = None
    dense: bool = False

    def image(self, index: int) -> AttentionMaps:
        """The maps of one image with its padding cropped out, as if it had been run alone (batch size 1)."""
        weights = [w[index : index + 1] for w in self.weights]
        if self.key_padding_mask is None or self.grid_hw is None:
            return replace(self, weights=weights)
        h, w = (int(v) for v in self.grid_hw[index])
        keep = (~self.key_padding_mask[index]).nonzero().squeeze(1)
        weights = [x.index_select(-1, keep) for x in weights]
        if self.query_padding_mask is not None:
            weights = [x.index_select(-2, keep) for x in weights]
        no_padding = self.key_padding_mask.new_zeros(1, h * w)
        return AttentionMaps(
            weights=weights,
            key_padding_mask=no_padding,
            grid_hw=self.grid_hw[index : index + 1],
            padded_hw=(h, w),
            query_padding_mask=no_padding if self.query_padding_mask is not None else None,
            dense=self.dense,
        )


def site_modules(model: nn.Module, site: str) -> list[MultiheadAttention]:
    """The attention module of every layer of ``site`` in a DETR ``model`` (first layer first)."""
    transformer = model.transformer
    if site == "encoder_self":
        return [layer.self_attn for layer in transformer.encoder.layers]
    if site == "decoder_self":
        return [layer.self_attn for layer in transformer.decoder.layers]
    if site == "decoder_cross":
        return [layer.multihead_attn for layer in transformer.decoder.layers]
    raise ValueError(f"unknown attention site {site!r}; choose from {list(ATTENTION_SITES)}")


class AttentionRecorder:
    """Context manager that keeps the attention weights of the requested sites during forward passes.

    Only the requested modules store weights; every flag, stored tensor and internal hook is restored on exit, also
    after an exception. ``maps`` holds the maps of the last transformer forward run inside the block.
    """

    def __init__(self, model: nn.Module, sites: Iterable[str] = ATTENTION_SITES) -> None:
        self.sites = tuple(sites)
        self._transformer: nn.Module = model.transformer
        self._modules = {site: site_modules(model, site) for site in self.sites}
        self._saved_flags: list[tuple[MultiheadAttention, bool]] = []
        self._handle: RemovableHandle | None = None
        self.maps: dict[str, AttentionMaps] = {}

    def __enter__(self) -> AttentionRecorder:
        for modules in self._modules.values():
            for module in modules:
                self._saved_flags.append((module, module.store_weights))
                module.store_weights = True
        self._handle = self._transformer.register_forward_hook(self._collect, with_kwargs=True)
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, traceback: TracebackType | None
    ) -> None:
        if self._handle is not None:
            self._handle.remove()
            self._handle = None
        for module, flag in self._saved_flags:
            module.store_weights = flag
            module.stored_weights = None
        self._saved_flags.clear()

    def _collect(self, module: nn.Module, args: tuple, kwargs: dict[str, Any], output: Any) -> None:
        """Forward hook on ``model.transformer`` (``forward(src, mask, query_embed, pos_embed)``)."""
        mask = args[1] if len(args) > 1 else kwargs["mask"]
        grid = KeyGrid.from_mask(mask)
        key_padding_mask = mask.flatten(1)
        self.maps = {}
        for site, modules in self._modules.items():
            weights = [m.stored_weights for m in modules]
            dense = any(m.activation.is_softmax for m in modules)
            if site in GRID_SITES:
                query_mask = key_padding_mask if site == "encoder_self" else None
                self.maps[site] = AttentionMaps(
                    weights, key_padding_mask, grid.valid_hw, grid.padded_hw, query_padding_mask=query_mask, dense=dense
                )
            else:
                self.maps[site] = AttentionMaps(weights, dense=dense)
