"""Training engine: exact resume, checkpoints, bad input, the CLI end to end, VOC data."""

from __future__ import annotations

import importlib.util
import json
import logging
import re
from collections import Counter
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from sparse_detector import load_config
from sparse_detector.cli import main
from sparse_detector.data.labels import COCO_CATEGORY_NAMES
from sparse_detector.engine.checkpoint import load_checkpoint, rotate_last, save_checkpoint, verify_checkpoint
from sparse_detector.engine.coco_eval import metric_text
from sparse_detector.engine.device import peak_memory_mb, resolve_device, subnormals_flushed
from sparse_detector.engine.trainer import NonFiniteLossError, Trainer
from sparse_detector.runs import read_metrics

from .conftest import SMALL_MODEL, epoch_records, shapes_config, shared_path


def test_resume_reproduces_the_uninterrupted_run(shapes, tmp_path: Path):
    settings = ("train.max_steps_per_epoch=2", "train.deterministic=true")
    Trainer(shapes_config(shapes, "train.epochs=2", *settings), tmp_path / "straight", progress=False).fit()
    Trainer(shapes_config(shapes, "train.epochs=1", *settings), tmp_path / "stopped", progress=False).fit()
    stopped = load_checkpoint(tmp_path / "stopped" / "checkpoint_last.pt")
    assert (stopped["epoch"], stopped["step"]) == (1, 2)
    resumed_config = load_config(tmp_path / "stopped" / "config.yaml", ["train.epochs=2"])
    Trainer(resumed_config, tmp_path / "stopped", resume=True, progress=False).fit()

    straight, resumed = epoch_records(tmp_path / "straight"), epoch_records(tmp_path / "stopped")
    assert sorted(resumed) == [1, 2]
    for key in ("train_loss", "train_loss_ce", "train_loss_bbox", "AP", "AP50", "val_loss"):
        assert resumed[2][key] == straight[2][key], key
    final_a = load_checkpoint(tmp_path / "straight" / "checkpoint_last.pt")["model"]
    final_b = load_checkpoint(tmp_path / "stopped" / "checkpoint_last.pt")["model"]
    for key, value in final_a.items():
        assert torch.equal(value, final_b[key]), key


def test_epoch_lines_print_every_epoch_s_mean_loss_and_the_evaluated_ap(shapes, tmp_path: Path, capsys):
    """An epoch without evaluation (train.eval_every > 1) printed no line at all, the epoch line's "loss" (the
    epoch's mean) shared its name with the step lines' "loss" (one step's), and the final table did not say which
    epoch it was nor that evaluate takes another one (the best): each number is checked against metrics.jsonl's
    records, the evaluation and checkpoint_best.pt."""
    run = tmp_path / "run"
    config = shapes_config(shapes, "train.epochs=3", "train.eval_every=2", "train.max_steps_per_epoch=2")
    Trainer(config, run, progress=False).fit()
    out = capsys.readouterr().out
    printed = dict(re.findall(r"^epoch (\d+): (.*)$", out, re.MULTILINE))
    records = read_metrics(run)
    steps = re.findall(
        r"^epoch \d+ step \d+/2: loss ([\d.]+), ([\d.]+) img/s over the epoch so far$", out, re.MULTILINE
    )
    logged = [r for r in records if r["type"] == "train"]
    assert steps == [(f"{r['loss']:.3f}", f"{r['images_per_s']:.1f}") for r in logged]
    for epoch in (1, 2, 3):
        losses = [r["loss"] for r in records if r["type"] == "train" and r["epoch"] == epoch]  # log_every=1
        assert printed[str(epoch)].startswith(f"mean train loss {sum(losses) / len(losses):.3f} over 2 steps")
    assert "AP" not in printed["1"]  # not evaluated (epochs 2 and 3 are: every 2nd and the last)
    evaluation = json.loads((run / "eval.json").read_text())
    assert evaluation["epoch"] == 3  # which evaluation it is (evaluate's eval.json names its checkpoint)
    ap_line = f"AP {metric_text('AP', evaluation['AP'])}  AP50 {metric_text('AP50', evaluation['AP50'])}"
    assert printed["3"].endswith(f"  val {ap_line}")
    # the end: the last evaluation's table, then the best evaluated epoch, whose weights are checkpoint_best.pt
    assert re.search(r"^validation after epoch 3:\n\| metric ", out, re.MULTILINE)
    evaluated = [r for r in records if r["type"] == "epoch" and "AP" in r]
    best = max(evaluated, key=lambda r: (r["AP"], -r["epoch"]))
    assert load_checkpoint(run / "checkpoint_best.pt")["epoch"] == best["epoch"]
    best_line = f"AP {metric_text('AP', best['AP'])}  AP50 {metric_text('AP50', best['AP50'])}"
    assert f"best: {best_line} after epoch {best['epoch']} (checkpoint_best.pt" in out


def test_validation_without_objects_prints_ap_n_a_and_keeps_the_newest_weights_as_best(shapes, tmp_path: Path, capsys):
    """COCO's AP is -1 where no image holds an object: the epoch and best lines printed "AP -1.000", and
    checkpoint_best.pt, which evaluate and predict take, stayed the first epoch's weights for ever."""
    val = json.loads(shapes["val"].read_text())
    empty = tmp_path / "val.json"
    empty.write_text(json.dumps({**val, "annotations": []}))
    run = tmp_path / "run"
    config = shapes_config(
        shapes, f"data.val.annotations={empty}", "train.epochs=2", "train.eval_every=1", "train.max_steps_per_epoch=1"
    )
    Trainer(config, run, progress=False).fit()
    out = capsys.readouterr().out
    assert re.findall(r"^epoch \d+: .*  val (.*)$", out, re.MULTILINE) == ["AP n/a  AP50 n/a"] * 2
    assert f"best: none to choose, AP is n/a (no object in {empty}); the last evaluated epoch 2 (" in out
    assert load_checkpoint(run / "checkpoint_best.pt")["epoch"] == 2


SUBNORMAL = 1e-40  # below float32's smallest normal number, 1.2e-38


def test_subnormals_flushed_only_while_training():
    with subnormals_flushed(torch.device("cpu")):
        assert (torch.tensor([SUBNORMAL]) * 1.0).item() == 0.0
    assert (torch.tensor([SUBNORMAL]) * 1.0).item() > 0.0


def test_peak_memory_is_in_mebibytes_on_linux_and_macos(monkeypatch):
    """ru_maxrss is in kilobytes on Linux but bytes on macOS: the logged peak_memory_mb was 1024 times too large
    there. On Linux it is checked against the kernel's own reading of the peak resident memory (VmHWM)."""
    import resource
    import sys

    status = Path("/proc/self/status")
    if sys.platform == "linux" and status.is_file():
        measured = peak_memory_mb(torch.device("cpu"))
        kilobytes = next(int(line.split()[1]) for line in status.read_text().splitlines() if line.startswith("VmHWM"))
        assert measured == pytest.approx(kilobytes / 1024, rel=0.05)
    for platform, maxrss in (("linux", 3 * 2**10), ("darwin", 3 * 2**20)):
        monkeypatch.setattr(sys, "platform", platform)
        monkeypatch.setattr(resource, "getrusage", lambda _who, maxrss=maxrss: SimpleNamespace(ru_maxrss=maxrss))
        assert peak_memory_mb(torch.device("cpu")) == 3.0, platform


def test_deterministic_training_leaves_the_process_settings_as_it_found_them(shapes, tmp_path: Path, monkeypatch):
    config = shapes_config(shapes, "train.epochs=1", "train.max_steps_per_epoch=1", "train.deterministic=true")
    torch.use_deterministic_algorithms(True, warn_only=True)  # a user's own setting comes back too
    try:
        Trainer(config, tmp_path / "ok", progress=False).fit()
        assert torch.are_deterministic_algorithms_enabled() and torch.is_deterministic_algorithms_warn_only_enabled()
    finally:
        torch.use_deterministic_algorithms(False)
    seen = []

    def fail(self: Trainer) -> None:
        seen.append(torch.are_deterministic_algorithms_enabled())
        raise RuntimeError("boom")

    trainer = Trainer(config, tmp_path / "failed", progress=False)
    monkeypatch.setattr(Trainer, "_train_one_epoch", fail)
    with pytest.raises(RuntimeError, match="boom"):
        trainer.fit()
    assert seen == [True] and not torch.are_deterministic_algorithms_enabled()
    assert not torch.backends.cudnn.benchmark


def test_run_directory_contents_and_checkpoint_keys(shapes, tmp_path: Path):
    run = tmp_path / "run"
    Trainer(shapes_config(shapes, "train.epochs=1", "train.max_steps_per_epoch=1"), run, progress=False).fit()
    assert (torch.tensor([SUBNORMAL]) * 1.0).item() > 0.0, "training left subnormals flushed in the process"
    assert {"config.yaml", "metrics.jsonl", "checkpoint_last.pt", "checkpoint_best.pt", "eval.json"} <= {
        p.name for p in run.iterdir()
    }
    state = load_checkpoint(run / "checkpoint_last.pt")
    for key in ("model", "optimizer", "lr_scheduler", "epoch", "step", "config", "rng", "label_map"):
        assert key in state
    assert state["label_map"]["category_names"] == ["red", "green", "blue", "yellow"]
    assert load_config(run / "config.yaml").model.num_queries == 6
    with pytest.raises(FileExistsError, match="--resume"):
        Trainer(shapes_config(shapes, "train.epochs=1"), run, progress=False)


def test_failed_start_leaves_no_run_directory(shapes, tmp_path: Path):
    """A run whose model cannot be built (here an unknown attention map) stops before it makes its directory."""
    run = tmp_path / "runs" / "bad"
    with pytest.raises(ValueError, match="unknown attention activation 'nope'"):
        Trainer(shapes_config(shapes, "model.attention.decoder_cross.activation=nope"), run, progress=False)
    assert not run.parent.exists()


def test_checkpoint_write_is_atomic(tmp_path: Path, monkeypatch):
    path = tmp_path / "ckpt.pt"
    save_checkpoint(path, {"epoch": 1})

    def killed(*args, **kwargs):
        raise KeyboardInterrupt("killed while writing")

    monkeypatch.setattr(torch, "save", killed)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(path, {"epoch": 2})
    assert load_checkpoint(path)["epoch"] == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt.pt", "ckpt.pt.meta.json"]
    assert verify_checkpoint(path) is None


def test_only_a_last_checkpoint_that_closed_its_epoch_is_kept_as_that_epoch_s(tmp_path: Path):
    """Before a new checkpoint_last.pt: one written mid-epoch (a signal stop) is superseded, not kept as a numbered
    epoch checkpoint, which would claim a whole epoch; one that closed epoch 3 becomes checkpoint_epoch0003.pt."""
    last = tmp_path / "checkpoint_last.pt"
    save_checkpoint(last, {"epoch": 3, "step": 10}, epoch_complete=False)
    rotate_last(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint_last.pt", "checkpoint_last.pt.meta.json"]
    save_checkpoint(last, {"epoch": 3, "step": 12})
    rotate_last(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "checkpoint_epoch0003.pt",
        "checkpoint_epoch0003.pt.meta.json",
    ]
    assert verify_checkpoint(tmp_path / "checkpoint_epoch0003.pt") is None


def test_too_few_classes_is_a_clear_error(shapes, tmp_path: Path):
    with pytest.raises(ValueError, match=r"model.num_classes is 2 .* needs 4 classes"):
        Trainer(shapes_config(shapes, "model.num_classes=2"), tmp_path / "run", progress=False)


def test_too_few_classes_under_raw_category_ids_names_the_label_mode(shapes, tmp_path: Path):
    """The Deformable DETR presets keep raw COCO ids: a data set whose ids are 1..4 then needs 5 classes, and the
    error says that data.label_mode=contiguous fits its 4 categories with model.num_classes=4."""
    config = shapes_config(shapes, "data.label_mode=coco_ids", "model.num_classes=4")
    with pytest.raises(ValueError) as raised:
        Trainer(config, tmp_path / "run", progress=False)
    assert str(raised.value) == (
        f"model.num_classes is 4 but {shapes['train']} needs 5 classes (data.label_mode=coco_ids: each label is its "
        "category id, up to 4; with data.label_mode=contiguous the 4 categories need model.num_classes=4); "
        "set model.num_classes=5"
    )


def test_images_with_more_boxes_than_queries_are_counted_in_a_warning(shapes, tmp_path: Path, caplog):
    boxes = Counter(a["image_id"] for a in json.loads(shapes["train"].read_text())["annotations"])
    over = sum(count > 1 for count in boxes.values())
    assert over
    Trainer(shapes_config(shapes, "model.num_queries=1"), tmp_path / "run", progress=False)
    (warning,) = [r.getMessage() for r in caplog.records if "model.num_queries" in r.getMessage()]
    assert warning.startswith(f"{over} images of {shapes['train']} hold more boxes than model.num_queries=1 (")
    assert warning.endswith(f"set model.num_queries={max(boxes.values())} or more")


def test_nonfinite_loss_errors_or_is_skipped_and_counted(shapes, tmp_path: Path, capsys):
    trainer = Trainer(shapes_config(shapes, "train.epochs=1", "train.max_steps_per_epoch=2"), tmp_path / "a", False)
    with torch.no_grad():
        trainer.model.class_embed.bias.fill_(float("nan"))
    with pytest.raises(NonFiniteLossError, match="image ids"):
        trainer.fit()
    config = shapes_config(shapes, "train.epochs=1", "train.max_steps_per_epoch=3", "train.on_nonfinite_loss=skip")
    trainer = Trainer(config, tmp_path / "b", progress=False)
    total_loss = trainer.criterion.total_loss
    calls = []

    def nan_on_second_step(losses):
        calls.append(1)
        return total_loss(losses) * (float("nan") if len(calls) == 2 else 1.0)

    trainer.criterion.total_loss = nan_on_second_step
    trainer.fit()
    record = epoch_records(tmp_path / "b")[1]
    assert record["train_skipped_nonfinite"] == 1 and record["train_steps"] == 2
    losses = [r["loss"] for r in read_metrics(tmp_path / "b") if r["type"] == "train"]  # the 2 trained steps
    mean = f"{sum(losses) / len(losses):.3f}"
    assert f"epoch 1: mean train loss {mean} over 2 steps (1 more skipped as non-finite)" in capsys.readouterr().out


def test_gradients_reach_the_optimiser_clipped_to_clip_max_norm(shapes, tmp_path: Path):
    """Every step's gradients, as the optimiser steps with them, have a total norm of at most optim.clip_max_norm
    (the tiny model's exceed 0.01 at once, so each step is clipped)."""
    settings = ("train.epochs=1", "train.max_steps_per_epoch=2", "optim.clip_max_norm=0.01")
    trainer = Trainer(shapes_config(shapes, *settings), tmp_path / "run", progress=False)
    norms = []

    def record_norm(optimizer: torch.optim.Optimizer, args, kwargs) -> None:
        grads = [p.grad for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
        norms.append(torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads])).item())

    trainer.optimizer.register_step_pre_hook(record_norm)
    trainer.fit()
    assert len(norms) == 2 and all(norm == pytest.approx(0.01, rel=1e-4) for norm in norms)


def test_the_global_step_counts_a_step_skipped_as_non_finite_too(shapes, tmp_path: Path, caplog):
    """The global step counted optimiser steps only: an epoch of 3 batches, one skipped as non-finite, ended at step
    2, the warning named the skipped one 'step 2' and the next trained step was logged as step 2 too, and the epochs
    of runs that skipped steps no longer lined up (metrics.jsonl, TensorBoard, W&B, checkpoints). It is now the
    training steps taken, the skipped ones included, everywhere, and a resume goes on counting them."""
    run = tmp_path / "run"
    tensorboard = importlib.util.find_spec("tensorboard") is not None
    settings = ("train.max_steps_per_epoch=3", "train.on_nonfinite_loss=skip", f"train.tensorboard={tensorboard}")
    trainer = Trainer(shapes_config(shapes, "train.epochs=1", *settings), run, progress=False)
    total_loss, calls = trainer.criterion.total_loss, []

    def nan_on_second_step(losses):
        calls.append(1)
        return total_loss(losses) * (float("nan") if len(calls) == 2 else 1.0)

    trainer.criterion.total_loss = nan_on_second_step
    trainer.fit()
    assert "skipped a step with a non-finite loss at epoch 1, step 2," in caplog.text
    Trainer(load_config(run / "config.yaml", ["train.epochs=2"]), run, resume=True, progress=False).fit()
    records = read_metrics(run)
    assert [r["step"] for r in records if r["type"] == "train"] == [1, 3, 4, 5, 6]  # log_every=1
    assert [(r["step"], r["train_skipped_nonfinite"]) for r in records if r["type"] == "epoch"] == [(3, 1), (6, 0)]
    assert load_checkpoint(run / "checkpoint_last.pt")["step"] == 6
    if tensorboard:
        from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

        events = EventAccumulator(str(run / "tensorboard"))
        events.Reload()
        assert [e.step for e in events.Scalars("train-main-metrics/loss")] == [1, 3, 4, 5, 6]
        assert [e.step for e in events.Scalars("val-AP/AP")] == [3, 6]


def test_training_class_error_is_a_share_of_matched_queries_only(shapes, tmp_path: Path):
    """A training batch without objects logged class_error 100 (as the official DETR does), which read as total
    failure and pulled the epoch's train_class_error towards 100; such a step's record now has none, and the epoch's
    is over the matched queries of its batches, as val_class_error is."""
    data = json.loads(shapes["train"].read_text())
    data["images"] = data["images"][:2]
    data["annotations"] = [a for a in data["annotations"] if a["image_id"] == data["images"][0]["id"]]
    (tmp_path / "train.json").write_text(json.dumps(data))
    one_each = ("train.epochs=1", "train.batch_size=1", "train.log_every=1")
    config = shapes_config(shapes, *one_each, f"data.train.annotations={tmp_path / 'train.json'}")
    Trainer(config, tmp_path / "run", progress=False).fit()
    steps = [r for r in read_metrics(tmp_path / "run") if r["type"] == "train"]
    assert len(steps) == 2 and sorted("class_error" in r for r in steps) == [False, True]
    with_objects = next(r["class_error"] for r in steps if "class_error" in r)
    assert epoch_records(tmp_path / "run")[1]["train_class_error"] == pytest.approx(with_objects)


def test_a_resumed_run_s_summary_prints_the_learning_rate_it_trains_with(shapes, tmp_path: Path):
    """After optim.lr_drop the summary printed on resume said 'lr 0.0002' while the steps trained at 2e-05."""
    from sparse_detector.cli.summaries import train_summary

    run = tmp_path / "run"
    settings = ("train.max_steps_per_epoch=1", "optim.lr=1e-4", "optim.lr_drop=1", "train.eval_every=5")
    Trainer(shapes_config(shapes, "train.epochs=1", *settings), run, progress=False).fit()
    trainer = Trainer(load_config(run / "config.yaml", ["train.epochs=2"]), run, resume=True, progress=False)
    train_line = next(line for line in train_summary(trainer).splitlines() if line.startswith("train:"))
    trainer.fit()
    lr = [r["lr"]["default"] for r in read_metrics(run) if r["type"] == "train" and r["epoch"] == 2]
    assert lr == [pytest.approx(1e-5)]  # optim.lr_gamma 0.1
    assert "2 epochs (resumed at step 1, in epoch 2)" in train_line
    assert f"lr 0.0001 (now {lr[0]:g}, lowered by optim.lr_drop)" in train_line


def test_cli_end_to_end(tmp_path: Path, capsys):
    data = tmp_path / "data"
    assert main(["data", "shapes", str(data), "--num-images", "8", "--num-val", "4", "--image-size", "96"]) == 0
    overrides = [
        f"data.train.images={data / 'images'}",
        f"data.train.annotations={data / 'annotations' / 'train.json'}",
        f"data.val.images={data / 'images'}",
        f"data.val.annotations={data / 'annotations' / 'val.json'}",
        "data.train_scales=[96]",
        "data.val_size=96",
        "train.epochs=1",
        "train.max_steps_per_epoch=2",
        *SMALL_MODEL,
    ]
    run = tmp_path / "run"
    assert main(["train", "--no-progress", "--output-dir", str(run), "--set", *overrides]) == 0
    out = capsys.readouterr().out
    assert "model:  detr resnet18" in out and "epoch 1 step 1/2: loss" in out  # a summary, not the whole config
    assert main(["train", "--resume", str(run)]) == 1
    assert f"--resume {run} --set train.epochs=2" in capsys.readouterr().out
    assert main(["evaluate", "--checkpoint", str(run), "--output", str(tmp_path / "eval.json")]) == 0
    assert "AP50" in json.loads((tmp_path / "eval.json").read_text())
    out = tmp_path / "pred"
    images = sorted((data / "images").glob("val_*.png"))[:2]
    argv = ["predict", "--checkpoint", str(run), *map(str, images), "--output", str(out), "--threshold", "0"]
    assert main(argv) == 0
    predictions = json.loads((out / "predictions.json").read_text())
    assert len(predictions) == 2 and len(predictions[0]["detections"]) == 6
    assert predictions[0]["detections"][0]["category"] in {"blue", "green", "red", "yellow"}
    assert (out / f"{images[0].stem}_pred.png").is_file()
    # Bad input ends with a message, not a traceback.
    assert main(["evaluate", "--checkpoint", str(tmp_path / "missing")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_bccd_voc_converts_and_trains(tmp_path: Path):
    voc = shared_path("data/bccd")
    for split in ("train", "val"):
        assert (
            main(["data", "import", "voc", str(voc), "--split", split, "--out", str(tmp_path / f"{split}.json")]) == 0
        )
    overrides = [
        "data.train.images=''",  # the imported JSON names its images (absolute paths)
        f"data.train.annotations={tmp_path / 'train.json'}",
        "data.val.images=''",
        f"data.val.annotations={tmp_path / 'val.json'}",
        "model.num_classes=3",
        "model.num_queries=20",
        "data.train_scales=[192]",
        "data.val_size=192",
        "data.max_size=256",
        "train.epochs=1",
        "train.max_steps_per_epoch=2",
        "train.batch_size=2",
        *SMALL_MODEL[:5],
    ]
    stats = Trainer(load_config("shapes_tiny", overrides), tmp_path / "run", progress=False).fit()
    assert 0.0 <= stats["AP"] <= 1.0
    assert epoch_records(tmp_path / "run")[1]["train_steps"] == 2


def test_evaluate_official_checkpoint_on_coco_data(tmp_path: Path, caplog):
    """`evaluate --official` reads an official DETR checkpoint and scores it with raw COCO category ids; the
    per-class table names the categories as the data's JSON does (here 'person' renamed 'human'), not as COCO."""
    checkpoint = shared_path("fixtures/detr_official_r18_small.pt")
    coco = shared_path("data/tiny_coco")
    annotations = json.loads((coco / "annotations/instances_train2017.json").read_text())
    annotations["categories"] = [
        {**c, "name": "human" if c["id"] == 1 else c["name"]} for c in annotations["categories"]
    ]
    renamed = tmp_path / "renamed.json"
    renamed.write_text(json.dumps(annotations))
    argv = ["evaluate", "--official", "--nheads", "4", "--checkpoint", str(checkpoint), "--batch-size", "4"]
    argv += ["--images", str(coco / "train2017"), "--annotations", str(renamed)]
    argv += [
        "--workers",
        "0",
        "--output",
        str(tmp_path / "eval.json"),
        "--set",
        "data.val_size=320",
        "data.max_size=400",
    ]
    with caplog.at_level(logging.WARNING):
        assert main(argv) == 0
    assert "names 1 of them otherwise (data vs COCO: id 1: 'human' vs COCO 'person'): where these" in caplog.text
    stats = json.loads((tmp_path / "eval.json").read_text())
    assert stats["data"].endswith("renamed.json")
    assert 0.0 <= stats["AP"] <= 1.0  # random official weights: the point is that ids and boxes line up
    assert "human" in stats["per_class"] and "person" not in stats["per_class"]


def test_a_checkpoint_with_another_projects_config_names_the_file(tmp_path: Path, capsys):
    """A checkpoint whose 'config' is another schema (another project's, or an official one without --official) said
    only 'unknown config key aux_loss (did you mean loss?)'."""
    checkpoint = tmp_path / "theirs.pth"
    torch.save({"config": {"aux_loss": True, "hidden_dim": 64}, "model": {}}, checkpoint)
    assert main(["predict", "--checkpoint", str(checkpoint), "photo.png", "--output", str(tmp_path / "p")]) == 2
    err = capsys.readouterr().err
    assert f"{checkpoint} carries a 'config' that is not one of this package's (unknown config key aux_loss" in err
    assert "pass --official" in err


def test_predict_with_an_official_checkpoint_names_coco_categories(tmp_path: Path):
    """Detections of an official checkpoint on the user's own images were labelled by raw COCO id ("63")."""
    checkpoint = shared_path("fixtures/detr_official_r18_small.pt")
    image = shared_path("data/tiny_coco") / "train2017" / "000000005802.jpg"
    argv = ["predict", "--official", "--nheads", "4", "--checkpoint", str(checkpoint), "--device", "cpu"]
    assert main([*argv, "--threshold", "0", "--output", str(tmp_path), str(image)]) == 0
    (predicted,) = json.loads((tmp_path / "predictions.json").read_text())
    names = {d["category_id"]: d["category"] for d in predicted["detections"]}
    assert names and all(COCO_CATEGORY_NAMES.get(i, str(i)) == name for i, name in names.items())
    assert any(not name.isdigit() for name in names.values())


def test_a_device_name_torch_does_not_know_is_an_error_naming_the_setting() -> None:
    """`--device gpu` printed torch's list of 20 backend names; now the setting, the value and the valid names."""
    with pytest.raises(ValueError, match=r"--device: 'gpu' is not a device; use auto, cpu, cuda, cuda:N or mps"):
        resolve_device("gpu", "--device")
    assert resolve_device("cpu:0", "train.device") == torch.device("cpu:0")
    for other in ("xpu", "meta"):  # device types torch knows: an AssertionError traceback, or 'Tensor.item() ... meta'
        with pytest.raises(ValueError, match=rf"--device: '{other}' is not supported; use auto, cpu, cuda, cuda:N"):
            resolve_device(other, "--device")
    if not torch.cuda.is_available():  # `evaluate --device cuda` was told to use train.device=auto
        with pytest.raises(RuntimeError, match=r"--device: 'cuda' asked for, .* use --device auto or cpu"):
            resolve_device("cuda", "--device")
        with pytest.raises(RuntimeError, match=r"use train.device=auto or cpu"):
            resolve_device("cuda:1", "train.device")


def test_a_cuda_index_the_machine_lacks_is_an_error_naming_the_count(monkeypatch) -> None:
    """`--device cuda:3` on a one-GPU machine passed the check and failed later in torch ('invalid device ordinal')."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    with pytest.raises(RuntimeError, match=r"--device: 'cuda:3' asked for, but this machine has 1 CUDA device\(s\)"):
        resolve_device("cuda:3", "--device")
    assert resolve_device("cuda:0", "--device") == torch.device("cuda:0")
