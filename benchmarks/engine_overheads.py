"""Time spent around the model: reading annotation files, COCO evaluation, `predict`'s pictures, VOC import, the
data commands' start-up, each against the code before the change.

    git archive 5e4484f src | tar -x -C /tmp/base       # the code before (the parts but predict need it)
    PYTHONPATH=src python benchmarks/engine_overheads.py --threads 1 --repeats 10 --reference-src /tmp/base/src
    PYTHONPATH=src python benchmarks/engine_overheads.py --parts evaluation --reference-src /tmp/base/src

Each part times the reference (what the code did before) and ours in turn, ``--repeats`` times after one warm-up
of each, and prints the medians and their ratio:

- ``predict``: :func:`predict_images` on ``--images`` photos (the BCCD 640x480 JPEGs when ``../shared`` is there,
  else generated 640x480 images) with a random-init ``small_data`` model; reference: pictures at PIL's default PNG
  compression (level 6), ours: level 1. Also the pictures' total size.
- ``dataset-read``: :class:`CocoDetection` and its ``coco`` ground truth on a generated COCO-like JSON
  (``--coco-images`` images of 7 boxes, 80 categories), the reference's ``data/coco.py`` loaded from
  ``--reference-src`` into this process; checks that both read the same targets.
- ``evaluation``: :class:`CocoEvaluator` (set-up from the ground-truth dict, ``update``, ``summarize``) on
  ``--eval-images`` generated images of 7 boxes with 100 random detections each (COCO val2017's size at 5000), the
  reference's ``engine/coco_eval.py`` loaded from ``--reference-src``; checks that both give the same numbers.
- ``detections``: ``CocoEvaluator.results()`` (every detection as a dict, the COCO results format) of the same
  detections, the reference's method and ours; checks that both give the same list.
- ``voc-import``: ``import_voc_root`` of BCCD (``../shared``), the reference's ``data/importers/voc.py`` loaded
  from ``--reference-src``; checks that both write the same JSON.
- ``data-commands``: wall time of ``python -m sparse_detector data check`` on a generated data set, as a fresh
  process (what a user waits for), with ``--reference-src`` (a checkout before the change) and this ``src``.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import json
import logging
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import torch

from sparse_detector import build_model, load_config
from sparse_detector.data import generate_shapes
from sparse_detector.data.coco import CocoDetection
from sparse_detector.data.importers import import_voc_root
from sparse_detector.data.labels import LabelMap
from sparse_detector.engine import inference
from sparse_detector.engine.coco_eval import CocoEvaluator

SRC = Path(__file__).resolve().parents[1] / "src"
BCCD = SRC.parents[1] / "shared" / "data" / "bccd" / "JPEGImages"


def interleaved(cases: dict[str, Callable[[], object]], repeats: int) -> dict[str, float]:
    """Median seconds of each case, the cases run in turn (one warm-up run each first)."""
    times: dict[str, list[float]] = {name: [] for name in cases}
    for round_ in range(repeats + 1):
        for name, case in cases.items():
            start = time.perf_counter()
            case()
            if round_:
                times[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in times.items()}


def print_table(title: str, seconds: dict[str, float], column: str = "", cells: dict[str, str] | None = None) -> None:
    """A Markdown table of the medians and their ratios to the first case, with an optional extra ``column``."""
    reference = next(iter(seconds.values()))
    print(f"\n{title}\n\n| case | median s | ratio |{f' {column} |' if column else ''}")
    print(f"|---|---:|---:|{'---:|' if column else ''}")
    for name, value in seconds.items():
        print(f"| {name} | {value:.3f} | {value / reference:.2f} |{f' {cells[name]} |' if cells else ''}")


def predict_part(args: argparse.Namespace, scratch: Path) -> None:
    if BCCD.is_dir():
        images = sorted(BCCD.glob("*.jpg"))[: args.images]
    else:
        generate_shapes(scratch / "photos", args.images, image_size=640)
        images = sorted((scratch / "photos" / "images").glob("*.png"))
    config = load_config("small_data", ["model.backbone.pretrained=false", "model.num_classes=3"])
    torch.manual_seed(0)
    model = build_model(config).eval()
    loaded = inference.LoadedModel(model, config, LabelMap.from_categories({1: "a", 2: "b", 3: "c"}), SRC)
    sizes: dict[str, str] = {}

    def run(level: int, name: str) -> Callable[[], object]:
        def predict() -> None:
            inference.PICTURE_COMPRESS_LEVEL = level
            out = scratch / f"pred{level}"
            inference.predict_images(loaded, images, out, threshold=0.0, device="cpu")
            sizes[name] = f"{sum(p.stat().st_size for p in out.glob('*.png')) / 2**20:.1f} MB"

        return predict

    names = {6: "reference (PNG level 6)", 1: "ours (PNG level 1)"}
    seconds = interleaved({name: run(level, name) for level, name in names.items()}, args.repeats)
    inference.PICTURE_COMPRESS_LEVEL = 1
    title = f"predict_images on {len(images)} images (threshold 0: every query drawn)"
    print_table(title, seconds, "pictures", sizes)


def data_commands_part(args: argparse.Namespace, scratch: Path) -> None:
    generate_shapes(scratch / "shapes", 32)
    annotations = str(scratch / "shapes" / "annotations" / "train.json")
    images = str(scratch / "shapes" / "images")
    command = [sys.executable, "-m", "sparse_detector", "data", "check", annotations, "--images", images]
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads))

    def run(src: Path) -> Callable[[], object]:
        return lambda: subprocess.run(command, env={**env, "PYTHONPATH": str(src)}, check=True, capture_output=True)

    cases = {"reference": run(args.reference_src.resolve()), "ours": run(SRC)}
    print_table("`data check` of 32 generated images, a fresh process each", interleaved(cases, args.repeats))


def synthetic_coco(path: Path, images: int, boxes_per_image: int, image_file: Path) -> None:
    """A COCO instances JSON of COCO-like size and shape (80 categories, some boxes reaching past their image);
    every image entry names ``image_file``."""
    rng = random.Random(0)
    entries = [{"id": i, "file_name": str(image_file), "width": 640, "height": 480} for i in range(1, images + 1)]
    annotations = []
    for image_id in range(1, images + 1):
        for _ in range(boxes_per_image):
            x, y, w, h = rng.uniform(0, 600), rng.uniform(0, 440), rng.uniform(1, 80), rng.uniform(1, 80)
            box = {"image_id": image_id, "category_id": rng.randint(1, 80), "bbox": [x, y, w, h], "area": w * h}
            annotations.append({"id": len(annotations) + 1, **box, "iscrowd": 0})
    categories = [{"id": c, "name": f"category {c}"} for c in range(1, 81)]
    path.write_text(json.dumps({"images": entries, "annotations": annotations, "categories": categories}))


def dataset_digest(dataset: object) -> str:
    """What a dataset read: its targets, clipped boxes and counts (to check that the reference reads the same)."""
    records = [(r.boxes.tobytes(), r.labels.tobytes(), r.area.tobytes()) for r in dataset._records]
    read = (dataset.num_clipped, dataset.num_crowd, sorted(dataset._clipped_bboxes.items()), records)
    return hashlib.sha256(repr(read).encode()).hexdigest()[:16]


def reference_module(src: Path, relative: str) -> ModuleType:
    """The module ``sparse_detector/<relative>`` of the checkout ``src``, loaded into this process beside ours (in
    our package, so its relative imports find our modules)."""
    package, _, stem = f"sparse_detector/{relative}".removesuffix(".py").rpartition("/")
    name = f"{package.replace('/', '.')}.reference_{stem}"
    spec = importlib.util.spec_from_file_location(name, src / "sparse_detector" / relative)
    module = sys.modules[name] = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def synthetic_evaluation(images: int, scratch: Path) -> tuple[dict, dict[int, dict[str, torch.Tensor]], dict]:
    """Generated ground truth (7 boxes an image), 100 random detections per image and the label map."""
    annotations = scratch / "eval.json"
    synthetic_coco(annotations, images, 7, scratch / "unused.png")
    generator = torch.Generator().manual_seed(0)
    predictions = {}
    for image_id in range(1, images + 1):
        corners = torch.rand(100, 4, generator=generator) * 300
        corners[:, 2:] += corners[:, :2]
        labels = torch.randint(80, (100,), generator=generator)
        predictions[image_id] = {"scores": torch.rand(100, generator=generator), "labels": labels, "boxes": corners}
    return json.loads(annotations.read_text()), predictions, {label: label + 1 for label in range(80)}


def evaluation_part(args: argparse.Namespace, scratch: Path) -> None:
    reference = reference_module(args.reference_src, "engine/coco_eval.py")
    ground_truth, predictions, label_map = synthetic_evaluation(args.eval_images, scratch)
    stats: dict[str, list[dict]] = {"reference": [], "ours": []}

    def run(name: str, evaluator_class: type) -> Callable[[], object]:
        def evaluate() -> None:
            evaluator = evaluator_class(ground_truth, label_map)
            evaluator.update(predictions)
            stats[name].append(evaluator.summarize())

        return evaluate

    cases = {"reference": run("reference", reference.CocoEvaluator), "ours": run("ours", CocoEvaluator)}
    seconds = interleaved(cases, args.repeats)
    assert all(s == stats["reference"][0] for s in stats["reference"] + stats["ours"]), "the AP differs"
    title = f"CocoEvaluator: set-up, update, evaluate of {args.eval_images} images x 100 detections"
    print_table(title + " (the same 12 numbers)", seconds)


def detections_part(args: argparse.Namespace, scratch: Path) -> None:
    reference = reference_module(args.reference_src, "engine/coco_eval.py")
    ground_truth, predictions, label_map = synthetic_evaluation(args.eval_images, scratch)
    evaluator = CocoEvaluator(ground_truth, label_map)
    evaluator.update(predictions)
    results = {"reference": lambda: reference.CocoEvaluator.results(evaluator), "ours": evaluator.results}
    assert results["reference"]() == results["ours"](), "the detections differ"
    title = f"CocoEvaluator.results() (the COCO results format) of {args.eval_images * 100} detections (the same)"
    print_table(title, interleaved(results, args.repeats))


def voc_import_part(args: argparse.Namespace, scratch: Path) -> None:
    if not BCCD.is_dir():
        print("\nvoc-import: skipped (needs ../shared/data/bccd)")
        return
    reference = reference_module(args.reference_src, "data/importers/voc.py")
    logging.disable(logging.WARNING)  # BCCD's two point-like boxes, dropped at every import
    outputs: dict[str, set[str]] = {"reference": set(), "ours": set()}

    def run(name: str, import_voc_root: Callable) -> Callable[[], object]:
        def convert() -> None:
            import_voc_root(BCCD.parent, scratch / f"{name}.json")
            outputs[name].add((scratch / f"{name}.json").read_text())

        return convert

    cases = {"reference": run("reference", reference.import_voc_root), "ours": run("ours", import_voc_root)}
    seconds = interleaved(cases, args.repeats)
    assert len(outputs["ours"]) == 1 and outputs["ours"] == outputs["reference"], "the JSON differs"
    print_table("import_voc_root of BCCD trainval (292 XML files; the same JSON)", seconds)


def dataset_read_part(args: argparse.Namespace, scratch: Path) -> None:
    reference = reference_module(args.reference_src, "data/coco.py")
    generate_shapes(scratch / "one", 1)
    image = next((scratch / "one" / "images").glob("*.png"))
    annotations = scratch / "big.json"
    synthetic_coco(annotations, args.coco_images, 7, image)
    logging.disable(logging.WARNING)  # the clipped boxes' warning, once per read
    digests: dict[str, set[str]] = {"reference": set(), "ours": set()}

    def read(name: str, dataset_class: type) -> Callable[[], object]:
        def construct() -> None:
            dataset = dataset_class(None, annotations)
            dataset.coco  # noqa: B018 (the evaluation ground truth, built on first use)
            digests[name].add(dataset_digest(dataset))

        return construct

    cases = {"reference": read("reference", reference.CocoDetection), "ours": read("ours", CocoDetection)}
    seconds = interleaved(cases, args.repeats)
    assert len(digests["ours"]) == 1 and digests["ours"] == digests["reference"], digests
    title = f"CocoDetection + its `coco` ground truth, {args.coco_images} images, {args.coco_images * 7} boxes"
    print_table(title + " (the same targets: digests equal)", seconds)


PARTS = {
    "predict": predict_part,
    "data-commands": data_commands_part,
    "dataset-read": dataset_read_part,
    "evaluation": evaluation_part,
    "detections": detections_part,
    "voc-import": voc_import_part,
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--parts", nargs="+", choices=list(PARTS), default=list(PARTS))
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--images", type=int, default=8, help="images for the predict part")
    parser.add_argument("--eval-images", type=int, default=5000, help="images of the evaluation part")
    parser.add_argument("--coco-images", type=int, default=20000, help="images of the dataset-read part")
    parser.add_argument("--reference-src", type=Path, help="src folder of a checkout before the change")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, threads {args.threads}, repeats {args.repeats}")
    with tempfile.TemporaryDirectory(prefix="engine_overheads_") as scratch:
        for part in args.parts:
            if args.reference_src is None and part != "predict":
                print(f"\n{part}: skipped (give --reference-src, a src folder from before the change)")
                continue
            PARTS[part](args, Path(scratch))


if __name__ == "__main__":
    main()
