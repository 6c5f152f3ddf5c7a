"""What train and quickstart print about a training: the summary before it, the message when a signal stopped it."""

from __future__ import annotations

import signal
from pathlib import Path
from typing import TYPE_CHECKING

from ..config import Config, site_activation
from ..text import counted

if TYPE_CHECKING:
    from ..engine.trainer import Trainer


def stopped_message(trainer: Trainer, run_dir: Path) -> str:
    """What a signal that stopped training left, and the command that continues it."""
    name = signal.Signals(trainer.stop_signal).name if trainer.stop_signal else "a signal"
    command = f"sparse-detector train --resume {run_dir}"
    processes = trainer.dist.world_size
    if processes > 1:  # train.batch_size is per process: another process count trains with another global batch
        command = f"torchrun ... -m sparse_detector train --resume {run_dir}, with the same {processes} processes"
    # after the step during which it came, or (a signal during the epoch's last step or its validation) at its end
    at_end = not trainer.epoch_progress and trainer.epoch > 0
    epoch = f"the end of epoch {trainer.epoch}" if at_end else f"epoch {trainer.epoch + 1}"
    where = f"{epoch}, step {trainer.step}"
    return f"stopped by {name} at {where}; checkpoint written: {trainer.last_checkpoint}\nresume with: {command}"


def _batch_text(batch_size: int, processes: int) -> str:
    """The batch size as a user reads it: per process and global when several processes train."""
    return f"{batch_size}" if processes == 1 else f"{batch_size} per process x {processes} = {batch_size * processes}"


def _resumed_text(trainer: object) -> str:
    """Where a resumed run goes on from (nothing for a new one)."""
    if not trainer.step:  # type: ignore[attr-defined]
        return ""
    return f" (resumed at step {trainer.step}, in epoch {trainer.epoch + 1})"  # type: ignore[attr-defined]


def _lr_text(trainer: object) -> str:
    """``optim.lr``, and the learning rate the next step uses where the schedule has already lowered it."""
    base: float = trainer.config.optim.lr  # type: ignore[attr-defined]
    groups = trainer.optimizer.param_groups  # type: ignore[attr-defined]
    now = next((g["lr"] for g in groups if g["name"] == "default"), base)
    return f"{base:g}" if now == base else f"{base:g} (now {now:g}, lowered by optim.lr_drop)"


def train_summary(trainer: object) -> str:
    """A few lines on what is about to happen (the whole resolved config is in the run directory's config.yaml)."""
    from ..attention.sites import model_sites

    config: Config = trainer.config  # type: ignore[attr-defined]
    model = config.model
    sites = ", ".join(
        f"{name}={site_activation(model.attention, name)}"
        for name in model_sites(trainer.model)  # type: ignore[attr-defined]
    )
    parameters = sum(p.numel() for p in trainer.model.parameters())  # type: ignore[attr-defined]
    train_set, val_set = trainer.train_set, trainer.val_set  # type: ignore[attr-defined]
    processes = trainer.dist.world_size  # type: ignore[attr-defined]
    return "\n".join(
        [
            f"data:   train {counted(len(train_set), 'image')} / {counted(train_set.num_boxes, 'box', 'boxes')} "
            f"({train_set.annotation_file}), "
            f"val {counted(len(val_set), 'image')} ({val_set.annotation_file}), "
            f"{counted(train_set.num_classes, 'class', 'classes')}",
            f"model:  {model.arch} {model.backbone.name}, "
            f"{model.transformer.enc_layers}+{model.transformer.dec_layers} layers, "
            f"{counted(model.num_queries, 'query', 'queries')}, "
            f"{parameters / 1e6:.2f} M parameters; attention {sites}",
            f"train:  {counted(config.train.epochs, 'epoch')}{_resumed_text(trainer)}, "
            f"batch {_batch_text(config.train.batch_size, processes)}, "
            f"lr {_lr_text(trainer)}, device {trainer.device}",  # type: ignore[attr-defined]
            f"run:    {trainer.run_dir} (config.yaml, metrics.jsonl, checkpoints)",  # type: ignore[attr-defined]
        ]
    )
