"""``evaluate`` (COCO AP of a checkpoint), ``analyze`` (AP and attention metrics) and ``compare`` (a table of
analyses), with the data options evaluate and analyze share."""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING

from ..config import Config, override_config, site_activation
from ..files import write_atomically
from ..runs import analysis_dir, eval_file, other_data_suffix, read_analyses
from ..text import closest_name, counted
from .model_source import add_model_source, load_model, official_options, refuse_model_overrides
from .outputs import check_output, show_progress
from .parsing import Subparsers, add_command, add_overrides, non_negative_int, positive_int

if TYPE_CHECKING:
    from ..data.coco import CocoDetection
    from ..data.labels import LabelMap

log = logging.getLogger(__name__)


def _add_evaluation_data(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--images", help="image folder (default: the checkpoint config's data.val.images)")
    parser.add_argument(
        "--annotations", "--data", dest="annotations", help="COCO instances JSON (default: data.val.annotations)"
    )
    parser.add_argument("--batch-size", type=positive_int, help="images per batch (default: train.eval_batch_size)")
    parser.add_argument("--workers", type=non_negative_int, help="data-loading processes (default: data.num_workers)")
    parser.add_argument(
        "--no-progress", action="store_true", help="no progress bar (never one when the output is not a terminal)"
    )
    add_overrides(parser)


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


def add_evaluate_command(commands: Subparsers) -> None:
    parser = add_command(
        commands,
        "evaluate",
        "COCO AP of a checkpoint (ours or official) on a COCO-format dataset",
        "sparse-detector evaluate --checkpoint runs/mine --annotations data/splits/val.json",
        _evaluate,
    )
    add_model_source(parser)
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
    """A checkpoint scored on a data set whose category ids name other classes would count one class as another:
    an error for ours, a warning for an official one (whose data may name COCO's classes in its own words)."""
    from ..data.coco import DatasetError

    if differences := label_map.differences(dataset.labels):
        raise DatasetError(
            f"the checkpoint's categories are not those of {dataset.annotation_file} (checkpoint vs data: "
            f"{'; '.join(differences[:5])}), so one class would be scored as another; use data with the categories "
            "(ids and names) the checkpoint was trained on"
        )
    if differences := label_map.coco_differences(dataset.labels):
        log.warning(
            "the official checkpoint predicts COCO's classes by their ids, and %s names %s of them otherwise (data "
            "vs COCO: %s): where these are other classes, its AP, and the matching that PAIBB reads, take one class "
            "for another; for a baseline on this data, fine-tune it first (train --init-from)",
            dataset.annotation_file,
            len(differences),
            "; ".join(differences[:5]),
        )


def _evaluate(args: argparse.Namespace) -> int:
    from ..data.build import build_dataset, build_loader
    from ..data.coco import DatasetError
    from ..engine.coco_eval import format_per_class_table, format_table
    from ..engine.device import resolve_device
    from ..engine.evaluate import run_evaluation

    check_output("--output", args.output, folder=False, file=("the metrics JSON file to write", "eval.json"))
    check_output("--save-detections", args.save_detections, folder=False, file=("a JSON file", "detections.json"))
    refuse_model_overrides(args.set)
    _check_images_folder(args)
    device = resolve_device(args.device, "--device")
    loaded = load_model(args)
    config = _evaluation_config(loaded.config, args)
    dataset = build_dataset(config, "val")
    _check_categories(loaded.label_map, dataset)
    loader = build_loader(dataset, config, train=False)
    evaluation = run_evaluation(loaded.model.to(device), None, loader, device, loaded.label_map, show_progress(args))
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
    parser = add_command(
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
    add_model_source(parser)
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
    from ..engine.analyze import analyze, check_matchable, load_analysis_model
    from ..engine.device import resolve_device
    from ..models import build_criterion
    from ..report import analysis_markdown, write_analysis

    check_output("--output", args.output)
    refuse_model_overrides(args.set)
    if args.zero_threshold is not None and not 0 <= args.zero_threshold < 1:  # NaN fails both
        raise ValueError(
            f"--zero-threshold must be >= 0 and below 1 (a weight at or below it counts as zero; weights are at most "
            f"1, so 1 or more reads every key as zero), got {args.zero_threshold}"
        )
    _check_images_folder(args)
    device = resolve_device(args.device, "--device")
    loaded = load_analysis_model(
        args.checkpoint, args.official, random_init=args.random_init, seed=args.seed, **official_options(args)
    )
    config = _evaluation_config(loaded.config, args)
    dataset = build_dataset(config, "val")
    _check_categories(loaded.label_map, dataset)
    check_matchable(loaded.label_map, dataset)
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
        progress=show_progress(args),
    )
    record = {
        "checkpoint": str(loaded.source),
        "data": str(dataset.annotation_file),
        "random_init": args.random_init,
        "seed": args.seed if args.random_init else None,
        "sites": sites,
        "maps": {site: site_activation(loaded.config.model.attention, site) for site in sites},
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
    parser = add_command(
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
        close = [f"{name} for {m}" for m in unknown if (name := closest_name(m, COMPARE_METRICS))]
        meant = f" (did you mean {', '.join(close)}?)" if close else ""
        raise ValueError(f"unknown --metrics {unknown}{meant}; choose from {list(COMPARE_METRICS)}")
    check_output("--output", args.output, folder=False, file=("the Markdown file to write the table to", "compare.md"))
    records = read_analyses(args.inputs)
    table = compare_markdown(records, args.metrics)
    print(table)
    if args.output:
        Path(args.output).parent.mkdir(parents=True, exist_ok=True)
        write_atomically(args.output, table)
        print(f"written: {args.output}")
    return 0
