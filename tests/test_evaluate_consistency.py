"""`evaluate` gives the same AP at every batch size, its COCO-results file scores the same in pycocotools, and
`predict` keeps going past an unreadable image."""

from __future__ import annotations

import contextlib
import io
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from sparse_detector import build_model, load_config
from sparse_detector.cli import main
from sparse_detector.config import config_from_dict, config_to_dict, override_config
from sparse_detector.data import generate_shapes
from sparse_detector.data.build import build_dataset, build_loader
from sparse_detector.engine.checkpoint import save_checkpoint
from sparse_detector.engine.evaluate import _mean_losses, run_evaluation
from sparse_detector.models import build_criterion
from sparse_detector.viz import boxes as viz_boxes
from sparse_detector.viz.boxes import draw_boxes

TINY = [
    "model.transformer.hidden_dim=32",
    "model.transformer.nheads=4",
    "model.transformer.enc_layers=1",
    "model.transformer.dec_layers=1",
    "model.transformer.dim_feedforward=64",
    "model.num_queries=10",
    "data.val_size=64",
    "data.max_size=96",
    "data.num_workers=0",
]


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A run directory with an untrained tiny model, on 7 shapes images of two sizes (96x96 and 96x64), so a
    batch that mixes them pads the smaller ones."""
    root = tmp_path_factory.mktemp("consistency")
    annotations = generate_shapes(root / "data", 7, seed=5, image_size=96, min_size=16, max_size=30, split_name="val")
    data = json.loads(annotations.read_text())
    for image in data["images"][::2]:  # crop every other image to 96x64
        path = root / "data" / "images" / image["file_name"]
        Image.open(path).crop((0, 0, 96, 64)).save(path)
        image["height"] = 64
    data["annotations"] = []
    annotations.write_text(json.dumps(data))
    paths = [f"data.{split}.annotations={annotations}" for split in ("train", "val")]
    paths += [f"data.{split}.images={root / 'data' / 'images'}" for split in ("train", "val")]
    config = load_config("shapes_tiny", [*paths, *TINY])
    torch.manual_seed(7)
    model = build_model(config)
    label_map = build_dataset(config, "val").label_map
    # Ground truth the untrained model partly finds: two of its own top boxes per image, shifted by 1-3 px, so
    # AP is well above 0 and the ranking of detections matters.
    detections = run_evaluation(
        model, None, build_loader(build_dataset(config, "val"), config, False), "cpu", label_map
    )
    rng = np.random.default_rng(0)
    data["annotations"] = []
    for image in data["images"]:
        mine = sorted((d for d in detections.detections if d["image_id"] == image["id"]), key=lambda d: -d["score"])
        for d in mine[:2]:
            x, y, w, h = (v + rng.uniform(-3, 3) for v in d["bbox"])
            data["annotations"].append(
                {"id": len(data["annotations"]) + 1, "image_id": image["id"], "category_id": d["category_id"],
                 "bbox": [x, y, w, h], "area": w * h, "iscrowd": 0}
            )  # fmt: skip
    annotations.write_text(json.dumps(data))
    state = {"model": model.state_dict(), "config": config_to_dict(config), "epoch": 1, "step": 1}
    state["label_map"] = label_map
    save_checkpoint(root / "run" / "checkpoint_last.pt", state)
    return root / "run"


def evaluate_at(run: Path, batch_size: int, tmp_path: Path, *extra: str) -> dict:
    out = tmp_path / f"eval_b{batch_size}.json"
    argv = ["evaluate", "--checkpoint", str(run), "--device", "cpu", "--batch-size", str(batch_size)]
    assert main([*argv, "--output", str(out), *extra]) == 0
    return json.loads(out.read_text())


def test_eval_batches_are_never_padded(run: Path) -> None:
    state = torch.load(run / "checkpoint_last.pt", weights_only=True)
    config = override_config(config_from_dict(state["config"]), ["train.eval_batch_size=4"])
    batches = list(build_loader(build_dataset(config, "val"), config, train=False))
    assert sum(len(targets) for _, targets in batches) == 7
    assert all(not batch.mask.any() for batch, _ in batches)  # no padding anywhere
    assert sorted({tuple(batch.tensors.shape[-2:]) for batch, _ in batches}) == [(64, 64), (64, 96)]


def test_ap_does_not_depend_on_batch_size(run: Path, tmp_path: Path) -> None:
    one, four = evaluate_at(run, 1, tmp_path), evaluate_at(run, 4, tmp_path)
    assert one["AP"] > 0  # a real ranking is being compared
    for key in ("AP", "AP50", "AP75", "AR100"):
        assert one[key] == pytest.approx(four[key], abs=1e-9), key
    for name, values in one["per_class"].items():
        assert values == pytest.approx(four["per_class"][name]), name


def test_validation_losses_do_not_depend_on_batch_size(run: Path) -> None:
    """The val_* readings were the mean over batches of each batch's loss (normalised by that batch's boxes), so
    the logged val_loss of one checkpoint changed with train.eval_batch_size; now each image counts once."""
    state = torch.load(run / "checkpoint_last.pt", weights_only=True)
    config = config_from_dict(state["config"])
    model = build_model(config)
    model.load_state_dict(state["model"])
    criterion = build_criterion(config)
    readings = {}
    for size in (1, 4):
        sized = override_config(config, [f"train.eval_batch_size={size}"])
        loader = build_loader(build_dataset(sized, "val"), sized, train=False)
        readings[size] = run_evaluation(model, criterion, loader, "cpu", state["label_map"]).losses
    assert readings[1].keys() == {"val_loss", "val_loss_ce", "val_loss_bbox", "val_loss_giou", "val_class_error",
                                  "val_cardinality_error"}  # fmt: skip
    assert readings[4] == pytest.approx(readings[1], rel=1e-5)


def test_per_image_analysis_records_do_not_depend_on_batch_size(run: Path, tmp_path: Path) -> None:
    """analyze --per-image listed the images in the order their size groups' batches came, so record n was another
    image at --batch-size 4 than at 1; now the records follow the data set's order, index = position in it."""
    records = {}
    for size in (1, 4):
        argv = ["analyze", "--checkpoint", str(run), "--device", "cpu", "--per-image", "--batch-size", str(size)]
        assert main([*argv, "--output", str(tmp_path / str(size))]) == 0
        records[size] = json.loads((tmp_path / str(size) / "analysis.json").read_text())["attention"]["per_image"]
    data = json.loads(
        Path(
            torch.load(run / "checkpoint_last.pt", weights_only=True)["config"]["data"]["val"]["annotations"]
        ).read_text()
    )
    order = [image["id"] for image in data["images"]]
    for size in (1, 4):
        assert [(r["index"], r["image_id"]) for r in records[size]] == list(enumerate(order))
    for one, four in zip(records[1], records[4], strict=True):
        for site, metrics in one["metrics"].items():
            for name, values in metrics.items():
                assert four["metrics"][site][name] == pytest.approx(values, rel=1e-5, abs=1e-7), (site, name)


def test_saved_detections_score_the_same_in_pycocotools(run: Path, tmp_path: Path, capsys) -> None:
    detections = tmp_path / "detections.json"
    stats = evaluate_at(run, 3, tmp_path, "--save-detections", str(detections))
    printed = capsys.readouterr().out
    assert "| class" in printed and "AP50" in printed  # per-class table printed after the summary table
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(stats["data"])
        coco_eval = COCOeval(gt, gt.loadRes(str(detections)), iouType="bbox")
        coco_eval.evaluate()
        coco_eval.accumulate()
        coco_eval.summarize()
    assert coco_eval.stats[0] == pytest.approx(stats["AP"], abs=1e-12)
    assert coco_eval.stats[1] == pytest.approx(stats["AP50"], abs=1e-12)
    assert set(stats["per_class"]) == {"red", "green", "blue", "yellow"}
    curves = np.load(tmp_path / "eval_b3_pr.npz")
    assert curves["precision"].shape == (10, 101, 4) and list(curves["category_ids"]) == [1, 2, 3, 4]


def test_results_on_other_data_are_written_beside_the_runs_own(run: Path, tmp_path: Path) -> None:
    """`evaluate` / `analyze` with --annotations of other data wrote over the run's eval.json and analysis/; they
    now default to eval-<stem>.json and analysis-<stem>/ (the run's own data still gives eval.json, analysis/)."""
    mine = tmp_path / "run"
    shutil.copytree(run, mine)
    other = tmp_path / "other.json"
    state = torch.load(run / "checkpoint_last.pt", weights_only=True)
    shutil.copy(state["config"]["data"]["val"]["annotations"], other)
    argv = ["--checkpoint", str(mine), "--device", "cpu"]
    assert main(["evaluate", *argv]) == 0
    assert main(["evaluate", *argv, "--annotations", str(other)]) == 0
    assert json.loads((mine / "eval.json").read_text())["data"] != str(other)
    assert json.loads((mine / "eval-other.json").read_text())["data"] == str(other)
    assert (mine / "eval-other_pr.npz").is_file()
    assert main(["analyze", *argv, "--annotations", str(other)]) == 0
    assert (mine / "analysis-other" / "analysis.json").is_file() and not (mine / "analysis").exists()


def test_evaluate_on_data_with_other_categories_is_an_error(run: Path, tmp_path: Path, capsys) -> None:
    """The same category ids naming other classes (another data set) would score one class as another."""
    data = json.loads(Path(evaluate_at(run, 3, tmp_path)["data"]).read_text())
    data["categories"] = [{**c, "name": f"cell{c['id']}"} for c in data["categories"]]
    other = tmp_path / "other.json"
    other.write_text(json.dumps(data))
    argv = ["evaluate", "--checkpoint", str(run), "--device", "cpu", "--annotations", str(other)]
    assert main([*argv, "--images", str(run.parent / "data" / "images"), "--output", str(tmp_path / "e.json")]) == 2
    assert "(checkpoint vs data: id 1: 'red' vs 'cell1'; id 2: 'green' vs 'cell2'" in capsys.readouterr().err
    assert not (tmp_path / "e.json").exists()


def test_data_with_a_category_the_model_lacks_is_scored_but_not_matched(run: Path, tmp_path: Path, capsys) -> None:
    """A data set with one more category than the checkpoint: evaluate scores it (that class's AP is 0), but analyze
    and `visualize matching` (the Hungarian matcher) indexed past the model's classes: an IndexError traceback (and
    one of a lower id than the model's would have shifted every label, pairing boxes with the wrong class)."""
    data = json.loads(Path(evaluate_at(run, 3, tmp_path)["data"]).read_text())
    data["categories"].append({"id": 9, "name": "purple"})
    data["annotations"][0]["category_id"] = 9
    other = tmp_path / "other.json"
    other.write_text(json.dumps(data))
    images = ["--images", str(run.parent / "data" / "images")]
    assert evaluate_at(run, 3, tmp_path, "--annotations", str(other), *images)["per_class"]
    argv = ["analyze", "--checkpoint", str(run), "--device", "cpu", "--annotations", str(other), *images]
    assert main([*argv, "--output", str(tmp_path / "analysis")]) == 2
    err = capsys.readouterr().err
    assert "other.json has categories the checkpoint was not trained on (id 9: 'purple')" in err
    assert "Traceback" not in err and not (tmp_path / "analysis").exists()
    argv = ["visualize", "matching", str(run), "--output", str(tmp_path / "figures"), "--set"]
    assert main([*argv, f"data.val.annotations={other}", f"data.val.images={images[1]}"]) == 2
    assert "has categories the checkpoint was not trained on (id 9: 'purple')" in capsys.readouterr().err


def test_evaluate_counts_the_images_it_evaluated(run: Path, tmp_path: Path, capsys) -> None:
    """With data.on_invalid=skip an unreadable image is left out of AP, but evaluate printed the data set's count
    ("7 images") as what was scored, and with every image unreadable a table of zeros; now it prints and stores
    the images evaluated, and refuses to score none."""
    images = tmp_path / "images"
    shutil.copytree(run.parent / "data" / "images", images)
    files = sorted(images.glob("*.png"))
    files[0].write_bytes(files[0].read_bytes()[:100])  # truncated: the header reads, the pixels do not
    argv = ["evaluate", "--checkpoint", str(run), "--device", "cpu", "--images", str(images), "--batch-size", "1"]
    argv += ["--set", "data.on_invalid=skip"]
    assert main([*argv, "--output", str(tmp_path / "e.json")]) == 0
    assert "(6 images of 7; 1 unreadable, left out of every number)" in capsys.readouterr().out
    assert json.loads((tmp_path / "e.json").read_text())["num_images"] == 6
    assert evaluate_at(run, 2, tmp_path)["num_images"] == 7  # all readable: all counted
    for file in files:
        file.write_bytes(file.read_bytes()[:100])
    assert main([*argv, "--output", str(tmp_path / "none.json")]) == 2
    assert "could be read, so nothing was evaluated" in capsys.readouterr().err
    assert not (tmp_path / "none.json").exists()


def test_predict_writes_every_good_image_then_fails(run: Path, tmp_path: Path, capsys) -> None:
    images = sorted((run.parent / "data" / "images").glob("*.png"))[:2]
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    argv = ["predict", "--checkpoint", str(run), "--device", "cpu", "--threshold", "0"]
    assert main([*argv, str(images[0]), str(broken), str(images[1]), "--output", str(tmp_path / "p")]) == 1
    records = json.loads((tmp_path / "p" / "predictions.json").read_text())
    assert [Path(r["image"]).name for r in records] == [images[0].name, images[1].name]
    assert "broken.jpg" in capsys.readouterr().err
    assert main([*argv, *map(str, images), "--format", "coco", "--output", str(tmp_path / "c")]) == 0
    results = json.loads((tmp_path / "c" / "detections_coco.json").read_text())
    gt = {
        "images": [{"id": i, "width": 96, "height": 96} for i in (1, 2)],
        "annotations": [],
        "categories": [{"id": i} for i in (1, 2, 3, 4)],
    }
    with contextlib.redirect_stdout(io.StringIO()):
        coco = COCO()
        coco.dataset = gt
        coco.createIndex()
        loaded = coco.loadRes(results)
    assert len(loaded.getAnnIds()) == len(results) == 20 and {r["image_id"] for r in results} == {1, 2}
    # widths and heights had float noise (43.010000000000005); rounded to 0.01 px like the corners
    assert all(v == round(v, 2) for r in results for v in r["bbox"])


def test_library_detect_gives_predicts_detections(run: Path, tmp_path: Path, capsys) -> None:
    """``sd.load_trained_model(run).detect(image)`` in a notebook finds what ``predict`` writes, from a file or a
    PIL image, and refuses a threshold that is not a score (on the command line before loading the model)."""
    import sparse_detector as sd

    images = sorted((run.parent / "data" / "images").glob("*.png"))[:2]
    argv = ["predict", "--checkpoint", str(run), "--device", "cpu", "--threshold", "0.02", *map(str, images)]
    assert main([*argv, "--output", str(tmp_path / "p")]) == 0
    records = json.loads((tmp_path / "p" / "predictions.json").read_text())
    loaded = sd.load_trained_model(run)
    for record, image in zip(records, images, strict=True):
        found = loaded.detect(image, threshold=0.02)
        assert found.as_records() == record["detections"] and record["detections"]
        assert found.names == [d["category"] for d in record["detections"]]
        assert found.boxes.shape == (len(found.queries), 4) and found.model_input.shape[0] == 3
        assert loaded.detect(Image.open(image), threshold=0.02).as_records() == record["detections"]
    with pytest.raises(ValueError, match="scores are from 0 to 1, got 50 for the score threshold"):
        loaded.detect(images[0], threshold=50)
    with pytest.raises(TypeError, match=r"not a ndarray; .*PIL.Image.fromarray\(array\), in RGB order"):
        loaded.detect(np.asarray(Image.open(images[0])))  # was "expected str, bytes or os.PathLike object"
    with pytest.raises(SystemExit):  # a usage error
        main(["predict", "--checkpoint", str(tmp_path / "missing"), "--threshold", "nan", str(images[0])])
    assert "scores are from 0 to 1, got nan" in capsys.readouterr().err


def test_predict_pictures_of_inputs_sharing_a_stem_are_all_kept(run: Path, tmp_path: Path) -> None:
    """a.png, a.jpg and another folder's a.png each get their own picture (they overwrote one another)."""
    source = sorted((run.parent / "data" / "images").glob("*.png"))[0]
    inputs = [tmp_path / "a.png", tmp_path / "a.jpg", tmp_path / "more" / "a.png"]
    (tmp_path / "more").mkdir()
    for path in inputs:
        Image.open(source).save(path)
    argv = ["predict", "--checkpoint", str(run), "--device", "cpu", *map(str, inputs), "--output", str(tmp_path / "p")]
    assert main(argv) == 0
    records = json.loads((tmp_path / "p" / "predictions.json").read_text())
    assert [Path(r["picture"]).name for r in records] == ["a_png_pred.png", "a_jpg_pred.png", "a_png_2_pred.png"]
    assert all(Path(r["picture"]).is_file() for r in records)


def test_predict_pictures_hold_the_drawn_pixels(run: Path, tmp_path: Path, monkeypatch) -> None:
    """The pictures are written with fast (level 1) PNG compression: still exactly the pixels drawn."""
    drawn = []

    def draw_and_keep(*args, **kwargs):
        drawn.append(draw_boxes(*args, **kwargs))
        return drawn[-1]

    monkeypatch.setattr(viz_boxes, "draw_boxes", draw_and_keep)
    images = sorted((run.parent / "data" / "images").glob("*.png"))[:2]
    argv = ["predict", "--checkpoint", str(run), "--device", "cpu", "--threshold", "0", *map(str, images)]
    assert main([*argv, "--output", str(tmp_path / "p")]) == 0
    records = json.loads((tmp_path / "p" / "predictions.json").read_text())
    assert len(drawn) == len(records) == 2 and all(r["detections"] for r in records)
    for record, picture in zip(records, drawn, strict=True):
        assert np.array_equal(np.asarray(Image.open(record["picture"])), np.asarray(picture))


def test_predict_on_a_folder_takes_its_subfolders_but_not_its_outputs(run: Path, tmp_path: Path) -> None:
    """A folder's images in subfolders are found (they were not); hidden folders and the output folder, here
    inside the input folder, are left out, so a second run predicts the same images."""
    source = sorted((run.parent / "data" / "images").glob("*.png"))[0]
    photos = tmp_path / "photos"
    for relative in ("b.png", "2023/a.jpg", "2024/deeper/c.png", ".thumbnails/b.png"):
        (photos / relative).parent.mkdir(parents=True, exist_ok=True)
        Image.open(source).save(photos / relative)
    argv = ["predict", "--checkpoint", str(run), "--device", "cpu", str(photos), "--output", str(photos / "out")]
    for _ in range(2):
        assert main(argv) == 0
        records = json.loads((photos / "out" / "predictions.json").read_text())
        assert [Path(r["image"]).relative_to(photos).as_posix() for r in records] == [
            "2023/a.jpg",
            "2024/deeper/c.png",
            "b.png",
        ]


def test_predict_with_image_ids_scores_like_evaluate(run: Path, tmp_path: Path, capsys) -> None:
    stats = evaluate_at(run, 2, tmp_path)
    gt_file = Path(stats["data"])
    images = sorted((run.parent / "data" / "images").glob("*.png"))
    argv = ["predict", "--checkpoint", str(run), "--device", "cpu", "--threshold", "0", "--format", "coco"]
    out = tmp_path / "ids"
    assert main([*argv, *map(str, images), "--image-ids", str(gt_file), "--output", str(out)]) == 0
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(str(gt_file))
        coco_eval = COCOeval(gt, gt.loadRes(str(out / "detections_coco.json")), iouType="bbox")
        coco_eval.evaluate()
        coco_eval.accumulate()
        coco_eval.summarize()
    assert coco_eval.stats[0] == pytest.approx(stats["AP"], abs=1e-6)
    assert coco_eval.stats[1] == pytest.approx(stats["AP50"], abs=1e-6)
    stray = tmp_path / "stray.png"
    Image.new("RGB", (32, 32)).save(stray)
    assert main([*argv, str(images[0]), str(stray), "--image-ids", str(gt_file), "--output", str(out)]) == 2
    assert "stray.png (no entry)" in capsys.readouterr().err
    json_argv = [*argv[:-2], str(images[0]), "--image-ids", str(gt_file), "--output", str(out)]
    assert main(json_argv) == 2 and "add --format coco" in capsys.readouterr().err


def test_predict_coco_keeps_the_100_best_of_each_image_as_evaluate_scores_them(run: Path, tmp_path: Path) -> None:
    """With more than 100 queries predict --format coco wrote every one, which pycocotools scores up to 100 per
    image and class; evaluate scores COCO's 100 per image: the README's 'the same AP as evaluate' did not hold."""
    state = torch.load(run / "checkpoint_last.pt", weights_only=True)
    config = override_config(config_from_dict(state["config"]), ["model.num_queries=120"])
    weights = dict(state["model"])  # the run's queries (which find the ground truth) and 110 more
    weights["query_embed.weight"] = torch.cat([weights["query_embed.weight"], torch.randn(110, 32)])
    state = {**state, "model": weights, "config": config_to_dict(config)}
    save_checkpoint(tmp_path / "many" / "checkpoint_last.pt", state)
    stats = evaluate_at(tmp_path / "many", 2, tmp_path)
    images = sorted((run.parent / "data" / "images").glob("*.png"))
    argv = ["predict", "--checkpoint", str(tmp_path / "many"), "--device", "cpu", "--threshold", "0"]
    out = tmp_path / "coco"
    assert main([*argv, "--format", "coco", *map(str, images), "--image-ids", stats["data"], "--output", str(out)]) == 0
    results = json.loads((out / "detections_coco.json").read_text())
    assert {len([r for r in results if r["image_id"] == i]) for i in {r["image_id"] for r in results}} == {100}
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(stats["data"])
        coco_eval = COCOeval(gt, gt.loadRes(results), iouType="bbox")
        coco_eval.evaluate()
        coco_eval.accumulate()
        coco_eval.summarize()
    assert coco_eval.stats[0] == pytest.approx(stats["AP"], abs=1e-6) and stats["AP"] > 0


def test_image_ids_match_by_path_then_unique_name(tmp_path: Path) -> None:
    from sparse_detector.data.coco import DatasetError
    from sparse_detector.engine.inference import coco_image_ids

    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    gt = tmp_path / "gt.json"
    entries = [{"id": 7, "file_name": "a/x.jpg"}, {"id": 9, "file_name": "b/x.jpg"}, {"id": 3, "file_name": "b/y.jpg"}]
    gt.write_text(json.dumps({"images": entries}))
    assert coco_image_ids(gt, [tmp_path / "b" / "x.jpg", tmp_path / "a" / "x.jpg"]) == {
        tmp_path / "b" / "x.jpg": 9,
        tmp_path / "a" / "x.jpg": 7,
    }
    assert coco_image_ids(gt, [Path("elsewhere/y.jpg")]) == {Path("elsewhere/y.jpg"): 3}
    with pytest.raises(DatasetError, match="several entries share its name"):
        coco_image_ids(gt, [Path("elsewhere/x.jpg")])


def test_evaluate_killed_before_its_curves_keeps_the_previous_results(run: Path, tmp_path: Path, monkeypatch) -> None:
    """evaluate wrote eval.json, then eval_pr.npz: killed in between, it left the new JSON beside the previous
    evaluation's curves (or none). The curves are now written first, each file whole."""
    from sparse_detector.engine.coco_eval import PrecisionArrays

    output = tmp_path / "eval.json"
    argv = ["evaluate", "--checkpoint", str(run), "--device", "cpu", "--output", str(output)]

    def killed(*args) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(PrecisionArrays, "save", killed)
    assert main(argv) == 130  # as Ctrl-C ends it
    assert not output.exists()
    monkeypatch.undo()
    assert main(argv) == 0
    assert np.load(tmp_path / "eval_pr.npz")["precision"].shape[0] == 10 and "AP" in json.loads(output.read_text())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["eval.json", "eval_pr.npz"]


def test_validation_class_error_is_absent_without_objects() -> None:
    """With no object in the validation images (no matched query) val_class_error was 100, which reads as total
    failure; there is nothing for it to be a share of, so it is left out (JSONL, tables and curves skip it)."""
    image = {"loss": 1.0, "loss_ce": 1.0, "loss_bbox": 0.0, "loss_giou": 0.0, "class_error": 100.0}
    empty = [{**image, "cardinality_error": 3.0, "matched": 0}] * 2
    means = _mean_losses(empty)
    assert "val_class_error" not in means
    assert means["val_cardinality_error"] == 3.0
    one_object = {**image, "class_error": 0.0, "cardinality_error": 2.0, "matched": 1}
    assert _mean_losses([*empty, one_object])["val_class_error"] == 0.0  # a share of the matched queries only
