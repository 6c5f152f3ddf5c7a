"""``sparse-detector quickstart``: shapes data, a tiny model trained on it, its AP and attention figures."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from ..config import Config, load_config
from ..runs import QUICKSTART_RUN_DIR
from ..text import counted, decimals
from .outputs import show_progress
from .parsing import Subparsers, add_command, add_overrides, positive_int
from .presets import QUICKSTART_TRAIN_IMAGES, QUICKSTART_VAL_IMAGES
from .summaries import stopped_message, train_summary


def add_quickstart_command(commands: Subparsers) -> None:
    parser = add_command(
        commands,
        "quickstart",
        "the main job: shapes data -> train tiny DETR -> AP table -> attention figures",
        "sparse-detector quickstart --output-dir runs/quick",
        _quickstart,
    )
    parser.add_argument("--output-dir", help="run directory (default: runs/quickstart-<time>)")
    parser.add_argument(
        "--num-train", type=positive_int, default=QUICKSTART_TRAIN_IMAGES, help="generated training images"
    )
    parser.add_argument("--num-val", type=positive_int, default=QUICKSTART_VAL_IMAGES, help="generated held-out images")
    parser.add_argument("--seed", type=int, default=0, help="seed of the generated images (training: train.seed)")
    parser.add_argument(
        "--config", default="shapes_tiny", help="preset for the shapes data (shapes_tiny, shapes_tiny_deformable)"
    )
    add_overrides(parser, "train.epochs=4")
    parser.add_argument("--device", help="auto | cpu | cuda | cuda:N | mps (default: the preset's train.device)")
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
    trainer = Trainer(absolute_data_paths(config), run_dir / QUICKSTART_RUN_DIR, progress=show_progress(args))
    print(train_summary(trainer))
    stats = trainer.fit()
    if trainer.stop_signal is not None:  # SIGTERM / Ctrl-C: no AP to print, no figures of a half-trained model
        print(stopped_message(trainer, run_dir / QUICKSTART_RUN_DIR))
        return 0
    print(f"AP50 {decimals(stats['AP50'])}, AP {decimals(stats['AP'])} on {args.num_val} held-out generated images")
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
