"""Experiment tracking: JSONL, TensorBoard and W&B (offline) read back, grouped names, one global step; precision."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from sparse_detector.engine import logger as logger_module
from sparse_detector.engine.coco_eval import STAT_NAMES
from sparse_detector.engine.diagnostics import DIAGNOSTICS_FILE, read_diagnostics
from sparse_detector.engine.logger import (
    MetricsLogger,
    _wait_for_wandb_file,
    _wandb_records,
    grouped_scalars,
    read_wandb_history,
)
from sparse_detector.engine.trainer import Trainer, parameter_counts
from sparse_detector.models import build_model
from sparse_detector.runs import claim_run_dir, read_metrics

from .conftest import shapes_config, shapes_overrides

# The tracking back-ends are optional extras ([logging], [wandb]); `pip install '.[dev]'` alone skips their tests.
needs_tensorboard = pytest.mark.skipif(
    importlib.util.find_spec("tensorboard") is None, reason="tensorboard is absent: pip install '.[logging]'"
)
needs_wandb = pytest.mark.skipif(
    importlib.util.find_spec("wandb") is None, reason="wandb is absent: pip install '.[wandb]'"
)

TRACKED = ("train.epochs=1", "train.max_steps_per_epoch=2", "train.log_every=1")
ALPHA = ("model.attention.decoder_cross.activation=alpha_entmax",)


def _tensorboard_scalars(folder: Path) -> dict[str, list[tuple[int, float]]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(folder))
    events.Reload()
    return {tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}


@needs_tensorboard
@needs_wandb
def test_tensorboard_and_wandb_get_grouped_names_at_one_global_step(shapes, tmp_path: Path, monkeypatch):
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.delenv("WANDB_MODE", raising=False)
    run = tmp_path / "run"
    config = shapes_config(shapes, *TRACKED, *ALPHA, "train.tensorboard=true", "train.wandb=true")
    Trainer(config, run, progress=False).fit()

    records = read_metrics(run)
    assert [r["type"] for r in records] == ["params", "init", "train", "train", "epoch"]  # init: α at step 0
    scalars = _tensorboard_scalars(run / "tensorboard")
    for name in ("loss", "loss_ce", "loss_bbox", "loss_giou", "class_error", "cardinality_error"):
        assert [step for step, _ in scalars[f"train-main-metrics/{name}"]] == [1, 2]
    assert scalars["train-main-metrics/loss"][0][1] == pytest.approx(records[2]["loss"])
    assert {"train-metrics/loss_ce_0", "train-metrics/lr/default", "train-metrics/lr/backbone"} <= set(scalars)
    assert {f"train-extra-metrics/{k}" for k in ("iteration_s", "data_s", "images_per_s", "peak_memory_mb")} <= set(
        scalars
    )
    charted = {f"val-AP/{name}" for name in STAT_NAMES if records[-1][name] != -1}  # -1: no objects of that size
    assert {name for name in scalars if name.startswith("val-AP/")} == charted
    assert scalars["val-AP/AP"] == [(2, pytest.approx(records[-1]["AP"]))]
    assert "val-epoch-metrics/loss" in scalars and "train-epoch-metrics/loss" in scalars
    heads = [tag for tag in scalars if tag.startswith("alpha/transformer.decoder.layers.0.multihead_attn")]
    assert len(heads) == 4  # one per head
    assert [step for step, _ in scalars[heads[0]]] == [0, 1, 2]  # the epoch record's α at step 2 charted once
    assert scalars["params/total/trainable"] == [(0, parameter_counts(build_model(config))["total"]["trainable"])]

    history = read_wandb_history(run)
    by_step = {}
    for row in history:
        by_step.setdefault(int(row["_step"]), {}).update(row)
    assert by_step[1]["train-main-metrics/loss"] == pytest.approx(records[2]["loss"])
    assert by_step[0][heads[0]] == pytest.approx(1.5, abs=1e-6)  # α as training started
    assert by_step[2]["val-AP/AP50"] == pytest.approx(records[-1]["AP50"])


@needs_tensorboard
def test_tensorboard_after_a_killed_run_resumes_holds_each_step_once(shapes, tmp_path: Path):
    run = tmp_path / "run"
    Trainer(shapes_config(shapes, *TRACKED, "train.tensorboard=true"), run, progress=False).fit()
    killed = MetricsLogger(run, tensorboard=True, resumed_at=2)  # a killed process logged past its checkpoint
    killed.log("train", 3, loss=99.0)
    killed.close()
    config = shapes_config(shapes, *TRACKED, "train.epochs=2", "train.tensorboard=true")
    Trainer(config, run, resume=True, progress=False).fit()

    scalars = _tensorboard_scalars(run / "tensorboard")
    losses = scalars["train-main-metrics/loss"]
    assert [step for step, _ in losses] == [1, 2, 3, 4]
    assert losses[2][1] == pytest.approx(read_metrics(run)[-3]["loss"])  # the resumed run's step 3, not the lost one
    # the parameter counts were logged again at every resume: params/* charted one point per start of the run
    assert [step for step, _ in scalars["params/total/trainable"]] == [0]
    assert [r["step"] for r in read_metrics(run) if r["type"] == "params"] == [0]


@needs_wandb
def test_offline_wandb_after_a_killed_run_resumes_holds_each_step_once(shapes, tmp_path: Path, monkeypatch):
    """A resume logged again, into a new offline folder of the same W&B run, the steps a killed process had logged
    after its checkpoint: `wandb sync` then got those steps twice. The resumed process now sends W&B only what it
    has not had: one W&B run, every step once."""
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.delenv("WANDB_MODE", raising=False)
    run = tmp_path / "run"
    Trainer(shapes_config(shapes, *TRACKED, "train.wandb=true"), run, progress=False).fit()
    killed = MetricsLogger(run, wandb=True, resumed_at=2)  # a killed process logged past its checkpoint
    killed.log("train", 3, loss=99.0)
    killed.close()
    Trainer(
        shapes_config(shapes, *TRACKED, "train.epochs=2", "train.wandb=true"), run, resume=True, progress=False
    ).fit()

    files = list(run.glob("wandb/offline-run-*/run-*.wandb"))  # run-<W&B run id>.wandb, one per process
    assert len(files) == 3 and len({path.stem for path in files}) == 1  # one W&B run
    logged = [(int(row["_step"]), name) for row in read_wandb_history(run) for name in row if not name.startswith("_")]
    assert len(logged) == len(set(logged)), sorted(name for name in logged if logged.count(name) > 1)
    loss_steps = sorted(step for step, name in logged if name == "train-main-metrics/loss")
    assert loss_steps == [1, 2, 3, 4]
    assert sorted(step for step, name in logged if name == "val-AP/AP") == [2, 4]


#: A training killed (SIGKILL) after its last checkpoint, before the end of the run: argv the run directory, overrides.
TRAIN_KILLED_AT_THE_END = """
import os, signal, sys
from sparse_detector.config import load_config
from sparse_detector.engine.trainer import Trainer

trainer = Trainer(load_config("shapes_tiny", sys.argv[2:]), sys.argv[1], progress=False)
trainer.logger.close = lambda: os.kill(os.getpid(), signal.SIGKILL)
trainer.fit()
"""


@needs_wandb
def test_offline_wandb_gets_the_steps_a_killed_process_had_not_written(shapes, tmp_path: Path, monkeypatch):
    """A process killed loses what its W&B service had not yet written to the offline file (train.wandb=true killed
    at step 14: the file held steps 0-8). The resume took W&B to hold all that metrics.jsonl held: steps 9-14 and the
    epoch's val-AP never reached W&B. It now reads what the files hold and sends again the steps they lack."""
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.delenv("WANDB_MODE", raising=False)
    run = tmp_path / "run"
    # WANDB_SERVICE: a W&B service of this process, which would write the killed process's records after all
    environment = {k: v for k, v in os.environ.items() if k not in ("WANDB_MODE", "WANDB_SERVICE")}
    overrides = [*shapes_overrides(shapes), *TRACKED, "train.wandb=true"]
    done = subprocess.run(
        [sys.executable, "-c", TRAIN_KILLED_AT_THE_END, str(run), *overrides], env=environment, capture_output=True
    )
    assert done.returncode == -signal.SIGKILL, done.stderr.decode()
    assert [r["type"] for r in read_metrics(run)][-1] == "epoch"
    assert not [row for row in read_wandb_history(run) if "val-AP/AP" in row]  # lost with the process
    Trainer(
        shapes_config(shapes, *TRACKED, "train.epochs=2", "train.wandb=true"), run, resume=True, progress=False
    ).fit()

    logged = [(int(row["_step"]), name) for row in read_wandb_history(run) for name in row if not name.startswith("_")]
    assert len(logged) == len(set(logged)), sorted(name for name in logged if logged.count(name) > 1)
    assert sorted(step for step, name in logged if name == "train-main-metrics/loss") == [1, 2, 3, 4]
    assert sorted(step for step, name in logged if name == "val-AP/AP") == [2, 4]
    assert [step for step, name in logged if name == "params/total/trainable"] == [0]
    first_loss = next(r["loss"] for r in read_metrics(run) if r["type"] == "train")
    assert [row["train-main-metrics/loss"] for row in read_wandb_history(run) if row["_step"] == 1] == [
        pytest.approx(first_loss)
    ]


@needs_wandb
def test_the_callers_own_wandb_run_is_left_running(tmp_path: Path, monkeypatch):
    """In a process with a W&B run of its own (a notebook's), wandb.init returned that run: our metrics went into
    it, our close finished it, and a resume's wandb.teardown() finished every run of the process."""
    import wandb

    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.delenv("WANDB_MODE", raising=False)
    theirs = wandb.init(project="theirs", mode="offline", dir=str(tmp_path))
    run = tmp_path / "run"
    try:
        ours = MetricsLogger(run, wandb=True)
        for step in range(1, 51):
            ours.log("train", step, loss=float(step))
        ours.close()
        # all written once closed: no longer by the wandb.teardown() the reading did
        assert len(read_wandb_history(run)) == 50
        theirs.log({"theirs": 1.0})  # raises on a finished run
        resumed = MetricsLogger(run, wandb=True, resumed_at=50)
        resumed.log("train", 51, loss=51.0)
        resumed.close()
        theirs.log({"theirs": 2.0})
    finally:
        theirs.finish()
    assert [row["train-main-metrics/loss"] for row in read_wandb_history(run)] == list(range(1, 52))


@needs_wandb
@pytest.mark.parametrize("error", [RuntimeError, KeyboardInterrupt])
def test_a_training_stopped_by_an_error_finishes_its_wandb_run(shapes, tmp_path: Path, monkeypatch, error):
    """The loggers were closed only after the last epoch: a training that failed (or was interrupted) mid-epoch left
    its W&B run open until the process exited (a notebook's for good). Interrupted, it does not wait for the file."""
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.delenv("WANDB_MODE", raising=False)
    run = tmp_path / "run"
    trainer = Trainer(shapes_config(shapes, *TRACKED, "train.wandb=true"), run, progress=False)
    log_record = trainer.logger.log

    def log_then_fail(kind: str, step: int, **values) -> None:
        log_record(kind, step, **values)
        if kind == "train":
            raise error("failed mid-epoch")

    monkeypatch.setattr(trainer.logger, "log", log_then_fail)
    with pytest.raises(error, match="failed mid-epoch"):  # the training's own error, not one of closing
        trainer.fit()
    (file,) = run.glob("wandb/offline-run-*/run-*.wandb")
    _wait_for_wandb_file(file)  # an interrupted process does not wait for W&B's service to write it (it stops)
    exits = [record.exit for record in _wandb_records(file) if record.WhichOneof("record_type") == "exit"]
    assert [e.exit_code for e in exits] == [1]  # finished, as failed
    losses = [row["train-main-metrics/loss"] for row in read_wandb_history(run) if "train-main-metrics/loss" in row]
    assert losses == [read_metrics(run)[1]["loss"]]  # the step logged before the error


@needs_tensorboard
@needs_wandb
def test_a_training_that_fails_to_start_frees_its_loggers_and_run_directory(shapes, tmp_path: Path, monkeypatch):
    """A Trainer whose constructor failed after making its metrics loggers left its W&B run and TensorBoard writer
    open until the process exited, and its run directory claimed: a second start in the process was refused."""
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.delenv("WANDB_MODE", raising=False)
    closes = []
    close = MetricsLogger.close

    def record_close(logger: MetricsLogger, failed: bool = False, wait: bool = True) -> None:
        closes.append({"failed": failed, "wait": wait})
        close(logger, failed=failed, wait=wait)

    def fail(*args, **kwargs):
        raise RuntimeError("diagnostics failed")

    monkeypatch.setattr(MetricsLogger, "close", record_close)
    monkeypatch.setattr("sparse_detector.engine.trainer.TrainingDiagnostics", fail)  # made after the loggers
    run = tmp_path / "run"
    config = shapes_config(shapes, *TRACKED, "train.tensorboard=true", "train.wandb=true")
    with pytest.raises(RuntimeError, match="diagnostics failed"):  # the constructor's own error
        Trainer(config, run, progress=False)
    assert closes == [{"failed": True, "wait": False}]
    claim_run_dir(run).release()  # free: no 'is being trained by another process right now'
    (file,) = run.glob("wandb/offline-run-*/run-*.wandb")
    _wait_for_wandb_file(file)
    exits = [record.exit for record in _wandb_records(file) if record.WhichOneof("record_type") == "exit"]
    assert [e.exit_code for e in exits] == [1]  # finished, as failed


@needs_tensorboard
@needs_wandb
def test_a_tensorboard_writer_that_fails_to_close_leaves_the_wandb_run_finished(tmp_path: Path, monkeypatch):
    """Closing the TensorBoard writer raised before the W&B run was finished: it stayed open."""
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.delenv("WANDB_MODE", raising=False)
    run = tmp_path / "run"
    logger = MetricsLogger(run, tensorboard=True, wandb=True)
    logger.log("train", 1, loss=1.0)
    writer = logger._tensorboard

    def fail() -> None:
        raise OSError("disk full")

    monkeypatch.setattr(writer, "close", fail)
    with pytest.raises(OSError, match="disk full"):  # not lost
        logger.close()
    (file,) = run.glob("wandb/offline-run-*/run-*.wandb")
    exits = [record.exit for record in _wandb_records(file) if record.WhichOneof("record_type") == "exit"]
    assert [e.exit_code for e in exits] == [0]  # finished (and waited for)
    assert [row["train-main-metrics/loss"] for row in read_wandb_history(run)] == [1.0]
    logger.close()  # again: nothing to do
    type(writer).close(writer)  # the writer's own close, patched above


@needs_tensorboard
def test_a_wandb_run_that_fails_to_start_leaves_no_tensorboard_writer_open(tmp_path: Path, monkeypatch):
    """W&B failing to start after the TensorBoard writer was made left that writer open: the logger was never
    returned, so nothing could close it."""
    from torch.utils.tensorboard import SummaryWriter

    closed: list[SummaryWriter] = []
    close = SummaryWriter.close

    def recorded_close(writer: SummaryWriter) -> None:  # closed for real: its thread must not outlive tmp_path
        closed.append(writer)
        close(writer)

    monkeypatch.setattr(SummaryWriter, "close", recorded_close)

    def fail(*args, **kwargs) -> None:
        raise RuntimeError("W&B could not start")

    monkeypatch.setattr(logger_module, "check_backends", lambda *args: None)  # W&B need not be installed
    monkeypatch.setattr(logger_module, "_start_wandb", fail)
    with pytest.raises(RuntimeError, match="W&B could not start"):  # its own error, not one of closing
        MetricsLogger(tmp_path / "run", tensorboard=True, wandb=True)
    assert len(closed) == 1


@needs_wandb
def test_offline_wandb_files_that_cannot_be_read_leave_the_resume_as_before(
    shapes, tmp_path: Path, monkeypatch, caplog
):
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.delenv("WANDB_MODE", raising=False)
    run = tmp_path / "run"
    Trainer(shapes_config(shapes, *TRACKED, "train.wandb=true"), run, progress=False).fit()
    for path in run.glob("wandb/offline-run-*/run-*.wandb"):
        path.write_bytes(b":W&B\xe1\xbe\x01" + path.read_bytes()[7:])  # another version of the format
    config = shapes_config(shapes, *TRACKED, "train.epochs=2", "train.wandb=true")
    with caplog.at_level("WARNING"):
        Trainer(config, run, resume=True, progress=False).fit()
    assert "could not read what W&B's offline files" in caplog.text and "not a W&B transaction log" in caplog.text
    for path in run.glob("wandb/offline-run-*/run-*.wandb"):
        path.write_bytes(b":W&B\xe1\xbe\x00" + path.read_bytes()[7:])
    logged = [(int(row["_step"]), name) for row in read_wandb_history(run) for name in row if not name.startswith("_")]
    assert len(logged) == len(set(logged))  # steps 0-2 not sent again
    assert sorted(step for step, name in logged if name == "train-main-metrics/loss") == [1, 2, 3, 4]


@needs_tensorboard
def test_a_new_run_where_one_was_killed_before_its_first_checkpoint_starts_its_logs_over(shapes, tmp_path: Path):
    """'train --resume runs/f' of a run killed before its first checkpoint says to start it again with --output-dir
    runs/f; that run appended to the killed one's logs: steps 1..3 twice in metrics.jsonl and TensorBoard."""
    run = tmp_path / "run"
    killed = MetricsLogger(run, tensorboard=True)
    for step in (1, 2, 3):
        killed.log("train", step, loss=99.0)
    killed.close()
    (run / DIAGNOSTICS_FILE).write_text(json.dumps({"step": 0, "weights": {"gone": {"std": 1.0}}}) + "\n")
    Trainer(shapes_config(shapes, *TRACKED, "train.tensorboard=true", "train.diagnostics_every=1"), run).fit()

    assert [(r["type"], r["step"]) for r in read_metrics(run)] == [
        ("params", 0),
        ("train", 1),
        ("train", 2),
        ("epoch", 2),
    ]
    assert [step for step, _ in _tensorboard_scalars(run / "tensorboard")["train-main-metrics/loss"]] == [1, 2]
    assert len(list((run / "tensorboard").glob("events.out.tfevents.*"))) == 1  # the killed one's removed: its
    # purge by step held only where its file's name sorted first (not for a process's 9th and 10th writers)
    diagnostics = read_diagnostics(run)
    assert [r["step"] for r in diagnostics] == [0, 1, 2] and "gone" not in diagnostics[0]["weights"]


def test_diagnostics_switched_on_at_a_resume_start_at_its_checkpoint(shapes, tmp_path: Path):
    """The weights at the resumed step were recorded as step 0 and drawn as 'weights at step 0 (initialisation)'."""
    run = tmp_path / "run"
    Trainer(shapes_config(shapes, *TRACKED), run, progress=False).fit()
    config = shapes_config(shapes, *TRACKED, "train.epochs=2", "train.diagnostics_every=1")
    Trainer(config, run, resume=True, progress=False).fit()
    assert [(r["step"], "gradients" in r) for r in read_diagnostics(run)] == [(2, False), (3, True), (4, True)]


def test_diagnostics_leave_the_training_and_its_resume_exact(shapes, tmp_path: Path):
    """Building the diagnostics' validation batch drew from torch's generator: a run recording diagnostics trained
    on other augmentations than one without, and a resumed one (the batch built after the generator was restored)
    on others again, so it no longer equalled the run that was not interrupted."""
    Trainer(shapes_config(shapes, *TRACKED, "train.epochs=2"), tmp_path / "plain", progress=False).fit()
    run = tmp_path / "run"
    Trainer(shapes_config(shapes, *TRACKED, "train.diagnostics_every=1"), run, progress=False).fit()
    config = shapes_config(shapes, *TRACKED, "train.epochs=2", "train.diagnostics_every=1")
    Trainer(config, run, resume=True, progress=False).fit()
    losses = [[r["loss"] for r in read_metrics(path) if r["type"] == "train"] for path in (tmp_path / "plain", run)]
    assert len(losses[0]) == 4 and losses[1] == losses[0]


@needs_wandb
def test_offline_wandb_reaches_for_no_host(tmp_path: Path):
    # wandb's usage telemetry is exported when the process exits, so the run is a process of its own
    script = f"""
import socket
from sparse_detector.engine.logger import MetricsLogger

def refuse(host, *args, **kwargs):
    print("looked up", host, flush=True)
    raise OSError("no network in this test")

socket.getaddrinfo = refuse
logger = MetricsLogger({str(tmp_path)!r}, wandb=True)
logger.log("train", 1, loss=1.0)
logger.close()
"""
    environment = {k: v for k, v in os.environ.items() if k != "WANDB_MODE"}  # offline by train.wandb_mode alone
    done = subprocess.run(
        [sys.executable, "-c", script], env={**environment, "WANDB_SILENT": "true"}, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    assert "looked up" not in done.stdout  # it looked up api.forge.coreweave.com
    assert list(tmp_path.glob("wandb/offline-run-*/run-*.wandb"))


@needs_wandb
def test_an_offline_run_leaves_the_mode_of_the_callers_later_wandb_runs_alone(tmp_path: Path, monkeypatch):
    """Our offline run set W&B's mode for the whole process (wandb.setup): a notebook's later wandb.init() without a
    mode went offline too. Here the process's mode is 'disabled' (nothing reaches the network either way)."""
    import wandb

    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("WANDB_MODE", "disabled")
    wandb.teardown()  # the process-wide settings read the environment again
    ours = MetricsLogger(tmp_path / "run", wandb=True)
    ours.log("train", 1, loss=1.0)
    ours.close()
    assert [row["train-main-metrics/loss"] for row in read_wandb_history(tmp_path / "run")] == [1.0]  # offline
    theirs = wandb.init(project="theirs", dir=str(tmp_path))
    try:
        assert theirs.settings.mode == "disabled"
    finally:
        theirs.finish()
        wandb.teardown()


@needs_wandb
def test_wandb_says_where_the_offline_run_is_without_a_summary_of_every_number(tmp_path: Path, capfd, monkeypatch):
    import wandb

    monkeypatch.delenv("WANDB_SILENT", raising=False)
    wandb.teardown()  # the process-wide settings, silent since an earlier test, read the environment again
    logger = MetricsLogger(tmp_path, wandb=True)
    logger.log("params", 0, total={"trainable": 10, "frozen": 0})
    logger.log("train", 1, loss=1.0)
    logger.close()
    printed = capfd.readouterr()
    shown = printed.out + printed.err
    assert "Run data is saved locally in" in shown
    assert "Run summary" not in shown and "params/total" not in shown  # 30 lines led by the parameter counts


@pytest.mark.parametrize("backend, extra", [("tensorboard", "logging"), ("wandb", "wandb")])
def test_a_missing_backend_is_named_before_the_run_loads_anything(
    shapes, tmp_path: Path, monkeypatch, backend: str, extra: str
):
    """The error came only after the data sets were read and the model built, and left a run directory behind."""
    monkeypatch.setitem(sys.modules, backend, None)  # not installed
    run = tmp_path / "run"
    with pytest.raises(RuntimeError, match=rf"train.{backend}=true needs .*sparse-detector\[{extra}\]"):
        Trainer(shapes_config(shapes, f"train.{backend}=true"), run, progress=False)
    assert not run.exists()
    with pytest.raises(
        ValueError, match=re.escape("train.wandb_mode: unknown value 'ofline' (did you mean 'offline'?)")
    ):
        Trainer(shapes_config(shapes, "train.wandb=true", "train.wandb_mode=ofline"), run, progress=False)


def test_grouping_of_record_names():
    scalars = grouped_scalars(
        "train", {"epoch": 1, "loss": 1.0, "loss_bbox_1": 2.0, "lr": {"alpha": 0.1}, "alpha": {"m": [1.5, 1.6]}}
    )
    assert scalars == {
        "train-main-metrics/loss": 1.0,
        "train-metrics/loss_bbox_1": 2.0,
        "train-metrics/lr/alpha": 0.1,
        "alpha/m/head0": 1.5,
        "alpha/m/head1": 1.6,
    }
    assert grouped_scalars("epoch", {"AP75": 0.5, "AP_large": -1.0, "val_loss": 3.0, "train_loss": 4.0}) == {
        "val-AP/AP75": 0.5,  # AP_large: COCO's -1 (no large objects) is no number to chart
        "val-epoch-metrics/loss": 3.0,
        "train-epoch-metrics/loss": 4.0,
    }


def test_parameter_counts_are_printed_and_split_trainable_frozen(shapes, tmp_path: Path, capsys):
    config = shapes_config(shapes, "model.backbone.lr=0")
    trainer = Trainer(config, tmp_path / "run", progress=False)
    counts = parameter_counts(trainer.model)
    assert counts["backbone"]["trainable"] == 0 and counts["backbone"]["frozen"] > 0
    assert counts["total"]["trainable"] == sum(p.numel() for p in trainer.model.parameters() if p.requires_grad)
    out = capsys.readouterr().out
    assert "parameters" in out and f"{counts['transformer']['trainable']:,}" in out
    (record,) = [r for r in read_metrics(tmp_path / "run") if r["type"] == "params"]
    assert record["total"] == counts["total"]


def test_a_backbone_from_scratch_with_frozen_norms_is_warned_about_once(shapes, tmp_path: Path, caplog):
    """A DETR preset with model.backbone.pretrained=false kept norm=frozen_bn: its BatchNorm layers stayed an
    identity for the whole run without a word. The shapes_tiny preset (batch_norm) and a resume say nothing."""
    Trainer(shapes_config(shapes, *TRACKED), tmp_path / "tiny", progress=False)
    assert not [r for r in caplog.records if "frozen_bn" in r.message]
    config = shapes_config(shapes, *TRACKED, "model.backbone.norm=frozen_bn", "train.max_steps_per_epoch=1")
    Trainer(config, tmp_path / "run", progress=False).fit()
    frozen = [r.message for r in caplog.records if "model.backbone.norm=frozen_bn" in r.message]
    assert frozen == [
        "model.backbone.pretrained=false with model.backbone.norm=frozen_bn: the backbone's frozen BatchNorm layers "
        "keep their initial values (scale 1, shift 0: they do nothing) for the whole run, so it trains without "
        "normalisation; set model.backbone.norm=batch_norm to train them (as the shapes_tiny preset does)"
    ]
    caplog.clear()
    resumed = shapes_config(shapes, *TRACKED, "model.backbone.norm=frozen_bn", "train.epochs=2")
    Trainer(resumed, tmp_path / "run", resume=True, progress=False)
    assert not [r for r in caplog.records if "frozen_bn" in r.message]


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_mixed_precision_trains_with_fp32_losses(shapes, tmp_path: Path, precision: str, caplog):
    config = shapes_config(shapes, *TRACKED, f"train.precision={precision}", "train.max_steps_per_epoch=1")
    trainer = Trainer(config, tmp_path / "run", progress=False)
    slow = [r.message for r in caplog.records if "fp16 on the CPU is slow" in r.message]
    assert len(slow) == (precision == "fp16" and trainer.device.type == "cpu"), slow  # fp16 ran silently 14x slower
    seen = []
    criterion = trainer.criterion.forward

    def record_dtypes(outputs, targets):
        losses = criterion(outputs, targets)
        seen.append((outputs["pred_logits"].dtype, {v.dtype for v in losses.values()}))
        return losses

    trainer.criterion.forward = record_dtypes
    trainer.fit()
    assert seen[0][0] == {"bf16": torch.bfloat16, "fp16": torch.float16}[precision]  # the model ran in autocast
    assert seen[0][1] == {torch.float32}
    assert ("scaler" in torch.load(tmp_path / "run" / "checkpoint_last.pt", weights_only=True)) == (precision == "fp16")


def test_compile_failure_falls_back_to_eager_with_a_warning(shapes, tmp_path: Path, monkeypatch, caplog):
    class Broken(torch.nn.Module):
        def forward(self, *args):
            raise RuntimeError("InductorError: no C++ compiler found\nmore detail")

    def broken_compile(model):
        return Broken()

    monkeypatch.setattr(torch, "compile", broken_compile)
    config = shapes_config(shapes, *TRACKED, "train.compile=true", "train.max_steps_per_epoch=1")
    with caplog.at_level("WARNING"):
        trainer = Trainer(config, tmp_path / "run", progress=False)
        trainer.fit()
    assert "torch.compile does not work here (InductorError: no C++ compiler found)" in caplog.text
    assert trainer.step == 1 and trainer.forward_model is trainer.model
