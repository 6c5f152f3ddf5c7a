"""Data-parallel training: two gloo processes on the CPU under torchrun equal one process with the same global batch."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from sparse_detector.engine.checkpoint import load_checkpoint
from sparse_detector.engine.distributed import DistributedContext, context_from_environment, first_slurm_host
from sparse_detector.engine.trainer import Trainer
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
