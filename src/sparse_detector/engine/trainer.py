"""The training loop of the official DETR recipe, with run directories, checkpoints and exact resume."""

from __future__ import annotations

import json
import logging
import time
from collections import defaultdict
from pathlib import Path

import torch
from torch import nn
from tqdm import tqdm

from ..config import Config, config_to_dict, dump_config
from ..data.build import build_dataset, build_loader
from ..data.coco import CocoDetection
from ..models.build import build_criterion, build_model
from .checkpoint import load_checkpoint, rng_state, save_checkpoint, set_rng_state
from .coco_eval import format_table
from .device import resolve_device, seed_everything
from .evaluate import evaluate, targets_to
from .logger import MetricsLogger, read_metrics
from .optim import build_optimizer, build_scheduler

log = logging.getLogger(__name__)

LAST, BEST = "checkpoint_last.pt", "checkpoint_best.pt"


class NonFiniteLossError(FloatingPointError):
    """The training loss became NaN or infinite."""


def check_num_classes(config: Config, dataset: CocoDetection) -> None:
    """The model's class count must fit the data: an error naming both numbers otherwise."""
    have, need = config.model.num_classes, dataset.num_classes
    source = dataset.annotation_file
    if have < need:
        raise ValueError(f"model.num_classes is {have} but {source} needs {need} classes; set model.num_classes={need}")
    if config.data.label_mode == "contiguous" and have != need:
        raise ValueError(
            f"model.num_classes is {have} but {source} has {need} categories (contiguous labels); "
            f"set model.num_classes={need}, or data.label_mode=coco_ids to keep raw category ids"
        )


def alpha_values(model: nn.Module) -> dict[str, list[float]]:
    """Current per-head alpha of every learnable alpha-entmax module, by module name."""
    return {
        name: module.alpha.tolist()
        for name, module in model.named_modules()
        if isinstance(getattr(module, "alpha", None), torch.Tensor)
    }


class Trainer:
    """Trains ``config`` into ``run_dir``: ``config.yaml``, ``metrics.jsonl``, ``checkpoint_{last,best}.pt``."""

    def __init__(self, config: Config, run_dir: str | Path, resume: bool = False, progress: bool = True) -> None:
        self.config = config
        self.run_dir = Path(run_dir)
        self.progress = progress
        if not resume and (self.run_dir / LAST).exists():
            raise FileExistsError(
                f"run directory {self.run_dir} already holds a checkpoint; continue it with --resume {self.run_dir} "
                "or choose another --output-dir"
            )
        self.run_dir.mkdir(parents=True, exist_ok=True)
        train = config.train
        if train.deterministic:
            torch.use_deterministic_algorithms(True)
        if train.on_nonfinite_loss not in ("error", "skip"):
            raise ValueError(f"train.on_nonfinite_loss must be 'error' or 'skip', got {train.on_nonfinite_loss!r}")
        seed_everything(train.seed)
        self.device = resolve_device(train.device)
        if self.device.type == "cpu":
            # Denormal numbers in gradients and Adam states make CPU arithmetic many times slower.
            torch.set_flush_denormal(True)
        self.train_set = build_dataset(config, "train")
        self.val_set = build_dataset(config, "val")
        check_num_classes(config, self.train_set)
        self.label_map = self.train_set.label_map
        self.model = build_model(config).to(self.device)
        self.criterion = build_criterion(config).to(self.device)
        self.optimizer = build_optimizer(self.model, config)
        self.scheduler = build_scheduler(self.optimizer, config)
        self.val_loader = build_loader(self.val_set, config, train=False)
        self.epoch = 0  # epochs completed
        self.step = 0
        self.best_ap = float("-inf")
        if resume:
            self._resume()
        (self.run_dir / "config.yaml").write_text(dump_config(config))
        self.logger = MetricsLogger(self.run_dir, tensorboard=train.tensorboard)

    def _resume(self) -> None:
        state = load_checkpoint(self.run_dir / LAST)
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["lr_scheduler"])
        self.epoch, self.step = state["epoch"], state["step"]
        self.best_ap = state.get("best_ap", float("-inf"))
        set_rng_state(state["rng"])
        # Records written after the checkpoint (a run killed mid-epoch) are dropped: that work is redone.
        metrics = self.run_dir / "metrics.jsonl"
        if metrics.exists():
            kept = [r for r in read_metrics(self.run_dir) if r.get("epoch", 0) <= self.epoch]
            metrics.write_text("".join(json.dumps(r) + "\n" for r in kept))
        log.info("resumed %s at epoch %d, step %d", self.run_dir, self.epoch, self.step)

    def _checkpoint(self) -> dict:
        return {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "lr_scheduler": self.scheduler.state_dict(),
            "epoch": self.epoch,
            "step": self.step,
            "config": config_to_dict(self.config),
            "rng": rng_state(),
            "label_map": self.label_map,
            "best_ap": self.best_ap,
        }

    def _train_one_epoch(self) -> dict[str, float]:
        config = self.config.train
        generator = torch.Generator().manual_seed(config.seed + self.epoch)  # same batches when resumed
        loader = build_loader(self.train_set, self.config, train=True, generator=generator)
        self.model.train()
        self.criterion.train()
        sums: dict[str, float] = defaultdict(float)
        steps = skipped = images_seen = 0
        limit = config.max_steps_per_epoch or len(loader)
        bar = tqdm(total=min(limit, len(loader)), desc=f"epoch {self.epoch + 1}", disable=not self.progress)
        start = time.perf_counter()
        for batch, targets in loader:
            if steps + skipped >= limit:
                break
            if batch is None:  # every image of the batch was unreadable and skipped (data.on_invalid=skip)
                continue
            batch = batch.to(self.device)
            targets = targets_to(targets, self.device)
            try:
                losses = self.criterion(self.model(batch), targets)
                loss = self.criterion.total_loss(losses)
                if not torch.isfinite(loss):
                    raise FloatingPointError(str({k: round(v.item(), 4) for k, v in losses.items() if k[-1].isalpha()}))
            except FloatingPointError as err:
                skipped += 1
                self._nonfinite(str(err), targets)
                bar.update()
                continue
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if self.config.optim.clip_max_norm > 0:
                nn.utils.clip_grad_norm_(self.model.parameters(), self.config.optim.clip_max_norm)
            self.optimizer.step()
            self.step += 1
            steps += 1
            images_seen += len(batch)
            sums["loss"] += loss.item()
            for key in ("loss_ce", "loss_bbox", "loss_giou", "class_error", "cardinality_error"):
                sums[key] += losses[key].item()
            speed = images_seen / (time.perf_counter() - start)
            bar.set_postfix(loss=f"{loss.item():.3f}", img_s=f"{speed:.1f}")
            bar.update()
            if self.step % config.log_every == 0:
                if not self.progress:
                    print(f"epoch {self.epoch + 1} step {steps}/{bar.total}: loss {loss.item():.3f}, {speed:.1f} img/s")
                self.logger.log(
                    "train",
                    self.step,
                    epoch=self.epoch + 1,
                    loss=loss.item(),
                    **{k: v.item() for k, v in losses.items()},
                    lr={g["name"]: g["lr"] for g in self.optimizer.param_groups},
                    alpha=alpha_values(self.model),
                    images_per_s=speed,
                )
        bar.close()
        averages = {f"train_{k}": v / max(steps, 1) for k, v in sums.items()}
        averages.update(train_steps=steps, train_skipped_nonfinite=skipped, train_seconds=time.perf_counter() - start)
        return averages

    def _nonfinite(self, detail: str, targets: list[dict]) -> None:
        image_ids = [int(t["image_id"]) for t in targets]
        where = f"epoch {self.epoch + 1}, step {self.step + 1}, image ids {image_ids}: {detail}"
        if self.config.train.on_nonfinite_loss == "error":
            raise NonFiniteLossError(
                f"non-finite loss at {where}. Lower optim.lr / optim.clip_max_norm, check these images' boxes, "
                "or set train.on_nonfinite_loss=skip to skip such steps (they are counted in metrics.jsonl)"
            )
        log.warning("skipped a step with a non-finite loss at %s", where)

    def fit(self) -> dict[str, float]:
        """Train the remaining epochs; returns the last evaluation's metrics."""
        train = self.config.train
        last_eval: dict[str, float] = {}
        log.info("training in %s on %s", self.run_dir, self.device)
        while self.epoch < train.epochs:
            record = self._train_one_epoch()
            self.scheduler.step()
            self.epoch += 1
            if self.epoch % train.eval_every == 0 or self.epoch == train.epochs:
                # Evaluating must not change the training random stream (its transforms and loader draw from it),
                # so a run resumed after an evaluated epoch continues exactly as one that never stopped.
                with torch.random.fork_rng(devices=None if self.device.type == "cuda" else []):
                    last_eval = evaluate(
                        self.model, self.criterion, self.val_loader, self.device, self.label_map, self.progress
                    )
                record.update(last_eval)
            record["alpha"] = alpha_values(self.model)
            self.logger.log("epoch", self.step, epoch=self.epoch, **record)
            improved = "AP" in record and record["AP"] > self.best_ap
            if improved:
                self.best_ap = record["AP"]
            state = self._checkpoint()
            save_checkpoint(self.run_dir / LAST, state)
            if improved:
                save_checkpoint(self.run_dir / BEST, state)
            if "AP" in record:
                summary = f"loss {record['train_loss']:.3f}  AP {record['AP']:.3f}  AP50 {record['AP50']:.3f}"
                print(f"epoch {self.epoch}: {summary}")
        self.logger.close()
        if last_eval:
            (self.run_dir / "eval.json").write_text(json.dumps(last_eval, indent=2))
            print(format_table(last_eval))
        return last_eval
