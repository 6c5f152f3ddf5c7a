"""Run logging: one JSON object per line in ``metrics.jsonl`` (always), mirrored to TensorBoard and Weights & Biases
under grouped names, all with the same global step: training steps taken, every batch trained on or skipped as
non-finite (``train.on_nonfinite_loss=skip``), as in the checkpoints, so the epochs of runs on the same data end
at the same step whatever they skipped.

Reading the log back is ``sparse_detector.runs.read_metrics``.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import logging
import math
import re
import struct
import time
import typing
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ..config import WandbMode
from ..runs import METRICS_FILE, read_metrics
from .coco_eval import STAT_NAMES

log = logging.getLogger(__name__)

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
    offline folder of the run, which ``wandb sync`` uploads one after the other): a resumed run sends W&B each name
    only at steps after the last one W&B holds, so W&B holds every step once (the redone ones with the values first
    logged). Offline, that is read from those folders: a killed process's W&B service wrote its records 32 KiB at a
    time and never wrote the rest, so those up to the checkpoint are sent again from ``metrics.jsonl`` before any new
    step. Online, or where the folders cannot be read (with a warning), W&B is taken to hold ``logged_before``, the
    records of ``metrics.jsonl`` before that cut. ``None``, a new run:
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
        if resumed_at is None:  # a new run: the logs of one killed before its first checkpoint here are not its own
            self.path.write_text("")
            (self.run_dir / WANDB_RUN_ID).unlink(missing_ok=True)
            # removed, not purged by step: TensorBoard reads a folder's event files in name order, which is not the
            # order written where the names' counters differ in digits (``…pid.10`` before ``…pid.9``)
            for events in (self.run_dir / "tensorboard").glob("events.out.tfevents.*"):
                events.unlink()
        check_backends(tensorboard, wandb, wandb_mode)
        resend: list[dict] = []  # records of metrics.jsonl (up to the checkpoint) W&B's offline files lack
        if resumed_at is not None and wandb and (self.run_dir / WANDB_RUN_ID).is_file():  # W&B was on before
            held = _wandb_offline_steps(self.run_dir) if wandb_mode == "offline" else None
            if held is None:  # taken to hold what was logged then
                self._wandb_had = _last_steps(logged_before or [])
            else:  # a killed process's records its W&B service had not yet written are sent again
                self._wandb_had, resend = held, read_metrics(self.run_dir)
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError as err:
                raise _missing("tensorboard") from err
            purge_step = 0 if resumed_at is None else resumed_at + 1
            self._tensorboard = SummaryWriter(str(self.run_dir / "tensorboard"), purge_step=purge_step)
        if wandb:
            try:
                self._wandb = _start_wandb(self.run_dir, wandb_project, wandb_mode, config or {})
                self._resend(resend)
            except BaseException:  # the writer made above, and a W&B run started, are not left open
                with contextlib.suppress(Exception):  # the error of starting W&B is the one to see
                    self.close(failed=True, wait=False)
                raise

    def _resend(self, records: list[dict]) -> None:
        """Sends W&B, step by step before any new step, the numbers of ``records`` it does not hold."""
        rows: dict[int, dict[str, float]] = {}
        for record in records:
            values = {k: v for k, v in record.items() if k not in ("type", "step", "time")}
            for name, value in grouped_scalars(record["type"], values).items():
                if record["step"] > self._wandb_had.get(name, -1):
                    rows.setdefault(record["step"], {}).setdefault(name, value)  # α: the train record's, charted
        for step in sorted(rows):
            self._wandb.log(rows[step], step=step)
            self._wandb_had.update(dict.fromkeys(rows[step], step))

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

    def close(self, failed: bool = False, wait: bool = True) -> None:
        """Close the backends (again: nothing to do); an offline W&B run once its service has written all of it (see
        :func:`_wait_for_wandb_file`; not with ``wait=False``, a process stopping at once). ``failed``: the W&B run
        ends with exit code 1, shown as failed. Each backend is closed even where closing another fails (that error is
        raised after)."""
        with contextlib.ExitStack() as closing:  # on leaving: TensorBoard closed, then W&B, whatever the other raises
            if self._wandb is not None:
                closing.callback(_finish_wandb, self._wandb, failed, wait)
            if self._tensorboard is not None:
                closing.callback(self._tensorboard.close)
            self._tensorboard = self._wandb = None


def _finish_wandb(run: Any, failed: bool, wait: bool) -> None:
    """Finish the W&B ``run`` (exit code 1 where ``failed``); offline, wait for its file where ``wait``."""
    run.finish(exit_code=1 if failed else 0)
    if wait and run.settings.mode == "offline":
        _wait_for_wandb_file(Path(run.settings.sync_file))


def _last_steps(records: list[dict]) -> dict[str, int]:
    """Each grouped name's last step in ``records``."""
    last: dict[str, int] = {}
    for record in records:
        values = {k: v for k, v in record.items() if k not in ("type", "step", "time")}
        for name in grouped_scalars(record["type"], values):
            last[name] = max(last.get(name, -1), record["step"])
    return last


def _wandb_offline_steps(run_dir: Path) -> dict[str, int] | None:
    """Each name's last step in the offline W&B files of ``run_dir`` (what W&B holds, all its processes together),
    or ``None`` with a warning where they cannot be read (none there, or another wandb version's format)."""
    last: dict[str, int] = {}
    try:
        for row in read_wandb_history(run_dir):
            for name in row:
                if not name.startswith("_"):
                    last[name] = max(last.get(name, -1), int(row["_step"]))
    except Exception as err:  # noqa: BLE001 - any failure: go on as if W&B held everything metrics.jsonl held
        log.warning(
            "could not read what W&B's offline files in %s hold (%s): taken to hold every step metrics.jsonl held, "
            "so those a killed process's W&B service had not yet written stay missing from W&B",
            run_dir / "wandb",
            err,
        )
        return None
    return last


#: The first 7 bytes of a W&B transaction log (.wandb): magic, then version 0.
_WANDB_HEADER = b":W&B\xe1\xbe\x00"


def read_wandb_history(run_dir: str | Path) -> list[dict[str, float]]:
    """The ``history`` rows (numbers only, with ``_step``) of the run directory's offline W&B run (the id in
    ``wandb-run-id.txt``): each process's ``wandb/offline-run-*`` folder, oldest first. An error where there is
    none, or a file is not in the format this reads."""
    run_id = (Path(run_dir) / WANDB_RUN_ID).read_text().strip()
    # offline-run-<start time, to the second>-<id>, and -<n> after it for the n-th other one started in that second
    folders = [path for path in Path(run_dir).glob("wandb/offline-run-*") if _is_wandb_folder(path.name, run_id)]
    if not folders:
        raise FileNotFoundError(f"no offline W&B run {run_id} in {Path(run_dir) / 'wandb'}")
    rows = []
    for folder in sorted(folders, key=lambda path: path.stat().st_mtime):
        for record in _wandb_records(folder / f"run-{run_id}.wandb"):
            if record.WhichOneof("record_type") == "history":
                rows.append(
                    {
                        item.key or "/".join(item.nested_key): float(item.value_json)
                        for item in record.history.item
                        if _is_number(item.value_json)
                    }
                )
    return rows


def _wandb_records(path: Path) -> Iterator[Any]:
    """The records (``wandb_internal_pb2.Record``) of the W&B transaction log ``path`` (``run-<id>.wandb``), as far as
    it was written (none where it does not exist); an error where it is not in the format this reads.

    The file is a LevelDB-style log of protobuf records (a 7-byte header, then 32 KiB blocks of chunks with a 7-byte
    header: CRC, length, type); wandb ships no Python reader for it. W&B's service writes it in blocks, some time
    after the records were logged: the file of a killed process ends where its service stopped writing (a record
    cut short, or no file at all, where it stopped before writing any)."""
    from wandb.proto import wandb_internal_pb2

    data = path.read_bytes() if path.is_file() else b""
    if not _WANDB_HEADER.startswith(data[:7]):
        raise ValueError(f"{path} is not a W&B transaction log of version 0")
    pending, offset, block = b"", 7, 32768
    while offset + 7 <= len(data):
        if block - offset % block < 7:  # block trailer too short for a chunk header
            offset += block - offset % block
            continue
        _, length, kind = struct.unpack("<IHB", data[offset : offset + 7])
        if offset + 7 + length > len(data):
            return
        pending += data[offset + 7 : offset + 7 + length]
        offset += 7 + length
        if kind in (1, 4):  # a full record, or the last chunk of one
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            pending = b""
            yield record


WANDB_WRITE_WAIT_S = 60.0  # how long closing an offline W&B run waits for its service to write it


def _wait_for_wandb_file(path: Path) -> None:
    """Wait until W&B's service has written the finished run's transaction log ``path`` up to its ``exit`` record
    (its last): ``finish()`` returns before that. The service is not shut down to wait for it (``wandb.teardown()``):
    that would finish every other run of this process (a notebook's own), and it may be another process's
    (``WANDB_SERVICE``). A warning after :data:`WANDB_WRITE_WAIT_S` seconds."""
    deadline = time.monotonic() + WANDB_WRITE_WAIT_S
    while not any(record.WhichOneof("record_type") == "exit" for record in _wandb_records(path)):
        if time.monotonic() > deadline:
            log.warning(
                "W&B's service had not written all of the offline run %s within %.0f s; what it has not written by "
                "the time it stops is missing from W&B",
                path,
                WANDB_WRITE_WAIT_S,
            )
            return
        time.sleep(0.1)


def _is_wandb_folder(name: str, run_id: str) -> bool:
    return re.fullmatch(rf"offline-run-\d{{8}}_\d{{6}}-{re.escape(run_id)}(-\d+)?", name) is not None


def _is_number(text: str) -> bool:
    try:
        return math.isfinite(float(text))
    except ValueError:
        return False


#: The package each backend needs, by its setting (``train.<name>``), and the extra that installs it.
BACKEND_EXTRAS = {"tensorboard": "logging", "wandb": "wandb"}
WANDB_MODES = typing.get_args(WandbMode)


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
    if mode == "offline":
        # W&B's own usage telemetry follows the process's settings, not the run's: in a process not started with
        # WANDB_MODE=offline it tried to reach api.forge.coreweave.com from an offline run. It is switched off
        # (for the process: wandb has no switch of one run's), leaving the process's mode as the caller set it.
        try:  # the telemetry came with wandb 0.2x; older ones have neither it nor this module
            from wandb.analytics.opentelemetry import opentelemetry_proxy
        except ImportError:
            pass
        else:
            opentelemetry_proxy.disable()
    return wandb.init(
        project=project,
        name=run_dir.name,
        id=id_file.read_text().strip(),
        resume="allow",
        reinit="create_new",  # a run of its own, leaving any other of this process (a notebook's own) as it is
        dir=str(run_dir),
        mode=mode,
        config=config,
        settings=wandb.Settings(console="off", x_disable_stats=True, quiet=True),
    )
