"""COCO evaluation: parity with pycocotools on real data, accumulation invariances, errors."""

from __future__ import annotations

import contextlib
import copy
import gc
import io
import json
import multiprocessing as mp
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.distributed as dist
from hypothesis import given, settings
from hypothesis import strategies as st
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval
from torch import Tensor

from sparse_detector.engine.coco_eval import STAT_NAMES, CocoEvaluator, format_per_class_table, format_table

TINY_COCO = (
    Path(__file__).resolve().parents[1].parent
    / "shared"
    / "data"
    / "tiny_coco"
    / "annotations"
    / "instances_train2017.json"
)
BACKENDS = ["faster_coco_eval", "pycocotools"]

Predictions = dict[int, dict[str, Tensor]]

# Three images, categories 3 and 7 (non-contiguous ids); image 3 has no objects.
SMALL_GT: dict[str, Any] = {
    "images": [
        {"id": 1, "width": 100, "height": 100},
        {"id": 2, "width": 200, "height": 100},
        {"id": 3, "width": 50, "height": 50},
    ],
    "categories": [{"id": 3, "name": "cat"}, {"id": 7, "name": "dog"}],
    "annotations": [
        {"id": 1, "image_id": 1, "category_id": 3, "bbox": [10, 10, 30, 30], "area": 900, "iscrowd": 0},
        {"id": 2, "image_id": 1, "category_id": 7, "bbox": [50, 20, 40, 60], "area": 2400, "iscrowd": 0},
        {"id": 3, "image_id": 2, "category_id": 7, "bbox": [0, 0, 150, 100], "area": 15000, "iscrowd": 0},
    ],
}


def _prediction(boxes_xyxy: list[list[float]], labels: list[int], scores: list[float]) -> dict[str, Tensor]:
    return {
        "boxes": torch.tensor(boxes_xyxy, dtype=torch.float32).reshape(-1, 4),
        "labels": torch.tensor(labels, dtype=torch.int64),
        "scores": torch.tensor(scores, dtype=torch.float32),
    }


def _perfect_small_predictions() -> Predictions:
    """The ground truth of SMALL_GT as xyxy detections with raw category ids."""
    predictions: Predictions = {}
    for image in SMALL_GT["images"]:
        anns = [a for a in SMALL_GT["annotations"] if a["image_id"] == image["id"]]
        boxes = [[x, y, x + w, y + h] for x, y, w, h in (a["bbox"] for a in anns)]
        predictions[image["id"]] = _prediction(boxes, [a["category_id"] for a in anns], [0.9] * len(anns))
    return predictions


@pytest.fixture(scope="module")
def tiny_coco() -> dict[str, Any]:
    if not TINY_COCO.exists():
        pytest.skip(f"tiny_coco ground truth not found at {TINY_COCO}")
    with open(TINY_COCO) as f:
        return json.load(f)


def _synthetic_predictions(dataset: dict[str, Any], seed: int = 0) -> tuple[Predictions, list[int]]:
    """Jittered GT boxes (some with wrong labels, some duplicated), false positives and random scores.

    Returns the predictions (raw category ids as labels) and the images deliberately left out of them.
    Some images get zero boxes.
    """
    rng = np.random.default_rng(seed)
    cat_ids = sorted(c["id"] for c in dataset["categories"])
    anns_by_image: dict[int, list[dict[str, Any]]] = {}
    for ann in dataset["annotations"]:
        anns_by_image.setdefault(ann["image_id"], []).append(ann)
    predictions: Predictions = {}
    omitted = []
    for image in dataset["images"]:
        kind = rng.random()
        if kind < 0.1:
            omitted.append(image["id"])
            continue
        boxes, labels = [], []
        if kind >= 0.2:  # otherwise: given with zero boxes
            for ann in anns_by_image.get(image["id"], []):
                x, y, w, h = ann["bbox"]
                for _ in range(rng.choice([0, 1, 1, 1, 2])):
                    dx, dy, dw, dh = rng.normal(0.0, 0.08, size=4) * [w, h, w, h]
                    boxes.append([x + dx, y + dy, x + dx + max(w + dw, 1.0), y + dy + max(h + dh, 1.0)])
                    wrong = rng.random() < 0.15
                    labels.append(int(rng.choice(cat_ids)) if wrong else ann["category_id"])
            for _ in range(rng.integers(0, 5)):  # false positives
                x1, y1 = rng.uniform(0, [image["width"] - 2, image["height"] - 2])
                x2, y2 = rng.uniform([x1 + 1, y1 + 1], [image["width"], image["height"]])
                boxes.append([x1, y1, x2, y2])
                labels.append(int(rng.choice(cat_ids)))
        predictions[image["id"]] = _prediction(boxes, labels, rng.uniform(0.05, 1.0, len(labels)).tolist())
    return predictions, omitted


def _reference_stats(
    dataset: dict[str, Any], predictions: Predictions, img_ids: list[int], cat_ids: list[int] | None = None
) -> np.ndarray:
    """pycocotools' own COCOeval on the same detections, converted here independently (of ``cat_ids`` only, if
    given)."""
    results = [
        {"image_id": image_id, "category_id": label, "bbox": [x1, y1, x2 - x1, y2 - y1], "score": score}
        for image_id, p in predictions.items()
        for (x1, y1, x2, y2), label, score in zip(
            p["boxes"].tolist(), p["labels"].tolist(), p["scores"].tolist(), strict=True
        )
    ]
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO()
        gt.dataset = copy.deepcopy(dataset)
        gt.createIndex()
        evaluator = COCOeval(gt, gt.loadRes(results), iouType="bbox")
        evaluator.params.imgIds = img_ids
        if cat_ids is not None:
            evaluator.params.catIds = cat_ids
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    return evaluator.stats


_whole_boxes = st.tuples(st.integers(0, 60), st.integers(0, 60), st.integers(1, 40), st.integers(1, 40))


@st.composite
def _small_detection_sets(draw) -> tuple[dict[str, Any], Predictions]:
    """1-4 images of ground truth (crowd boxes, images without any) and detections with tied scores."""
    images = [{"id": i, "width": 100, "height": 100} for i in range(1, draw(st.integers(1, 4)) + 1)]
    annotations, predictions = [], {}
    for image in images:
        for x, y, w, h in draw(st.lists(_whole_boxes, max_size=4)):
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": image["id"],
                    "category_id": draw(st.sampled_from([3, 7])),
                    "bbox": [x, y, w, h],
                    "area": w * h,
                    "iscrowd": draw(st.sampled_from([0, 0, 0, 1])),
                }
            )
        scores, labels = st.sampled_from([0.1, 0.5, 0.9]), st.sampled_from([3, 7])
        detections = draw(st.lists(st.tuples(_whole_boxes, scores, labels), max_size=6))
        boxes = [[x, y, x + w, y + h] for (x, y, w, h), _, _ in detections]
        predictions[image["id"]] = _prediction(boxes, [c for *_, c in detections], [s for _, s, _ in detections])
    return {**SMALL_GT, "images": images, "annotations": annotations}, predictions


@settings(max_examples=25, deadline=None, derandomize=True)
@given(detection_set=_small_detection_sets(), backend=st.sampled_from(BACKENDS))
def test_matches_pycocotools_on_small_random_sets(detection_set: tuple[dict[str, Any], Predictions], backend: str):
    """Crowd boxes, images without ground truth or detections, and tied scores score as pycocotools scores them."""
    dataset, predictions = detection_set
    if not any(len(p["labels"]) for p in predictions.values()):
        return  # pycocotools' loadRes cannot take zero results (test_no_predictions_give_what_cocoeval_gives)
    evaluator = CocoEvaluator(dataset, backend=backend)
    evaluator.update(predictions)
    ours = evaluator.summarize()
    reference = _reference_stats(dataset, predictions, sorted(predictions))
    np.testing.assert_allclose([ours[name] for name in STAT_NAMES], reference, atol=1e-12)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("all_images", [False, True], ids=["updated-images", "all-gt-images"])
def test_matches_pycocotools_on_tiny_coco(tiny_coco: dict[str, Any], backend: str, all_images: bool) -> None:
    predictions, omitted = _synthetic_predictions(tiny_coco)
    assert omitted and any(len(p["scores"]) == 0 for p in predictions.values())
    all_ids = [image["id"] for image in tiny_coco["images"]]
    evaluator = CocoEvaluator(TINY_COCO, backend=backend)
    evaluator.update(predictions)
    stats = evaluator.summarize(img_ids=all_ids if all_images else None)
    expected = _reference_stats(tiny_coco, predictions, all_ids if all_images else sorted(predictions))
    assert list(stats) == list(STAT_NAMES)
    np.testing.assert_allclose(list(stats.values()), expected, rtol=0, atol=1e-12)  # measured: 1.1e-16
    assert 0.2 < stats["AP"] < 0.9  # the synthetic detections are neither useless nor perfect


@pytest.mark.parametrize("backend", BACKENDS)
def test_per_class_ap_matches_pycocotools_restricted_to_the_category(tiny_coco: dict[str, Any], backend: str) -> None:
    """Each category's AP, AP50 and AP75 are pycocotools' AP, AP50 and AP75 evaluated on that category alone."""
    predictions, _ = _synthetic_predictions(tiny_coco)
    evaluator = CocoEvaluator(TINY_COCO, backend=backend)
    evaluator.update(predictions)
    per_class = evaluator.evaluate().per_class
    with_boxes = [row for row in per_class.values() if row["boxes"]]
    assert len(with_boxes) >= 5
    for row in with_boxes[:8]:
        expected = _reference_stats(tiny_coco, predictions, sorted(predictions), [row["category_id"]])
        got = [row["AP"], row["AP50"], row["AP75"]]
        np.testing.assert_allclose(got, expected[:3], rtol=0, atol=1e-12, err_msg=str(row))


@pytest.mark.parametrize("backend", BACKENDS)
def test_independent_of_batching_and_order(tiny_coco: dict[str, Any], backend: str) -> None:
    predictions, _ = _synthetic_predictions(tiny_coco, seed=1)
    at_once = CocoEvaluator(tiny_coco, backend=backend)
    at_once.update(predictions)
    per_image = CocoEvaluator(tiny_coco, backend=backend)
    for image_id in reversed(list(predictions)):
        per_image.update({image_id: predictions[image_id]})
    assert at_once.summarize() == per_image.summarize()


def test_evaluation_leaves_the_garbage_collector_as_it_was(tiny_coco: dict[str, Any]) -> None:
    """The collector is paused while the libraries evaluate (for speed), then left on or off as it was."""
    predictions, _ = _synthetic_predictions(tiny_coco, seed=2)
    results = []
    for enabled in (True, False):
        gc.enable() if enabled else gc.disable()
        try:
            evaluator = CocoEvaluator(tiny_coco)
            evaluator.update(predictions)
            results.append(evaluator.evaluate())
            assert gc.isenabled() == enabled
        finally:
            gc.enable()
    assert results[0].stats == results[1].stats and results[0].per_class == results[1].per_class


def test_results_are_the_accumulated_rows(tiny_coco: dict[str, Any]) -> None:
    """The COCO results format, row by row from the accumulated float64 rows, ordered by image id."""
    predictions, _ = _synthetic_predictions(tiny_coco, seed=3)
    evaluator = CocoEvaluator(tiny_coco)
    evaluator.update(predictions)
    expected = [
        {"image_id": image_id, "category_id": int(row[5]), "bbox": [float(v) for v in row[:4]], "score": float(row[4])}
        for image_id, rows in sorted(evaluator.state().items())
        for row in rows
    ]
    results = evaluator.results()
    assert results == expected and len(results) > 0
    assert json.dumps(results) == json.dumps(expected)


def test_contiguous_label_mapping_round_trip(tiny_coco: dict[str, Any]) -> None:
    predictions, _ = _synthetic_predictions(tiny_coco, seed=2)
    label_to_category_id = dict(enumerate(sorted(c["id"] for c in tiny_coco["categories"])))
    category_to_label = {c: label for label, c in label_to_category_id.items()}
    contiguous = {
        image_id: {**p, "labels": torch.tensor([category_to_label[c] for c in p["labels"].tolist()])}
        for image_id, p in predictions.items()
    }
    raw = CocoEvaluator(tiny_coco)
    raw.update(predictions)
    mapped = CocoEvaluator(tiny_coco, label_to_category_id=label_to_category_id)
    mapped.update(contiguous)
    assert max(label_to_category_id) == 79 and max(label_to_category_id.values()) == 90
    assert raw.summarize() == mapped.summarize()


@pytest.mark.parametrize("backend", BACKENDS)
def test_perfect_predictions_and_gt_input_kinds(tmp_path: Path, backend: str) -> None:
    path = tmp_path / "gt.json"
    path.write_text(json.dumps(SMALL_GT))
    with contextlib.redirect_stdout(io.StringIO()):
        coco = COCO(str(path))
    dataset = copy.deepcopy(SMALL_GT)
    for coco_gt in (path, str(path), dataset, coco):
        evaluator = CocoEvaluator(coco_gt, label_to_category_id={0: 3, 1: 7}, backend=backend)
        perfect = _perfect_small_predictions()
        to_label = {3: 0, 7: 1}
        evaluator.update(
            {i: {**p, "labels": torch.tensor([to_label[c] for c in p["labels"].tolist()])} for i, p in perfect.items()}
        )
        stats = evaluator.summarize()
        for name in ("AP", "AP50", "AP75", "AP_small", "AP_medium", "AP_large", "AR100"):
            assert stats[name] == pytest.approx(1.0), name
    assert dataset == SMALL_GT  # the caller's ground truth is left untouched


@pytest.mark.parametrize("backend", BACKENDS)
def test_no_predictions_give_what_cocoeval_gives(backend: str) -> None:
    """Zero detections gave 0.0 for all 12 numbers, also AP_small where no image holds a small object: COCOeval
    gives -1 (shown n/a) where an area range has no ground truth and 0 elsewhere."""
    assert CocoEvaluator(SMALL_GT, backend=backend).summarize() == dict.fromkeys(STAT_NAMES, -1.0)  # no images
    evaluator = CocoEvaluator(SMALL_GT, backend=backend)
    evaluator.update({i: _prediction([], [], []) for i in (1, 2, 3)})
    assert evaluator.summarize(img_ids=[1, 2, 3]) == dict.fromkeys(STAT_NAMES, 0.0)  # small, medium and large boxes
    result = evaluator.evaluate(img_ids=[2, 3])  # image 2's dog (area 15000) is large; image 3 has no objects
    no_truth = {"AP_small", "AP_medium", "AR_small", "AR_medium"}
    assert result.stats == {name: -1.0 if name in no_truth else 0.0 for name in STAT_NAMES}
    assert result.per_class == {
        "cat": {"category_id": 3, "AP": -1.0, "AP50": -1.0, "AP75": -1.0, "boxes": 0},
        "dog": {"category_id": 7, "AP": 0.0, "AP50": 0.0, "AP75": 0.0, "boxes": 1},
    }
    assert result.precision is not None and (result.precision.precision[..., 1] == 0).all()


@pytest.mark.parametrize("backend", BACKENDS)
def test_an_image_is_scored_on_its_100_best_detections(backend: str) -> None:
    """COCOeval caps maxDets per image *and category*, so a DETR with 300 queries was scored on all of them: here
    100 confident misses of 'cat' and, below them, a hit on each 'dog' gave AP50 0.5 at 'max dets 100'. COCO's
    limit is 100 detections per image: the dogs rank 101st and lower, and score nothing."""
    misses = [[60.0, 60.0, 61.0, 61.0]] * 100
    hits = [[50.0, 20.0, 90.0, 80.0], [0.0, 0.0, 150.0, 100.0]]
    predictions = {
        1: _prediction([*misses, hits[0]], [3] * 100 + [7], [0.9] * 100 + [0.5]),
        2: _prediction([hits[1]], [7], [0.5]),
    }
    evaluator = CocoEvaluator(SMALL_GT, backend=backend)
    evaluator.update(predictions)
    result = evaluator.evaluate()
    assert result.per_class["dog"]["AP50"] == pytest.approx(0.5, abs=0.01)  # image 2's dog only
    assert len([d for d in evaluator.results() if d["image_id"] == 1]) == 100
    assert all(d["category_id"] == 3 for d in evaluator.results() if d["image_id"] == 1)


def test_quiet_unless_verbose(capsys: pytest.CaptureFixture[str]) -> None:
    for backend in BACKENDS:
        evaluator = CocoEvaluator(SMALL_GT, backend=backend)
        evaluator.update(_perfect_small_predictions())
        evaluator.summarize()
    assert capsys.readouterr().out == ""
    evaluator = CocoEvaluator(SMALL_GT, backend="pycocotools", verbose=True)
    evaluator.update(_perfect_small_predictions())
    evaluator.summarize()
    assert "Average Precision" in capsys.readouterr().out


def test_duplicate_image_is_an_error() -> None:
    evaluator = CocoEvaluator(SMALL_GT)
    evaluator.update({2: _prediction([[0, 0, 10, 10]], [7], [0.5])})
    with pytest.raises(ValueError, match="image id 2 were given twice"):
        evaluator.update({1: _prediction([], [], []), 2: _prediction([], [], [])})
    assert list(evaluator.state()) == [2]  # a failed update adds nothing


def test_unmapped_label_is_an_error() -> None:
    evaluator = CocoEvaluator(SMALL_GT, label_to_category_id={0: 3, 1: 7})
    with pytest.raises(ValueError, match=r"labels \[2\] have no category id.*label_map"):
        evaluator.update({1: _prediction([[0, 0, 10, 10], [5, 5, 9, 9]], [1, 2], [0.5, 0.4])})


def test_invalid_inputs_are_errors() -> None:
    with pytest.raises(ValueError, match=r"category ids \[5\]"):
        CocoEvaluator(SMALL_GT, label_to_category_id={0: 3, 1: 5})
    with pytest.raises(TypeError, match="coco_gt must be a path"):
        CocoEvaluator(42)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"annotation file .*absent\.json does not exist"):
        CocoEvaluator(Path("absent.json"))  # read as the data sets read their JSON (one load_json)
    with pytest.raises(ValueError, match="unknown COCO evaluation backend"):
        CocoEvaluator(SMALL_GT, backend="detectron")
    evaluator = CocoEvaluator(SMALL_GT)
    with pytest.raises(ValueError, match="image id 42 is not in the ground-truth"):
        evaluator.update({42: _prediction([], [], [])})
    with pytest.raises(ValueError, match=r"image id 1: expected .* boxes \(N, 4\)"):
        evaluator.update({1: {**_prediction([[0, 0, 1, 1]], [3], [0.5]), "boxes": torch.zeros(1, 5)}})
    with pytest.raises(ValueError, match=r"img_ids \[9\]"):
        evaluator.summarize(img_ids=[1, 9])


def test_merge_keeps_first_occurrence() -> None:
    perfect = _perfect_small_predictions()
    whole = CocoEvaluator(SMALL_GT)
    whole.update(perfect)
    first, second = CocoEvaluator(SMALL_GT), CocoEvaluator(SMALL_GT)
    first.update({1: perfect[1], 2: perfect[2]})
    second.update({2: _prediction([], [], []), 3: perfect[3]})  # image 2 repeated, as DistributedSampler pads
    first.merge(second.state())
    assert first.summarize() == whole.summarize()


def test_format_table() -> None:
    stats = dict(zip(STAT_NAMES, [0.4567, *[0.1] * 10, -1.0], strict=True))
    table = format_table(stats)
    lines = table.splitlines()
    assert len(lines) == 2 + len(STAT_NAMES)
    assert len({len(line) for line in lines}) == 1  # aligned
    assert lines[0].startswith("| metric") and set(lines[1]) <= set("|-:")
    assert "| AP " in lines[2] and lines[2].endswith("0.457 |")
    assert lines[-1].startswith("| AR_large") and lines[-1].endswith("n/a |")


def test_format_table_states_the_units_of_the_class_and_cardinality_errors() -> None:
    """The table printed by train and evaluate showed val_class_error 53.333 beside AP 0.002 with no unit: the class
    error is a percentage (of matched queries given the wrong class), the cardinality error a count of boxes."""
    from sparse_detector.models.criterion import label_readings

    logits = torch.tensor([[[4.0, 0.0, 0.0], [0.0, 4.0, 0.0]], [[4.0, 0.0, 0.0], [0.0, 0.0, 4.0]]])  # 2 classes + none
    matched = (torch.tensor([0, 0, 1]), torch.tensor([0, 1, 0]))
    labels = torch.tensor([0, 0, 0])  # the second query of image 0 says class 1: 1 of 3 wrong
    targets = [{"labels": torch.tensor([0, 0])}, {"labels": torch.tensor([0, 1, 1])}]  # predicted 2 and 1 boxes
    readings = label_readings(logits, matched, labels, targets)
    table = format_table({"AP": 0.25, **{f"val_{k}": v.item() for k, v in readings.items()}})
    values = {row.split("|")[1].strip(): row.split("|")[-2].strip() for row in table.splitlines()[2:]}
    assert values == {"AP": "0.250", "val_class_error": f"{100 / 3:.3f} %", "val_cardinality_error": "1.000 boxes"}


def _table_values(table: str) -> dict[str, list[str]]:
    """The cells after the first of each row of a Markdown table, by its first cell."""
    return {row.split("|")[1].strip(): [c.strip() for c in row.split("|")[2:-1]] for row in table.splitlines()[2:]}


@pytest.mark.parametrize("backend", BACKENDS)
def test_tables_show_a_small_nonzero_ap_as_measured_not_as_zero(backend: str) -> None:
    """evaluate printed AP 0.000 for a run whose eval.json held AP 0.00049 (and AP75 0.00033): the tables round to 3
    decimals, which showed a measured, nonzero AP as none at all. Here the one dog box found comes after 199 false
    alarms at IoU 0.54 (counted at the 0.5 threshold only): pycocotools gives AP 0.00013, the dog's 0.00025."""
    dog_found = [[38.0, 20.0, 78.0, 80.0]]  # the dog box [50, 20, 90, 80] moved 12 px left: IoU 28 / 52
    predictions = {
        1: _prediction([[0.0, 0.0, 5.0, 5.0]] * 99 + dog_found, [7] * 100, [0.9] * 99 + [0.1]),
        2: _prediction([[190.0, 90.0, 200.0, 100.0]] * 100, [7] * 100, [0.9] * 100),
    }
    evaluator = CocoEvaluator(SMALL_GT, backend=backend)
    evaluator.update(predictions)
    result = evaluator.evaluate(img_ids=[1, 2, 3])
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO()
        gt.dataset = copy.deepcopy(SMALL_GT)
        gt.createIndex()
        reference = COCOeval(gt, gt.loadRes(evaluator.results()), iouType="bbox")
        reference.evaluate()
        reference.accumulate()
        reference.summarize()
    ap, ap50 = reference.stats[:2]
    assert 0 < ap < 0.0005 and result.stats["AP"] == pytest.approx(ap, abs=1e-12)
    printed = _table_values(format_table(result.stats))
    assert float(printed["AP"][-1]) == pytest.approx(ap, rel=0.05)  # two significant digits
    assert float(printed["AP50"][-1]) == pytest.approx(ap50, abs=0.0005)  # 0.0025: 3 decimals, as before
    assert printed["AP75"][-1] == "0.000"  # exactly none found at IoU 0.75
    per_class = _table_values(format_per_class_table(result.per_class))
    assert float(per_class["dog"][1]) == pytest.approx(result.per_class["dog"]["AP"], rel=0.05)


def _rank_shards() -> list[Predictions]:
    """Two ranks' predictions: image 2 on both (DistributedSampler padding), a false positive on image 3."""
    perfect = _perfect_small_predictions()
    false_positive = _prediction([[0, 0, 40, 40]], [7], [0.95])
    return [{1: perfect[1], 2: perfect[2]}, {2: perfect[2], 3: false_positive}]


def _distributed_worker(rank: int, store: str, queue: Any) -> None:
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=2)
    evaluator = CocoEvaluator(SMALL_GT)
    evaluator.update(_rank_shards()[rank])
    queue.put((rank, evaluator.summarize()))
    dist.destroy_process_group()


@pytest.mark.skipif("fork" not in mp.get_all_start_methods(), reason="needs the fork start method")
def test_summarize_gathers_across_ranks(tmp_path: Path) -> None:
    ctx = mp.get_context("fork")
    queue = ctx.SimpleQueue()
    workers = [ctx.Process(target=_distributed_worker, args=(rank, str(tmp_path / "store"), queue)) for rank in (0, 1)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=60)
        if worker.is_alive():
            worker.terminate()
    assert [worker.exitcode for worker in workers] == [0, 0]
    results = dict(queue.get() for _ in workers)
    whole = CocoEvaluator(SMALL_GT)
    shards = _rank_shards()
    whole.update({**shards[1], **shards[0]})
    rank0_alone = CocoEvaluator(SMALL_GT)
    rank0_alone.update(shards[0])
    assert results[0] == results[1] == whole.summarize() != rank0_alone.summarize()
