"""The ``sparse-detector`` command line: train, evaluate, analyze, compare, predict, data, quickstart, visualize,
study.

Layout: one ``add_<command>_command(commands)`` function per subcommand registers its parser (arguments, an
example, its handler); one ``_<command>(args)`` handler per subcommand runs it. Handlers import torch and the
rest of the package when they run, so ``sparse-detector --help`` and every ``<command> --help`` stay instant.
A new subcommand is one more pair of functions and one line in :data:`COMMANDS`.
"""

from __future__ import annotations

import argparse
import contextlib
import difflib
import json
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from .. import __version__
from ..config import (
    DEFAULT_SCORE_THRESHOLD,
    AttentionSiteConfig,
    Config,
    DataConfig,
    check_score_threshold,
    load_config,
    override_config,
)
from ..data.labels import LABEL_MODES
from ..files import write_atomically
from ..logs import log_for_other_rank
from ..runs import (
    CHECKPOINT_SUFFIXES,
    CONFIG_FILE,
    QUICKSTART_RUN_DIR,
    analysis_dir,
    eval_file,
    holds_checkpoint,
    other_data_suffix,
    read_analyses,
)
from ..text import counted

if TYPE_CHECKING:
    from ..data.coco import CocoDetection
    from ..data.labels import LabelMap
    from ..engine.distributed import DistributedContext
    from ..engine.inference import LoadedModel
    from ..engine.trainer import Trainer

log = logging.getLogger("sparse_detector")

Subparsers = argparse._SubParsersAction  # what add_subparsers() returns; add_parser() makes a subcommand

# The quickstart's data: 128 px images, 1-3 shapes of 24-56 px, classes = colours (see configs/shapes_tiny.yaml).
QUICKSTART_TRAIN_IMAGES = 1200
QUICKSTART_VAL_IMAGES = 200

# Presets whose data the package can generate: what to run when it is missing.
_SHAPES_DATA_COMMAND = (
    f"sparse-detector data shapes data/shapes --num-images {QUICKSTART_TRAIN_IMAGES} --num-val {QUICKSTART_VAL_IMAGES}"
)
_SHAPES_DATA_HINT = (
    f"{_SHAPES_DATA_COMMAND}   (or `sparse-detector quickstart`, which generates the data and trains in one go)"
)
# torch.distributed's gloo backend, in the processes left when another one of the run died
PEER_GONE = "This is typically caused by a remote worker"  # ... crashing / hanging or bugs in the application
PRESET_DATA_HINTS = {"shapes_tiny": _SHAPES_DATA_HINT, "shapes_tiny_deformable": _SHAPES_DATA_HINT}

# The kinds of `visualize` (the registry of sparse_detector.viz.kinds, which imports torch; a test keeps them equal)
# and its file formats (sparse_detector.viz.figure.FORMATS), named here so `--help` stays instant.
FIGURE_KIND_NAMES = (
    "alpha",
    "attention",
    "compare",
    "curves",
    "data",
    "deformable",
    "diagnostics",
    "encoder",
    "matching",
    "sparsity",
)
FIGURE_FORMATS = ("png", "pdf", "svg")
DEFAULT_TRAIN_CONFIG = "shapes_tiny"  # train's --config when none is given
RUN_ONLY_KINDS = ("alpha", "curves", "diagnostics", "sparsity")  # figures of runs' logs and analyses, no images


class _Parser(argparse.ArgumentParser):
    """argparse's parser that adds the closest name to a mistyped subcommand, choice or option ("did you mean")."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.suggest_on_error = False  # Python 3.14's own suggestion (off there by default) would say it twice

    def _check_value(self, action: argparse.Action, value: object) -> None:
        try:
            super()._check_value(action, value)
        except argparse.ArgumentError as err:
            if suggestion := _closest(str(value), map(str, action.choices or ())):
                raise argparse.ArgumentError(action, f"{err.message}; did you mean {suggestion!r}?") from None
            raise

    def parse_args(  # type: ignore[override]
        self, args: list[str] | None = None, namespace: argparse.Namespace | None = None
    ) -> argparse.Namespace:
        """As argparse's, but an unknown option is reported by the (sub)command it was given to, with the closest
        of that command's options."""
        parsed, extras = self.parse_known_args(args, namespace)
        if extras:
            command = _chosen_command(self, parsed)
            unknown = [text.split("=", 1)[0] for text in extras if text.startswith("-")]
            close = [(text, _closest(text, command._option_string_actions)) for text in unknown]
            hints = "".join(
                f"; did you mean {option} instead of {text}?" for text, option in close if option not in (None, text)
            )
            command.error(f"unrecognized arguments: {' '.join(extras)}{hints}")
        return parsed


def _closest(text: str, names: Iterable[str]) -> str | None:
    """The name most like a mistyped ``text``, if any: difflib's ratio of at least 0.6 between the names without
    their leading dashes (which every option shares), 0.75 for a word under 6 letters (``--set`` is not ``--site``)."""
    by_word: dict[str, str] = {}
    for name in names:
        by_word.setdefault(name.lstrip("-"), name)
    word = text.lstrip("-")
    cutoff = 0.75 if len(word) < 6 else 0.6
    return next((by_word[match] for match in difflib.get_close_matches(word, list(by_word), n=1, cutoff=cutoff)), None)


def _chosen_command(parser: argparse.ArgumentParser, args: argparse.Namespace) -> argparse.ArgumentParser:
    """The parser of the (sub)command ``args`` were parsed for, e.g. that of `data import`."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction) and getattr(args, action.dest, None) in action.choices:
            return _chosen_command(action.choices[getattr(args, action.dest)], args)
    return parser


class _HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Shows an option's default where it has one worth showing; descriptions and examples keep their lines."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        help = action.help or ""
        if "default" in help or any(action.default is none for none in (None, False, argparse.SUPPRESS)):
            return help
        if action.default == [] or not action.option_strings:
            return help
        return f"{help} (default: %(default)s)"


def _add_command(commands: Subparsers, name: str, help: str, example: str, func: Callable) -> argparse.ArgumentParser:
    """A subcommand parser with the shared formatter, an ``example:`` epilog and its handler."""
    parser = commands.add_parser(
        name, help=help, description=help, epilog=f"example:\n  {example}\n", formatter_class=_HelpFormatter
    )
    parser.set_defaults(func=func)
    # also after the command (`train ... --debug`), where the error's hint sends a user; unset, the top level's holds
    parser.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help="show full tracebacks")
    return parser


def _show_progress(args: argparse.Namespace) -> bool:
    """Progress bars only on a terminal (a log file gets plain lines) and not with ``--no-progress``."""
    return not getattr(args, "no_progress", False) and sys.stderr.isatty()


def _file_in_the_way(path: Path) -> Path | None:
    """The existing file, if any, at ``path`` or one of its folders, where a folder is needed."""
    for candidate in (path, *path.parents):
        if candidate.exists():
            return None if candidate.is_dir() else candidate
    return None


def _in_the_way_message(option: str, path: Path, blocker: Path) -> str:
    where = "is a file" if blocker == path else f"cannot be written: {blocker} is a file"
    return f"{option} {path} {where}, not a folder; choose another path or move that file"


def _check_output(option: str, path: str | Path | None, folder: bool = True, file: tuple[str, str] = ("", "")) -> None:
    """Before any work: ``path`` (a folder to write in, or with ``folder=False`` a file) can be made; a file standing
    where a folder is needed, or a folder given for a file (``file``: what the file is and an example name), is a
    usage error naming both."""
    if path is None:
        return
    path = Path(path)
    if not folder and path.is_dir():
        what, example = file
        raise ValueError(f"{option} {path} is a folder; {option} takes {what} (e.g. {option} {path / example})")
    if blocker := _file_in_the_way(path if folder else path.parent):
        raise ValueError(_in_the_way_message(option, path, blocker))


def _add_overrides(parser: argparse.ArgumentParser, example: str = "data.val_size=512") -> None:
    parser.add_argument(
        "--set",
        nargs="*",
        action="extend",  # --set a=1 --set b=2 applies both (argparse's default keeps only the last)
        default=[],
        type=_override,
        metavar="KEY=VALUE",
        help=f"config overrides, e.g. {example} (repeatable)",
    )


def _override(text: str) -> str:
    """An argparse type: a ``key.sub=value`` override (``--set`` takes every word up to the next option, so an
    image or run named after it lands here)."""
    if "=" in text:
        return text
    if Path(text).exists():  # an input: `predict ... --set data.val_size=512 photos/`
        raise argparse.ArgumentTypeError(
            f"expected KEY=VALUE, got {text!r}: --set reads every word after it up to the next option, so put "
            f"{text!r} before --set, or end the overrides with --"
        )
    raise argparse.ArgumentTypeError(
        f"expected KEY=VALUE, got {text!r}: give the key a value ({text}=VALUE); an input after --set goes before "
        "it, or after -- ending the overrides"
    )


def _add_model_source(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", required=True, help="run directory or checkpoint file")
    parser.add_argument("--official", action="store_true", help="the checkpoint is an official one (COCO ids)")
    _add_official_reading(parser)
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N | mps")


def _add_official_reading(parser: argparse.ArgumentParser) -> None:
    """How an --official checkpoint is read (:func:`_official_options`)."""
    parser.add_argument("--arch", default="detr", help="registered model (model.arch) of an --official checkpoint")
    parser.add_argument(
        "--nheads",
        type=int,
        default=None,
        help="attention heads of an official checkpoint (default: its stored args, else the official 8)",
    )
    parser.add_argument(
        "--dilation", action="store_true", default=None, help="an official DC5 checkpoint (default: its stored args)"
    )


def _whole_number(minimum: int) -> Callable[[str], int]:
    """An argparse type: a whole number of at least ``minimum`` (argparse names the option in its error)."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be {minimum} or more, got {value}")
        return value

    return parse


_positive_int, _count = _whole_number(1), _whole_number(0)


def _score(text: str) -> float:
    """An argparse type: a detection score threshold, from 0 to 1 (scores are probabilities; see
    :func:`~.config.check_score_threshold`)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number from 0 to 1, got {text!r}") from None
    try:
        check_score_threshold(value)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None
    return value


def _add_evaluation_data(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--images", help="image folder (default: the checkpoint config's data.val.images)")
    parser.add_argument(
        "--annotations", "--data", dest="annotations", help="COCO instances JSON (default: data.val.annotations)"
    )
    parser.add_argument("--batch-size", type=_positive_int, help="images per batch (default: train.eval_batch_size)")
    parser.add_argument("--workers", type=_count, help="data-loading processes (default: data.num_workers)")
    parser.add_argument(
        "--no-progress", action="store_true", help="no progress bar (never one when the output is not a terminal)"
    )
    _add_overrides(parser)


# ----------------------------------------------------------------------------------------------------------------
# train


def add_train_command(commands: Subparsers) -> None:
    parser = _add_command(
        commands,
        "train",
        "train a model from a YAML config or preset",
        "sparse-detector train --config shapes_tiny --set train.epochs=30 --output-dir runs/mine",
        _train,
    )
    parser.add_argument(
        "--config", help="YAML file or preset name (detr_r50, shapes_tiny, ...) of a new run (default: shapes_tiny)"
    )
    _add_overrides(parser, "train.epochs=5")
    parser.add_argument("--output-dir", help="run directory (default: train.output_dir)")
    parser.add_argument(
        "--resume",
        metavar="RUN_DIR|auto",
        help="continue a run from its newest valid checkpoint; 'auto' continues --output-dir if it holds one "
        "(else starts it): the same command line serves every restart of a preempted job",
    )
    parser.add_argument(
        "--init-from",
        metavar="CKPT",
        help="fine-tune: start from these weights (a checkpoint, ours or official, or a run directory: its best); "
        "class heads are re-initialised when the class count differs",
    )
    parser.add_argument("--device", help="auto | cpu | cuda | cuda:N | mps (default: train.device)")
    parser.add_argument(
        "--no-progress",
        action="store_true",
        help="no progress bars: one plain line every train.log_every steps (always so when not on a terminal)",
    )


def _missing_data_hint(config_name: str, config: Config, splits: Sequence[str] = ("train", "val")) -> str:
    """What to run when a preset's data of ``splits`` is not there yet ('' when the data exists, nothing can
    generate it, or the missing file is one given with --set rather than the preset's own)."""
    hint = PRESET_DATA_HINTS.get(Path(config_name).stem)
    if hint is None:
        return ""
    own = load_config(config_name).data
    own_files = {getattr(own, split).annotations for split in splits} - {""}
    given = [getattr(config.data, split).annotations for split in splits]
    missing = [path for path in given if path in own_files and not Path(path).is_file()]
    if not missing:
        return ""
    return (
        f"the data of preset {config_name!r} is not there yet ({', '.join(missing)}, relative to {Path.cwd()}); "
        f"generate it first:\n  {hint}"
    )


def _finished_run_message(run_dir: Path, config: Config) -> str:
    """'' if the run has epochs left, else how to extend it."""
    from ..engine.checkpoint import run_checkpoints

    checkpoints = run_checkpoints(run_dir)
    if not checkpoints:
        raise FileNotFoundError(
            f"{run_dir} has no checkpoint to resume from; start the run with --output-dir {run_dir}"
        )
    done = checkpoints[0].epoch  # the newest one's completed epochs
    if done < config.train.epochs:
        return ""
    return (
        f"run {run_dir} already finished: {done} of train.epochs={config.train.epochs} epochs done. To train it "
        f"longer: sparse-detector train --resume {run_dir} --set train.epochs={done + max(done // 2, 1)}"
    )


def _stopped_message(trainer: Trainer, run_dir: Path) -> str:
    """What a signal that stopped training left, and the command that continues it."""
    name = signal.Signals(trainer.stop_signal).name if trainer.stop_signal else "a signal"
    command = f"sparse-detector train --resume {run_dir}"
    processes = trainer.dist.world_size
    if processes > 1:  # train.batch_size is per process: another process count trains with another global batch
        command = f"torchrun ... -m sparse_detector train --resume {run_dir}, with the same {processes} processes"
    return (
        f"stopped by {name} at epoch {trainer.epoch + 1}, step {trainer.step}; checkpoint written: "
        f"{trainer.last_checkpoint}\nresume with: {command}"
    )


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


def _train_summary(trainer: object) -> str:
    """A few lines on what is about to happen (the whole resolved config is in the run directory's config.yaml)."""
    from ..attention.sites import model_sites

    config: Config = trainer.config  # type: ignore[attr-defined]
    model = config.model
    sites = ", ".join(
        f"{name}={model.attention.get(name, AttentionSiteConfig()).activation}"
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


def _train(args: argparse.Namespace) -> int:
    from ..data.build import absolute_data_paths
    from ..engine.checkpoint import run_checkpoints
    from ..engine.device import resolve_device
    from ..engine.distributed import context_from_environment, shutdown_distributed
    from ..engine.trainer import Trainer

    if args.device:  # named as the user gave it (the trainer checks train.device)
        resolve_device(args.device, "--device")

    if args.init_from and args.resume not in (None, "auto"):  # with auto: the weights of a run's first start
        raise ValueError(
            f"--init-from starts a new run from other weights, --resume continues {args.resume} from its own "
            "checkpoint: give one of them (--resume auto with --init-from starts from those weights only once)"
        )
    if args.config and args.resume not in (None, "auto"):  # with auto: the config of a run's first start
        raise ValueError(
            f"--resume continues {args.resume} with its own config.yaml; --config is for a new run (change settings "
            "of a resumed run with --set)"
        )
    if args.output_dir and args.resume not in (None, "auto") and Path(args.output_dir) != Path(args.resume):
        raise ValueError(
            f"--resume continues {args.resume} in its own directory; --output-dir {args.output_dir} is for a new run "
            "(or --resume auto --output-dir DIR: continue DIR if it holds a checkpoint, else start it)"
        )
    moved = [o for o in args.set if o.split("=", 1)[0].strip() == "train.output_dir"]
    if args.resume not in (None, "auto") and moved:  # with auto, train.output_dir is the run directory
        raise ValueError(
            f"--set {moved[0]}: a resumed run stays in its directory; copy the run directory to move it, then "
            "--resume the copy"
        )
    preset = args.config or DEFAULT_TRAIN_CONFIG
    output_dir = args.output_dir
    if args.resume == "auto":  # resume the run in --output-dir when it has a checkpoint, else start it
        config = load_config(preset, args.set)
        output_dir = output_dir or config.train.output_dir
        resume_dir = Path(output_dir) if run_checkpoints(Path(output_dir)) else None
    else:
        resume_dir = Path(args.resume) if args.resume else None
    context = context_from_environment()
    main_process = context.is_main  # under torchrun / srun only rank 0 prints
    if not main_process:  # and logs what every rank would log alike; the others only their own warnings and errors
        log_for_other_rank(context.rank)
    if resume_dir is not None:
        run_dir = resume_dir
        if run_dir.is_file() and (run_dir.parent / CONFIG_FILE).is_file():
            raise ValueError(
                f"--resume takes the run directory (it picks the newest valid checkpoint): --resume {run_dir.parent}"
            )
        if not run_dir.exists():
            raise FileNotFoundError(f"--resume {run_dir} does not exist; give the run directory of the run to continue")
        if not (run_dir / CONFIG_FILE).is_file():
            raise FileNotFoundError(f"{run_dir} is not a run directory (no {CONFIG_FILE}); check the --resume path")
        config = load_config(run_dir / CONFIG_FILE, args.set)
        config.train.output_dir = str(run_dir.absolute())
        message = _finished_run_message(run_dir, config)
        if message:
            if main_process:
                print(message)
            return 0 if args.resume == "auto" else 1  # a restart of a job that already finished has nothing to do
    else:
        config = load_config(preset, args.set)
        hint = _missing_data_hint(preset, config)
        if hint:
            raise FileNotFoundError(hint)
        run_dir = Path(output_dir or config.train.output_dir)
        config.train.output_dir = str(run_dir.absolute())  # the run's config.yaml names the directory it is in
    if args.device:
        config.train.device = args.device
    trainer = Trainer(
        absolute_data_paths(config),
        run_dir,
        resume=resume_dir is not None,
        progress=_show_progress(args),
        init_from=args.init_from if resume_dir is None else None,  # a resumed run has its own weights
    )
    if main_process:
        print(_train_summary(trainer))
    trainer.fit()
    shutdown_distributed()
    if not main_process:
        return 0
    if trainer.stop_signal is not None:
        print(_stopped_message(trainer, run_dir))
    print(f"run directory: {run_dir}")
    return 0


# ----------------------------------------------------------------------------------------------------------------
# evaluate / analyze / compare / predict


def _refuse_model_overrides(overrides: list[str]) -> None:
    """evaluate / analyze run the checkpoint's model as it is: a ``--set model.*`` would change nothing."""
    for override in overrides:
        key = override.split("=", 1)[0].strip()
        if key.startswith("model."):
            raise ValueError(
                f"--set {key}: the model is the checkpoint's, built from its own config, so this would change "
                "nothing; --set here takes data, loss and evaluation settings (e.g. data.val_size=512)"
            )


def _evaluation_config(config: Config, args: argparse.Namespace) -> Config:
    """The checkpoint's config with the command's data options (each falls back to the config's data.val)."""
    overrides = list(args.set)
    if args.images:
        overrides.append(f"data.val.images={args.images}")
    if args.annotations:
        overrides.append(f"data.val.annotations={args.annotations}")
    if args.batch_size:
        overrides.append(f"train.eval_batch_size={args.batch_size}")
    if args.workers is not None:
        overrides.append(f"data.num_workers={args.workers}")
    return override_config(config, overrides)


def _check_images_folder(args: argparse.Namespace) -> None:
    """Before loading a model: ``--images`` is a folder (the data's own check names data.val.images, not the option)."""
    if args.images and not Path(args.images).is_dir():
        raise ValueError(
            f"--images {args.images} is not a folder; give the folder the annotations' file names are relative to, "
            "or leave --images out (default: the checkpoint config's data.val.images)"
        )


def _official_options(args: argparse.Namespace) -> dict:
    """How to read an --official checkpoint (through the model registry)."""
    return {"arch": args.arch, "nheads": args.nheads, "dilation": args.dilation} if args.official else {}


def _load_model(args: argparse.Namespace) -> LoadedModel:
    from ..engine.inference import load_trained_model

    return load_trained_model(args.checkpoint, official=args.official, **_official_options(args))


def add_evaluate_command(commands: Subparsers) -> None:
    parser = _add_command(
        commands,
        "evaluate",
        "COCO AP of a checkpoint (ours or official) on a COCO-format dataset",
        "sparse-detector evaluate --checkpoint runs/mine --annotations data/splits/val.json",
        _evaluate,
    )
    _add_model_source(parser)
    _add_evaluation_data(parser)
    parser.add_argument(
        "--output",
        help="metrics JSON, with the precision arrays beside it as <name>_pr.npz (default: <run dir>/eval.json, or "
        "eval-<annotations stem>.json on data other than the run's validation set)",
    )
    parser.add_argument(
        "--save-detections", metavar="FILE", help="also write every detection in the COCO results format"
    )


def _check_categories(label_map: LabelMap, dataset: CocoDetection) -> None:
    """A checkpoint scored on a data set whose category ids name other classes would count one class as another."""
    from ..data.coco import DatasetError

    if differences := label_map.differences(dataset.labels):
        raise DatasetError(
            f"the checkpoint's categories are not those of {dataset.annotation_file} (checkpoint vs data: "
            f"{'; '.join(differences[:5])}), so one class would be scored as another; use data with the categories "
            "(ids and names) the checkpoint was trained on"
        )


def _evaluate(args: argparse.Namespace) -> int:
    from ..data.build import build_dataset, build_loader
    from ..data.coco import DatasetError
    from ..engine.coco_eval import format_per_class_table, format_table
    from ..engine.device import resolve_device
    from ..engine.evaluate import run_evaluation

    _check_output("--output", args.output, folder=False, file=("the metrics JSON file to write", "eval.json"))
    _check_output("--save-detections", args.save_detections, folder=False, file=("a JSON file", "detections.json"))
    _refuse_model_overrides(args.set)
    _check_images_folder(args)
    device = resolve_device(args.device, "--device")
    loaded = _load_model(args)
    config = _evaluation_config(loaded.config, args)
    dataset = build_dataset(config, "val")
    _check_categories(loaded.label_map, dataset)
    loader = build_loader(dataset, config, train=False)
    evaluation = run_evaluation(loaded.model.to(device), None, loader, device, loaded.label_map, _show_progress(args))
    evaluated = evaluation.coco.num_images
    if not evaluated:
        raise DatasetError(f"no image of {dataset.annotation_file} could be read, so nothing was evaluated")
    unread = len(dataset) - evaluated
    unread_text = f" of {len(dataset)}; {unread} unreadable, left out of every number" if unread else ""
    print(f"{loaded.source} on {dataset.annotation_file} ({counted(evaluated, 'image')}{unread_text})")
    print(format_table(evaluation.stats))
    if evaluation.coco.per_class:
        print(format_per_class_table(evaluation.coco.per_class))
    suffix = other_data_suffix(loaded.config.data.val.annotations, config.data.val.annotations)
    output = Path(args.output) if args.output else eval_file(loaded.source, suffix)
    output.parent.mkdir(parents=True, exist_ok=True)
    record = {
        "checkpoint": str(loaded.source),
        "data": str(dataset.annotation_file),
        "num_images": evaluated,
        **evaluation.stats,
    }
    curves = output.with_name(f"{output.stem}_pr.npz")
    if evaluation.coco.precision is not None:  # before the JSON: an evaluation killed in between leaves the old pair
        evaluation.coco.precision.save(curves)
    write_atomically(output, json.dumps({**record, "per_class": evaluation.coco.per_class}, indent=2))
    print(f"written: {output}")
    if evaluation.coco.precision is not None:
        print(f"written: {curves} (precision by IoU threshold x recall x class)")
    if args.save_detections:
        Path(args.save_detections).parent.mkdir(parents=True, exist_ok=True)
        write_atomically(args.save_detections, json.dumps(evaluation.detections))
        detections = counted(len(evaluation.detections), "detection")
        print(f"written: {args.save_detections} ({detections}, COCO results format)")
    return 0


def add_analyze_command(commands: Subparsers) -> None:
    parser = _add_command(
        commands,
        "analyze",
        "COCO AP and attention metrics (Gini, zeros ratio, entropy, support, PAIBB) in one evaluation pass",
        "sparse-detector analyze --checkpoint runs/mine --sites decoder_cross",
        _analyze,
    )
    parser.description = (
        f"{parser.description}.\nWrites analysis.json, analysis.csv and analysis.md. The data set is a COCO "
        "instances JSON (--annotations, alias --data) with its image folder (--images); each defaults to the "
        "checkpoint config's data.val."
    )
    _add_model_source(parser)
    _add_evaluation_data(parser)
    parser.add_argument(
        "--sites",
        nargs="+",
        help="attention sites to record (default: all the model's sites; PAIBB needs a site of object queries over "
        "the feature grid)",
    )
    parser.add_argument(
        "--random-init", action="store_true", help="same architecture with fresh weights (untrained baseline)"
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the --random-init weights")
    parser.add_argument(
        "--zero-threshold", type=float, help="zeros-ratio threshold (default: 1e-6 for softmax sites, 0 for sparse)"
    )
    parser.add_argument("--per-image", action="store_true", help="also keep per-image records in analysis.json")
    parser.add_argument(
        "--paibb-upsampled",
        action="store_true",
        help="also the prior thesis's PAIBB: last layer, head average, bilinearly upsampled to the image size",
    )
    parser.add_argument(
        "--output",
        help="output folder (default: <run dir>/analysis or <run dir>/analysis-random-init, with "
        "-<annotations stem> added on data other than the run's validation set)",
    )


def _analyze(args: argparse.Namespace) -> int:
    from ..attention.sites import select_sites
    from ..data.build import build_dataset, build_loader
    from ..engine.analyze import analyze, load_analysis_model
    from ..engine.device import resolve_device
    from ..models import build_criterion
    from ..report import analysis_markdown, write_analysis

    _check_output("--output", args.output)
    _refuse_model_overrides(args.set)
    if args.zero_threshold is not None and not 0 <= args.zero_threshold < 1:  # NaN fails both
        raise ValueError(
            f"--zero-threshold must be >= 0 and below 1 (a weight at or below it counts as zero; weights are at most "
            f"1, so 1 or more reads every key as zero), got {args.zero_threshold}"
        )
    _check_images_folder(args)
    device = resolve_device(args.device, "--device")
    loaded = load_analysis_model(
        args.checkpoint, args.official, random_init=args.random_init, seed=args.seed, **_official_options(args)
    )
    config = _evaluation_config(loaded.config, args)
    dataset = build_dataset(config, "val")
    _check_categories(loaded.label_map, dataset)
    sites = [site.name for site in select_sites(loaded.model, args.sites)]  # an unknown name lists the model's
    over_grid = [s.name for s in select_sites(loaded.model) if s.keys == "grid" and s.queries == "queries"]
    if args.paibb_upsampled and not set(over_grid) & set(sites):
        fix = f"add one of {over_grid} to --sites" if over_grid else "this model has none (its queries sample points)"
        raise ValueError(
            f"--paibb-upsampled reads maps of object queries over the feature grid, and none of the sites {sites} "
            f"is one: {fix}, or leave --paibb-upsampled out"
        )
    stats, aggregator = analyze(
        loaded.model.to(device),
        build_criterion(config).matcher,
        build_loader(dataset, config, train=False),
        device,
        loaded.label_map,
        sites,
        zero_threshold=args.zero_threshold,
        keep_per_image=args.per_image,
        paibb_upsampled=args.paibb_upsampled,
        progress=_show_progress(args),
    )
    record = {
        "checkpoint": str(loaded.source),
        "data": str(dataset.annotation_file),
        "random_init": args.random_init,
        "seed": args.seed if args.random_init else None,
        "sites": sites,
        "ap": stats,
        "attention": aggregator.result(),
    }
    suffix = other_data_suffix(loaded.config.data.val.annotations, config.data.val.annotations)
    output = Path(args.output) if args.output else analysis_dir(loaded.source, args.random_init, suffix)
    print(analysis_markdown(record))
    for path in write_analysis(record, output):
        print(f"written: {path}")
    return 0


def add_compare_command(commands: Subparsers) -> None:
    parser = _add_command(
        commands,
        "compare",
        "side-by-side Markdown table of several analyses",
        "sparse-detector compare runs/softmax runs/sparsemax --metrics gini paibb",
        _compare,
    )
    parser.add_argument(
        "inputs", nargs="+", metavar="RUN_OR_ANALYSIS_JSON", help="analysis.json files, analysis folders or run dirs"
    )
    parser.add_argument(
        "--metrics",
        nargs="+",
        default=["gini", "zeros_ratio", "paibb"],
        help="metrics to show: gini, zeros_ratio, entropy, support_90, paibb, paibb_small, paibb_medium, "
        "paibb_large, sampling_spread (sampling-point sites)",
    )
    parser.add_argument("--output", help="also write the Markdown table to this file")


def _compare(args: argparse.Namespace) -> int:
    from ..report import COMPARE_METRICS, compare_markdown

    unknown = [m for m in args.metrics if m not in COMPARE_METRICS]
    if unknown:
        close = [f"{name} for {m}" for m in unknown if (name := _closest(m, COMPARE_METRICS))]
        meant = f" (did you mean {', '.join(close)}?)" if close else ""
        raise ValueError(f"unknown --metrics {unknown}{meant}; choose from {list(COMPARE_METRICS)}")
    _check_output("--output", args.output, folder=False, file=("the Markdown file to write the table to", "compare.md"))
    records = read_analyses(args.inputs)
    table = compare_markdown(records, args.metrics)
    print(table)
    if args.output:
        Path(args.output).parent.mkdir(parents=True, exist_ok=True)
        write_atomically(args.output, table)
        print(f"written: {args.output}")
    return 0


def add_predict_command(commands: Subparsers) -> None:
    parser = _add_command(
        commands,
        "predict",
        "detect objects in images: JSON + pictures with boxes",
        "sparse-detector predict --checkpoint runs/mine photos/ --output preds --threshold 0.5",
        _predict,
    )
    _add_model_source(parser)
    parser.add_argument("inputs", nargs="+", help="image files, or folders (their subfolders too)")
    parser.add_argument("--output", default="predictions", help="output folder")
    parser.add_argument(
        "--threshold", type=_score, default=DEFAULT_SCORE_THRESHOLD, help="minimum score of a kept detection"
    )
    parser.add_argument(
        "--format",
        choices=["json", "coco"],
        default="json",
        help="json: predictions.json per image; coco: detections_coco.json in the COCO results format",
    )
    parser.add_argument(
        "--image-ids",
        metavar="COCO.json",
        help="with --format coco: take each image's id from this COCO file (matched by file), so the results "
        "score against its ground truth; default: the position in the input list",
    )
    parser.add_argument("--attention", action="store_true", help="also draw each detection's head-averaged attention")
    _add_overrides(parser, "data.val_size=512 (the images' shorter side, as the model sees them)")


def _predict(args: argparse.Namespace) -> int:
    from ..engine.device import resolve_device
    from ..engine.inference import predict_images

    if args.image_ids and args.format != "coco":
        raise ValueError("--image-ids numbers the COCO results; add --format coco")
    _check_output("--output", args.output)
    _refuse_model_overrides(args.set)  # before minutes of loading a model
    device = resolve_device(args.device, "--device")
    loaded = _load_model(args).with_overrides(args.set)
    draw_attention = None
    if args.attention:
        from ..viz.kinds import detection_attention, object_query_kind

        if (kind := object_query_kind(loaded.model)) != "attention":
            raise ValueError(
                f"predict --attention draws attention over the feature grid, which this model's object queries do "
                f"not have; draw them with: sparse-detector visualize {kind} {args.checkpoint} IMAGE ..."
            )

        def draw_attention(name: str, image: object, queries: list[int]) -> Path | None:
            return detection_attention(loaded, image, queries, Path(args.output) / f"{name}_attention", device)

    result = predict_images(
        loaded,
        args.inputs,
        args.output,
        args.threshold,
        args.device,
        output_format=args.format,
        after_image=draw_attention,
        image_ids=args.image_ids,
    )
    for record in result.records:
        print(f"{record['image']}: {counted(len(record['detections']), 'detection')} -> {record.get('picture', '')}")
        if "attention" in record:
            print(f"  attention of each detection -> {record['attention']}")
    for path in result.written:
        print(f"written: {path}")
    if result.failed:
        print(f"error: {len(result.failed)} image(s) could not be read:", file=sys.stderr)
        for path, why in result.failed.items():
            print(f"  {path}: {why}", file=sys.stderr)
        return 1
    return 0


# ----------------------------------------------------------------------------------------------------------------
# data


def add_data_command(commands: Subparsers) -> None:
    data = commands.add_parser("data", help="dataset tools", formatter_class=_HelpFormatter)
    data.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help="show full tracebacks")
    tools = data.add_subparsers(dest="data_command", required=True, metavar="TOOL")
    for add in DATA_COMMANDS:
        add(tools)


def add_data_shapes_command(tools: Subparsers) -> None:
    parser = _add_command(
        tools,
        "shapes",
        "generate the synthetic shapes dataset (images + COCO JSON)",
        _SHAPES_DATA_COMMAND,
        _data_shapes,
    )
    parser.add_argument("out", help="output folder (images/ and annotations/ inside)")
    parser.add_argument("--num-images", type=_positive_int, default=1000, help="training images")
    parser.add_argument("--num-val", type=_count, default=0, help="also write a held-out val split of this size")
    parser.add_argument("--seed", type=int, default=0, help="seed of the generated images")
    parser.add_argument("--image-size", type=_positive_int, default=128, help="side of the square images in pixels")
    parser.add_argument(
        "--classes", choices=["color", "shape", "shape_color"], default="color", help="what the class labels are"
    )


def _data_shapes(args: argparse.Namespace) -> int:
    from ..data.shapes import SHAPE_SIZES, generate_shapes, generate_shapes_splits

    if args.image_size < SHAPE_SIZES[1]:  # the library's message names its parameters, not this option
        smallest, largest = SHAPE_SIZES
        raise ValueError(
            f"--image-size {args.image_size}: the shapes are {smallest} to {largest} px, so the images need "
            f"--image-size {largest} or more"
        )
    options = {"image_size": args.image_size, "classes": args.classes}
    if args.num_val:
        paths = generate_shapes_splits(args.out, args.num_images, args.num_val, seed=args.seed, **options)
    else:
        paths = {"train": generate_shapes(args.out, args.num_images, seed=args.seed, **options)}
    for split, path in paths.items():
        print(f"{split}: {path}")
    print(f"images: {Path(args.out) / 'images'}")
    return 0


def add_data_import_command(tools: Subparsers) -> None:
    parser = _add_command(
        tools,
        "import",
        "convert VOC, YOLO, CSV or COCO annotations to one COCO JSON (checked, paths usable from anywhere)",
        "sparse-detector data import voc --images my/images --annotations my/xml --out data/all.json",
        _data_import,
    )
    parser.description = (
        f"{parser.description}.\n\nformats:\n"
        "  voc   standard: VOC_ROOT --split trainval; any layout: --annotations XML_DIR [--images DIR] [--list FILE]\n"
        "        (XML matched to images by <filename>, else by file name)\n"
        "  yolo  --images DIR --classes classes.txt|data.yaml [--labels DIR] (one <stem>.txt per image)\n"
        "  csv   CSV_FILE [--images DIR] [--classes FILE]: rows file,x1,y1,x2,y2,label in pixels\n"
        "  coco  JSON_FILE [--images DIR]: ids renumbered where needed, image paths rewritten\n"
        "The output is written only where --out says; image paths in it are absolute or relative to it."
    )
    parser.add_argument("format", choices=["voc", "yolo", "csv", "coco"], help="annotation format")
    parser.add_argument(
        "source", nargs="?", help="VOC root (standard layout), YOLO images folder or export root, CSV file or COCO JSON"
    )
    parser.add_argument("--out", required=True, help="output COCO JSON")
    parser.add_argument("--images", help="images folder")
    parser.add_argument("--annotations", help="voc: folder of XML files (any layout)")
    parser.add_argument("--list", help="voc: file listing the image names (stems) to import")
    parser.add_argument("--split", default="trainval", help="voc standard layout: ImageSets/Main/<split>.txt")
    parser.add_argument(
        "--classes",
        help="yolo: classes.txt or data.yaml (default: one in the images folder or up to 2 above); voc, csv: file "
        "fixing the class order",
    )
    parser.add_argument("--labels", help="yolo: folder of label .txt files (default: found next to the images)")
    parser.add_argument("--exclude-difficult", action="store_true", help="voc: mark difficult objects as ignored")
    parser.add_argument("--no-decode", action="store_true", help="skip decoding every image in the check after import")


# The class names files of YOLO exports (Ultralytics / Roboflow, LabelImg / Label Studio, CVAT), in that order.
YOLO_CLASS_FILES = ("data.yaml", "data.yml", "classes.txt", "obj.names")


def _class_names_file(images: Path) -> Path | None:
    """The class names file a YOLO export keeps in its images folder or up to two folders above it (data.yaml
    beside images/train or train/images), if there is one (said)."""
    for folder in (images, *list(images.resolve().parents)[:2]):
        if found := next((folder / name for name in YOLO_CLASS_FILES if (folder / name).is_file()), None):
            print(f"classes: {found} (--classes picks another file)")
            return found
    return None


def _import_to_coco(args: argparse.Namespace) -> dict:
    """Run the importer of ``args.format``; the written COCO dict."""
    from ..data import importers
    from ..data.coco import DatasetError

    def need(value: str | None, what: str) -> str:
        if not value:
            raise DatasetError(f"data import {args.format} needs {what}; see `sparse-detector data import --help`")
        return value

    if args.format == "voc":
        classes = importers.read_class_names(args.classes) if args.classes else None
        include = not args.exclude_difficult
        if args.annotations:
            return importers.import_voc(args.annotations, args.out, args.images, args.list, classes, include)
        root = need(args.source, "a VOC root (standard layout) or --annotations XML_DIR (any layout)")
        return importers.import_voc_root(root, args.out, args.split, classes, include)
    if args.format == "yolo":
        images = need(args.images or args.source, "--images DIR (or the folder as its source)")
        classes = args.classes or _class_names_file(Path(images))
        return importers.import_yolo(
            images,
            args.out,
            need(classes, f"--classes classes.txt|data.yaml (none in {images} or the 2 folders above)"),
            args.labels,
        )
    if args.format == "csv":
        classes = importers.read_class_names(args.classes) if args.classes else None
        return importers.import_csv(need(args.source, "the CSV file"), args.out, args.images, classes)
    return importers.import_coco(need(args.source, "the COCO JSON file"), args.out, args.images)


def _data_import(args: argparse.Namespace) -> int:
    from ..data.check import check_dataset

    stats = _import_to_coco(args)["info"]["stats"]
    print(f"written: {args.out} ({counted(stats['images'], 'image')}, {counted(stats['annotations'], 'box', 'boxes')})")
    if stats.get("dropped"):
        reasons = ", ".join(f"{count} {reason.replace('_', ' ')}" for reason, count in stats["dropped"].items())
        print(f"dropped: {sum(stats['dropped'].values())} box(es) ({reasons}; listed in the warning above)")
    if category := stats.get("dataset_name_category"):
        print(
            f"left out: category {category['id']} {category['name']!r}, not a class: no box uses it and every other "
            "category names it as its supercategory (a Roboflow export's dataset name)"
        )
    if renumbered := stats.get("renumbered_categories"):
        pairs = ", ".join(f"{old} -> {new}" for old, new in renumbered.items())
        print(f"category ids renumbered ({pairs}): detections and evaluation use the new ids, those of --out")
    if stats.get("sizes_from_files"):
        print(f"sizes from files: {stats['sizes_from_files']} image(s) had no width/height")
    if stats.get("found_by_name"):
        found = stats["found_by_name"]
        print(f"paths: {found} image(s) named by another machine's path (absolute, or in another case), found by name")
    if stats.get("boxes_from_segmentation"):
        print(f"boxes from segmentation: {stats['boxes_from_segmentation']} annotation(s) had no bbox")
    if stats.get("normalised_coordinates"):
        print("coordinates: all within [0, 1], read as fractions of each image's width and height (not pixels)")
    if stats.get("turned_from_exif"):
        print(
            f"EXIF: {counted(stats['turned_from_exif'], 'image')} labelled on the turned view (listed above): boxes "
            "turned to the stored pixels"
        )
    if stats.get("scaled_to_resized_image"):
        print(
            f"sizes: {counted(stats['scaled_to_resized_image'], 'image')} resized after labelling (listed above): "
            "boxes scaled to the image"
        )
    if stats.get("size_differs_from_xml"):
        print(f"sizes: {stats['size_differs_from_xml']} image(s) differ from their XML <size> (listed above)")
    if stats.get("size_differs_from_csv"):
        print(f"sizes: {stats['size_differs_from_csv']} image(s) differ from their CSV width/height (listed above)")
    if stats.get("images_without_xml"):
        print(f"not imported: {stats['images_without_xml']} image(s) without an XML file (listed above)")
    if stats.get("images_without_row"):
        print(f"not imported: {stats['images_without_row']} image(s) without a CSV row (listed above)")
    if stats.get("label_files_without_image"):
        print(f"not imported: {stats['label_files_without_image']} label file(s) without an image (listed above)")
    report = check_dataset(args.out, decode=not args.no_decode)
    print(report.format())
    return 0 if report.ok else 1


def add_data_check_command(tools: Subparsers) -> None:
    parser = _add_command(
        tools,
        "check",
        "read a COCO JSON as training would: every image decoded, every box and id checked, a summary",
        "sparse-detector data check data/all.json",
        _data_check,
    )
    parser.description = (
        f"{parser.description}.\nExit status 0: training would not fail on this data; 1: problems (listed)."
    )
    parser.add_argument("annotations", help="COCO instances JSON")
    parser.add_argument("--images", help="folder its file names are relative to (default: the JSON's folder)")
    parser.add_argument("--no-decode", action="store_true", help="check the JSON only, do not decode the images")
    parser.add_argument("--label-mode", choices=LABEL_MODES, default=DataConfig.label_mode, help="data.label_mode")


def _data_check(args: argparse.Namespace) -> int:
    from ..data.check import check_dataset

    report = check_dataset(args.annotations, args.images, decode=not args.no_decode, label_mode=args.label_mode)
    print(report.format())
    return 0 if report.ok else 1


def add_data_split_command(tools: Subparsers) -> None:
    parser = _add_command(
        tools,
        "split",
        "split one COCO JSON into train / val (/ test) files, seeded, stratified by class",
        "sparse-detector data split data/all.json --val 0.2 --out-dir data/splits",
        _data_split,
    )
    parser.add_argument("annotations", help="COCO instances JSON")
    parser.add_argument("--out-dir", required=True, help="folder for train.json, val.json (, test.json)")
    parser.add_argument(
        "--val", type=float, default=0.2, help="images for val: a fraction (0.2) or a number of images (50)"
    )
    parser.add_argument(
        "--test", type=float, default=0.0, help="images for test: a fraction or a number (0: no test split)"
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the random split")
    parser.add_argument("--images", help="folder its file names are relative to (default: the JSON's folder)")


def _data_split(args: argparse.Namespace) -> int:
    from ..data.coco import load_json
    from ..data.split import split_coco

    paths = split_coco(args.annotations, args.out_dir, args.val, args.test, args.seed, args.images)
    for split, path in paths.items():
        data = load_json(path)
        images, boxes = counted(len(data["images"]), "image"), counted(len(data["annotations"]), "box", "boxes")
        print(f"{split}: {path} ({images}, {boxes})")
    return 0


DATA_COMMANDS: list[Callable[[Subparsers], None]] = [
    add_data_import_command,
    add_data_check_command,
    add_data_split_command,
    add_data_shapes_command,
]


# ----------------------------------------------------------------------------------------------------------------
# quickstart


def add_quickstart_command(commands: Subparsers) -> None:
    parser = _add_command(
        commands,
        "quickstart",
        "the main job: shapes data -> train tiny DETR -> AP table -> attention figures",
        "sparse-detector quickstart --output-dir runs/quick",
        _quickstart,
    )
    parser.add_argument("--output-dir", help="run directory (default: runs/quickstart-<time>)")
    parser.add_argument(
        "--num-train", type=_positive_int, default=QUICKSTART_TRAIN_IMAGES, help="generated training images"
    )
    parser.add_argument(
        "--num-val", type=_positive_int, default=QUICKSTART_VAL_IMAGES, help="generated held-out images"
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the generated images (training: train.seed)")
    parser.add_argument(
        "--config", default="shapes_tiny", help="preset for the shapes data (shapes_tiny, shapes_tiny_deformable)"
    )
    _add_overrides(parser, "train.epochs=4")
    parser.add_argument("--device", help="auto | cpu | cuda | mps")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")


def _quickstart(args: argparse.Namespace) -> int:
    """Generate the shapes data, train the tiny preset, evaluate on held-out images, print the AP table."""
    start = time.perf_counter()  # the time it reports covers importing torch and drawing the figures too
    from ..data.build import absolute_data_paths
    from ..data.shapes import generate_shapes_splits
    from ..engine.checkpoint import run_checkpoints
    from ..engine.device import resolve_device
    from ..engine.trainer import Trainer
    from ..models.backbone import fetch_pretrained_weights

    # a --config, --set or --device mistake, or ImageNet weights that cannot be downloaded, stop here, not after
    # minutes of generating images
    checked = load_config(args.config, args.set)
    resolve_device(args.device or checked.train.device, "--device" if args.device else "train.device")
    fetch_pretrained_weights(checked.model.backbone)
    run_dir = Path(args.output_dir or f"runs/quickstart-{time.strftime('%Y%m%d-%H%M%S')}")
    if run_checkpoints(run := run_dir / QUICKSTART_RUN_DIR):  # before its data set is generated over again
        raise ValueError(
            f"--output-dir {run_dir} already holds a quickstart run ({run}); choose another --output-dir, or train "
            f"that one longer: sparse-detector train --resume {run} --set train.epochs=N"
        )
    data_dir = run_dir / "data"
    print(f"generating {args.num_train} training + {args.num_val} held-out shapes images in {data_dir}")
    paths = generate_shapes_splits(data_dir, args.num_train, args.num_val, seed=args.seed)
    images = data_dir / "images"
    overrides = [
        f"data.train.images={images}",
        f"data.train.annotations={paths['train']}",
        f"data.val.images={images}",
        f"data.val.annotations={paths['val']}",
        *args.set,
    ]
    config = load_config(args.config, overrides)
    config.train.output_dir = str((run_dir / QUICKSTART_RUN_DIR).absolute())
    if args.device:
        config.train.device = args.device
    trainer = Trainer(absolute_data_paths(config), run_dir / QUICKSTART_RUN_DIR, progress=_show_progress(args))
    print(_train_summary(trainer))
    stats = trainer.fit()
    if trainer.stop_signal is not None:  # SIGTERM / Ctrl-C: no AP to print, no figures of a half-trained model
        print(_stopped_message(trainer, run_dir / QUICKSTART_RUN_DIR))
        return 0
    print(f"AP50 {stats['AP50']:.3f}, AP {stats['AP']:.3f} on {args.num_val} held-out generated images")
    _quickstart_figures(run_dir, config)
    run = run_dir / QUICKSTART_RUN_DIR
    print(f"run directory: {run} (for evaluate, analyze, visualize, train --resume); data: {data_dir}")
    print(f"quickstart finished in {(time.perf_counter() - start) / 60:.1f} min")
    return 0


def _quickstart_figures(run_dir: Path, config: Config) -> None:
    """The quickstart's last step: its model's attention (or sampling points) drawn on a few held-out images."""
    from ..models import build_model
    from ..viz.kinds import VisualizeRequest, object_query_kind, visualize

    request = VisualizeRequest(
        runs=[run_dir / QUICKSTART_RUN_DIR],
        output=run_dir / "figures",
        num_images=3,
        max_queries=3,
        device=config.train.device,
    )
    files = visualize(object_query_kind(build_model(config)), request)
    print(
        f"attention of 3 held-out images (up to 3 queries scoring >= {request.threshold} each, else the best one): "
        f"{counted(len(files), 'figure')} in {request.output}/"
    )


# ----------------------------------------------------------------------------------------------------------------
# visualize / study


def add_visualize_command(commands: Subparsers) -> None:
    parser = _add_command(
        commands,
        "visualize",
        "figures: attention maps, sampling points, data, matching, training curves, alpha, diagnostics, sparsity",
        "sparse-detector visualize attention runs/mine --num-images 2 --max-queries 3",
        _visualize,
    )
    parser.description = (
        f"{parser.description}.\nRUN is a run directory or checkpoint (for `data`, also a config). INPUTS are "
        "images to draw on (default: the first --num-images of the run's validation data) and, for curves / "
        "sparsity / alpha / diagnostics / compare, more runs."
    )
    parser.add_argument("kind", choices=FIGURE_KIND_NAMES, metavar="KIND", help=", ".join(FIGURE_KIND_NAMES))
    parser.add_argument("run", metavar="RUN", help="run directory or checkpoint (data: also a config)")
    parser.add_argument("inputs", nargs="*", metavar="INPUT", help="images (files or folders) or more runs")
    parser.add_argument("--output", help="output folder (default: RUN/figures)")
    parser.add_argument("--format", choices=FIGURE_FORMATS, default="png", help="file format")
    parser.add_argument(
        "--num-images", type=_positive_int, default=3, help="validation images drawn when none are given"
    )
    parser.add_argument("--queries", type=int, nargs="+", help="attention: these queries (default: score >= threshold)")
    parser.add_argument(
        "--threshold", type=_score, default=DEFAULT_SCORE_THRESHOLD, help="attention: minimum score of a drawn query"
    )
    parser.add_argument(
        "--max-queries",
        type=_count,
        default=10,
        help="attention, deformable: at most this many queries per image, best first (0: all)",
    )
    parser.add_argument(
        "--pixels", type=_pixel, nargs="+", metavar="X,Y", help="encoder, deformable: query pixels (image coordinates)"
    )
    parser.add_argument("--site", help="attention site to draw (default: the model's site for the kind)")
    parser.add_argument("--official", action="store_true", help="RUN is an official checkpoint (of --arch)")
    _add_official_reading(parser)
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N | mps")
    _add_overrides(parser, "data.val.annotations=FILE.json (data settings of RUN's config)")


def _pixel(text: str) -> tuple[float, float]:
    try:
        x, y = (float(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a pixel as X,Y (e.g. 40,60), got {text!r}") from None
    return x, y


def _is_run(path: Path) -> bool:
    """A checkpoint file or a run directory (its config or a checkpoint); any other folder is one of images."""
    if path.is_dir():
        return (path / CONFIG_FILE).is_file() or holds_checkpoint(path)
    return path.suffix in CHECKPOINT_SUFFIXES


def _visualize(args: argparse.Namespace) -> int:
    from ..engine.device import resolve_device
    from ..engine.inference import image_files
    from ..viz.kinds import VisualizeRequest, visualize

    resolve_device(args.device, "--device")

    run = Path(args.run)
    extra = [Path(p) for p in args.inputs]
    if args.kind in RUN_ONLY_KINDS:  # these read runs' logs, never images: every input is a run
        runs, images = [run, *extra], []
    else:
        runs = [run, *(p for p in extra if _is_run(p))]
        images = [p for p in extra if not _is_run(p)]
    if args.set and args.kind in RUN_ONLY_KINDS:
        raise ValueError(f"--set: visualize {args.kind} reads the runs' records, not their config; leave --set out")
    _refuse_model_overrides(args.set)
    if args.kind == "data" and run.stem in PRESET_DATA_HINTS and not _is_run(run):  # a preset whose data we make
        hint = _missing_data_hint(args.run, load_config(args.run, args.set), splits=("train",))  # draws train
        if hint:
            raise FileNotFoundError(hint)
    output = Path(args.output) if args.output else (run if run.is_dir() else run.parent) / "figures"
    _check_output("--output", output)
    request = VisualizeRequest(
        runs=runs,
        output=output,
        images=image_files(images, skip=output) if images else [],
        fmt=args.format,
        num_images=args.num_images,
        queries=args.queries,
        threshold=args.threshold,
        max_queries=args.max_queries,
        left_out_advice="--max-queries 0 draws them all, --threshold or --queries choose others",
        pixels=args.pixels,
        site=args.site,
        official=args.official,
        official_options=_official_options(args),
        device=args.device,
        overrides=args.set,
    )
    for path in visualize(args.kind, request):
        print(f"written: {path}")
    return 0


def add_study_command(commands: Subparsers) -> None:
    parser = _add_command(
        commands,
        "study",
        "a matrix of attention maps x seeds: train, evaluate, analyze, figures, report.md + report.html",
        "sparse-detector study shapes_maps --output-dir runs/study --set train.epochs=10",
        _study,
    )
    parser.description = (
        f"{parser.description}.\nCONFIG is a study YAML or an embedded study (shapes_maps). A finished run is never "
        "redone; an unfinished one resumes; a failed one is reported and the others still run."
    )
    parser.add_argument("config", metavar="CONFIG", help="study YAML or embedded study name")
    parser.add_argument("--output-dir", help="study directory (default: the study's output_dir)")
    _add_overrides(parser, "train.epochs=10 (applied to every run)")
    parser.add_argument("--device", help="auto | cpu | cuda | mps (default: the preset's train.device)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")


def _study(args: argparse.Namespace) -> int:
    from ..study import StudyStopped, load_study, run_study

    study = load_study(args.config, args.set)
    try:
        result = run_study(study, args.output_dir, device=args.device or "", progress=_show_progress(args))
    except StudyStopped as stopped:
        print(f"[study] {stopped}")
        return 0
    if result.complete:
        return 0
    missing = [*map(str, result.failed_runs), *(f"figure {kind}" for kind in result.figures_not_drawn)]
    print(f"error: the report lacks {'; '.join(missing)} (see report.md for why)", file=sys.stderr)
    return 1


# ----------------------------------------------------------------------------------------------------------------
# entry point

COMMANDS: list[Callable[[Subparsers], None]] = [
    add_train_command,
    add_evaluate_command,
    add_analyze_command,
    add_compare_command,
    add_predict_command,
    add_data_command,
    add_quickstart_command,
    add_visualize_command,
    add_study_command,
]


def build_parser() -> argparse.ArgumentParser:
    """The ``sparse-detector`` argument parser with every command."""
    parser = _Parser(
        prog="sparse-detector",
        description="DETR-family detectors with sparse attention: train, evaluate, predict, analyze and draw "
        "attention.",
        epilog="run `sparse-detector COMMAND --help` for a command's options and an example",
    )
    parser.add_argument("--debug", action="store_true", help="show full tracebacks")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    for add in COMMANDS:
        add(commands)
    return parser


def _close_progress_bars() -> None:
    """End any open tqdm bar's line so an error message starts on a line of its own."""
    tqdm_module = sys.modules.get("tqdm")
    if tqdm_module is not None:
        for bar in list(getattr(tqdm_module.tqdm, "_instances", ())):
            bar.close()


def _launched_context() -> DistributedContext | None:
    """This process's place in a run started by torchrun / srun as several processes; ``None`` otherwise (without
    importing torch.distributed when no launcher set the environment)."""
    if not {"WORLD_SIZE", "SLURM_NTASKS"} & os.environ.keys():
        return None
    from ..engine.distributed import context_from_environment

    context = context_from_environment()
    return context if context.enabled else None


def _several_processes_refusal(command: str) -> tuple[str, bool] | None:
    """Under torchrun / srun with several processes, every command but ``train`` would run once per process over the
    same files: the message saying so and whether this process prints it (rank 0); ``None`` when all is well."""
    if command == "train" or (context := _launched_context()) is None:
        return None
    message = (
        f"sparse-detector {command} runs in one process, but it was started as {context.world_size} processes "
        f"(torchrun / srun); start it without the launcher (`python -m sparse_detector {command} ...`, or srun "
        "--ntasks 1) — only train uses several processes"
    )
    return message, context.is_main


def _print_error(message: str, compare: bool = True) -> None:
    """``error: message`` and the --debug hint on stderr; of a distributed run's processes that all fail alike, only
    rank 0 prints it (another rank's own error is printed, marked with its rank; ``compare=False``: always)."""
    context = _launched_context()
    if context is not None and compare:
        from ..engine.distributed import prints_its_error

        if not prints_its_error(message):
            return
    label = f"(rank {context.rank}) " if context is not None and not context.is_main else ""
    print(f"error: {label}{message}\n(run with --debug for the full traceback)", file=sys.stderr)


class Terminated(KeyboardInterrupt):
    """SIGTERM while a command starts up or runs outside training (which finishes its step and checkpoints on its
    own): the command stops as on Ctrl-C, with one line, not killed silently."""

    signum = signal.SIGTERM


@contextlib.contextmanager
def _sigterm_stops_like_ctrl_c() -> Iterator[None]:
    """While a command runs, SIGTERM raises :class:`Terminated` (the previous handler is back afterwards)."""
    if threading.current_thread() is not threading.main_thread():  # only the main thread may set handlers
        yield
        return

    def stop(signum: int, frame: object) -> None:
        raise Terminated(signal.Signals(signum).name)

    previous = signal.signal(signal.SIGTERM, stop)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def main(argv: list[str] | None = None) -> int:
    """Run the command line ``argv`` (default: ``sys.argv``); returns the exit status."""
    args = build_parser().parse_args(argv)
    if refusal := _several_processes_refusal(args.command):
        message, prints = refusal
        if prints:
            print(f"error: {message}", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    # torch's level once its import sets it; a SIGTERM during that import printed torch's INFO lines at exit
    logging.getLogger("torch").setLevel(logging.WARNING)
    from tqdm.contrib.logging import logging_redirect_tqdm  # log lines print above progress bars, not into them

    with logging_redirect_tqdm(), _sigterm_stops_like_ctrl_c():
        if args.debug:
            return args.func(args)
        try:
            return args.func(args)
        except (FileExistsError, NotADirectoryError) as err:  # a file where an output folder should be made
            _close_progress_bars()
            path = Path(err.filename or "")
            blocker = _file_in_the_way(path)
            message = _in_the_way_message("output", path, blocker) if err.filename and blocker else str(err)
            _print_error(message)
            return 2
        except (ValueError, OSError, RuntimeError, FloatingPointError) as err:  # ours name the file / key / value
            _close_progress_bars()
            message, peer_gone = str(err), PEER_GONE in str(err)
            if peer_gone:  # gloo's words when another process of a distributed run died
                message = (
                    "another process of this distributed run stopped or stopped answering (its own error is printed "
                    "above, or in the launcher's report of the failed rank); this one stops too"
                )
            _print_error(message, compare=not peer_gone)  # the failed peer cannot compare
            return 2
        except KeyboardInterrupt as stop:
            _close_progress_bars()
            trainer = sys.modules.get("sparse_detector.engine.trainer")  # imported if training raised it
            if trainer is not None and isinstance(stop, trainer.StoppedAtOnce):
                print(f"stopped at once by a second {stop}; the last complete checkpoint is kept", file=sys.stderr)
                return 128 + stop.signum
            command = " ".join(filter(None, (args.command, getattr(args, "data_command", None))))
            cause = "SIGTERM" if isinstance(stop, Terminated) else "Ctrl-C"
            print(f"interrupted: sparse-detector {command} stopped before it finished ({cause})", file=sys.stderr)
            return 128 + getattr(stop, "signum", signal.SIGINT)
