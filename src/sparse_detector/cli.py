"""The ``sparse-detector`` command line: train, evaluate, predict, analyze, compare, data, quickstart."""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import torch
from PIL import Image

from .attention.sites import select_sites
from .config import Config, dump_config, load_config, override_config
from .data import generate_shapes, generate_shapes_splits, make_transforms, voc_to_coco
from .data.build import build_dataset, build_loader
from .engine.analyze import analyze, load_analysis_model
from .engine.checkpoint import run_checkpoints
from .engine.coco_eval import format_table
from .engine.device import resolve_device
from .engine.distributed import context_from_environment, shutdown_distributed
from .engine.evaluate import evaluate
from .engine.inference import category_id, category_name, load_trained_model
from .engine.trainer import StoppedAtOnce, Trainer
from .models import build_criterion, build_model
from .models.postprocess import postprocessor_for
from .report import COMPARE_METRICS, DEFAULT_COMPARE_METRICS, analysis_markdown, compare_markdown, write_analysis
from .runs import CONFIG_FILE, EVAL_FILE, analysis_dir, read_analyses
from .viz.boxes import draw_boxes

log = logging.getLogger("sparse_detector")

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"}

# The main job's data: 128 px images, 1-3 shapes of 24-56 px, classes = colours (see configs/shapes_tiny.yaml).
QUICKSTART_TRAIN_IMAGES = 1200
QUICKSTART_VAL_IMAGES = 200


def _print_config(config: Config) -> None:
    print("# resolved config\n" + dump_config(config))


def _train(args: argparse.Namespace) -> int:
    output_dir = args.output_dir
    if args.resume == "auto":  # resume the run in --output-dir when it has a checkpoint, else start it
        config = load_config(args.config, args.set)
        output_dir = output_dir or config.train.output_dir
        resume_dir = Path(output_dir) if run_checkpoints(Path(output_dir)) else None
    else:
        resume_dir = Path(args.resume) if args.resume else None
    if resume_dir is not None:
        run_dir = resume_dir
        config = load_config(run_dir / CONFIG_FILE, args.set)
    else:
        config = load_config(args.config, args.set)
        run_dir = Path(output_dir or config.train.output_dir)
    if args.device:
        config.train.device = args.device
    main_process = context_from_environment().is_main  # under torchrun / srun only rank 0 prints
    if main_process:
        _print_config(config)
    trainer = Trainer(
        config, run_dir, resume=resume_dir is not None, progress=not args.no_progress, init_from=args.init_from
    )
    trainer.fit()
    shutdown_distributed()
    if not main_process:
        return 0
    if trainer.stop_signal is not None:
        name = signal.Signals(trainer.stop_signal).name
        print(
            f"stopped by {name} at epoch {trainer.epoch + 1}, step {trainer.step}; checkpoint written: "
            f"{trainer.last_checkpoint}\nresume with: sparse-detector train --resume {run_dir}"
        )
    print(f"run directory: {run_dir}")
    return 0


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


def _official_options(args: argparse.Namespace) -> dict:
    """How to read an --official checkpoint (through the model registry)."""
    return {"arch": args.arch, "nheads": args.nheads, "dilation": args.dilation} if args.official else {}


def _evaluate(args: argparse.Namespace) -> int:
    loaded = load_trained_model(args.checkpoint, official=args.official, **_official_options(args))
    config = _evaluation_config(loaded.config, args)
    device = resolve_device(args.device)
    dataset = build_dataset(config, "val")
    stats = evaluate(
        loaded.model.to(device), None, build_loader(dataset, config, train=False), device, loaded.label_map, True
    )
    print(f"{loaded.source} on {dataset.annotation_file} ({len(dataset)} images)")
    print(format_table(stats))
    output = Path(args.output) if args.output else loaded.source.parent / EVAL_FILE
    output.write_text(
        json.dumps({"checkpoint": str(loaded.source), "data": str(dataset.annotation_file), **stats}, indent=2)
    )
    print(f"written: {output}")
    return 0


def _analyze(args: argparse.Namespace) -> int:
    loaded = load_analysis_model(
        args.checkpoint, args.official, random_init=args.random_init, seed=args.seed, **_official_options(args)
    )
    config = _evaluation_config(loaded.config, args)
    device = resolve_device(args.device)
    dataset = build_dataset(config, "val")
    sites = [site.name for site in select_sites(loaded.model, args.sites)]  # an unknown name lists the model's
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
        progress=True,
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
    output = Path(args.output) if args.output else analysis_dir(loaded.source, args.random_init)
    print(analysis_markdown(record))
    for path in write_analysis(record, output):
        print(f"written: {path}")
    return 0


def _compare(args: argparse.Namespace) -> int:
    records = read_analyses(args.inputs)
    table = compare_markdown(records, args.metrics)
    print(table)
    if args.output:
        Path(args.output).write_text(table)
        print(f"written: {args.output}")
    return 0


def _image_files(inputs: Sequence[str]) -> list[Path]:
    files: list[Path] = []
    for item in map(Path, inputs):
        if item.is_dir():
            files += sorted(p for p in item.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        elif item.is_file():
            files.append(item)
        else:
            raise FileNotFoundError(f"input {item} is neither an image file nor a folder")
    if not files:
        raise FileNotFoundError(f"no images ({', '.join(sorted(IMAGE_SUFFIXES))}) in {list(inputs)}")
    return files


@torch.no_grad()
def _predict(args: argparse.Namespace) -> int:
    loaded = load_trained_model(args.checkpoint, official=args.official, **_official_options(args))
    if args.attention:
        from .viz.kinds import object_query_kind

        if (kind := object_query_kind(loaded.model)) != "attention":
            raise ValueError(
                f"predict --attention draws attention over the feature grid, which this model's object queries do "
                f"not have; draw them with: sparse-detector visualize {kind} {args.checkpoint} IMAGE ..."
            )
    data = loaded.config.data
    transforms = make_transforms(False, val_size=data.val_size, max_size=data.max_size, normalize=data.normalize)
    device = resolve_device(args.device)
    model = loaded.model.to(device)
    out_dir = Path(args.output)
    out_dir.mkdir(parents=True, exist_ok=True)
    records = []
    for path in _image_files(args.inputs):
        try:
            image = Image.open(path).convert("RGB")
        except OSError as err:
            raise OSError(f"cannot read image {path}: {err}") from None
        empty = {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)}
        tensor, _ = transforms(image, empty)
        outputs = model([tensor.to(device)])
        result = postprocessor_for(model)(outputs, torch.tensor([[image.height, image.width]], device=device))[0]
        keep = result["scores"] >= args.threshold
        boxes, labels, scores = (result[k][keep].cpu() for k in ("boxes", "labels", "scores"))
        names = [category_name(loaded.label_map, int(label)) for label in labels]
        detections = [
            {
                "label": int(label),
                "category_id": category_id(loaded.label_map, int(label)),
                "category": name,
                "score": round(float(score), 4),
                "box_xyxy": [round(float(v), 2) for v in box],
            }
            for box, label, score, name in zip(boxes, labels, scores, names, strict=True)
        ]
        picture = out_dir / f"{path.stem}_pred.png"
        draw_boxes(image, boxes.tolist(), labels.tolist(), names, scores.tolist()).save(picture)
        records.append({"image": str(path), "width": image.width, "height": image.height, "detections": detections})
        print(f"{path}: {len(detections)} detections -> {picture}")
        if args.attention:
            from .viz.kinds import detection_attention

            queries = keep.nonzero().flatten().tolist()
            if figure := detection_attention(loaded, tensor, queries, out_dir / f"{path.stem}_attention", device):
                print(f"  attention of each detection -> {figure}")
    (out_dir / "predictions.json").write_text(json.dumps(records, indent=2))
    print(f"written: {out_dir / 'predictions.json'}")
    return 0


def _data_shapes(args: argparse.Namespace) -> int:
    options = {"image_size": args.image_size, "classes": args.classes}
    if args.num_val:
        paths = generate_shapes_splits(args.out, args.num_images, args.num_val, seed=args.seed, **options)
    else:
        paths = {"train": generate_shapes(args.out, args.num_images, seed=args.seed, **options)}
    for split, path in paths.items():
        print(f"{split}: {path}")
    print(f"images: {Path(args.out) / 'images'}")
    return 0


def _data_voc2coco(args: argparse.Namespace) -> int:
    out = Path(args.out) if args.out else Path(args.voc_root) / f"{args.split}_coco.json"
    coco = voc_to_coco(args.voc_root, split=args.split, out_file=out, include_difficult=not args.exclude_difficult)
    stats = coco["info"]["stats"]
    print(f"{out}: {stats['images']} images, {stats['annotations']} boxes {stats['per_class']}")
    print(f"dropped: {stats['dropped']}")
    return 0


def _quickstart(args: argparse.Namespace) -> int:
    """Generate the shapes data, train the tiny preset, evaluate on held-out images, print the AP table."""
    start = time.perf_counter()
    run_dir = Path(args.output_dir or f"runs/quickstart-{time.strftime('%Y%m%d-%H%M%S')}")
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
    if args.device:
        config.train.device = args.device
    _print_config(config)
    stats = Trainer(config, run_dir / "train", progress=not args.no_progress).fit()
    minutes = (time.perf_counter() - start) / 60
    print(f"quickstart finished in {minutes:.1f} min: AP50 {stats['AP50']:.3f}, AP {stats['AP']:.3f}")
    print(f"(evaluated on {args.num_val} held-out generated images)")
    _quickstart_figures(run_dir, config)
    print(f"run directory: {run_dir}")
    return 0


def _quickstart_figures(run_dir: Path, config: Config) -> None:
    """The quickstart's last step: its model's attention (or sampling points) drawn on a few held-out images."""
    from .viz.kinds import VisualizeRequest, object_query_kind, visualize

    request = VisualizeRequest(
        runs=[run_dir / "train"], output=run_dir / "figures", num_images=3, max_queries=3, device=config.train.device
    )
    files = visualize(object_query_kind(build_model(config)), request)
    print(
        f"attention of 3 held-out images (up to 3 queries scoring >= {request.threshold} each, else the best one): "
        f"{len(files)} figures in {request.output}/"
    )


def _pixel(text: str) -> tuple[float, float]:
    try:
        x, y = (float(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a pixel as X,Y (e.g. 40,60), got {text!r}") from None
    return x, y


def _visualize(args: argparse.Namespace) -> int:
    from .viz.kinds import VisualizeRequest, visualize

    run = Path(args.run)
    extra = [Path(p) for p in args.inputs]
    runs = [run, *(p for p in extra if p.is_dir() or p.suffix in (".pt", ".pth"))]
    images = [p for p in extra if p not in runs]
    output = Path(args.output) if args.output else (run if run.is_dir() else run.parent) / "figures"
    request = VisualizeRequest(
        runs=runs,
        output=output,
        images=_image_files([str(p) for p in images]) if images else [],
        fmt=args.format,
        num_images=args.num_images,
        queries=args.queries,
        threshold=args.threshold,
        max_queries=args.max_queries,
        pixels=args.pixels,
        site=args.site,
        official=args.official,
        device=args.device,
    )
    for path in visualize(args.kind, request):
        print(f"written: {path}")
    return 0


def _add_visualize_parser(commands: argparse._SubParsersAction) -> None:
    from .viz.figure import FORMATS
    from .viz.kinds import FIGURE_KINDS

    vis = commands.add_parser(
        "visualize",
        help="figures: attention maps, data, matching, training curves, alpha, diagnostics, sparsity",
        description="RUN is a run directory or checkpoint (for `data`, also a config). INPUTS are images to draw on "
        "(default: the first --num-images of the run's validation data) and, for curves / sparsity / alpha / "
        "diagnostics / compare, more runs.",
    )
    vis.add_argument("kind", choices=sorted(FIGURE_KINDS), metavar="KIND", help=", ".join(sorted(FIGURE_KINDS)))
    vis.add_argument("run", metavar="RUN")
    vis.add_argument("inputs", nargs="*", metavar="INPUT", help="images (files or folders) or more runs")
    vis.add_argument("--output", help="output folder (default: RUN/figures)")
    vis.add_argument("--format", choices=FORMATS, default="png")
    vis.add_argument("--num-images", type=int, default=3, help="validation images drawn when none are given")
    vis.add_argument("--queries", type=int, nargs="+", help="attention: these queries (default: score >= threshold)")
    vis.add_argument("--threshold", type=float, default=0.5, help="attention: minimum score of a drawn query")
    vis.add_argument("--max-queries", type=int, default=0, help="attention: at most this many, best first (0: all)")
    vis.add_argument("--pixels", type=_pixel, nargs="+", metavar="X,Y", help="encoder: query pixels (image coords)")
    vis.add_argument("--site", help="attention site to draw (default: the model's site for the kind)")
    vis.add_argument("--official", action="store_true", help="RUN is an official DETR checkpoint")
    vis.add_argument("--device", default="auto")
    vis.set_defaults(func=_visualize)


def _study(args: argparse.Namespace) -> int:
    from .study import load_study, run_study

    study = load_study(args.config, args.set)
    run_study(study, args.output_dir, device=args.device or "", progress=not args.no_progress)
    return 0


def _add_study_parser(commands: argparse._SubParsersAction) -> None:
    study = commands.add_parser(
        "study",
        help="a matrix of attention maps x seeds: train, evaluate, analyze, figures, report.md + report.html",
        description="CONFIG is a study YAML or an embedded study (shapes_maps). A finished run is never redone; "
        "an unfinished one resumes; a failed one is reported and the others still run.",
    )
    study.add_argument("config", metavar="CONFIG")
    study.add_argument("--output-dir", help="study directory (default: the study's output_dir)")
    study.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="config overrides for every run")
    study.add_argument("--device", help="auto | cpu | cuda | mps (default: the preset's train.device)")
    study.add_argument("--no-progress", action="store_true")
    study.set_defaults(func=_study)


def _add_model_source(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", required=True, help="run directory or checkpoint file")
    parser.add_argument("--official", action="store_true", help="the checkpoint is an official one (COCO ids)")
    parser.add_argument("--arch", default="detr", help="registered model (model.arch) of an --official checkpoint")
    parser.add_argument("--nheads", type=int, default=8, help="attention heads of an official checkpoint")
    parser.add_argument("--dilation", action="store_true", help="an official DC5 checkpoint")
    parser.add_argument("--device", default="auto")


def _add_evaluation_data(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--images", help="image folder (default: the checkpoint config's data.val.images)")
    parser.add_argument(
        "--annotations", "--data", dest="annotations", help="COCO instances JSON (default: data.val.annotations)"
    )
    parser.add_argument("--batch-size", type=int)
    parser.add_argument("--workers", type=int)
    parser.add_argument(
        "--set", nargs="*", default=[], metavar="KEY=VALUE", help="config overrides, e.g. data.val_size=512"
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sparse-detector", description=__doc__)
    parser.add_argument("--debug", action="store_true", help="show full tracebacks")
    commands = parser.add_subparsers(dest="command", required=True)

    train = commands.add_parser("train", help="train a model from a YAML config or preset")
    train.add_argument("--config", default="shapes_tiny", help="YAML file or preset name (detr_r50, shapes_tiny, ...)")
    train.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="overrides, e.g. train.epochs=5")
    train.add_argument("--output-dir", help="run directory (default: train.output_dir)")
    train.add_argument(
        "--resume",
        metavar="RUN_DIR|auto",
        help="continue a run from its newest valid checkpoint; 'auto' continues --output-dir if it holds one "
        "(else starts it): the same command line serves every restart of a preempted job",
    )
    train.add_argument(
        "--init-from",
        metavar="CKPT",
        help="fine-tune: start from these weights (ours or official); class heads "
        "are re-initialised when the class count differs",
    )
    train.add_argument("--device", help="auto | cpu | cuda | cuda:N | mps (default: train.device)")
    train.add_argument("--no-progress", action="store_true")
    train.set_defaults(func=_train)

    ev = commands.add_parser("evaluate", help="COCO AP of a checkpoint (ours or official) on a COCO-format dataset")
    _add_model_source(ev)
    _add_evaluation_data(ev)
    ev.add_argument("--output", help="where to write the metrics JSON (default: beside the checkpoint)")
    ev.set_defaults(func=_evaluate)

    an = commands.add_parser(
        "analyze",
        help="COCO AP and attention metrics (Gini, zeros ratio, entropy, support, PAIBB) in one evaluation pass",
        description="Writes analysis.json, analysis.csv and analysis.md. The data set is a COCO instances JSON "
        "(--annotations, alias --data) with its image folder (--images); each defaults to the checkpoint "
        "config's data.val.",
    )
    _add_model_source(an)
    _add_evaluation_data(an)
    an.add_argument(
        "--sites",
        nargs="+",
        help="attention sites to record (default: all the model's sites; PAIBB needs a site of object queries over "
        "the feature grid)",
    )
    an.add_argument(
        "--random-init", action="store_true", help="same architecture with fresh weights (untrained baseline)"
    )
    an.add_argument("--seed", type=int, default=0, help="seed of the --random-init weights")
    an.add_argument(
        "--zero-threshold", type=float, help="zeros-ratio threshold (default: 1e-6 for softmax sites, 0 for sparse)"
    )
    an.add_argument("--per-image", action="store_true", help="also keep per-image records in analysis.json")
    an.add_argument(
        "--paibb-upsampled",
        action="store_true",
        help="also the prior thesis's PAIBB: last layer, head average, bilinearly upsampled to the image size",
    )
    an.add_argument("--output", help="output folder (default: <run dir>/analysis or <run dir>/analysis-random-init)")
    an.set_defaults(func=_analyze)

    cmp = commands.add_parser("compare", help="side-by-side Markdown table of several analyses")
    cmp.add_argument(
        "inputs", nargs="+", metavar="RUN_OR_ANALYSIS_JSON", help="analysis.json files, analysis folders or run dirs"
    )
    cmp.add_argument(
        "--metrics",
        nargs="+",
        choices=COMPARE_METRICS,
        default=list(DEFAULT_COMPARE_METRICS),
        help="metrics to show (default: %(default)s)",
    )
    cmp.add_argument("--output", help="also write the Markdown table to this file")
    cmp.set_defaults(func=_compare)

    pr = commands.add_parser("predict", help="detect objects in images: JSON + pictures with boxes")
    _add_model_source(pr)
    pr.add_argument("inputs", nargs="+", help="image files or folders")
    pr.add_argument("--output", default="predictions", help="output folder")
    pr.add_argument("--threshold", type=float, default=0.5, help="minimum score of a kept detection")
    pr.add_argument("--attention", action="store_true", help="also draw each detection's head-averaged attention")
    pr.set_defaults(func=_predict)

    data = commands.add_parser("data", help="dataset tools").add_subparsers(dest="data_command", required=True)
    shapes = data.add_parser("shapes", help="generate the synthetic shapes dataset (images + COCO JSON)")
    shapes.add_argument("out")
    shapes.add_argument("--num-images", type=int, default=1000)
    shapes.add_argument("--num-val", type=int, default=0, help="also write a held-out val split of this size")
    shapes.add_argument("--seed", type=int, default=0)
    shapes.add_argument("--image-size", type=int, default=128)
    shapes.add_argument("--classes", choices=["color", "shape", "shape_color"], default="color")
    shapes.set_defaults(func=_data_shapes)
    voc = data.add_parser("voc2coco", help="convert a Pascal VOC folder to COCO JSON")
    voc.add_argument("voc_root")
    voc.add_argument("--split", default="trainval", help="ImageSets/Main/<split>.txt")
    voc.add_argument("--out", help="output JSON (default: <voc_root>/<split>_coco.json)")
    voc.add_argument("--exclude-difficult", action="store_true", help="mark difficult objects as ignored")
    voc.set_defaults(func=_data_voc2coco)

    quick = commands.add_parser("quickstart", help="the main job: shapes data -> train tiny DETR -> AP table")
    quick.add_argument("--output-dir", help="run directory (default: runs/quickstart-<time>)")
    quick.add_argument("--num-train", type=int, default=QUICKSTART_TRAIN_IMAGES)
    quick.add_argument("--num-val", type=int, default=QUICKSTART_VAL_IMAGES)
    quick.add_argument("--seed", type=int, default=0)
    quick.add_argument(
        "--config", default="shapes_tiny", help="preset for the shapes data (shapes_tiny, shapes_tiny_deformable)"
    )
    quick.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="config overrides")
    quick.add_argument("--device", help="auto | cpu | cuda | mps")
    quick.add_argument("--no-progress", action="store_true")
    quick.set_defaults(func=_quickstart)
    _add_visualize_parser(commands)
    _add_study_parser(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if args.debug:
        return args.func(args)
    try:
        return args.func(args)
    except (ValueError, OSError, RuntimeError, FloatingPointError) as err:  # ours name the file / key / value at fault
        print(f"error: {err}\n(run with --debug for the full traceback)", file=sys.stderr)
        return 2
    except StoppedAtOnce as stop:
        print(f"stopped at once by a second {stop}; the last complete checkpoint is kept", file=sys.stderr)
        return 128 + stop.signum


if __name__ == "__main__":
    sys.exit(main())
