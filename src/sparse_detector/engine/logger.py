"""Run logging: one JSON object per line in ``metrics.jsonl`` (always), mirrored to TensorBoard and Weights & Biases
under grouped names, all with the same global step: training steps taken, every batch trained on or skipped as
non-finite (``train.on_nonfinite_loss=skip``), as in the checkpoints, so the epochs of runs on the same data end
at the same step whatever they skipped.

Reading the log back is ``sparse_detector.runs.read_metrics``.
"""

from __future__ import annotations

import importlib.util
import json
import math
import time
import uuid
from pathlib import Path
from typing import Any

from ..runs import METRICS_FILE
from .coco_eval import STAT_NAMES

#: Scalars of a training step shown first (``train-main-metrics/``); the other losses go to ``train-metrics/``.
MAIN_TRAIN_METRICS = ("loss", "loss_ce", "loss_bbox", "loss_giou", "class_error", "cardinality_error")
#: Speed and memory readings of a training step (``train-extra-metrics/``).
EXTRA_TRAIN_METRICS = ("iteration_s", "data_s", "images_per_s", "peak_memory_mb")
#: The W&B run id of the run directory, kept so that a resumed run continues the same W&B run.
WANDB_RUN_ID = "wandb-run-id.txt"


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


def _flatten(values: dict, prefix: str = "") -> dict[str, float]:
    flat: dict[str, float] = {}
    for key, value in values.items():
        value = _plain(value)
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{name}/"))
        elif isinstance(value, list):
            flat.update({f"{name}/head{i}": v for i, v in enumerate(value) if isinstance(v, int | float)})
        elif isinstance(value, int | float) and not isinstance(value, bool):
            flat[name] = float(value)
    return flat


def _group(kind: str, key: str) -> str:
    """The grouped name of one scalar of a ``train`` / ``epoch`` / ``params`` record."""
    top = key.split("/", 1)[0]
    if top == "alpha":
        return key  # alpha/<module>/head<i>
    if kind == "train":
        if key in MAIN_TRAIN_METRICS:
            return f"train-main-metrics/{key}"
        if key in EXTRA_TRAIN_METRICS:
            return f"train-extra-metrics/{key}"
        return f"train-metrics/{key}"  # auxiliary losses, lr/<group name>
    if kind == "epoch":
        if key in STAT_NAMES:
            return f"val-AP/{key}"
        if key.startswith("val_"):
            return f"val-epoch-metrics/{key[4:]}"
        return f"train-epoch-metrics/{key.removeprefix('train_')}"
    return f"{kind}/{key}"


def grouped_scalars(kind: str, values: dict[str, Any]) -> dict[str, float]:
    """Every number in ``values`` under its grouped name (``train-main-metrics/loss``, ``val-AP/AP50``, ...); a COCO
    number of -1 (no ground truth of that size, e.g. AP_large on small images) is left out rather than charted."""
    scalars = {}
    for key, value in _flatten(values).items():
        name = _group(kind, key)
        if key != "epoch" and not (name.startswith("val-AP/") and value == -1):
            scalars[name] = value
    return scalars


class MetricsLogger:
    """Appends records to ``run_dir/metrics.jsonl`` (flushed at once, so a killed run keeps its log) and mirrors
    their numbers to the optional backends. ``enabled=False`` (ranks other than 0) makes every call a no-op.

    ``resumed_at``: the global step of the checkpoint a resumed run continues from. TensorBoard then discards what
    an earlier, killed process of the run logged after that step (those steps are trained and logged again), as
    ``metrics.jsonl`` is cut back to it on resume. W&B cannot take back what it was sent (each process writes its own
    offline folder of the run, which ``wandb sync`` uploads one after the other): given ``logged_before``, the
    records of ``metrics.jsonl`` before that cut, a resumed run sends W&B each name only at steps after the last one
    it was sent at, so W&B holds every step once (the redone ones with the values first logged). ``None``, a new run:
    whatever a process killed before its first checkpoint logged here is started over (``metrics.jsonl`` emptied,
    TensorBoard's events discarded, a new W&B run id)."""

    def __init__(
        self,
        run_dir: str | Path,
        tensorboard: bool = False,
        wandb: bool = False,
        wandb_project: str = "sparse-detector",
        wandb_mode: str = "offline",
        config: dict | None = None,
        enabled: bool = True,
        resumed_at: int | None = None,
        logged_before: list[dict] | None = None,
    ) -> None:
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / METRICS_FILE
        self.enabled = enabled
        self._tensorboard = self._wandb = None
        self._charted_at: dict[str, int] = {}  # each grouped name's last step sent to the backends
        self._wandb_had: dict[str, int] = {}  # each grouped name's last step earlier processes of the run sent W&B
        if not enabled:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if resumed_at is None:
            self.path.write_text("")
            (self.run_dir / WANDB_RUN_ID).unlink(missing_ok=True)
        elif wandb and (self.run_dir / WANDB_RUN_ID).is_file():  # W&B was on before: it has what was logged then
            for record in logged_before or ():
                values = {k: v for k, v in record.items() if k not in ("type", "step", "time")}
                for name in grouped_scalars(record["type"], values):
                    self._wandb_had[name] = max(self._wandb_had.get(name, -1), record["step"])
        check_backends(tensorboard, wandb, wandb_mode)
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError as err:
                raise _missing("tensorboard") from err
            purge_step = 0 if resumed_at is None else resumed_at + 1
            self._tensorboard = SummaryWriter(str(self.run_dir / "tensorboard"), purge_step=purge_step)
        if wandb:
            self._wandb = _start_wandb(self.run_dir, wandb_project, wandb_mode, config or {})

    def log(self, kind: str, step: int, **values: Any) -> None:
        if not self.enabled:
            return
        record = {"type": kind, "step": step, "time": round(time.time(), 3), **_plain(values)}
        with self.path.open("a") as f:
            f.write(json.dumps(record) + "\n")
        # α is in the epoch record too (a run shorter than train.log_every logs it nowhere else): at a step whose
        # train record already charted it, a second point at the same step is left out
        scalars = {name: v for name, v in grouped_scalars(kind, values).items() if self._charted_at.get(name) != step}
        self._charted_at.update(dict.fromkeys(scalars, step))
        if self._tensorboard is not None:
            for name, value in scalars.items():
                self._tensorboard.add_scalar(name, value, step)
            self._tensorboard.flush()
        if self._wandb is not None and (new := {n: v for n, v in scalars.items() if step > self._wandb_had.get(n, -1)}):
            self._wandb.log(new, step=step)

    def close(self) -> None:
        if self._tensorboard is not None:
            self._tensorboard.close()
        if self._wandb is not None:
            self._wandb.finish()
        self._tensorboard = self._wandb = None


#: The package each backend needs, by its setting (``train.<name>``), and the extra that installs it.
BACKEND_EXTRAS = {"tensorboard": "logging", "wandb": "wandb"}
WANDB_MODES = ("offline", "online")


def _missing(backend: str) -> RuntimeError:
    return RuntimeError(
        f"train.{backend}=true needs the {backend} package: pip install 'sparse-detector[{BACKEND_EXTRAS[backend]}]'"
    )


def check_backends(tensorboard: bool, wandb: bool, wandb_mode: str) -> None:
    """An error naming the setting and what to install when a chosen backend's package is missing, or naming
    ``train.wandb_mode`` when it is neither mode: called before a run loads anything, not after its data and model."""
    if wandb and wandb_mode not in WANDB_MODES:
        raise ValueError(f"train.wandb_mode must be 'offline' or 'online', got {wandb_mode!r}")
    for backend, chosen in (("tensorboard", tensorboard), ("wandb", wandb)):
        if chosen and importlib.util.find_spec(backend) is None:
            raise _missing(backend)


def _start_wandb(run_dir: Path, project: str, mode: str, config: dict) -> Any:
    try:
        import wandb
    except ImportError as err:
        raise _missing("wandb") from err
    # The run id is kept in the run directory, so a resumed run continues the same W&B run.
    id_file = run_dir / WANDB_RUN_ID
    if not id_file.is_file():
        id_file.write_text(uuid.uuid4().hex[:16])
    # The process-wide settings too: wandb's own usage telemetry reads them, not the run's, and in a process not
    # started with WANDB_MODE=offline it tried to reach api.forge.coreweave.com from an offline run.
    wandb.setup(settings=wandb.Settings(mode=mode))
    return wandb.init(
        project=project,
        name=run_dir.name,
        id=id_file.read_text().strip(),
        resume="allow",
        dir=str(run_dir),
        mode=mode,
        config=config,
        settings=wandb.Settings(console="off", x_disable_stats=True, quiet=True),
    )
