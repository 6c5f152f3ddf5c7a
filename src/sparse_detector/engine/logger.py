"""Run logging: one JSON object per line in ``metrics.jsonl``, optionally mirrored to TensorBoard.

Reading the log back is ``sparse_detector.runs.read_metrics``.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any

from ..runs import METRICS_FILE


def _plain(value: Any) -> Any:
    if hasattr(value, "tolist"):
        value = value.tolist()
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


class MetricsLogger:
    """Appends records to ``run_dir/metrics.jsonl`` (flushed at once, so a killed run keeps its log)."""

    def __init__(self, run_dir: str | Path, tensorboard: bool = False) -> None:
        self.path = Path(run_dir) / METRICS_FILE
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._writer = None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError as err:
                raise RuntimeError(
                    "train.tensorboard=true needs the tensorboard package: pip install 'sparse-detector[logging]'"
                ) from err
            self._writer = SummaryWriter(str(Path(run_dir) / "tensorboard"))

    def log(self, kind: str, step: int, **values: Any) -> None:
        record = {"type": kind, "step": step, "time": round(time.time(), 3), **_plain(values)}
        with self.path.open("a") as f:
            f.write(json.dumps(record) + "\n")
        if self._writer is not None:
            for key, value in _flatten(values).items():
                self._writer.add_scalar(f"{kind}/{key}", value, step)

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()


def _flatten(values: dict, prefix: str = "") -> dict[str, float]:
    flat: dict[str, float] = {}
    for key, value in values.items():
        value = _plain(value)
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{name}/"))
        elif isinstance(value, list):
            flat.update({f"{name}/{i}": v for i, v in enumerate(value) if isinstance(v, int | float)})
        elif isinstance(value, int | float) and not isinstance(value, bool):
            flat[name] = float(value)
    return flat
