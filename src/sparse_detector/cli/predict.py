"""``sparse-detector predict``: detections of a checkpoint on images, as JSON and pictures."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..config import DEFAULT_SCORE_THRESHOLD
from ..text import counted
from .model_source import add_model_source, load_model, refuse_model_overrides
from .outputs import check_output, report_unreadable
from .parsing import Subparsers, add_command, add_overrides, score_threshold


def add_predict_command(commands: Subparsers) -> None:
    parser = add_command(
        commands,
        "predict",
        "detect objects in images: JSON + pictures with boxes",
        "sparse-detector predict --checkpoint runs/mine photos/ --output preds --threshold 0.5",
        _predict,
    )
    add_model_source(parser)
    parser.add_argument("inputs", nargs="+", help="image files, or folders (their subfolders too)")
    parser.add_argument("--output", default="predictions", help="output folder")
    parser.add_argument(
        "--threshold", type=score_threshold, default=DEFAULT_SCORE_THRESHOLD, help="minimum score of a kept detection"
    )
    parser.add_argument(
        "--format",
        choices=["json", "coco"],
        default="json",
        help="json: predictions.json per image; coco: detections_coco.json in the COCO results format (with "
        "--threshold 0 it scores as evaluate does)",
    )
    parser.add_argument(
        "--image-ids",
        metavar="COCO.json",
        help="with --format coco: take each image's id from this COCO file (matched by file), so the results "
        "score against its ground truth; default: the position in the input list",
    )
    parser.add_argument("--attention", action="store_true", help="also draw each detection's head-averaged attention")
    add_overrides(parser, "data.val_size=512 (the images' shorter side, as the model sees them)")


def _predict(args: argparse.Namespace) -> int:
    from ..engine.device import resolve_device
    from ..engine.inference import predict_images

    if args.image_ids and args.format != "coco":
        raise ValueError("--image-ids numbers the COCO results; add --format coco")
    check_output("--output", args.output)
    refuse_model_overrides(args.set)  # before minutes of loading a model
    device = resolve_device(args.device, "--device")
    loaded = load_model(args).with_overrides(args.set)
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
    return report_unreadable(result.failed)
