"""Data-parallel training: two gloo processes on the CPU under torchrun equal one process with the same global batch."""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import logging
import os
import re
import signal
import socket
import subprocess
import sys
import time
import warnings
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch
import torch.multiprocessing as mp
from PIL import Image

from sparse_detector import build_model, load_config
from sparse_detector.cli import main
from sparse_detector.cli import train as train_command
from sparse_detector.cli.summaries import stopped_message
from sparse_detector.data import generate_shapes_splits
from sparse_detector.engine.checkpoint import load_checkpoint
from sparse_detector.engine.distributed import (
    DistributedContext,
    context_from_environment,
    first_slurm_host,
    shutdown_distributed,
)
from sparse_detector.engine.trainer import Trainer, rank_share
from sparse_detector.logs import RANK_SPECIFIC, OtherRankFilter
from sparse_detector.runs import read_metrics

from .conftest import epoch_records, shapes_config, shapes_overrides

SRC = Path(__file__).resolve().parents[1] / "src"
# Frozen BatchNorm (per-process batch statistics would differ) and no random flips (each process draws its own).
SAME_MATH = [
    "model.backbone.norm=frozen_bn",
    "data.hflip_prob=0",
    "train.deterministic=true",
    "train.epochs=1",
    "train.max_steps_per_epoch=3",
    "train.log_every=1",
]


@pytest.mark.slow
def test_two_gloo_processes_equal_one_process_with_the_same_global_batch(shapes, tmp_path: Path):
    Trainer(shapes_config(shapes, *SAME_MATH, "train.batch_size=4"), tmp_path / "one", progress=False).fit()
    run = tmp_path / "two"
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    argv = ["-m", "sparse_detector", "train", "--no-progress", "--output-dir", str(run), "--device", "cpu"]
    argv += ["--set", *shapes_overrides(shapes), *SAME_MATH, "train.batch_size=2"]
    env = {**os.environ, "PYTHONPATH": str(SRC), "OMP_NUM_THREADS": "1"}
    result = subprocess.run([*launcher, *argv], env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]

    def steps(run_dir: Path) -> list[dict]:
        return [r for r in read_metrics(run_dir) if r["type"] == "train"]

    one, two = steps(tmp_path / "one"), steps(run)
    assert [r["step"] for r in two] == [1, 2, 3]
    # the printed step lines show the logged loss (the mean over processes), not rank 0's own
    assert result.stderr.count("INFO sparse_detector.engine.trainer: training in") == 1  # rank 0's, not one a rank
    printed = re.findall(r"^epoch 1 step (\d)/3: loss ([\d.]+),", result.stdout, re.MULTILINE)
    assert printed == [(str(r["step"]), f"{r['loss']:.3f}") for r in two]
    for a, b in zip(one, two, strict=True):
        for key in ("loss", "loss_ce", "loss_bbox", "loss_giou", "loss_ce_0", "loss_giou_0"):
            assert b[key] == pytest.approx(a[key], abs=1e-4), (a["step"], key)
    final_one = load_checkpoint(tmp_path / "one" / "checkpoint_last.pt")["model"]
    final_two = load_checkpoint(run / "checkpoint_last.pt")["model"]
    for key, value in final_one.items():
        torch.testing.assert_close(final_two[key], value, atol=1e-5, rtol=0, msg=key)
    ap_one, ap_two = epoch_records(tmp_path / "one")[1], epoch_records(run)[1]
    for key in ("AP", "AP50", "AR100"):
        assert ap_two[key] == ap_one[key], key
    assert ap_two["val_loss"] == pytest.approx(ap_one["val_loss"], abs=1e-4)
    assert list(run.glob("*.pt")) and "tensorboard" not in {p.name for p in run.iterdir()}


def test_rank_and_world_size_come_from_torchrun_or_slurm():
    assert context_from_environment({}) == DistributedContext()
    torchrun = {"RANK": "3", "WORLD_SIZE": "8", "LOCAL_RANK": "1", "SLURM_PROCID": "0", "SLURM_NTASKS": "2"}
    assert context_from_environment(torchrun) == DistributedContext(3, 8, 1)
    srun = {"SLURM_PROCID": "5", "SLURM_NTASKS": "8", "SLURM_LOCALID": "1"}
    assert context_from_environment(srun) == DistributedContext(5, 8, 1)
    assert context_from_environment({"SLURM_PROCID": "0", "SLURM_NTASKS": "1"}) == DistributedContext()
    assert first_slurm_host("gpu[03-05,9],cpu1") == "gpu03"
    assert first_slurm_host("node7") == "node7"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _run_workers(
    target: Any, *args: Any, processes: int = 2, timeout: float = 120, exitcodes: list[int] | None = None
) -> list[Any]:
    """Run ``target(rank, *args)`` in ``processes`` fresh processes joined by gloo (torchrun's environment variables);
    returns what each returned, in rank order (``None`` for one expected to exit with another status than 0 in
    ``exitcodes``, which it could not return). One process is the reference: the test process's own global torch
    state may differ after other tests (its float results in the last bits). Not forked from the test process: after
    other tests started threads (loaders, loggers) a fork could inherit a held lock and hang; a fork server that has
    imported the package once starts them quickly."""
    if "forkserver" not in mp.get_all_start_methods() or not torch.distributed.is_gloo_available():
        pytest.skip("needs the forkserver start method and torch.distributed's gloo backend")
    ctx = mp.get_context("forkserver")
    ctx.set_forkserver_preload([__name__])  # this module, hence torch and the trainer (until the server starts)
    queue = ctx.SimpleQueue()
    port = _free_port()
    environment = {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "WORLD_SIZE": str(processes)}
    ranks = range(processes)
    workers = [ctx.Process(target=_in_environment, args=(target, rank, environment, queue, *args)) for rank in ranks]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=timeout)
        if worker.is_alive():  # a collective waits for a rank that never calls it
            worker.kill()
    expected = exitcodes or [0] * processes
    assert [worker.exitcode for worker in workers] == expected, "a rank failed or hung"
    results = dict(queue.get() for code in expected if code == 0)
    return [results.get(rank) for rank in ranks]


def _in_environment(target: Any, rank: int, environment: dict, queue: Any, *args: Any) -> None:
    os.environ.update(environment, RANK=str(rank), LOCAL_RANK=str(rank))
    try:
        queue.put((rank, target(rank, *args)))
    finally:
        shutdown_distributed()


@pytest.fixture(scope="module")
def mixed_sizes(tmp_path_factory) -> dict[str, Path]:
    """Shapes data whose 7 (odd) val images have two sizes: ranks get different numbers of size-grouped batches."""
    root = tmp_path_factory.mktemp("mixed")
    paths = generate_shapes_splits(root, 8, 7, seed=5, image_size=96, min_size=20, max_size=40)
    coco = json.loads(paths["val"].read_text())
    for image in coco["images"][0:3:2]:  # widened with a grey strip on the right: the boxes stay where they are
        path = root / "images" / image["file_name"]
        wide = Image.new("RGB", (128, 96), (128, 128, 128))
        wide.paste(Image.open(path).convert("RGB"))
        wide.save(path)
        image["width"] = 128
    paths["val"].write_text(json.dumps(coco))
    return {"images": root / "images", **paths}


def _evaluate_in_trainer(rank: int, config: Any, run_dir: Path) -> dict[str, float]:
    return Trainer(config, run_dir, progress=False)._evaluate()


def test_evaluation_with_two_processes_equals_one_process(mixed_sizes, tmp_path: Path):
    """Every val image is evaluated once (no DistributedSampler repeats) in the batches one process makes: AP and
    val losses equal one process's exactly, and no rank waits in a collective for a batch another rank lacks."""
    config = shapes_config(mixed_sizes, "train.eval_batch_size=2", "model.backbone.norm=frozen_bn")
    (one,) = _run_workers(_evaluate_in_trainer, config, tmp_path / "one", processes=1)
    two = _run_workers(_evaluate_in_trainer, config, tmp_path / "two")
    assert one["val_loss"] > 0 and "AP" in one
    assert two[0] == two[1] == one


@pytest.mark.parametrize("command", [["evaluate", "--checkpoint", "runs/x"], ["data", "shapes", "out"]])
def test_commands_other_than_train_refuse_several_processes(command, monkeypatch, capsys):
    """torchrun -m sparse_detector evaluate ran the whole evaluation once per process, each writing the same files."""
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    assert main(command) == 2
    assert capsys.readouterr().err == ""  # one line in all, from rank 0
    monkeypatch.setenv("RANK", "0")
    assert main(command) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"sparse-detector {command[0]} runs in one process" in err
    assert "started as 2 processes" in err and "only train uses several processes" in err


def _train_in_trainer(rank: int, config: Any, run_dir: Path) -> dict[str, float]:
    return Trainer(config, run_dir, progress=False).fit()


def _evaluate_saved(rank: int, config: Any, run_dir: Path) -> dict[str, float]:
    return Trainer(config, run_dir, resume=True, progress=False)._evaluate()


def test_evaluation_after_data_parallel_training_scores_the_saved_model(mixed_sizes, tmp_path: Path):
    """With trainable batch norm each rank's last training step updated its own running statistics: every rank must
    evaluate rank 0's (the checkpoint's) model, so the logged AP and losses are those of the saved model."""
    config = shapes_config(mixed_sizes, "train.eval_batch_size=2", "train.epochs=1", "train.max_steps_per_epoch=1")
    assert config.model.backbone.norm == "batch_norm"
    two = _run_workers(_train_in_trainer, config, tmp_path / "run")
    (saved,) = _run_workers(_evaluate_saved, config, tmp_path / "run", processes=1)
    assert two[0] == two[1] == saved


def _start_trainer(rank: int, configs: list, run_dir: Path) -> str:
    try:
        Trainer(configs[rank], run_dir, progress=False)
    except ValueError as err:
        return str(err)
    return "started"


def test_processes_started_with_different_configs_are_named(shapes, tmp_path: Path):
    """Two nodes launched with different --set: DDP said 'params[58] in this process with sizes [7, 32] appears not
    to match' on one node and 'Connection closed by peer' on the other; now both name the setting."""
    # nodes started in different folders: each names the run directory by its own absolute path, which may differ
    configs = [shapes_config(shapes, "train.output_dir=/a/run"), shapes_config(shapes, "model.num_queries=7")]
    messages = _run_workers(_start_trainer, configs, tmp_path / "run")
    assert messages[0] == messages[1]
    assert "rank 1 differs from rank 0 in model.num_queries: 6 -> 7" in messages[0]
    assert "output_dir" not in messages[0]
    assert not (tmp_path / "run").exists()


def test_a_stopped_data_parallel_run_says_to_resume_it_with_its_process_count():
    """It said 'resume with: sparse-detector train --resume RUN': one process, half the global batch."""
    stopped = SimpleNamespace(
        stop_signal=15,
        epoch=2,
        step=40,
        epoch_progress={"steps": 10},
        last_checkpoint="r/checkpoint_last.pt",
        dist=DistributedContext(0, 2),
    )
    message = stopped_message(stopped, Path("r"))
    assert message.endswith("resume with: torchrun ... -m sparse_detector train --resume r, with the same 2 processes")
    alone = SimpleNamespace(**{**vars(stopped), "dist": DistributedContext()})
    assert stopped_message(alone, Path("r")).endswith("resume with: sparse-detector train --resume r")


def _stop_after_the_first_step(rank: int, config: Any, run_dir: Path) -> int:
    trainer = Trainer(config, run_dir, progress=False)
    backward = trainer._backward

    def stop(loss: torch.Tensor) -> None:  # as a SIGTERM to rank 0 during step 1 would
        backward(loss)
        trainer.stop_signal = trainer.stop_signal or (signal.SIGTERM if rank == 0 else None)

    trainer._backward = stop
    trainer.fit()
    return trainer.step


def test_mid_epoch_resume_with_another_process_count_trains_the_rest_of_the_epoch(shapes, tmp_path: Path):
    """Stopped after 1 step of 2 processes x 2 images (4 of the 12 images), resumed alone: the other 8 images in 4
    steps (it took each rank's 2 images as the whole epoch's position: 10 images, 2 of them seen twice), and the
    change of the global batch is on the record."""
    config = shapes_config(shapes, "train.batch_size=2", "train.epochs=1", "train.eval_every=100")
    run = tmp_path / "run"
    assert _run_workers(_stop_after_the_first_step, config, run) == [1, 1]
    assert load_checkpoint(run / "checkpoint_last.pt")["epoch_progress"]["position"] == 4
    Trainer(load_config(run / "config.yaml"), run, resume=True, progress=False).fit()
    (epoch,) = [r for r in read_metrics(run) if r["type"] == "epoch"]
    assert epoch["train_steps"] == 1 + 4
    (resume,) = [r for r in read_metrics(run) if r["type"] == "resume"]
    assert (
        "processes: 2 -> 1 (train.batch_size is per process: the global batch goes from 4 to 2" in resume["changes"][0]
    )


def _nan_outputs_on_rank_1_first_step(rank: int, config: Any, run_dir: Path) -> tuple[int, int]:
    trainer = Trainer(config, run_dir, progress=False)
    call, calls = trainer._call_model, []

    def poisoned(batch: Any) -> Any:
        outputs = call(batch)
        calls.append(batch)
        if rank == 1 and len(calls) == 1:
            nan = float("nan")
            outputs = dataclasses.replace(outputs, pred_logits=outputs.pred_logits * nan)
        return outputs

    trainer._call_model = poisoned
    trainer.fit()
    (epoch,) = [r for r in read_metrics(run_dir) if r["type"] == "epoch"] if rank == 0 else [{}]
    return trainer.step, epoch.get("train_skipped_nonfinite", -1)


def test_non_finite_outputs_on_one_rank_skip_the_step_on_every_rank(shapes, tmp_path: Path):
    """With train.on_nonfinite_loss=skip, NaN outputs on rank 1 alone made it skip the loss while rank 0 ran the
    loss's collectives: the ranks' collectives paired up wrongly and one hung ('Connection closed by peer')."""
    config = shapes_config(shapes, "train.batch_size=2", "train.epochs=1", "train.on_nonfinite_loss=skip")
    assert _run_workers(_nan_outputs_on_rank_1_first_step, config, tmp_path / "run") == [(3, 1), (3, -1)]  # 3 steps


def test_a_rank_left_by_a_dead_peer_says_so_in_words(monkeypatch, capsys):
    """It printed gloo's '[/__w/pytorch/.../pair.cc:561] Connection closed by peer [127.0.0.1]:14771. This is
    typically caused by a remote worker crashing. ... GLHF!' as the error of the surviving rank."""

    def peer_died(args: Any) -> int:
        raise RuntimeError(
            "[/__w/pytorch/pytorch/third_party/gloo/gloo/transport/tcp/pair.cc:561] Connection closed by peer "
            "[127.0.0.1]:14771. This is typically caused by a remote worker crashing. Check the logs of the remote "
            "worker before reporting an error. GLHF!"
        )

    monkeypatch.setattr(train_command, "_train", peer_died)
    assert main(["train", "--config", "shapes_tiny"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: another process of this distributed run stopped") and "GLHF" not in err

    def peer_killed(args: Any) -> int:  # the words when the other process was killed (SIGKILL) mid-collective
        raise RuntimeError(
            "[/__w/pytorch/pytorch/third_party/gloo/gloo/transport/tcp/pair.cc:545] Read error [127.0.0.1]:21941: "
            "Connection reset by peer. This is typically caused by a remote worker hanging or bugs in the application."
        )

    monkeypatch.setattr(train_command, "_train", peer_killed)
    assert main(["train", "--config", "shapes_tiny"]) == 2
    assert capsys.readouterr().err.startswith("error: another process of this distributed run stopped")


def test_other_ranks_log_their_own_warnings_and_errors_but_not_the_shared_ones():
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.addFilter(OtherRankFilter(1))
    logger = logging.getLogger("sparse_detector.test_rank_logs")
    logger.propagate, logger.handlers = False, [handler]
    logger.warning("resume: the config changes train.epochs: 20 -> 9")  # every rank's alike: rank 0 logs it
    logger.warning("skipped an unreadable image: %s", "a.jpg", extra=RANK_SPECIFIC)
    logger.error("rank 1's failure")
    lines = ["(rank 1) skipped an unreadable image: a.jpg", "(rank 1) rank 1's failure"]
    assert stream.getvalue().splitlines() == lines


def _warn_then_fail_in_train(rank: int) -> str:
    def load_config_warning(*args: Any) -> None:
        warnings.warn("a deprecation every process meets alike", FutureWarning, stacklevel=1)
        raise ValueError("the same error on every rank")

    train_command.load_config = load_config_warning
    stderr = io.StringIO()
    with contextlib.redirect_stderr(stderr):
        main(["train", "--config", "shapes_tiny"])
    return stderr.getvalue()


def test_a_python_warning_every_rank_meets_is_printed_once():
    """torchrun printed each warnings.warn message (PyTorch's deprecations, TVMax's) once per process."""
    printed0, printed1 = _run_workers(_warn_then_fail_in_train)
    assert printed0.count("FutureWarning: a deprecation every process meets alike") == 1
    assert "Warning" not in printed1
    assert (printed0 + printed1).count("the same error on every rank") == 1  # by the rank that reported it first


def _construct_trainer(rank: int, config: Any, run_dir: Path) -> str:
    try:
        Trainer(config, run_dir, progress=False)
    except ValueError as err:
        return str(err)
    return "constructed"


def test_more_processes_than_training_images_is_an_error_naming_both(shapes, tmp_path: Path):
    paths = generate_shapes_splits(tmp_path, 1, 2, seed=3, image_size=96, min_size=20, max_size=40)
    config = shapes_config(
        shapes, f"data.train.images={tmp_path / 'images'}", f"data.train.annotations={paths['train']}"
    )
    messages = _run_workers(_construct_trainer, config, tmp_path / "run")
    assert messages[0] == messages[1]
    assert "1 training image (" in messages[0] and "for 2 processes" in messages[0] and "at most 1" in messages[0]
    assert not (tmp_path / "run").exists()


def _train_cli(rank: int, argvs: list[list[str]]) -> tuple[int, str]:
    """``sparse-detector`` with this rank's command line: its exit status and what it printed on stderr."""
    del torch.distributed.distributed_c10d._get_default_store  # private: the ranks compare through public API only
    stderr = io.StringIO()
    with contextlib.redirect_stderr(stderr):
        status = main(argvs[rank])
    return status, stderr.getvalue()


def test_an_error_every_rank_hits_is_printed_once_and_another_ranks_own_error_too(tmp_path: Path):
    missing = str(tmp_path / "nope")
    (rank0, printed0), (rank1, printed1) = _run_workers(_train_cli, [["train", "--resume", missing]] * 2)
    assert (rank0, rank1) == (2, 2)
    printed = printed0 + printed1  # by the rank that reported it first
    assert printed.count("error: ") == 1 and f"--resume {missing} does not exist" in printed and "--debug" in printed
    other = str(tmp_path / "elsewhere")  # e.g. a path that exists on rank 0's node only
    argvs = [["train", "--resume", missing], ["train", "--resume", other]]
    (_, printed0), (rank1, printed1) = _run_workers(_train_cli, argvs)
    assert printed0.startswith(f"error: --resume {missing} does not exist")
    assert rank1 == 2 and printed1.startswith(f"error: (rank 1) --resume {other} does not exist")


def _cut_short_copy(images: Path, copy: Path) -> Path:
    """``copy``: one rank's copy of the ``images`` (each node its own), every file cut short."""
    copy.mkdir()
    for image in images.iterdir():
        (copy / image.name).write_bytes(image.read_bytes()[:100])
    return copy


def test_an_unreadable_image_of_one_rank_stops_the_run_with_its_error_alone(shapes, tmp_path: Path):
    """Rank 1 waited 30 s for rank 0 to report an error too while rank 0 waited in a collective for rank 1: the run
    hung that long, then rank 0 added 'another process of this distributed run stopped'. Now rank 1 prints its error
    and stops at once; rank 0, left by it, prints nothing."""
    broken = _cut_short_copy(shapes["images"], tmp_path / "node1_images")
    argv = ["train", "--no-progress", "--output-dir", str(tmp_path / "run"), "--device", "cpu"]
    argv += ["--set", *shapes_overrides(shapes), "train.batch_size=2", "train.epochs=1"]
    (rank0, printed0), (rank1, printed1) = _run_workers(_train_cli, [argv, [*argv, f"data.train.images={broken}"]])
    assert (rank0, rank1) == (2, 2)
    assert [line for line in printed0.splitlines() if not line.startswith("INFO ")] == []
    error, hint = printed1.splitlines()
    assert re.fullmatch(rf"error: \(rank 1\) cannot read image {broken}/train_\d+\.png \(image id \d+\): .+", error)
    assert hint == "(run with --debug for the full traceback)"


def _set_up_argv(shapes: dict[str, Path], run_dir: Path) -> list[str]:
    """``train`` on the shapes data, one step."""
    argv = ["train", "--no-progress", "--output-dir", str(run_dir), "--device", "cpu"]
    return [*argv, "--set", *shapes_overrides(shapes), "train.epochs=1", "train.max_steps_per_epoch=1"]


def test_a_set_up_error_of_rank_0_alone_stops_the_others_quietly(shapes, tmp_path: Path):
    """Without torchrun's agent (srun), rank 0 hosts the store: rank 1, left in the set-up's barrier, met rank 0's
    exit, then spent a minute trying to reach the store rank 0 had taken with it, printing c10d's C++ stack traces
    and 'another process of this distributed run stopped'. Rank 1's error watch saw rank 0's report: it stops
    quietly."""
    argv = _set_up_argv(shapes, tmp_path / "run")
    missing = tmp_path / "nope.pt"  # e.g. a checkpoint that rank 0's node lacks
    (rank0, printed0), (rank1, printed1) = _run_workers(_train_cli, [[*argv, "--init-from", str(missing)], argv])
    assert (rank0, rank1) == (2, 2)
    assert printed0 == f"error: checkpoint {missing} does not exist\n(run with --debug for the full traceback)\n"
    assert [line for line in printed1.splitlines() if not line.startswith("INFO ")] == []


def _train_cli_then_linger(rank: int, argvs: list[list[str]], pid_file: Path) -> tuple[int, str]:
    """:func:`_train_cli`, after which rank 1 stays alive until rank 0's process is gone, as one whose exit hangs
    would (or any failed rank on NCCL, which does not notice a rank that left)."""
    if rank == 0:
        pid_file.write_text(str(os.getpid()))
    result = _train_cli(rank, argvs)
    for _ in range(600) if rank == 1 else ():  # at most a minute
        try:
            os.kill(int(pid_file.read_text()), 0)
        except ProcessLookupError:
            break
        time.sleep(0.1)
    return result


def test_a_set_up_error_of_a_rank_that_does_not_exit_ends_the_others_too(shapes, tmp_path: Path):
    """Rank 1 failed to start (its data missing) but its process stayed: rank 0 waited for it in the set-up's barrier
    until the process group's timeout (30 minutes). Its error watch saw rank 1's report and ended it."""
    argv = _set_up_argv(shapes, tmp_path / "run")
    missing = tmp_path / "nope.json"
    argvs = [argv, [*argv, f"data.train.annotations={missing}"]]
    _, (rank1, printed1) = _run_workers(_train_cli_then_linger, argvs, tmp_path / "pid", exitcodes=[2, 0])
    assert rank1 == 2 and printed1.startswith(f"error: (rank 1) annotation file {missing} does not exist")


def test_an_evaluation_error_of_a_rank_that_does_not_exit_ends_the_others_too(shapes, tmp_path: Path):
    """Rank 1 could not read its share of the validation images and its process stayed: rank 0 waited for its
    predictions after evaluating its own share until the process group's timeout. Its error watch ended it."""
    argv = [*_set_up_argv(shapes, tmp_path / "run"), "train.eval_batch_size=2"]  # 3 batches: rank 1 evaluates 1
    broken = _cut_short_copy(shapes["images"], tmp_path / "node1_images")
    argvs = [argv, [*argv, f"data.val.images={broken}"]]
    _, (rank1, printed1) = _run_workers(_train_cli_then_linger, argvs, tmp_path / "pid", exitcodes=[2, 0])
    assert rank1 == 2 and printed1.startswith(f"error: (rank 1) cannot read image {broken}/val_")


def test_data_parallel_detr_gradients_fit_ddp_buckets(tmp_path: Path):
    """The projection of the channels-last backbone features had a gradient of other strides than its weight, so
    every data-parallel DETR run printed DDP's 'Grad strides do not match bucket view strides' warning."""
    torch.distributed.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        model = torch.nn.parallel.DistributedDataParallel(build_model(load_config("shapes_tiny")))
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            outputs = model(torch.rand(16, 3, 128, 128))
            (outputs["pred_logits"].sum() + outputs["pred_boxes"].sum()).backward()
    finally:
        torch.distributed.destroy_process_group()
    assert not [w for w in caught if "strides" in str(w.message)]


def _resume_in_trainer(rank: int, config: Any, run_dir: Path) -> dict[str, float]:
    Trainer(config, run_dir, resume=True, progress=False).fit()
    return epoch_records(run_dir)[1] if rank == 0 else {}


def test_mid_epoch_resume_of_two_processes_keeps_each_ones_losses_of_the_epoch(shapes, tmp_path: Path):
    """The epoch's mean training loss is over both processes' images: a mid-epoch checkpoint kept rank 0's running
    sums alone, so after the resume rank 1 went on from rank 0's, and the epoch record's train_loss differed from
    the uninterrupted run's (19.01 against 18.81 on shapes_tiny, 2026-12-02)."""
    config = shapes_config(shapes, *SAME_MATH[:3], "train.batch_size=2", "train.epochs=1", "train.eval_every=100")
    _run_workers(_train_in_trainer, config, tmp_path / "whole")
    assert _run_workers(_stop_after_the_first_step, config, tmp_path / "run") == [1, 1]
    resumed, _ = _run_workers(_resume_in_trainer, config, tmp_path / "run")
    whole = epoch_records(tmp_path / "whole")[1]
    assert resumed["train_steps"] == whole["train_steps"] == 3
    for key in ("train_loss", "train_loss_bbox", "train_class_error"):
        assert resumed[key] == pytest.approx(whole[key], rel=1e-12, abs=1e-12), key


def test_resumed_with_another_process_count_each_process_goes_on_from_the_mean_sums():
    sums = [{"loss": 10.0, "matched": 4.0}, {"loss": 20.0, "matched": 2.0}]
    assert rank_share(sums, 1, 2) == {"loss": 20.0, "matched": 2.0}
    assert rank_share(sums, 0, 1) == rank_share(sums, 2, 4) == {"loss": 15.0, "matched": 3.0}
