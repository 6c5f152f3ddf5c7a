"""Preemptible training: signals, --resume auto, verified checkpoints and their rotation, new settings on resume,
non-finite losses, pickle payloads, fine-tuning with another class count."""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import signal
import subprocess
import sys
import time
import urllib.error
from pathlib import Path

import pytest
import torch

from sparse_detector import load_config
from sparse_detector.cli import main
from sparse_detector.config import config_to_dict
from sparse_detector.engine.checkpoint import (
    CheckpointError,
    load_checkpoint,
    run_checkpoints,
    save_checkpoint,
    verify_checkpoint,
)
from sparse_detector.engine.trainer import NonFiniteLossError, Trainer, TrainingDivergedError
from sparse_detector.models.weights import CheckpointMismatchError
from sparse_detector.runs import METRICS_FILE, claim_run_dir, epoch_checkpoint_name, read_metrics

from .conftest import epoch_records, shapes_config, shapes_overrides

SRC = Path(__file__).resolve().parents[1] / "src"
FAST = ("train.max_steps_per_epoch=1", "train.eval_every=100")


def test_sigterm_mid_epoch_checkpoints_and_resumes_exactly(shapes, tmp_path: Path):
    """A CLI training subprocess gets SIGTERM mid-epoch: it finishes the step, writes a checkpoint, exits 0 saying
    how to resume; the resumed run's epochs equal an uninterrupted run's."""
    settings = ["train.epochs=2", "train.batch_size=1", "train.deterministic=true", "train.eval_every=1"]
    # All three runs in fresh processes alike: this test process's state (thread pools, kernel caches left by other
    # tests) may change the last bits of a float sum.
    env = {**os.environ, "PYTHONPATH": str(SRC), "OMP_NUM_THREADS": "1"}

    def train(output_dir: Path, *extra: str) -> subprocess.Popen:
        argv = ["train", "--no-progress", "--output-dir", str(output_dir), *extra]
        command = [sys.executable, "-m", "sparse_detector", *argv]
        return subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)

    run = tmp_path / "run"
    straight = train(tmp_path / "straight", "--set", *shapes_overrides(shapes), *settings)
    process = train(run, "--set", *shapes_overrides(shapes), *settings)
    metrics = run / "metrics.jsonl"
    deadline = time.monotonic() + 120
    while not (metrics.exists() and '"type": "train"' in metrics.read_text()):
        assert process.poll() is None and time.monotonic() < deadline, process.communicate()[0].decode()
        time.sleep(0.02)
    process.send_signal(signal.SIGTERM)
    output = process.communicate(timeout=120)[0].decode()
    assert process.returncode == 0, output
    assert "stopped by SIGTERM" in output and f"resume with: sparse-detector train --resume {run}" in output
    state = load_checkpoint(run / "checkpoint_last.pt")
    assert verify_checkpoint(run / "checkpoint_last.pt") is None
    assert state["epoch"] == 0 and 1 <= state["epoch_progress"]["steps"] == state["step"] < 12  # mid-epoch

    resumed = train(run, "--resume", str(run))
    assert resumed.wait(timeout=300) == 0 and straight.wait(timeout=300) == 0
    resumed, reference = epoch_records(run), epoch_records(tmp_path / "straight")
    assert sorted(resumed) == [1, 2]
    for epoch in (1, 2):
        for key in ("train_loss", "train_loss_ce", "train_loss_giou", "AP", "AP50", "val_loss"):
            assert resumed[epoch][key] == reference[epoch][key], (epoch, key)
    steps = [r["step"] for r in read_metrics(run) if r["type"] == "train"]
    assert steps == list(range(1, 25))  # the interrupted epoch's step records are neither lost nor repeated


def test_sigterm_to_the_process_group_spares_the_loader_workers(shapes, tmp_path: Path):
    """A scheduler signals every process of the job: with DataLoader workers the run still finishes its step,
    writes a checkpoint and exits 0 (a worker killed by the signal used to end it with an error instead)."""
    settings = ["train.epochs=1", "train.batch_size=1", "data.num_workers=1", "train.eval_every=100"]
    argv = ["train", "--no-progress", "--output-dir", str(tmp_path / "run"), "--set", *shapes_overrides(shapes)]
    command = [sys.executable, "-m", "sparse_detector", *argv, *settings]
    env = {**os.environ, "PYTHONPATH": str(SRC), "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen(
        command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True
    )
    metrics = tmp_path / "run" / "metrics.jsonl"
    deadline = time.monotonic() + 120
    while not (metrics.exists() and '"type": "train"' in metrics.read_text()):
        assert process.poll() is None and time.monotonic() < deadline, process.communicate()[0].decode()
        time.sleep(0.02)
    os.killpg(process.pid, signal.SIGTERM)
    output = process.communicate(timeout=120)[0].decode()
    assert process.returncode == 0 and "stopped by SIGTERM" in output, output
    assert verify_checkpoint(tmp_path / "run" / "checkpoint_last.pt") is None


def test_second_signal_stops_at_once(shapes, tmp_path: Path):
    trainer = Trainer(shapes_config(shapes, "train.epochs=1", *FAST), tmp_path / "run", progress=False)

    def two_signals(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGINT)
        os.kill(os.getpid(), signal.SIGINT)

    trainer._backward = two_signals
    with pytest.raises(KeyboardInterrupt, match="SIGINT"):
        trainer.fit()
    assert not (tmp_path / "run" / "checkpoint_last.pt").exists()


def test_a_run_directory_in_training_is_refused_to_a_second_process(shapes, tmp_path: Path):
    """Two `train --output-dir runs/s` at once, or a --resume while the first still ran, both trained into the run
    directory: every step twice in metrics.jsonl and TensorBoard, checkpoints written in turn."""
    run = tmp_path / "run"
    config = shapes_config(shapes, *FAST, "train.epochs=1")
    Trainer(config, run, progress=False).fit()  # the directory is free again once training ends
    logged = (run / METRICS_FILE).read_text()
    other_process = claim_run_dir(run)  # flock: a second holder conflicts, in this process as in another
    try:
        with pytest.raises(RuntimeError, match="is being trained by another process right now"):
            Trainer(shapes_config(shapes, *FAST, "train.epochs=2"), run, resume=True, progress=False)
        with pytest.raises(RuntimeError, match="is being trained by another process right now"):
            Trainer(config, run, progress=False)  # not "continue it with --resume", which the lock refuses too
    finally:
        other_process.release()
    assert (run / METRICS_FILE).read_text() == logged  # the resume did not cut back the other process's log
    Trainer(shapes_config(shapes, *FAST, "train.epochs=2"), run, resume=True, progress=False).fit()


def test_a_resume_that_fails_leaves_the_run_directory_free(shapes, tmp_path: Path):
    """A Trainer whose constructor failed after claiming the run directory (here: a resume with no checkpoint) held
    it while the failed Trainer lived on in the traceback (a notebook keeps the last one): a second start in the
    process was refused."""
    run = tmp_path / "run"
    run.mkdir()
    with pytest.raises(FileNotFoundError, match="holds no valid checkpoint to resume from") as failure:
        Trainer(shapes_config(shapes, *FAST), run, resume=True, progress=False)
    claim_run_dir(run).release()  # free: no 'is being trained by another process right now'
    assert failure.traceback  # kept until here, as a notebook keeps it


def test_resume_auto_falls_back_from_a_corrupt_checkpoint(shapes, tmp_path: Path, caplog):
    run = tmp_path / "run"
    args = ["train", "--no-progress", "--resume", "auto", "--output-dir", str(run), "--set"]
    overrides = [*shapes_overrides(shapes), *FAST, "train.keep_last=1"]
    assert main([*args, *overrides, "train.epochs=2"]) == 0  # no checkpoint yet: starts the run
    assert [r.epoch for r in run_checkpoints(run)] == [2, 1]
    assert main([*args, *overrides, "train.epochs=2"]) == 0  # the job restarted after it finished: nothing to do
    last = run / "checkpoint_last.pt"
    last.write_bytes(last.read_bytes()[:-100])  # truncated
    assert "truncated" in verify_checkpoint(last)
    with caplog.at_level(logging.WARNING):
        trainer = Trainer(load_config(run / "config.yaml", ["train.epochs=3"]), run, resume=True, progress=False)
    assert trainer.epoch == 1 and trainer.last_checkpoint.name == "checkpoint_epoch0001.pt"
    assert "skipping checkpoint" in caplog.text and "truncated" in caplog.text
    data = bytearray((run / "checkpoint_epoch0001.pt").read_bytes())
    data[len(data) // 2] ^= 0xFF
    (run / "checkpoint_epoch0001.pt").write_bytes(bytes(data))
    assert "SHA-256" in verify_checkpoint(run / "checkpoint_epoch0001.pt")
    assert main([*args, *overrides, "train.epochs=3"]) == 2  # nothing valid left: a clear error


def test_a_truncated_checkpoint_is_named_without_torchs_internals(tmp_path: Path, capsys):
    """A checkpoint cut off in a copy gave 'cannot read checkpoint ...: PytorchStreamReader failed reading zip archive:
    failed finding central directory. This is an internal miniz error. If you are seeing this error, ...'."""
    run = tmp_path / "run"
    for name in ("checkpoint_best.pt", "checkpoint_last.pt"):
        save_checkpoint(run / name, {"model": {"weight": torch.zeros(5000)}, "epoch": 1})
    best = run / "checkpoint_best.pt"
    best.write_bytes(best.read_bytes()[:1000])
    with pytest.raises(CheckpointError) as caught:
        load_checkpoint(best)
    assert "miniz" in str(caught.value.__cause__)  # torch's words stay the cause: --debug shows them
    assert main(["predict", "--checkpoint", str(run), "image.png", "--output", str(tmp_path / "p")]) == 2
    err = capsys.readouterr().err
    assert f"cannot read checkpoint {best} (1000 bytes): it is truncated or corrupt" in err
    assert "give another checkpoint; other checkpoints beside it: checkpoint_last.pt" in err
    assert "miniz" not in err and "PytorchStreamReader" not in err


def test_numbered_checkpoints_are_kept_and_pruned(shapes, tmp_path: Path):
    config = shapes_config(shapes, "train.epochs=5", *FAST, "optim.lr_drop=2", "train.keep_last=1")
    Trainer(config, tmp_path / "run", progress=False).fit()
    names = sorted(p.name for p in (tmp_path / "run").glob("checkpoint_*.pt"))
    # last = epoch 5; the newest numbered (4); the ones just before each lr drop (2, 4)
    assert names == ["checkpoint_best.pt", "checkpoint_epoch0002.pt", "checkpoint_epoch0004.pt", "checkpoint_last.pt"]
    config = shapes_config(
        shapes, "train.epochs=4", *FAST, "optim.lr_drop=100", "train.keep_last=0", "train.keep_every=3"
    )
    Trainer(config, tmp_path / "every", progress=False).fit()
    assert sorted(p.name for p in (tmp_path / "every").glob("checkpoint_epoch*")) == [
        "checkpoint_epoch0003.pt",
        "checkpoint_epoch0003.pt.meta.json",  # a pruned checkpoint's record goes with it
    ]


def test_resume_applies_a_new_learning_rate_and_schedule(shapes, tmp_path: Path):
    run = tmp_path / "run"
    Trainer(shapes_config(shapes, "train.epochs=1", *FAST), run, progress=False).fit()
    config = load_config(run / "config.yaml", ["train.epochs=2", "optim.lr=5e-5", "optim.lr_drop=1"])
    trainer = Trainer(config, run, resume=True, progress=False)
    lrs = {g["name"]: g["lr"] for g in trainer.optimizer.param_groups}
    assert lrs["default"] == pytest.approx(5e-6)  # the new base lr, dropped once by the new schedule at epoch 1
    assert lrs["backbone"] == pytest.approx(2e-5)
    trainer.fit()
    (record,) = [r for r in read_metrics(run) if r["type"] == "resume"]
    assert any("group default: lr 0.0002" in change and "-> 5e-06" in change for change in record["changes"])
    assert load_checkpoint(run / "checkpoint_last.pt")["lr_scheduler"]["base_lrs"][0] == pytest.approx(5e-5)
    assert "optim.lr: 0.0002 -> 5e-05" in record["changes"] and "train.epochs: 1 -> 2" in record["changes"]


def test_resume_names_model_settings_it_changes_or_that_do_not_fit(shapes, tmp_path: Path):
    run = tmp_path / "run"
    Trainer(shapes_config(shapes, "train.epochs=1", *FAST), run, progress=False).fit()
    queries = load_config(run / "config.yaml", ["train.epochs=2", "model.num_queries=3"])
    with pytest.raises(
        CheckpointMismatchError, match=r"model settings changed on resume \(model\.num_queries: 6 -> 3\)"
    ):
        Trainer(queries, run, resume=True, progress=False)
    sparse = load_config(run / "config.yaml", ["train.epochs=2", "model.attention.decoder_cross.activation=sparsemax"])
    Trainer(sparse, run, resume=True, progress=False)  # same weights: allowed, and on the record
    (record,) = [r for r in read_metrics(run) if r["type"] == "resume"]
    assert "model.attention.decoder_cross.activation: 'softmax' -> 'sparsemax'" in record["changes"]
    # a setting that only picks a new run's starting weights was listed as a change, as if it had one
    start = load_config(run / "config.yaml", ["train.epochs=2", "model.attention.decoder_cross.alpha_init=1.2"])
    Trainer(start, run, resume=True, progress=False)
    assert (
        "model.attention.decoder_cross.alpha_init: 1.5 -> 1.2 (no effect: a resumed run keeps its checkpoint's "
        "weights; it only starts a new run)" in [r for r in read_metrics(run) if r["type"] == "resume"][-1]["changes"]
    )


def test_mid_epoch_resume_with_another_batch_size_trains_each_image_once(shapes, tmp_path: Path):
    run = tmp_path / "run"
    trainer = Trainer(shapes_config(shapes, "train.epochs=1", "train.eval_every=100"), run, progress=False)
    backward = trainer._backward

    def stop_after_the_first_step(loss):  # as a SIGTERM during step 1 would: finish it, checkpoint, stop
        backward(loss)
        trainer.stop_signal = signal.SIGTERM

    trainer._backward = stop_after_the_first_step
    trainer.fit()
    assert load_checkpoint(run / "checkpoint_last.pt")["epoch_progress"]["position"] == 4  # 1 batch of 4 of 12
    config = load_config(run / "config.yaml", ["train.batch_size=2"])
    Trainer(config, run, resume=True, progress=False).fit()
    (epoch,) = [r for r in read_metrics(run) if r["type"] == "epoch"]
    assert epoch["train_steps"] == 1 + 4  # the other 8 images in batches of 2 (was 1 + 5: 2 images seen twice)


def test_nonfinite_loss_names_step_terms_and_last_checkpoint(shapes, tmp_path: Path):
    run = tmp_path / "run"
    Trainer(shapes_config(shapes, "train.epochs=1", *FAST), run, progress=False).fit()
    trainer = Trainer(load_config(run / "config.yaml", ["train.epochs=2"]), run, resume=True, progress=False)
    total_loss = trainer.criterion.total_loss
    trainer.criterion.total_loss = lambda losses: total_loss(losses) * float("nan")
    with pytest.raises(NonFiniteLossError) as err:
        trainer.fit()
    message = str(err.value)
    assert "epoch 2, step 2" in message and "loss_ce" in message and "loss_giou" in message
    assert f"Last good checkpoint: {run / 'checkpoint_last.pt'}" in message


def _diverging(trainer: Trainer) -> Trainer:
    """``trainer`` with every optimiser step leaving NaN in the class head, as a far too high learning rate does."""
    backward = trainer._backward

    def nan_weights(loss: torch.Tensor) -> None:
        backward(loss)
        with torch.no_grad():
            trainer.model.class_embed.bias.fill_(float("nan"))

    trainer._backward = nan_weights
    return trainer


def test_diverged_training_says_where_why_and_what_to_do_and_saves_no_nan_weights(shapes, tmp_path: Path, capsys):
    """It ended in "error: non-finite matching cost: the model outputs contain NaN or inf", with no word of the
    validation after the epoch, of the diverged weights or of what to do, and without the epoch's record."""
    run = tmp_path / "run"
    skip = ("train.on_nonfinite_loss=skip", "optim.clip_max_norm=0")
    config = shapes_config(shapes, "train.epochs=1", "train.max_steps_per_epoch=1", "train.eval_every=1", *skip)
    with pytest.raises(TrainingDivergedError) as err:
        _diverging(Trainer(config, run, progress=False)).fit()
    message = str(err.value)
    assert message.startswith("training diverged at validation after epoch 1: the model's outputs are NaN or inf on")
    assert "(0 of 1 training steps of epoch 1 were skipped" in message
    assert "the weights diverged: NaN or inf in 1 parameter tensor (first: ['class_embed.bias'])" in message
    assert "lower optim.lr (now 0.0002)" in message and "set optim.clip_max_norm (now 0" in message
    assert "No checkpoint was written before" in message
    assert epoch_records(run)[1]["train_steps"] == 1  # the epoch's record is kept
    assert run_checkpoints(run) == []

    # a run with a good checkpoint: the epoch that diverges (steps skipped, then NaN weights) saves nothing
    Trainer(shapes_config(shapes, "train.epochs=1", *FAST), run, progress=False).fit()
    config = load_config(run / "config.yaml", ["train.epochs=3", "train.max_steps_per_epoch=2", *skip])
    with pytest.raises(TrainingDivergedError) as err:
        _diverging(Trainer(config, run, resume=True, progress=False)).fit()
    message = str(err.value)
    assert message.startswith("training diverged at epoch 2, step 3, image ids [")
    assert (
        f"Its last checkpoint, {run / 'checkpoint_last.pt'} (epoch 1), is kept and nothing later was saved" in message
    )
    assert f"sparse-detector train --resume {run} --set optim.lr=..." in message
    assert [load_checkpoint(run / name)["epoch"] for name in ("checkpoint_last.pt", "checkpoint_best.pt")] == [1, 1]

    # weights that became NaN on an epoch's last step are not saved at its end, evaluated or not
    config = load_config(run / "config.yaml", ["train.epochs=3", *FAST, *skip])
    with pytest.raises(TrainingDivergedError, match="^training diverged at the end of epoch 2: its checkpoint was not"):
        _diverging(Trainer(config, run, resume=True, progress=False)).fit()
    assert load_checkpoint(run / "checkpoint_last.pt")["epoch"] == 1

    # evaluating such weights stopped inside COCOeval: "Detection scores must not be NaN."
    state = load_checkpoint(run / "checkpoint_last.pt")
    state["model"]["class_embed.bias"].fill_(float("nan"))
    save_checkpoint(tmp_path / "nan.pt", state)
    capsys.readouterr()
    assert main(["evaluate", "--checkpoint", str(tmp_path / "nan.pt"), "--no-progress"]) == 2
    error = capsys.readouterr().err
    assert "error: the model's outputs are NaN or inf on image ids [" in error
    assert "the weights diverged: NaN or inf in 1 parameter tensor (first: ['class_embed.bias'])" in error


class _Payload:
    def __reduce__(self):
        return (print, ("this must never run",))


def test_checkpoint_with_a_pickle_payload_is_refused(tmp_path: Path, capsys):
    path = tmp_path / "evil.pt"
    torch.save({"model": {"w": torch.zeros(1)}, "config": _Payload()}, path)
    with pytest.raises(CheckpointError, match="refused to load .*evil.pt"):
        load_checkpoint(path)
    assert main(["evaluate", "--checkpoint", str(path)]) == 2
    captured = capsys.readouterr()
    assert "refused to load" in captured.err and "this must never run" not in captured.out
    assert "loaded (here print)" in captured.err  # not torch's advice to load it unsafely, in escape codes
    assert "\x1b" not in captured.err and "two options" not in captured.err


def test_an_official_checkpoint_without_official_is_told_to_need_it(tmp_path: Path, capsys):
    """An official DETR checkpoint (its training args an argparse.Namespace) given without --official was refused as
    'holding Python objects which could run code', with torch's advice to load it unsafely."""
    path = tmp_path / "detr-r50.pth"
    torch.save({"model": {"w": torch.zeros(1)}, "args": argparse.Namespace(lr=1e-4), "epoch": 1}, path)
    assert main(["evaluate", "--checkpoint", str(path)]) == 2
    err = capsys.readouterr().err
    assert "for an official checkpoint pass --official" in err and "refused" not in err


@pytest.mark.parametrize(
    ("content", "kind"),
    [
        (b"", "is empty"),
        (b"hello", "a text file"),
        (b"\x89PNG\r\n\x1a\n", "a PNG image"),
        (b"PK\x03\x04", "truncated"),
        (b"\x02\x00\x00\x00\x00\x00\x00\x00{}", "a safetensors file (a Hugging Face DETR model's is read as"),
    ],
)
@pytest.mark.parametrize("official", [False, True])
def test_a_file_that_is_no_checkpoint_is_named_as_such(tmp_path: Path, capsys, content, kind, official):
    """A PNG, a text file, an empty or a truncated file given as checkpoint (ours or --official) is an error naming
    the file and what it is, not the unpickler's KeyError / EOFError traceback."""
    path = tmp_path / "model.pt"
    path.write_bytes(content)
    assert main(["evaluate", "--checkpoint", str(path), *(["--official"] if official else [])]) == 2
    err = capsys.readouterr().err
    assert f"checkpoint {path}" in err and kind in err and "Traceback" not in err


def test_a_file_that_is_no_checkpoint_given_to_init_from_is_not_told_to_add_official(tmp_path: Path):
    """train --init-from notes.txt advised 'official DETR / Deformable DETR checkpoints with --official', an option
    train does not have (it reads official checkpoints as they are)."""
    from sparse_detector.engine.trainer import initialise_from
    from sparse_detector.models import build_model

    path = tmp_path / "notes.pth"
    path.write_text("hello")
    model = build_model(load_config("shapes_tiny", ["model.transformer.hidden_dim=16"]))
    with pytest.raises(CheckpointMismatchError, match=r"a text file: .*`train --init-from` reads one as it is"):
        initialise_from(model, path)


@pytest.mark.parametrize("official", [False, True])
def test_weights_in_another_layout_are_named_with_what_to_give(tmp_path: Path, capsys, official):
    """A Hugging Face transformers state dict (pytorch_model.bin) got 'does not fit the model: N missing keys', and a
    checkpoint with its weights under 'state_dict' 'is not a state dict nor a checkpoint with a model state dict':
    now each names what it is and what to give (train --init-from, and evaluate with or without --official)."""
    from sparse_detector.engine.trainer import initialise_from
    from sparse_detector.models import build_model
    from sparse_detector.models.huggingface import HuggingFaceCheckpointError

    model = build_model(load_config("shapes_tiny", ["model.transformer.hidden_dim=16"]))
    hugging_face = {"model.backbone.conv_encoder.model.conv1.weight": torch.zeros(1), "model.x": torch.zeros(1)}
    torch.save(hugging_face, tmp_path / "pytorch_model.bin")
    torch.save(hugging_face, tmp_path / "converted.pth")
    torch.save({"state_dict": model.state_dict(), "epoch": 3}, tmp_path / "lightning.pth")
    expected = {
        "pytorch_model.bin": r"pytorch_model.bin is read as a Hugging Face transformers weights file, which needs the "
        r"model's config.json beside it",
        "converted.pth": r"converted.pth holds a Hugging Face transformers model's weights \(names such as "
        r"'model.backbone.conv_encoder.model.conv1.weight'\) without the model's config.json: give the model's folder",
        "lightning.pth": r"lightning.pth is not a state dict nor a checkpoint with a 'model' state dict \(its keys: "
        r"'state_dict', 'epoch'\): give a run directory .* re-saved under 'model'",
    }
    for name, message in expected.items():
        with pytest.raises((CheckpointMismatchError, HuggingFaceCheckpointError), match=message):
            initialise_from(model, tmp_path / name)
        command = ["evaluate", "--checkpoint", str(tmp_path / name), *(["--official"] if official else [])]
        assert main(command) == 2
        err = capsys.readouterr().err
        assert "Traceback" not in err and re.search(message, err), err
    with pytest.raises(
        FileNotFoundError, match=r"weight files in it: converted.pth, lightning.pth, pytorch_model.bin: give one"
    ):
        initialise_from(model, tmp_path)


def test_init_from_weights_of_no_model_it_builds_is_named_as_such(tmp_path: Path):
    """train --init-from an ImageNet ResNet (a classifier's .pth) ended in AttributeError: 'NoneType' object has no
    attribute 'lstrip' (a traceback), looking up the official reader of a model that none of them takes."""
    from torchvision.models import resnet18

    from sparse_detector.engine.trainer import initialise_from
    from sparse_detector.models import build_model

    torch.save({"model": resnet18().state_dict()}, tmp_path / "resnet18.pth")
    config = load_config("shapes_tiny", ["model.transformer.hidden_dim=16"])
    with pytest.raises(
        CheckpointMismatchError,
        match=r"resnet18.pth does not fit the model \(\d+ missing keys .*unexpected keys .*\) and is neither a "
        r"checkpoint of this package .* nor an official one of a model it builds: give a run directory .*; ImageNet "
        r"weights for the backbone alone come with model.backbone.pretrained=true",
    ):
        initialise_from(build_model(config), tmp_path / "resnet18.pth", config)


def test_init_from_another_class_count_reinitialises_the_class_head(shapes, tmp_path: Path, capsys):
    source = tmp_path / "source"
    Trainer(
        shapes_config(shapes, "train.epochs=1", *FAST, "model.num_classes=7", "data.label_mode=coco_ids"),
        source,
        progress=False,
    ).fit()
    weights = load_checkpoint(source / "checkpoint_last.pt")["model"]
    config = shapes_config(shapes, "train.epochs=1", *FAST, "model.backbone.lr=0")  # frozen backbone
    trainer = Trainer(config, tmp_path / "tuned", progress=False, init_from=source / "checkpoint_last.pt")
    assert list(trainer.initial_weights.reinitialised) == ["class_embed.weight", "class_embed.bias"]
    total = len(trainer.model.state_dict())
    assert (  # what it loaded, and why not the rest
        f"init:   {source / 'checkpoint_last.pt'}: {total - 2} of {total} weights loaded; re-initialised for another "
        "class count (checkpoint -> model): class_embed.weight [8, 32] -> [5, 32], class_embed.bias [8] -> [5]\n"
    ) in capsys.readouterr().out
    state = trainer.model.state_dict()
    assert state["class_embed.weight"].shape[0] == 5
    for key, value in weights.items():
        if not key.startswith("class_embed."):
            assert torch.equal(state[key], value), key
    assert not any(p.requires_grad for p in trainer.model.backbone.parameters())
    trainer.fit()
    (init,) = [r for r in read_metrics(tmp_path / "tuned") if r["type"] == "init"]  # the run says what it started from
    assert init["init_from"] == str((source / "checkpoint_last.pt").resolve())
    assert init["reinitialised"] == ["class_embed.weight", "class_embed.bias"]
    from_run = Trainer(config, tmp_path / "tuned-from-run", progress=False, init_from=source)  # its best checkpoint
    assert torch.equal(from_run.model.state_dict()["query_embed.weight"], weights["query_embed.weight"])
    other = shapes_config(shapes, "model.transformer.dec_layers=3")
    with pytest.raises(
        CheckpointMismatchError, match=r"does not fit the model apart from its class heads \['class_embed'\]"
    ):
        Trainer(other, tmp_path / "bad", progress=False, init_from=source / "checkpoint_last.pt")
    deformable = tmp_path / "deformable.pt"  # one of ours, of another model
    torch.save(
        {"model": {"query_embed.weight": torch.zeros(16, 256)}, "config": {"model": {"arch": "deformable_detr"}}},
        deformable,
    )
    with pytest.raises(CheckpointMismatchError, match="is a deformable_detr checkpoint, but the config builds a detr"):
        Trainer(config, tmp_path / "bad", progress=False, init_from=deformable)


def test_init_from_and_resume_need_no_imagenet_weights(shapes, tmp_path: Path, monkeypatch):
    """`train --config detr_r50 --init-from detr-r50-e632da11.pth` offline ended in 'could not load ImageNet weights':
    the backbone was built from the ImageNet weights that the checkpoint then replaced (on a --resume too)."""
    source = tmp_path / "source"
    Trainer(shapes_config(shapes, "train.epochs=1", *FAST), source, progress=False).fit()
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))  # an empty hub cache

    def no_network(*args, **kwargs):
        raise urllib.error.URLError("no network in tests")

    monkeypatch.setattr(torch.hub, "download_url_to_file", no_network)
    tuned = tmp_path / "tuned"
    Trainer(
        shapes_config(shapes, "train.epochs=1", *FAST, "model.backbone.pretrained=true"),
        tuned,
        progress=False,
        init_from=source,
    ).fit()
    config = load_config(tuned / "config.yaml", ["train.epochs=2"])
    assert config.model.backbone.pretrained  # the config as given
    Trainer(config, tuned, resume=True, progress=False).fit()
    assert [r["epoch"] for r in read_metrics(tuned) if r["type"] == "epoch"] == [1, 2]


@pytest.mark.filterwarnings("ignore:Detected call of `lr_scheduler.step\\(\\)` before `optimizer.step\\(\\)`")
def test_an_epoch_whose_every_step_was_skipped_as_non_finite_prints_its_summary(shapes, tmp_path: Path, capsys):
    """It ended in KeyError: 'train_loss' (a traceback) when printing the epoch's summary."""
    config = shapes_config(shapes, "train.epochs=1", "train.on_nonfinite_loss=skip", "train.max_steps_per_epoch=2")
    trainer = Trainer(config, tmp_path / "run", progress=False)
    total_loss = trainer.criterion.total_loss
    trainer.criterion.total_loss = lambda losses: total_loss(losses) * float("nan")
    assert "AP" in trainer.fit()
    printed = capsys.readouterr().out
    assert "epoch 1: mean train loss n/a over 0 steps (2 more skipped as non-finite)  val AP " in printed


def test_init_from_softmax_weights_into_other_attention_maps(tmp_path: Path):
    """Fine-tuning softmax weights with alpha-entmax attention was refused ('2 missing keys ... pre_alpha'): the
    maps' own parameters start at the config's alpha_init (and are dropped the other way round); the rest loads."""
    from sparse_detector.engine.trainer import initialise_from
    from sparse_detector.models import build_model

    small = ["model.transformer.hidden_dim=16", "model.transformer.dim_feedforward=16", "model.num_classes=2"]
    softmax = build_model(load_config("shapes_tiny", small))
    torch.save({"model": softmax.state_dict()}, tmp_path / "softmax.pt")
    alpha = ["model.attention.encoder_self.activation=alpha_entmax", "model.attention.encoder_self.alpha_init=1.3"]
    sparse = build_model(load_config("shapes_tiny", [*small, *alpha]))
    initial = initialise_from(sparse, tmp_path / "softmax.pt")
    fresh = [f"transformer.encoder.layers.{i}.self_attn.activation.pre_alpha" for i in range(2)]
    assert (initial.loaded, initial.total, initial.fresh_maps) == (
        len(softmax.state_dict()),
        len(softmax.state_dict()) + 2,
        fresh,
    )
    assert initial.summary().endswith(
        f"; at the config's alpha_init (the checkpoint's map there has none): {', '.join(fresh)}"
    )
    state = sparse.state_dict()
    assert all(torch.equal(state[k], v) for k, v in softmax.state_dict().items())
    assert sparse.transformer.encoder.layers[0].self_attn.activation.alpha.allclose(torch.tensor(1.3))
    torch.save({"model": state}, tmp_path / "alpha.pt")
    assert initialise_from(build_model(load_config("shapes_tiny", small)), tmp_path / "alpha.pt").dropped_maps == fresh
    other_init = [*small, *alpha, "model.attention.encoder_self.alpha_init=1.9"]  # said to be unused
    assert (
        initialise_from(build_model(load_config("shapes_tiny", other_init)), tmp_path / "alpha.pt")
        .summary()
        .endswith(f"; α loaded from it, not alpha_init, at {', '.join(fresh)}")
    )


def test_init_from_a_checkpoint_of_other_sizes_names_the_settings_that_differ(tmp_path: Path):
    """train --init-from an official checkpoint with a from-scratch preset said '33 missing keys (first:
    [...num_batches_tracked...])' and 'use the config the checkpoint was trained with', which an official checkpoint
    does not carry; now the settings that give other weights, read from the checkpoint (its config, or its weights),
    with the values to set. Those that do not change the weights (dropout, learning rates) are not named."""
    from sparse_detector.engine.trainer import initialise_from
    from sparse_detector.models import build_model

    small = ["model.transformer.hidden_dim=16", "model.transformer.dim_feedforward=16", "model.num_classes=2"]
    official = [*small, "model.backbone.norm=frozen_bn", "model.num_queries=5", "model.transformer.dropout=0.3"]
    torch.save({"model": build_model(load_config("shapes_tiny", official)).state_dict()}, tmp_path / "official.pth")
    config = load_config("shapes_tiny", [*small, "model.num_classes=3"])
    settings = r"model.num_queries: 5 -> 8; model.backbone.norm: 'frozen_bn' -> 'batch_norm'\): set them"
    with pytest.raises(CheckpointMismatchError, match=r"\(checkpoint -> config: " + settings):
        initialise_from(build_model(config), tmp_path / "official.pth", config)
    ours = load_config("shapes_tiny", [*small, "model.transformer.dec_layers=2", "model.transformer.dropout=0.3"])
    torch.save({"model": build_model(ours).state_dict(), "config": config_to_dict(ours)}, tmp_path / "ours.pt")
    with pytest.raises(CheckpointMismatchError, match=r"config: model.transformer.dec_layers: 2 -> 3\): set") as err:
        initialise_from(build_model(config), tmp_path / "ours.pt", config)
    assert "dropout" not in str(err.value)


def test_init_from_a_checkpoint_with_other_heads_is_refused_naming_them(tmp_path: Path):
    """A checkpoint trained with 4 heads loaded unnoticed into a config of 8 (the same shapes, another model): now the
    setting is named, read from our checkpoint's config or the args an official training script stored."""
    from sparse_detector.engine.trainer import initialise_from
    from sparse_detector.models import build_model

    small = ["model.transformer.hidden_dim=16", "model.transformer.dim_feedforward=16", "model.num_classes=2"]
    four = load_config("shapes_tiny", [*small, "model.transformer.nheads=4"])
    weights = build_model(four).state_dict()
    torch.save({"model": weights, "config": config_to_dict(four)}, tmp_path / "ours.pt")
    torch.save({"model": weights, "args": argparse.Namespace(nheads=4, dilation=False)}, tmp_path / "official.pth")
    torch.save({"model": weights}, tmp_path / "bare.pth")  # no args: its heads cannot be known
    eight = load_config("shapes_tiny", [*small, "model.transformer.nheads=8"])
    for name in ("ours.pt", "official.pth"):
        with pytest.raises(
            CheckpointMismatchError, match=r"compute \(checkpoint -> config: model.transformer.nheads: 4 -> 8\): set"
        ):
            initialise_from(build_model(eight), tmp_path / name, eight)
        assert initialise_from(build_model(four), tmp_path / name, four).loaded == len(weights)
    assert initialise_from(build_model(eight), tmp_path / "bare.pth", eight).loaded == len(weights)


def _train_killed_writing(config, run: Path, name: str, after_epoch: int, monkeypatch) -> None:
    """Train ``config`` into ``run`` and stop it as a second signal (or SIGKILL) would, when it is about to write
    the file ``name`` of a checkpoint after ``after_epoch`` epochs."""
    from sparse_detector.engine import checkpoint

    write = checkpoint.write_atomically

    def killed(path: Path, content) -> None:
        if path.name == name and (after_epoch == 1 or (run / epoch_checkpoint_name(after_epoch - 1)).exists()):
            raise KeyboardInterrupt
        write(path, content)

    monkeypatch.setattr(checkpoint, "write_atomically", killed)
    with pytest.raises(KeyboardInterrupt):
        Trainer(config, run, progress=False).fit()
    monkeypatch.undo()


def test_a_checkpoint_whose_record_was_never_written_resumes_at_its_own_epoch(shapes, tmp_path: Path, monkeypatch):
    """A second signal (or SIGKILL) between writing checkpoint_last.pt and its record left a checkpoint without
    one, which was taken for an ancient one of 1073741824 epochs: `--resume` said the run had finished them all."""
    run = tmp_path / "run"
    config = shapes_config(shapes, "train.epochs=3", *FAST)
    _train_killed_writing(config, run, "checkpoint_last.pt.meta.json", 2, monkeypatch)
    assert not (run / "checkpoint_last.pt.meta.json").exists()
    umask = os.umask(0)
    os.umask(umask)
    assert (run / "checkpoint_last.pt").stat().st_mode & 0o777 == 0o666 & ~umask  # not owner-only (mkstemp's)
    assert [(r.epoch, r.step) for r in run_checkpoints(run)] == [(2, 2), (1, 1)]
    partial = run / ".checkpoint_last.pt.k1ll3d_.tmp"  # what a SIGKILL while writing a checkpoint leaves
    partial.write_bytes(b"\0" * 1000)
    trainer = Trainer(load_config(run / "config.yaml"), run, resume=True, progress=False)
    assert not partial.exists()
    assert (trainer.epoch, trainer.step, trainer.last_checkpoint.name) == (2, 2, "checkpoint_last.pt")
    trainer.fit()
    assert [r["epoch"] for r in read_metrics(run) if r["type"] == "epoch"] == [1, 2, 3]
    assert load_checkpoint(run / "checkpoint_epoch0002.pt")["epoch"] == 2  # kept as numbered, not overwritten


def test_a_run_killed_while_writing_its_final_checkpoint_keeps_its_evaluation(shapes, tmp_path: Path, monkeypatch):
    """Killed after the last epoch's checkpoint but before eval.json (written after training), the run counted as
    finished on resume and never got its eval.json; its checkpoint_best.pt, written after the last one, was missing
    or an older epoch's."""
    run = tmp_path / "run"
    _train_killed_writing(
        shapes_config(shapes, "train.epochs=1", *FAST), run, "checkpoint_last.pt.meta.json", 1, monkeypatch
    )
    assert main(["train", "--resume", str(run)]) == 1  # already finished
    assert "AP" in json.loads((run / "eval.json").read_text())
    assert load_checkpoint(run / "checkpoint_best.pt")["epoch"] == 1


def test_a_run_killed_while_writing_its_last_checkpoint_is_continued_from_the_numbered_one(
    shapes, tmp_path: Path, monkeypatch
):
    """Killed between moving checkpoint_last.pt to checkpoint_epoch0001.pt and writing the new one, the run had no
    checkpoint_last.pt: a study deleted the run directory and trained it from the start, and `train` into it again
    wiped its metrics.jsonl instead of saying to resume."""
    from sparse_detector.study import _train

    run = tmp_path / "run"
    _train_killed_writing(shapes_config(shapes, "train.epochs=2", *FAST), run, "checkpoint_last.pt", 2, monkeypatch)
    assert not (run / "checkpoint_last.pt").exists() and (run / "checkpoint_epoch0001.pt").exists()
    with pytest.raises(FileExistsError, match="--resume"):
        Trainer(shapes_config(shapes, "train.epochs=2", *FAST), run, progress=False)
    first_epoch = epoch_records(run)[1]
    assert _train(shapes_config(shapes, "train.epochs=2", *FAST), run, progress=False, name="run")
    assert epoch_records(run)[1] == first_epoch and sorted(epoch_records(run)) == [1, 2]  # epoch 1 not trained again


def test_second_signal_while_a_checkpoint_is_written_stops_at_once(shapes, tmp_path: Path, monkeypatch):
    """A second Ctrl-C while torch.save wrote the checkpoint ended with torch's 'error: [enforce fail at
    inline_container.cc:672] . unexpected pos 7863808 vs 7863704' (exit 2): torch.save turns the exception raised
    in its call of the file's write into a RuntimeError."""
    run = tmp_path / "run"
    trainer = Trainer(shapes_config(shapes, "train.epochs=1", *FAST), run, progress=False)
    backward, save = trainer._backward, torch.save

    def first_signal(loss):
        backward(loss)
        os.kill(os.getpid(), signal.SIGINT)

    class SecondSignal:  # a file during whose third write the second signal comes, after it wrote its bytes
        def __init__(self, file) -> None:
            self.file, self.writes = file, 0

        def write(self, data) -> int:
            written = self.file.write(data)
            self.writes += 1
            if self.writes == 3:
                os.kill(os.getpid(), signal.SIGINT)
            return written

        def flush(self) -> None:
            self.file.flush()

    monkeypatch.setattr(torch, "save", lambda state, file: save(state, SecondSignal(file)))
    trainer._backward = first_signal
    with pytest.raises(KeyboardInterrupt, match="SIGINT"):
        trainer.fit()
    assert sorted(path.name for path in run.glob("*checkpoint*")) == []  # nor a partial one left behind
