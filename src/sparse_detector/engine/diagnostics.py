"""Training diagnostics (``train.diagnostics_every=N``): what someone training a detector from scratch needs to see
whether gradients reach the backbone and whether attention sharpens.

Every N training steps (and at initialisation, step 0, for the weights) one JSON line goes to
``<run dir>/diagnostics.jsonl``::

    {"step": int,
     "weights": {layer: {"std": float, "histogram": [count per bin]}},   # values in units of the layer's initial std
     "gradients": {layer: {"norm": float, "std": float}},                # absent at step 0
     "entropy": {site: [mean attention entropy per layer, nats]}}        # on a fixed batch of validation images

A layer is a module owning weight tensors of two or more dimensions (convolutions, linear layers, embeddings); its
histogram has ``HISTOGRAM_BINS`` bins over ±``HISTOGRAM_RANGE`` initial standard deviations (values beyond fall in
the edge bins); a layer initialised to one value (Deformable DETR's sampling offsets: all 0, std 0) is binned in
absolute units, and its step-0 ``std`` says 0.
"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ..analysis import AttentionRecorder
from ..config import read_yaml
from ..data.batching import collate_detection
from ..data.coco import CocoDetection
from ..runs import CONFIG_FILE, read_json_lines, write_json_lines

DIAGNOSTICS_FILE = "diagnostics.jsonl"
HISTOGRAM_BINS = 41
HISTOGRAM_RANGE = 4.0
PROBE_IMAGES = 4


def weight_layers(model: nn.Module) -> dict[str, list[Tensor]]:
    """Module name -> its own weight tensors with two or more dimensions, in the model's order."""
    layers: dict[str, list[Tensor]] = defaultdict(list)
    for name, parameter in model.named_parameters():
        if parameter.dim() >= 2:
            layers[name.rsplit(".", 1)[0]].append(parameter)
    return dict(layers)


def read_diagnostics(run_dir: str | Path) -> list[dict[str, Any]]:
    """The records of ``diagnostics.jsonl`` in ``run_dir``; if absent, an error naming the file and, where the run's
    ``config.yaml`` did not ask for diagnostics, the setting that records them."""
    path = Path(run_dir) / DIAGNOSTICS_FILE
    if not Path(run_dir).is_dir():
        raise FileNotFoundError(f"run directory {run_dir} does not exist")
    if not path.is_file():
        config = Path(run_dir) / CONFIG_FILE
        every = (read_yaml(config).get("train") or {}).get("diagnostics_every") if config.is_file() else None
        if every:
            raise FileNotFoundError(
                f"{path} does not exist, though the run was trained with train.diagnostics_every={every}: it was "
                "moved or deleted"
            )
        raise FileNotFoundError(f"{path} does not exist: train with --set train.diagnostics_every=N to record it")
    return read_json_lines(path)


class TrainingDiagnostics:
    """Records diagnostics of ``model`` into ``run_dir`` every ``every`` steps (``every=0``: does nothing)."""

    def __init__(
        self, model: nn.Module, run_dir: Path, every: int, probe: CocoDetection, resumed_at: int | None = None
    ) -> None:
        self.model, self.every = model, every
        self.path = Path(run_dir) / DIAGNOSTICS_FILE
        if not every:
            return
        self.layers = weight_layers(model)
        # the validation transforms draw from torch's generator: without fork_rng, recording diagnostics changed the
        # training run's augmentations, and a resume (which builds the probe after restoring the generator) lost
        # its exactness
        with torch.random.fork_rng(devices=[]):
            self.probe = collate_detection([probe[i] for i in range(min(PROBE_IMAGES, len(probe)))])[0]
        # a resumed run redoes the steps after its checkpoint; a new one all that a killed earlier process recorded
        resumed = resumed_at is not None and self.path.exists()
        kept = [r for r in read_diagnostics(run_dir) if r["step"] <= resumed_at] if resumed else []
        write_json_lines(self.path, kept)
        self.scale = {layer: self._std(tensors) or 1.0 for layer, tensors in self.layers.items()}
        if kept:
            self.scale = {layer: stats["std"] or 1.0 for layer, stats in kept[0]["weights"].items()}
        else:  # the weights it starts from: at initialisation, or at the checkpoint of a run resumed with diagnostics
            self._write({"step": resumed_at or 0, "weights": self._weights(), "entropy": self._entropy()})

    @staticmethod
    def _std(tensors: list[Tensor]) -> float:
        return float(torch.cat([t.detach().flatten() for t in tensors]).float().std())

    def _weights(self) -> dict[str, dict[str, Any]]:
        out = {}
        for layer, tensors in self.layers.items():
            values = torch.cat([t.detach().flatten() for t in tensors]).float().cpu() / self.scale[layer]
            histogram = torch.histc(
                values.clamp(-HISTOGRAM_RANGE, HISTOGRAM_RANGE), HISTOGRAM_BINS, -HISTOGRAM_RANGE, HISTOGRAM_RANGE
            )
            out[layer] = {"std": self._std(tensors), "histogram": histogram.long().tolist()}
        return out

    def _gradients(self) -> dict[str, dict[str, float]]:
        out = {}
        for layer, tensors in self.layers.items():
            grads = [t.grad.detach().flatten().float() for t in tensors if t.grad is not None]
            if grads:
                flat = torch.cat(grads)
                out[layer] = {"norm": float(flat.norm()), "std": float(flat.std()) if flat.numel() > 1 else 0.0}
        return out

    @torch.no_grad()
    def _entropy(self) -> dict[str, list[float]]:
        """Mean entropy (nats) per site and layer of the model's maps on the probe batch, in eval mode."""
        was_training = self.model.training
        self.model.eval()
        device = next(self.model.parameters()).device
        try:
            with AttentionRecorder(self.model) as recorder:
                self.model(self.probe.to(device))
        finally:
            self.model.train(was_training)
        out = {}
        for site, maps in recorder.maps.items():
            per_layer = []
            for weights in maps.weights:
                entropy = torch.special.entr(weights.float()).sum(-1)  # (B, H, Lq); padded keys weigh 0
                if maps.query_padding_mask is not None:
                    valid = ~maps.query_padding_mask[:, None, :].expand_as(entropy)
                    per_layer.append(float(entropy[valid].mean()))
                else:
                    per_layer.append(float(entropy.mean()))
            out[site] = per_layer
        return out

    def _write(self, record: dict[str, Any]) -> None:
        with self.path.open("a") as f:
            f.write(json.dumps(record) + "\n")

    def after_backward(self, step: int) -> None:
        """Call after ``loss.backward()`` of training step ``step`` (1-based): records when ``step`` is due."""
        if self.every and step % self.every == 0:
            self._write(
                {"step": step, "weights": self._weights(), "gradients": self._gradients(), "entropy": self._entropy()}
            )
