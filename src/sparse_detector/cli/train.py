"""``sparse-detector train``: a new run from a config or preset, or a run resumed from its directory."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..config import Config, load_config, load_run_config
from ..logs import log_for_other_rank
from ..runs import CONFIG_FILE
from .outputs import show_progress
from .parsing import Subparsers, add_command, add_overrides
from .presets import missing_data_hint
from .summaries import stopped_message, train_summary

DEFAULT_TRAIN_CONFIG = "shapes_tiny"  # train's --config when none is given


def add_train_command(commands: Subparsers) -> None:
    parser = add_command(
        commands,
        "train",
        "train a model from a YAML config or preset",
        "sparse-detector train --config shapes_tiny --set train.epochs=30 --output-dir runs/mine",
        _train,
    )
    parser.add_argument(
        "--config", help="YAML file or preset name (detr_r50, shapes_tiny, ...) of a new run (default: shapes_tiny)"
    )
    add_overrides(parser, "train.epochs=5")
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


def _finished_run_message(run_dir: Path, config: Config) -> str:
    """'' if the run has epochs left, else how to extend it."""
    from ..engine.checkpoint import run_checkpoints

    checkpoints = run_checkpoints(run_dir)
    if not checkpoints:
        raise FileNotFoundError(  # its config.yaml: `train --output-dir` alone would start the default preset
            f"{run_dir} has no checkpoint to resume from (it stopped before writing its first); start it again with "
            f"its own config: sparse-detector train --config {run_dir / CONFIG_FILE} --output-dir {run_dir}"
        )
    done = checkpoints[0].epoch  # the newest one's completed epochs
    if done < config.train.epochs:
        return ""
    return (
        f"run {run_dir} already finished: {done} of train.epochs={config.train.epochs} epochs done. To train it "
        f"longer: sparse-detector train --resume {run_dir} --set train.epochs={done + max(done // 2, 1)}"
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
        config = load_run_config(run_dir, args.set)
        config.train.output_dir = str(run_dir.absolute())
        message = _finished_run_message(run_dir, config)
        if message:
            if main_process:
                print(message)
            return 0 if args.resume == "auto" else 1  # a restart of a job that already finished has nothing to do
    else:
        config = load_config(preset, args.set)
        hint = missing_data_hint(preset, config)
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
        progress=show_progress(args),
        init_from=args.init_from if resume_dir is None else None,  # a resumed run has its own weights
    )
    if main_process:
        print(train_summary(trainer))
    trainer.fit()
    shutdown_distributed()
    if not main_process:
        return 0
    if trainer.stop_signal is not None:
        print(stopped_message(trainer, run_dir))
    print(f"run directory: {run_dir}")
    return 0
