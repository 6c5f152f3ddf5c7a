"""Checkpoints: atomic writes with a size/hash record, ``weights_only`` reads, rotation, finding the newest valid one,
and the random-number-generator state for exact resumes."""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import random
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..files import write_atomically
from ..models.weights import CheckpointMismatchError, load_checkpoint_file
from ..runs import EPOCH_CHECKPOINTS, LAST_CHECKPOINT, checkpoint_epoch, epoch_checkpoint_name

RECORD_SUFFIX = ".meta.json"  # beside each checkpoint: size, sha256, epoch, step, whether the epoch was complete


class CheckpointError(ValueError):
    """A checkpoint that cannot be used: truncated, corrupt, or not loadable as plain tensors and containers."""


@dataclass(frozen=True)
class CheckpointRecord:
    """What :func:`save_checkpoint` wrote: read from the record file, never from the checkpoint itself."""

    path: Path
    size: int
    sha256: str
    epoch: int
    step: int
    epoch_complete: bool


def record_path(path: Path) -> Path:
    """The record file beside checkpoint ``path`` (size, sha256, epoch, step)."""
    return path.with_name(path.name + RECORD_SUFFIX)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def save_checkpoint(path: str | Path, state: dict[str, Any], epoch_complete: bool = True) -> CheckpointRecord:
    """Write atomically (a kill never leaves a half-written file), then record its size and SHA-256 beside it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomically(path, lambda f: torch.save(state, f))
    record = CheckpointRecord(
        path, path.stat().st_size, _sha256(path), int(state.get("epoch", 0)), int(state.get("step", 0)), epoch_complete
    )
    fields = {"size": record.size, "sha256": record.sha256, "epoch": record.epoch, "step": record.step}
    text = json.dumps({**fields, "epoch_complete": epoch_complete}).encode()
    write_atomically(record_path(path), text)
    return record


def read_record(path: Path) -> CheckpointRecord | None:
    """The record written with ``path``; ``None`` when there is none (a checkpoint from elsewhere)."""
    try:
        data = json.loads(record_path(path).read_text())
        return CheckpointRecord(
            path, int(data["size"]), str(data["sha256"]), int(data["epoch"]), int(data["step"]), data["epoch_complete"]
        )
    except (OSError, ValueError, KeyError, TypeError):
        return None


def verify_checkpoint(path: str | Path) -> str | None:
    """Why ``path`` cannot be trusted (missing, truncated, hash differs from the one recorded at write time), or
    ``None`` when it matches its record. A checkpoint without a record is only checked to exist."""
    path = Path(path)
    if not path.is_file():
        return f"{path} does not exist"
    record = read_record(path)
    if record is None:
        return None
    size = path.stat().st_size
    if size != record.size:
        return f"{path} is {size} bytes but {record.size} were written (truncated or overwritten)"
    if _sha256(path) != record.sha256:
        return f"{path} does not match the SHA-256 recorded when it was written (corrupt)"
    return None


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Read a checkpoint with ``weights_only=True`` (:func:`~sparse_detector.models.weights.load_checkpoint_file`):
    no code runs, and a file that is no checkpoint, a truncated one, or one carrying anything other than tensors,
    plain containers and an official checkpoint's args (a pickle payload) is refused with :class:`CheckpointError`."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    try:
        return load_checkpoint_file(path)
    except CheckpointMismatchError as err:
        raise CheckpointError(str(err)) from err.__cause__  # torch's own error, for --debug


def _unrecorded(path: Path) -> CheckpointRecord:
    """The record of a checkpoint that has none (written by an older version, or by a process killed between writing
    the checkpoint and its record), its epoch and step read from the checkpoint; an unreadable one comes last."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        epoch, step, complete = int(state["epoch"]), int(state.get("step", 0)), not state.get("epoch_progress")
    except (RuntimeError, EOFError, ValueError, KeyError, TypeError, pickle.UnpicklingError):
        epoch, step, complete = -1, -1, True
    return CheckpointRecord(path, -1, "", epoch, step, complete)


def run_checkpoints(run_dir: Path) -> list[CheckpointRecord]:
    """The run's resumable checkpoints (last and numbered; not best), newest first by (epoch, step)."""
    paths = [run_dir / LAST_CHECKPOINT, *run_dir.glob(EPOCH_CHECKPOINTS)]
    records = []
    for path in paths:
        if not path.is_file():
            continue
        records.append(read_record(path) or _unrecorded(path))
    return sorted(records, key=lambda r: (r.epoch, r.step), reverse=True)


def newest_valid_checkpoint(run_dir: str | Path, warn: Any = print) -> Path | None:
    """The newest checkpoint of ``run_dir`` that matches its record; each one skipped is reported with ``warn``."""
    for record in run_checkpoints(Path(run_dir)):
        problem = verify_checkpoint(record.path)
        if problem is None:
            return record.path
        warn(f"skipping checkpoint: {problem}; trying the previous one")
    return None


def rotate_last(run_dir: Path) -> None:
    """Before a new ``checkpoint_last.pt`` is written: keep the current one as a numbered checkpoint when it closed
    an epoch (a mid-epoch one is superseded by the new one)."""
    last = run_dir / LAST_CHECKPOINT
    if not last.is_file() or verify_checkpoint(last) is not None:
        return
    record = read_record(last) or _unrecorded(last)  # none: its process was killed before writing the record
    if not record.epoch_complete or record.epoch < 0:
        return
    target = run_dir / epoch_checkpoint_name(record.epoch)
    os.replace(last, target)
    if record.size >= 0:
        os.replace(record_path(last), record_path(target))
    else:  # not another checkpoint's record beside it
        record_path(target).unlink(missing_ok=True)


def prune_checkpoints(run_dir: Path, keep_last: int, keep: Iterable[int]) -> list[Path]:
    """Delete numbered checkpoints beyond the newest ``keep_last``, except the epochs in ``keep``; returns them."""
    numbered = sorted(
        (epoch, path) for path in run_dir.glob(EPOCH_CHECKPOINTS) if (epoch := checkpoint_epoch(path.name)) is not None
    )
    kept = set(keep)
    deleted = []
    for epoch, path in numbered[: max(len(numbered) - keep_last, 0)]:
        if epoch not in kept:
            path.unlink()
            record_path(path).unlink(missing_ok=True)
            deleted.append(path)
    return deleted


def rng_state() -> dict[str, Any]:
    """Python, NumPy, torch (and CUDA) generator states, as ``weights_only``-loadable data."""
    _, keys, pos, has_gauss, cached = np.random.get_state()
    state = {
        "python": list(random.getstate()[1]),
        "numpy": {
            "keys": torch.from_numpy(keys.astype(np.int64)),
            "pos": pos,
            "has_gauss": has_gauss,
            "cached": cached,
        },
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore the Python, NumPy, torch (and CUDA) random states saved in a checkpoint."""
    random.setstate((3, tuple(state["python"]), None))
    numpy = state["numpy"]
    keys = numpy["keys"].numpy().astype(np.uint32)
    np.random.set_state(("MT19937", keys, numpy["pos"], numpy["has_gauss"], numpy["cached"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
