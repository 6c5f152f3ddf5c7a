"""The training loop of the official DETR recipe: run directories, verified checkpoints, exact resume (also from the
middle of an epoch after SIGTERM / SIGINT), data-parallel training, mixed precision and fine-tuning."""

from __future__ import annotations

import contextlib
import copy
import functools
import json
import logging
import signal
import threading
import time
from collections import defaultdict
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import BatchSampler, DistributedSampler
from tqdm import tqdm

from ..attention.base import AttentionActivation
from ..config import (
    Config,
    OnNonfiniteLoss,
    Precision,
    check_choice,
    config_differences,
    config_from_dict,
    config_to_dict,
    dump_config,
    run_config_here,
    without_pretrained,
)
from ..data.batching import size_grouped_batches
from ..data.build import build_dataset, build_loader
from ..data.coco import CocoDetection, DatasetError
from ..files import remove_partial_writes, write_atomically
from ..logs import RANK_SPECIFIC
from ..models import build_criterion, build_model
from ..models.criterion import share_of_matched
from ..models.registry import official_config
from ..models.weights import (
    READABLE_CHECKPOINTS,
    CheckpointMismatchError,
    load_checkpoint_file,
    load_state_dict_checked,
    official_arch,
    read_state_dict,
    saved_config,
    stored_reader_options,
)
from ..runs import (
    BEST_CHECKPOINT,
    CONFIG_FILE,
    EVAL_FILE,
    LAST_CHECKPOINT,
    METRICS_FILE,
    claim_run_dir,
    read_metrics,
    resolve_checkpoint,
    write_json_lines,
)
from ..text import counted
from .checkpoint import (
    load_checkpoint,
    newest_valid_checkpoint,
    prune_checkpoints,
    rng_state,
    rotate_last,
    run_checkpoints,
    save_checkpoint,
    set_rng_state,
)
from .coco_eval import format_table, metric_text
from .device import deterministic_algorithms, peak_memory_mb, resolve_device, seed_everything, subnormals_flushed
from .diagnostics import TrainingDiagnostics
from .distributed import (
    DistributedContext,
    any_across_ranks,
    barrier,
    broadcast_buffers,
    gathered,
    init_distributed,
    is_distributed,
    mean_across_ranks,
)
from .evaluate import NonFiniteOutputsError, outputs_finite, run_evaluation, targets_to, weights_finite, weights_reading
from .logger import MAIN_TRAIN_METRICS, MetricsLogger, check_backends
from .optim import apply_configured_settings, build_optimizer, build_scheduler, group_settings, regroup_saved_state

log = logging.getLogger(__name__)

PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


class NonFiniteLossError(FloatingPointError):
    """The training loss became NaN or infinite."""


class TrainingDivergedError(NonFiniteLossError):
    """The weights became NaN or infinite, or the model's outputs on the validation images did: training diverged."""


#: Model settings that only choose a new run's starting weights (learnable α's start, ImageNet backbone weights):
#: changed on resume, they change nothing, and the resume says so.
STARTING_WEIGHT_SETTINGS = ("alpha_init", "pretrained")


class StoppedAtOnce(KeyboardInterrupt):
    """A second SIGTERM / SIGINT arrived while the first one's checkpoint was being made: stop without it."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def rank_share(rank_sums: list[dict[str, float]], rank: int, world_size: int) -> dict[str, float]:
    """The running loss sums a process resumes a mid-epoch checkpoint with, from every process's at the checkpoint:
    its own when the process count is the same, else their mean (the epoch's mean is over processes, so the sums it
    adds are the same)."""
    if len(rank_sums) == world_size:
        return dict(rank_sums[rank])
    keys = set().union(*rank_sums)
    return {key: sum(sums.get(key, 0.0) for sums in rank_sums) / len(rank_sums) for key in keys}


def check_num_classes(config: Config, dataset: CocoDetection) -> None:
    """The model's class count must fit the data: an error naming both numbers otherwise."""
    have, need = config.model.num_classes, dataset.num_classes
    source = dataset.annotation_file
    if have < need:
        labels = dataset.labels
        raw_ids = ""
        if labels.label_mode == "coco_ids" and need != len(labels.label_to_category_id):
            raw_ids = (
                f" (data.label_mode=coco_ids: each label is its category id, up to {need - 1}; with "
                f"data.label_mode=contiguous the {len(labels.label_to_category_id)} categories need "
                f"model.num_classes={len(labels.label_to_category_id)})"
            )
        raise ValueError(
            f"model.num_classes is {have} but {source} needs {need} classes{raw_ids}; set model.num_classes={need}"
        )
    if config.data.label_mode == "contiguous" and have != need:
        raise ValueError(
            f"model.num_classes is {have} but {source} has {need} categories (contiguous labels); "
            f"set model.num_classes={need}, or data.label_mode=coco_ids to keep raw category ids"
        )


def warn_boxes_beyond_queries(config: Config, dataset: CocoDetection) -> None:
    """Each query is matched to one box at most: a warning counting the images that hold more boxes than
    ``model.num_queries`` (their other boxes are never matched, so never learnt nor found), naming the fix."""
    queries = config.model.num_queries
    counts = dataset.boxes_per_image()
    over = [index for index, count in enumerate(counts) if count > queries]
    if over:
        most = max(over, key=counts.__getitem__)
        log.warning(
            "%s of %s hold more boxes than model.num_queries=%d (%d in %s): each query is matched to one box, so "
            "the others are never learnt nor detected; set model.num_queries=%d or more",
            counted(len(over), "image"),
            dataset.annotation_file,
            queries,
            counts[most],
            dataset.image_path(most).name,
            max(counts),
        )


def warn_untrained_frozen_norm(config: Config) -> None:
    """A backbone trained from scratch (``model.backbone.pretrained=false``) with ``norm=frozen_bn``: its frozen
    BatchNorm layers keep their initial values, which do nothing, for the whole run; a warning naming the fix."""
    backbone = config.model.backbone
    if not backbone.pretrained and backbone.norm == "frozen_bn":
        log.warning(
            "model.backbone.pretrained=false with model.backbone.norm=frozen_bn: the backbone's frozen BatchNorm "
            "layers keep their initial values (scale 1, shift 0: they do nothing) for the whole run, so it trains "
            "without normalisation; set model.backbone.norm=batch_norm to train them (as the shapes_tiny preset does)"
        )


def check_same_categories(train_set: CocoDetection, val_set: CocoDetection) -> None:
    """Validation scores the model's classes by category id, so val must name every train category alike, and its
    losses match its boxes to queries by class, so val may hold no other category."""
    differences = train_set.labels.differences(val_set.labels)
    differences += [f"id {i}: 'absent' vs {name!r}" for i, name in train_set.labels.unknown_categories(val_set.labels)]
    if differences:
        raise DatasetError(
            f"{train_set.annotation_file} and {val_set.annotation_file} do not share their categories (train vs "
            f"val: {'; '.join(differences[:5])}); import the data once and split it (`sparse-detector data "
            "split`), or import each part with the same --classes file"
        )


def check_same_config(config: Config) -> None:
    """Every process of a distributed run must train the same config (a collective): an error naming the settings
    that differ from rank 0's (data paths may differ, e.g. each node's local copy, and the absolute run directory of
    nodes started in different folders; rank 0 writes it)."""
    trees = gathered(config_to_dict(config))
    for rank, tree in enumerate(trees[1:], start=1):
        differences = [
            change
            for change in config_differences(trees[0], tree)
            if not change.split(":")[0].endswith((".images", ".annotations", ".output_dir"))
        ]
        if differences:
            raise ValueError(
                f"the processes were started with different configs: rank {rank} differs from rank 0 in "
                f"{'; '.join(differences[:5])} (rank 0 -> rank {rank}); start every process with the same --config "
                "and --set"
            )


def alpha_values(model: nn.Module) -> dict[str, list[float]]:
    """Current per-head alpha of every learnable alpha-entmax module, by module name."""
    return {
        name: module.alpha.tolist()
        for name, module in model.named_modules()
        if isinstance(getattr(module, "alpha", None), torch.Tensor)
    }


def parameter_counts(model: nn.Module) -> dict[str, dict[str, int]]:
    """Trainable and frozen parameter counts per top-level module, and their ``total``."""
    counts: dict[str, dict[str, int]] = {}
    for name, param in model.named_parameters():
        module = counts.setdefault(name.split(".", 1)[0], {"trainable": 0, "frozen": 0})
        module["trainable" if param.requires_grad else "frozen"] += param.numel()
    counts["total"] = {kind: sum(c[kind] for c in counts.values()) for kind in ("trainable", "frozen")}
    return counts


def epoch_summary(record: dict[str, Any]) -> str:
    """The console line of an epoch: the mean training loss over its steps (the step lines show single steps'
    losses), the steps skipped as non-finite, and the validation AP where the epoch was evaluated."""
    loss = record.get("train_loss")  # absent when every step was skipped as non-finite
    skipped, steps = record["train_skipped_nonfinite"], record["train_steps"]
    text = f"mean train loss {loss:.3f}" if loss is not None else "mean train loss n/a"
    text += f" over {counted(steps, 'step')}"
    if skipped:
        text += f" ({skipped} more skipped as non-finite)"
    if "AP" in record:
        text += f"  val {ap_text(record)}"
    return text


def ap_text(record: dict[str, Any]) -> str:
    """An evaluation's AP and AP50 as the epoch lines show them (``n/a`` where the validation data has no object)."""
    return f"AP {metric_text('AP', record['AP'])}  AP50 {metric_text('AP50', record['AP50'])}"


def format_parameter_counts(counts: dict[str, dict[str, int]]) -> str:
    """A table of trainable and frozen parameter counts, one row per part of the model."""
    width = max(len(name) for name in counts)
    lines = [f"{'parameters':<{width}}  {'trainable':>12}  {'frozen':>12}"]
    lines += [f"{name:<{width}}  {c['trainable']:>12,}  {c['frozen']:>12,}" for name, c in counts.items()]
    return "\n".join(lines)


def attention_map_parameters(model: nn.Module, keys: set[str]) -> list[str]:
    """Those of ``keys`` (state-dict names) that belong to an attention map of ``model`` (a learnable alpha): a
    checkpoint trained with other maps lacks them or has them where this model's map has none."""
    owners = {name for name, module in model.named_modules() if isinstance(module, AttentionActivation)}
    return sorted(key for key in keys if key.rsplit(".", 1)[0] in owners)


@dataclass
class InitialWeights:
    """What :func:`initialise_from` took from a checkpoint, and what it left as the model was built."""

    source: str  # the checkpoint file
    loaded: int  # the model's state-dict entries taken from it
    total: int  # the model's state-dict entries
    reinitialised: dict[str, tuple[tuple[int, ...], tuple[int, ...]]]  # class-head entry: (checkpoint's, model's shape)
    fresh_maps: list[str]  # attention maps' own parameters the checkpoint lacks (at the config's alpha_init)
    dropped_maps: list[str]  # the checkpoint's attention-map parameters that the config's maps do not have
    loaded_maps: list[str]  # attention maps' own parameters taken from it (the config's alpha_init unused there)

    def summary(self) -> str:
        """One line: the checkpoint, how much of the model it gave, and why the rest was not taken."""
        text = f"{self.source}: {self.loaded} of {self.total} weights loaded"
        if self.reinitialised:
            shapes = ", ".join(
                f"{key} {list(theirs)} -> {list(ours)}" for key, (theirs, ours) in self.reinitialised.items()
            )
            text += f"; re-initialised for another class count (checkpoint -> model): {shapes}"
        if self.fresh_maps:
            text += f"; at the config's alpha_init (the checkpoint's map there has none): {', '.join(self.fresh_maps)}"
        if self.dropped_maps:
            text += f"; dropped (the config's map there has none): {', '.join(self.dropped_maps)}"
        if self.loaded_maps:
            text += f"; α loaded from it, not alpha_init, at {', '.join(self.loaded_maps)}"
        return text


def initialise_from(model: nn.Module, path: str | Path, config: Config | None = None) -> InitialWeights:
    """Load the weights of a checkpoint (ours or official; a run directory gives its best, else its last) for
    fine-tuning: the model's class heads (``model.class_heads``) are left freshly initialised when the class count
    differs, as are the attention maps' own parameters where the config changed a map (softmax weights into
    alpha-entmax); every other weight must fit. ``config``, the model's, lets an error name the settings in which it
    differs from the checkpoint's."""
    source = str(resolve_checkpoint(path))
    checkpoint = load_checkpoint_file(source)
    state_dict, _ = read_state_dict(checkpoint, source)
    expected = model.state_dict()
    names = list(getattr(model, "class_heads", ()))
    heads = tuple(f"{head}." for head in names)
    reinitialised = [
        key
        for key, value in expected.items()
        if key.startswith(heads) and key in state_dict and state_dict[key].shape != value.shape
    ]
    kept = {k: v for k, v in state_dict.items() if k not in reinitialised}
    maps = attention_map_parameters(model, set(expected) ^ set(kept))  # the config changed a site's map
    kept = {k: v for k, v in kept.items() if k not in maps}
    missing = sorted(set(expected) - set(kept) - set(reinitialised) - set(maps))
    unexpected = sorted(set(kept) - set(expected))
    mismatched = [k for k in expected if k in kept and kept[k].shape != expected[k].shape]
    if missing or unexpected or mismatched:
        found = {"missing keys": missing, "unexpected keys": unexpected, "shape mismatches": mismatched}
        problems = [f"{len(keys)} {what} (first: {keys[:3]})" for what, keys in found.items() if keys]
        saved = saved_config(source)
        if saved is not None:  # one of our runs' checkpoints
            arch = saved.get("model", {}).get("arch")
            kind, example = f"a {arch}", "the run's own config.yaml"
        elif arch := official_arch(state_dict):  # an official checkpoint: which model's reader takes it
            kind, example = f"an official {arch}", f"a preset of {arch}"
        else:
            raise CheckpointMismatchError(
                f"--init-from {source} does not fit the model ({'; '.join(problems)}) and is neither a checkpoint "
                f"of this package (which carries its config) nor an official one of a model it builds: give "
                f"{READABLE_CHECKPOINTS}; ImageNet weights for the backbone alone come with "
                "model.backbone.pretrained=true"
            )
        if arch and arch != getattr(model, "arch", arch):
            raise CheckpointMismatchError(
                f"--init-from {source} is {kind} checkpoint, but the config builds a {model.arch} model; use a "
                f"config with model.arch={arch} (e.g. {example}) or a {model.arch} checkpoint"
            )
        settings = _settings_giving_other_weights(config, saved, arch, source) if config is not None else []
        advice = (
            " The config differs from the checkpoint in settings that give other weights (checkpoint -> config: "
            f"{'; '.join(settings)}): set them as the checkpoint has them (--set)."
            if settings
            else ""
        )
        raise CheckpointMismatchError(
            f"--init-from {source} does not fit the model apart from its class heads {names}: "
            + "; ".join(problems)
            + ". Use the config (backbone, layers, queries, attention) the checkpoint was trained with."
            + advice
        )
    if config is not None and (
        settings := _settings_changing_what_weights_compute(config, checkpoint, state_dict, source)
    ):
        raise CheckpointMismatchError(
            f"--init-from {source} fits the model's shapes, but the config differs from the checkpoint in settings "
            f"that change what its weights compute (checkpoint -> config: {'; '.join(settings)}): set them as the "
            "checkpoint has them (--set)"
        )
    model.load_state_dict({**expected, **kept})
    return InitialWeights(
        source=source,
        loaded=len(kept),
        total=len(expected),
        reinitialised={key: (tuple(state_dict[key].shape), tuple(expected[key].shape)) for key in reinitialised},
        fresh_maps=[key for key in maps if key in expected],
        dropped_maps=[key for key in maps if key not in expected],
        loaded_maps=attention_map_parameters(model, set(kept)),
    )


#: Model settings that change what the weights compute but not their names or shapes, so that a checkpoint trained
#: with other values would load unnoticed; keyed by the name of the official readers' option that gives each (which
#: official training scripts store in their ``args``).
SAME_SHAPE_SETTINGS = {"nheads": ("transformer", "nheads"), "dilation": ("backbone", "dilation")}


def _nested(tree: Any, keys: Iterable[str]) -> Any:
    """``tree[k1][k2]...`` of nested mappings, or None where one of the keys is absent."""
    for key in keys:
        tree = tree.get(key) if isinstance(tree, Mapping) else None
    return tree


def _settings_changing_what_weights_compute(
    config: Config, checkpoint: Any, state_dict: Mapping[str, Any], source: str
) -> list[str]:
    """``key: checkpoint -> config`` for each of :data:`SAME_SHAPE_SETTINGS` in which ``config`` differs from the
    checkpoint (``state_dict``, its weights): its saved config (ours), else the ``args`` an official checkpoint
    stores (none: nothing to compare)."""
    saved = checkpoint.get("config") if isinstance(checkpoint, Mapping) else None
    if isinstance(saved, Mapping):
        theirs = {option: _nested(saved, ("model", *path)) for option, path in SAME_SHAPE_SETTINGS.items()}
    elif isinstance(checkpoint, Mapping) and (arch := official_arch(state_dict)):
        theirs = stored_reader_options(checkpoint, source, arch, {})
    else:
        return []
    found = []
    for option, path in SAME_SHAPE_SETTINGS.items():
        mine = functools.reduce(getattr, path, config.model)
        if theirs.get(option) is not None and theirs[option] != mine:
            found.append(f"model.{'.'.join(path)}: {theirs[option]!r} -> {mine!r}")
    return found


def _settings_giving_other_weights(
    config: Config, saved: Mapping[str, Any] | None, arch: str | None, source: str
) -> list[str]:
    """``key: checkpoint -> config`` for each model setting in which ``config`` differs from the checkpoint's
    (its saved config, or what the official reader of ``arch`` reads from the weights) and that alone changes the
    weights' names or shapes: each is tried in a model built on the meta device (no memory, no pretrained download).
    The class count and attention maps, which --init-from may change, are left out; [] where the checkpoint's
    settings cannot be read."""
    try:
        if saved is None:
            checkpoint = load_checkpoint_file(source)
            state_dict, _ = read_state_dict(checkpoint, source)
            options = stored_reader_options(checkpoint, source, arch, {})
            saved = config_to_dict(official_config(arch, state_dict, **options))
        theirs, ours = saved.get("model", {}), config_to_dict(config)
    except (CheckpointMismatchError, ValueError, KeyError):  # no reader, or too few of its weights to read
        return []

    def weights(model_settings: dict[str, Any]) -> dict[str, tuple[int, ...]]:
        model_config = without_pretrained(config_from_dict({**ours, "model": model_settings}))
        with torch.device("meta"):
            return {k: tuple(v.shape) for k, v in build_model(model_config).state_dict().items()}

    def leaves(tree: Mapping[str, Any], prefix: tuple[str, ...] = ()) -> Iterator[tuple[tuple[str, ...], Any]]:
        for key, value in tree.items():
            yield from leaves(value, (*prefix, key)) if isinstance(value, Mapping) else [((*prefix, key), value)]

    own = weights(ours["model"])
    found = []
    for keys, value in leaves(theirs):
        mine = _nested(ours["model"], keys)
        if keys[0] in ("num_classes", "attention") or mine == value or mine is None:
            continue
        changed = copy.deepcopy(ours["model"])
        section = changed
        for key in keys[:-1]:
            section = section[key]
        section[keys[-1]] = value
        try:
            differs = weights(changed) != own
        except (ValueError, TypeError):  # a value this config cannot take alone: it goes with the others
            differs = True
        if differs:
            found.append(f"model.{'.'.join(keys)}: {value!r} -> {mine!r}")
    return found


class Trainer:
    """Trains ``config`` into ``run_dir``: ``config.yaml``, ``metrics.jsonl``, checkpoints (``checkpoint_last.pt``,
    numbered ``checkpoint_epochNNNN.pt``, ``checkpoint_best.pt``), ``eval.json``.

    Run it alone or under ``torchrun`` / ``srun`` (one process per device; ``train.batch_size`` is per process)."""

    def __init__(
        self,
        config: Config,
        run_dir: str | Path,
        resume: bool = False,
        progress: bool = True,
        init_from: str | Path | None = None,
    ) -> None:
        self.config = config
        self.run_dir = Path(run_dir)
        self.run_lock = None
        try:
            self._set_up(resume, progress, init_from)
        except BaseException as err:  # what it acquired is freed again: the run directory, the W&B run
            if hasattr(self, "logger"):
                self._close_logger_after(err, wait=False)
            self._release_run_dir()
            raise

    def _set_up(self, resume: bool, progress: bool, init_from: str | Path | None) -> None:
        """The constructor's work: a run directory claimed, its data, model, optimiser and loggers set up."""
        config = self.config
        train = config.train
        check_choice(train.on_nonfinite_loss, OnNonfiniteLoss, "train.on_nonfinite_loss")
        check_choice(train.precision, Precision, "train.precision")
        check_backends(train.tensorboard, train.wandb, train.wandb_mode)
        self.dist: DistributedContext
        self.dist, self.device = init_distributed(resolve_device(train.device, "train.device"))
        check_same_config(config)
        # before a resume cuts back the logs another process may still be writing, and before the check below:
        # while another process trains into it, that is the error
        self._claim_run_dir()
        if not resume and run_checkpoints(self.run_dir):  # a numbered one alone: killed while writing the last
            raise FileExistsError(
                f"run directory {self.run_dir} already holds a checkpoint; continue it with --resume {self.run_dir} "
                "(or --resume auto) or choose another --output-dir"
            )
        self.progress = progress and self.dist.is_main
        if train.precision == "fp16" and self.device.type == "cpu":
            log.warning(
                "train.precision=fp16 on the CPU is slow: PyTorch has few fp16 CPU kernels (the shapes_tiny preset "
                "ran 14x slower than fp32 on a 2-core CPU); use train.precision=bf16 or fp32 on the CPU"
            )
        seed_everything(train.seed)
        self.train_set = build_dataset(config, "train")
        if 0 < len(self.train_set) < self.dist.world_size:  # DistributedSampler's padding would repeat them silently
            raise ValueError(
                f"{counted(len(self.train_set), 'training image')} ({config.data.train.annotations}) for "
                f"{self.dist.world_size} processes: every process needs an image of its own, or the same image is "
                f"trained on by several processes in one step and counted once by each; start at most "
                f"{counted(len(self.train_set), 'process', 'processes')} (torchrun --nproc_per_node) or add "
                "training images"
            )
        self.val_set = build_dataset(config, "val")
        check_num_classes(config, self.train_set)
        warn_boxes_beyond_queries(config, self.train_set)
        check_same_categories(self.train_set, self.val_set)
        self.label_map = self.train_set.label_map
        if not resume and not init_from:  # said when the run starts; the weights given by init_from hold their norms
            warn_untrained_frozen_norm(config)
        self.model = build_model(without_pretrained(config) if resume or init_from else config)
        self.initial_weights = initialise_from(self.model, init_from, config) if init_from else None
        self.init_from = str(resolve_checkpoint(init_from).resolve()) if init_from else None
        self.model.to(self.device)
        if self.dist.enabled:  # every rank built the same weights; now each draws its own augmentations
            seed_everything(train.seed + self.dist.rank)
        self.criterion = build_criterion(config).to(self.device)
        self.optimizer = build_optimizer(self.model, config)
        self.scheduler = build_scheduler(self.optimizer, config)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=train.precision == "fp16")
        self.forward_model = self._wrap(self.model, compile=train.compile)
        self.compile_pending = train.compile  # the first compiled step is watched for compiler failures
        self.epoch = 0  # epochs completed
        # training steps taken: every batch trained on, or skipped as non-finite (the global step of every logger,
        # diagnostics.jsonl and the checkpoints), so the epochs of runs on the same data end at the same step
        self.step = 0
        self.best_ap = float("-inf")
        self.epoch_progress: dict[str, Any] = {}  # a mid-epoch checkpoint's position and running sums
        self.stop_signal: int | None = None  # the first SIGTERM / SIGINT received
        self.stopped_at_once: int | None = None  # the second one, which stops at once
        self.last_checkpoint: Path | None = None
        self.last_checkpoint_at = ""  # where training was when it was written ("epoch 2", "epoch 3, step 40")
        self.logged_before: list[dict] = []  # a resumed run's metrics.jsonl before the records after its checkpoint
        resume_changes = self._resume() if resume else []
        if self.dist.is_main:  # only now: a config, data set or checkpoint that fails above leaves no run directory
            self.run_dir.mkdir(parents=True, exist_ok=True)
            self._claim_run_dir()
            write_atomically(self.run_dir / CONFIG_FILE, dump_config(config))
        barrier()
        self.logger = MetricsLogger(
            self.run_dir,
            tensorboard=train.tensorboard,
            wandb=train.wandb,
            wandb_project=train.wandb_project,
            wandb_mode=train.wandb_mode,
            config=config_to_dict(config),
            enabled=self.dist.is_main,
            resumed_at=self.step if resume else None,
            logged_before=self.logged_before,
        )
        counts = parameter_counts(self.model)
        if (
            not resume or self._logged_parameter_counts() != counts
        ):  # once per run: a chart of one point, not one a start
            self.logger.log("params", self.step, **counts)
        start = {"alpha": alpha} if (alpha := alpha_values(self.model)) else {}  # α's history starts there
        if self.init_from:  # the weights it started from, which config.yaml cannot say
            start |= {"init_from": self.init_from, "reinitialised": list(self.initial_weights.reinitialised)}
        if not resume and start:
            self.logger.log("init", self.step, **start)
        if resume_changes:
            self.logger.log("resume", self.step, epoch=self.epoch, changes=resume_changes)
        if self.dist.is_main:
            print(format_parameter_counts(counts))
            if self.initial_weights:
                print(f"init:   {self.initial_weights.summary()}")
        self.diagnostics = TrainingDiagnostics(
            self.model,
            self.run_dir,
            train.diagnostics_every if self.dist.is_main else 0,
            self.val_set,
            resumed_at=self.step if resume else None,
        )

    def _logged_parameter_counts(self) -> dict | None:
        """The parameter counts the run's ``metrics.jsonl`` holds (its last ``params`` record), or ``None``."""
        if not (self.dist.is_main and (self.run_dir / METRICS_FILE).is_file()):
            return None
        records = [r for r in read_metrics(self.run_dir) if r["type"] == "params"]
        return {k: v for k, v in records[-1].items() if k not in ("type", "step", "time")} if records else None

    def _claim_run_dir(self) -> None:
        """Rank 0 holds the run directory once it exists, until training ends (:func:`claim_run_dir`)."""
        if self.dist.is_main and self.run_lock is None and self.run_dir.is_dir():
            self.run_lock = claim_run_dir(self.run_dir)
            if partial := remove_partial_writes(self.run_dir):
                log.info("removed what a killed process left half-written: %s", ", ".join(p.name for p in partial))

    def _wrap(self, model: nn.Module, compile: bool) -> nn.Module:
        """The module the training step calls: DDP across processes, ``torch.compile``-d when asked."""
        if self.dist.enabled:
            device_ids = [self.device.index] if self.device.type == "cuda" else None
            # A model whose loss leaves some parameters without a gradient (``trains_every_parameter`` False) needs
            # DDP to look for them every step, or the step fails.
            unused = not getattr(model, "trains_every_parameter", True)
            model = DistributedDataParallel(model, device_ids=device_ids, find_unused_parameters=unused)
        return torch.compile(model) if compile else model

    def _call_model(self, batch: Any) -> Any:
        """The forward pass; a ``torch.compile``-d model that fails on its first step is replaced by the eager one,
        with a warning saying why."""
        if not self.compile_pending:
            return self.forward_model(batch)
        self.compile_pending = False
        try:
            return self.forward_model(batch)
        except Exception as err:  # any compiler failure (missing C++ compiler, unsupported operation, ...)
            reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            log.warning(
                "train.compile: torch.compile does not work here (%s); training continues uncompiled",
                reason,
                extra=RANK_SPECIFIC,
            )
            self.forward_model = self._wrap(self.model, compile=False)
            return self.forward_model(batch)

    # ------------------------------------------------------------------------------------------------------------
    # Checkpoints

    def _resume(self) -> list[str]:
        """Restore the newest valid checkpoint; returns the settings the config changed (``key: old -> new``) and
        what they changed in the optimiser."""
        path = newest_valid_checkpoint(self.run_dir, warn=log.warning)
        if path is None:
            raise FileNotFoundError(f"run directory {self.run_dir} holds no valid checkpoint to resume from")
        state = load_checkpoint(path)
        saved, ours = (  # both with their data paths as they lead from the run directory now
            run_config_here(tree, self.run_dir) for tree in (state.get("config", {}), config_to_dict(self.config))
        )
        settings = config_differences(saved, ours)
        try:
            load_state_dict_checked(self.model, state["model"], str(path))
        except CheckpointMismatchError:
            model_settings = [change for change in settings if change.startswith("model.")]
            if not model_settings:
                raise
            raise CheckpointMismatchError(
                f"{self.run_dir}: the model settings changed on resume ({'; '.join(model_settings)}) no longer fit "
                f"its checkpoint {path.name}; a resumed run keeps its model: drop those --set overrides, or start a "
                f"new run from these weights with --init-from {path}"
            ) from None
        configured = group_settings(self.optimizer)
        optimizer_state, scheduler_state, regrouped = regroup_saved_state(
            state["optimizer"], state["lr_scheduler"], self.model
        )
        try:
            self.optimizer.load_state_dict(optimizer_state)
        except ValueError as err:
            raise ValueError(
                f"{path}: the optimiser state does not fit this config's parameter groups ({err}); the trainable "
                "parameters (backbone freezing, learnable alphas) must stay as they were"
            ) from None
        self.scheduler.load_state_dict(scheduler_state)
        settings = [
            f"{change} (no effect: a resumed run keeps its checkpoint's weights; it only starts a new run)"
            if change.split(":")[0].rsplit(".", 1)[-1] in STARTING_WEIGHT_SETTINGS
            else change
            for change in settings
        ]
        changes = settings + apply_configured_settings(self.optimizer, self.scheduler, configured)
        for change in changes:
            log.warning("resume: the config changes %s", change)
        if regrouped:
            log.warning("resume: %s", regrouped)
            changes.append(regrouped)
        if "scaler" in state and self.scaler.is_enabled():
            self.scaler.load_state_dict(state["scaler"])
        self.epoch, self.step = state["epoch"], state["step"]
        self.best_ap = state.get("best_ap", float("-inf"))
        self.epoch_progress = state.get("epoch_progress", {})
        ranks = state.get("rng_ranks", [])
        set_rng_state(ranks[self.dist.rank] if len(ranks) == self.dist.world_size else state["rng"])
        processes = len(ranks) or self.dist.world_size  # the checkpointing run's process count
        progress = self.epoch_progress
        if progress and "position" not in progress:  # older checkpoints: each rank's images (or its batches)
            used = progress.get("samples", (progress["steps"] + progress["skipped"]) * self.config.train.batch_size)
            progress["position"] = used * processes
        if progress.get("rank_sums"):  # each process goes on from its own sums, or all from their mean
            progress["sums"] = rank_share(progress.pop("rank_sums"), self.dist.rank, self.dist.world_size)
        if processes != self.dist.world_size:
            batch = self.config.train.batch_size
            before = state.get("config", {}).get("train", {}).get("batch_size", batch) * processes
            changes.append(
                f"processes: {processes} -> {self.dist.world_size} (train.batch_size is per process: the global batch "
                f"goes from {before} to {batch * self.dist.world_size} at the same learning rates)"
            )
            log.warning("resume: %s", changes[-1])
        self.last_checkpoint, self.last_checkpoint_at = path, self._position()
        # Records written after the checkpoint (a run killed before its next one) are dropped: that work is redone.
        metrics = self.run_dir / METRICS_FILE
        if metrics.exists() and self.dist.is_main:
            self.logged_before = read_metrics(self.run_dir)  # what W&B was sent, which it cannot take back
            kept = [
                r
                for r in self.logged_before
                if r["step"] <= self.step and (r["type"] != "epoch" or r["epoch"] <= self.epoch)
            ]
            write_json_lines(metrics, kept)
        log.info("resumed %s from %s (%s)", self.run_dir, path.name, self.last_checkpoint_at)
        return changes

    def _state(self) -> dict:
        """The checkpoint (a collective under torch.distributed: every rank's generator state is gathered)."""
        ranks = [rng_state()]
        if is_distributed():
            ranks = [None] * self.dist.world_size
            torch.distributed.all_gather_object(ranks, rng_state())
        state = {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "lr_scheduler": self.scheduler.state_dict(),
            "epoch": self.epoch,
            "step": self.step,
            "config": config_to_dict(self.config),
            "rng": ranks[0],
            "rng_ranks": ranks,
            "label_map": self.label_map,
            "best_ap": self.best_ap,
        }
        if self.scaler.is_enabled():
            state["scaler"] = self.scaler.state_dict()
        if self.epoch_progress:
            state["epoch_progress"] = self.epoch_progress
        return state

    def _position(self) -> str:
        """Where training is: ``epoch 2`` (completed) or ``epoch 3, step 40`` (in the middle of it)."""
        return f"epoch {self.epoch + 1}, step {self.step}" if self.epoch_progress else f"epoch {self.epoch}"

    def _save(self, best: bool = False) -> None:
        """Write ``checkpoint_last.pt`` (the previous one, when it closed an epoch, becomes numbered), prune the
        numbered ones, and copy to ``checkpoint_best.pt`` when ``best``. Weights holding NaN or inf are never
        saved: :class:`TrainingDivergedError` instead, and the last checkpoint stays the last good one."""
        if not weights_finite(self.model):
            where = (
                f"{self._position()} (stopping on a signal)"
                if self.epoch_progress
                else f"the end of {self._position()}"
            )
            raise self._diverged(where, "its checkpoint was not written")
        state = self._state()
        if self.dist.is_main:
            if best:  # before the last one: a process killed in between redoes the epoch and writes both again
                save_checkpoint(self.run_dir / BEST_CHECKPOINT, state)
            rotate_last(self.run_dir)
            save_checkpoint(self.run_dir / LAST_CHECKPOINT, state, epoch_complete=not self.epoch_progress)
            train, optim = self.config.train, self.config.optim
            keep = [
                e
                for e in range(1, self.epoch + 1)
                if e % optim.lr_drop == 0 or (train.keep_every > 0 and e % train.keep_every == 0)
            ]
            prune_checkpoints(self.run_dir, train.keep_last, keep)
        self.last_checkpoint, self.last_checkpoint_at = self.run_dir / LAST_CHECKPOINT, self._position()
        barrier()

    # ------------------------------------------------------------------------------------------------------------
    # Signals

    @contextlib.contextmanager
    def _stop_on_signals(self) -> Iterator[None]:
        """SIGTERM / SIGINT: finish the step, checkpoint, stop; a second one stops at once (:class:`StoppedAtOnce`)."""
        if threading.current_thread() is not threading.main_thread():
            yield
            return

        def handler(signum: int, frame: Any) -> None:
            if self.stop_signal is not None:
                self.stopped_at_once = signum
                raise StoppedAtOnce(signum)
            self.stop_signal = signum
            name = signal.Signals(signum).name
            log.warning("%s received: finishing this step, then writing a checkpoint", name, extra=RANK_SPECIFIC)

        previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGTERM, signal.SIGINT)}
        try:
            yield
        finally:
            for sig, old in previous.items():
                signal.signal(sig, old)

    # ------------------------------------------------------------------------------------------------------------
    # Training

    def _batches(self, dataset: CocoDetection, train: bool, skip: int = 0) -> Any:
        """This rank's loader: its share of the (per-epoch shuffled) images, without the first ``skip`` of the
        epoch's order (those a mid-epoch checkpoint had trained on, in batches of any size and any process count)."""
        seed = self.config.train.seed
        if train:
            # the epoch's order (DistributedSampler's permutation), padded by repeating its start to a multiple of the
            # process count and dealt out: rank r takes every world_size-th image, as DistributedSampler does
            sampler = DistributedSampler(dataset, 1, 0, seed=seed)
            sampler.set_epoch(self.epoch)
            order, world = list(sampler), self.dist.world_size
            remaining = -(-(len(order) - skip) // world) * world if skip < len(order) else 0
            padded = order * (1 + -(-(skip + remaining) // max(len(order), 1)))
            share = padded[skip : skip + remaining][self.dist.rank :: world]
            size = self.config.train.batch_size
            batches = list(BatchSampler(share, size, drop_last=-(-len(order) // world) >= size))
        else:  # the batches of one process (one image size each), dealt out whole: every image evaluated once
            grouped = size_grouped_batches(dataset.image_sizes(), self.config.train.eval_batch_size)
            batches = grouped[self.dist.rank :: self.dist.world_size]
        generator = torch.Generator().manual_seed(seed + self.epoch)  # worker seeds: same when resumed
        return build_loader(dataset, self.config, train=train, generator=generator, batch_sampler=batches)

    def _autocast(self) -> contextlib.AbstractContextManager:
        dtype = PRECISIONS[self.config.train.precision]
        if dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=dtype)

    def _train_one_epoch(self) -> dict[str, float]:
        """One epoch (or its rest after a mid-epoch resume); stops after the step during which a signal came."""
        config = self.config.train
        progress = self.epoch_progress or {"steps": 0, "skipped": 0, "images": 0, "seconds": 0.0, "sums": {}}
        self.epoch_progress = {}
        sums: dict[str, float] = defaultdict(float, progress["sums"])
        steps, skipped, images_seen = progress["steps"], progress["skipped"], progress["images"]
        position = progress.get("position", 0)  # images of the epoch's order all processes have used
        loader = self._batches(self.train_set, train=True, skip=position)
        self.forward_model.train()
        self.criterion.train()
        limit = min(config.max_steps_per_epoch or len(loader) + steps + skipped, len(loader) + steps + skipped)
        bar = tqdm(total=limit, initial=steps + skipped, desc=f"epoch {self.epoch + 1}", disable=not self.progress)
        start = time.perf_counter() - progress["seconds"]
        tick = time.perf_counter()
        for batch, targets in loader:
            if steps + skipped >= limit:
                break
            data_s = time.perf_counter() - tick
            position += config.batch_size * self.dist.world_size
            # every image of the batch was unreadable and skipped (data.on_invalid=skip); all ranks skip together
            if any_across_ranks(batch is None, self.device):
                continue
            self.step += 1
            batch = batch.to(self.device)
            targets = targets_to(targets, self.device)
            losses, loss, problem = self._forward(batch, targets)
            nonfinite = any_across_ranks(problem is not None, self.device)
            if nonfinite:
                skipped += 1
                self._nonfinite(problem or "on another process", targets)
            else:
                self._backward(loss)
                steps += 1
                images_seen += len(batch) * self.dist.world_size
                values = {"loss": loss.item(), **{k: losses[k].item() for k in MAIN_TRAIN_METRICS[1:]}}
                matched = self._matched(targets)
                values.update(class_error=values["class_error"] * matched, matched=matched)
                for key, value in values.items():
                    sums[key] += value
                speed = images_seen / (time.perf_counter() - start)
                bar.set_postfix(loss=f"{values['loss']:.3f}", img_s=f"{speed:.1f}")
                if self.step % config.log_every == 0:
                    logged = self._log_step(loss, losses, matched, speed, data_s, time.perf_counter() - tick)
                    if self.dist.is_main and not self.progress:  # no progress bar (not a terminal): plain lines
                        where = f"epoch {self.epoch + 1} step {steps + skipped}/{bar.total}"
                        print(f"{where}: loss {logged['loss']:.3f}, {speed:.1f} img/s over the epoch so far")
            bar.update()
            tick = time.perf_counter()
            if any_across_ranks(self.stop_signal is not None, self.device) and steps + skipped < limit:
                self.stop_signal = self.stop_signal or signal.SIGTERM  # another rank was signalled
                seconds = time.perf_counter() - start
                self.epoch_progress = {
                    "steps": steps,
                    "skipped": skipped,
                    "images": images_seen,
                    "position": position,
                    "seconds": seconds,
                    "sums": dict(sums),  # this process's: each sums the losses of its own images
                    "rank_sums": gathered(dict(sums)),  # every process's (a collective), kept in rank 0's checkpoint
                }
                break
        bar.close()
        averages = mean_across_ranks({f"train_{k}": v / max(steps, 1) for k, v in sums.items()}, self.device)
        averages = share_of_matched(averages, "train_")
        averages.update(train_steps=steps, train_skipped_nonfinite=skipped, train_seconds=time.perf_counter() - start)
        return averages

    def _forward(self, batch: Any, targets: list[dict]) -> tuple[dict, torch.Tensor | None, str | None]:
        """Losses (in fp32 whatever the precision: the criterion casts the outputs), their total, and what was not
        finite (``None`` when all is well, or only on another rank)."""
        try:
            with self._autocast():
                outputs = self._call_model(batch)
            # under torch.distributed the ranks agree first: the loss's collectives must run on all or none of them
            if is_distributed():
                finite = outputs_finite(outputs)
                if any_across_ranks(not finite, self.device):  # the caller names another rank's problem
                    return {}, None, None if finite else "non-finite model outputs (NaN or inf)"
            losses = self.criterion(outputs, targets)
            loss = self.criterion.total_loss(losses)
        except FloatingPointError as err:  # the matcher's check of the outputs
            return {}, None, str(err)
        if not torch.isfinite(loss):
            terms = {k: round(v.item(), 4) for k, v in losses.items() if k[-1].isalpha() and "error" not in k}
            return losses, loss, f"loss {loss.item()} with terms {terms}"
        return losses, loss, None

    def _backward(self, loss: torch.Tensor) -> None:
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.scaler.unscale_(self.optimizer)  # true gradients for the diagnostics and clipping (a no-op without fp16)
        self.diagnostics.after_backward(self.step)
        if self.config.optim.clip_max_norm > 0:
            nn.utils.clip_grad_norm_(self.model.parameters(), self.config.optim.clip_max_norm)
        self.scaler.step(self.optimizer)
        self.scaler.update()

    def _matched(self, targets: list[dict]) -> int:
        """The queries the matcher pairs with an object of ``targets``: what ``class_error`` is a share of."""
        return sum(min(len(t["labels"]), self.config.model.num_queries) for t in targets)

    def _log_step(
        self, loss: torch.Tensor, losses: dict, matched: int, speed: float, data_s: float, iteration_s: float
    ) -> dict[str, float]:
        """A ``train`` record: every loss term averaged over processes (``class_error`` over the ``matched`` queries
        of all of them), learning rates, alphas, speed, memory; returns the averaged losses."""
        values = {"loss": loss.item(), **{k: v.item() for k, v in losses.items()}, "matched": matched}
        values["class_error"] *= matched
        reduced = share_of_matched(mean_across_ranks(values, self.device))
        self.logger.log(
            "train",
            self.step,
            epoch=self.epoch + 1,
            **reduced,
            lr={g["name"]: g["lr"] for g in self.optimizer.param_groups},
            alpha=alpha_values(self.model),
            iteration_s=iteration_s,
            data_s=data_s,
            images_per_s=speed,
            peak_memory_mb=peak_memory_mb(self.device),
        )
        return reduced

    def _nonfinite(self, detail: str, targets: list[dict]) -> None:
        image_ids = [int(t["image_id"]) for t in targets]
        where = f"epoch {self.epoch + 1}, step {self.step}, image ids {image_ids}: {detail}"
        if not weights_finite(self.model):  # no later step can be finite: skipping them would only waste the epoch
            raise self._diverged(f"epoch {self.epoch + 1}, step {self.step}, image ids {image_ids}", detail)
        if self.config.train.on_nonfinite_loss == "error":
            last = self.last_checkpoint or "none written yet"
            raise NonFiniteLossError(
                f"non-finite loss at {where}. Last good checkpoint: {last}. Lower optim.lr / optim.clip_max_norm, "
                "check these images' boxes, or set train.on_nonfinite_loss=skip to skip such steps (they are "
                "counted in metrics.jsonl)"
            )
        log.warning("skipped a step with a non-finite loss at %s", where, extra=RANK_SPECIFIC)  # this rank's images

    def _diverged(self, where: str, detail: str) -> TrainingDivergedError:
        """The error that stops a diverged run: where, what was not finite, the weights, what to change, and the
        checkpoint to continue from."""
        optim = self.config.optim
        clip = (
            "set optim.clip_max_norm (now 0: gradients are not clipped; the presets use 0.1)"
            if optim.clip_max_norm <= 0
            else f"lower optim.clip_max_norm (now {optim.clip_max_norm:g})"
        )
        change = (
            f"lower optim.lr (now {optim.lr:g}) and model.backbone.lr (now {self.config.model.backbone.lr:g}), {clip}"
        )
        if self.last_checkpoint is None:
            then = f"No checkpoint was written before: {change}, and start the run again."
        else:
            then = (
                f"Its last checkpoint, {self.last_checkpoint} ({self.last_checkpoint_at}), is kept and nothing later "
                f"was saved: {change}, and continue from it with `sparse-detector train --resume {self.run_dir} --set "
                "optim.lr=...` (or start a new run if that epoch already skipped non-finite steps or its loss was "
                "rising: see metrics.jsonl)."
            )
        return TrainingDivergedError(f"training diverged at {where}: {detail}; {weights_reading(self.model)}. {then}")

    def _evaluate(self) -> dict[str, float]:
        # Evaluating must not change the training random stream (its transforms and loader draw from it),
        # so a run resumed after an evaluated epoch continues exactly as one that never stopped.
        broadcast_buffers(self.model)  # every rank evaluates the model rank 0 saves
        with torch.random.fork_rng(devices=[self.device] if self.device.type == "cuda" else []):
            stats = run_evaluation(
                self.model,
                self.criterion,
                self._batches(self.val_set, train=False),
                self.device,
                self.label_map,
                self.progress,
            ).stats
        losses = mean_across_ranks({k: v for k, v in stats.items() if k.startswith("val_")}, self.device)
        return {**stats, **losses}

    def _best_line(self) -> str:
        """Which evaluated epoch has the best AP (the first of equals): its weights are checkpoint_best.pt, which
        evaluate, analyze and predict take from the run directory."""
        evaluated = [r for r in read_metrics(self.run_dir) if r["type"] == "epoch" and "AP" in r]
        best = max(evaluated, key=lambda r: r["AP"])  # max keeps the first of equal APs, as training does
        if best["AP"] < 0:  # COCO's -1 in every evaluation: training kept the newest weights as the best
            best = evaluated[-1]
            what = f"best: none to choose, AP is n/a (no object in {self.val_set.annotation_file}); the last evaluated"
        else:
            what = f"best: {ap_text(best)} after"
        return (
            f"{what} epoch {best['epoch']} ({BEST_CHECKPOINT}, what evaluate, analyze and predict take from the run "
            "directory)"
        )

    def fit(self) -> dict[str, float]:
        """Train the remaining epochs; returns the last evaluation's metrics. After a SIGTERM / SIGINT it returns
        early with a checkpoint written and :attr:`stop_signal` set. The run directory and the metrics loggers (the
        W&B run, marked failed where training stopped on an error or a second signal) are free again afterwards."""
        try:
            return self._fit()
        except BaseException as err:
            self._close_logger_after(err)
            if isinstance(err, Exception) and self.stopped_at_once is not None:
                # torch.save turns the exception raised in its writes into its own
                raise StoppedAtOnce(self.stopped_at_once) from err
            raise
        finally:
            self._release_run_dir()

    def _release_run_dir(self) -> None:
        """Free the run directory claimed by :meth:`_claim_run_dir` (nothing to do where it was not)."""
        if self.run_lock is not None:
            self.run_lock.release()

    def _close_logger_after(self, err: BaseException, wait: bool = True) -> None:
        """Close the metrics loggers of a training stopped by ``err``, without waiting for W&B's service where
        ``wait`` is false or the process stops at once (a second signal, Ctrl-C); a failure to close them is a
        warning, so that ``err`` is what the user sees."""
        at_once = self.stopped_at_once is not None or isinstance(err, KeyboardInterrupt)
        try:
            self.logger.close(failed=True, wait=wait and not at_once)
        except Exception as close_err:  # noqa: BLE001 - any failure: the training's own error matters more
            log.warning("could not close the run's metrics loggers after %r: %s", err, close_err)

    def _fit(self) -> dict[str, float]:
        train = self.config.train
        last_eval: dict[str, float] = {}
        evaluated_epoch = 0
        log.info("training in %s on %s (%d process(es))", self.run_dir, self.device, self.dist.world_size)
        # process-wide torch settings, restored when training ends (normally or not) for the rest of the process
        deterministic = deterministic_algorithms(train.deterministic)
        with self._stop_on_signals(), subnormals_flushed(self.device), deterministic:
            while self.epoch < train.epochs:
                record = self._train_one_epoch()
                if self.epoch_progress:  # stopped by a signal in the middle of the epoch
                    self._save()
                    break
                self.scheduler.step()
                self.epoch += 1
                if self.epoch % train.eval_every == 0 or self.epoch == train.epochs:
                    try:
                        last_eval = self._evaluate()
                    except NonFiniteOutputsError as err:
                        self.logger.log("epoch", self.step, epoch=self.epoch, **record)  # what the epoch trained
                        skipped = record["train_skipped_nonfinite"]
                        steps = f"{skipped} of {skipped + record['train_steps']}"
                        detail = (
                            f"the model's outputs are NaN or inf on image ids {err.image_ids} ({steps} training steps "
                            f"of epoch {self.epoch} were skipped as non-finite)"
                        )
                        raise self._diverged(f"validation after epoch {self.epoch}", detail) from err
                    record.update(last_eval)
                    evaluated_epoch = self.epoch
                    if self.dist.is_main:  # before the checkpoint, which a finished run's resume would not redo
                        # what was evaluated, as evaluate's eval.json says it (train's is the last evaluated epoch's)
                        evaluated = {"epoch": evaluated_epoch, "data": str(self.val_set.annotation_file), **last_eval}
                        write_atomically(self.run_dir / EVAL_FILE, json.dumps(evaluated, indent=2))
                record["alpha"] = alpha_values(self.model)
                self.logger.log("epoch", self.step, epoch=self.epoch, **record)
                # COCO's AP is -1 (n/a) where the validation data holds no object: the newest weights count as best
                improved = "AP" in record and (record["AP"] > self.best_ap or record["AP"] < 0)
                if improved:
                    self.best_ap = record["AP"]
                self._save(best=improved)
                if self.dist.is_main:
                    print(f"epoch {self.epoch}: {epoch_summary(record)}")
                if self.stop_signal is not None:
                    break
        self.logger.close()
        if last_eval and self.dist.is_main:
            print(f"validation after epoch {evaluated_epoch}:")
            print(format_table(last_eval))
            print(self._best_line())
        return last_eval
