"""``sparse-detector visualize``: figures of runs, checkpoints and images, one kind at a time."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..config import DEFAULT_SCORE_THRESHOLD, load_config
from ..runs import is_run_or_checkpoint
from .model_source import add_official_reading, official_options, refuse_model_overrides
from .outputs import check_output, report_unreadable
from .parsing import Subparsers, add_command, add_overrides, non_negative_int, positive_int, score_threshold
from .presets import PRESET_DATA_HINTS, missing_data_hint

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
RUN_ONLY_KINDS = ("alpha", "curves", "diagnostics", "sparsity")  # figures of runs' logs and analyses, no images
MAX_QUERIES = 10  # --max-queries' default
NUM_IMAGES = 3  # --num-images' default
QUERY_KINDS = ("attention", "deformable")  # the kinds that choose their queries by score
#: The drawing options only some kinds read: given to another kind, they are an error, not silently dropped.
OPTION_KINDS = {
    "--queries": QUERY_KINDS,
    "--threshold": QUERY_KINDS,
    "--max-queries": QUERY_KINDS,
    "--pixels": ("encoder", "deformable"),
    "--site": ("attention", "compare", "deformable", "encoder"),
    "--num-images": tuple(kind for kind in FIGURE_KIND_NAMES if kind not in RUN_ONLY_KINDS),
}


def add_visualize_command(commands: Subparsers) -> None:
    parser = add_command(
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
        "--num-images",
        type=positive_int,
        default=NUM_IMAGES,
        help="validation images drawn when none are given (the kinds that draw images)",
    )
    parser.add_argument(
        "--queries", type=int, nargs="+", help="attention, deformable: these queries (default: score >= threshold)"
    )
    parser.add_argument(
        "--threshold",
        type=score_threshold,
        default=DEFAULT_SCORE_THRESHOLD,
        help="attention, deformable: minimum score of a drawn query",
    )
    parser.add_argument(
        "--max-queries",
        type=non_negative_int,
        default=MAX_QUERIES,
        help="attention, deformable: at most this many queries per image, best first (0: all)",
    )
    parser.add_argument(
        "--pixels", type=_pixel, nargs="+", metavar="X,Y", help="encoder, deformable: query pixels (image coordinates)"
    )
    parser.add_argument("--site", help="attention site to draw (default: the model's site for the kind)")
    parser.add_argument("--official", action="store_true", help="RUN is an official checkpoint (of --arch)")
    add_official_reading(parser)
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N | mps")
    add_overrides(parser, "data.val.annotations=FILE.json (data settings of RUN's config)")


def _refuse_unread_options(args: argparse.Namespace) -> None:
    """Raise where an option given differs from its default but the kind does not read it (``OPTION_KINDS``)."""
    given = {
        "--queries": args.queries is not None,
        "--threshold": args.threshold != DEFAULT_SCORE_THRESHOLD,
        "--max-queries": args.max_queries != MAX_QUERIES,
        "--pixels": args.pixels is not None,
        "--site": args.site is not None,
        "--num-images": args.num_images != NUM_IMAGES,
    }
    unread = [option for option, kinds in OPTION_KINDS.items() if given[option] and args.kind not in kinds]
    if unread:
        takes = "; ".join(f"{option}: {', '.join(OPTION_KINDS[option])}" for option in unread)
        raise ValueError(
            f"visualize {args.kind} does not read {', '.join(unread)}; leave it out (the kinds that do: {takes})"
        )


def _pixel(text: str) -> tuple[float, float]:
    try:
        x, y = (float(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a pixel as X,Y (e.g. 40,60), got {text!r}") from None
    return x, y


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
        runs = [run, *(p for p in extra if is_run_or_checkpoint(p))]
        images = [p for p in extra if not is_run_or_checkpoint(p)]
    if args.set and args.kind in RUN_ONLY_KINDS:
        raise ValueError(f"--set: visualize {args.kind} reads the runs' records, not their config; leave --set out")
    _refuse_unread_options(args)
    refuse_model_overrides(args.set)
    # a preset whose data we make
    if args.kind == "data" and run.stem in PRESET_DATA_HINTS and not is_run_or_checkpoint(run):
        hint = missing_data_hint(args.run, load_config(args.run, args.set), splits=("train",))  # draws train
        if hint:
            raise FileNotFoundError(hint)
    output = Path(args.output) if args.output else (run if run.is_dir() else run.parent) / "figures"
    check_output("--output", output)
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
        official_options=official_options(args),
        device=args.device,
        overrides=args.set,
    )
    for path in visualize(args.kind, request):
        print(f"written: {path}")
    return report_unreadable(request.unreadable)
