"""The run directory's one home: checkpoints, metrics.jsonl and analyses are found by name."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from sparse_detector.runs import (
    BEST_CHECKPOINT,
    LAST_CHECKPOINT,
    analysis_dir,
    read_analyses,
    read_metrics,
    resolve_checkpoint,
    run_label,
)


def test_checkpoints_metrics_and_analyses(tmp_path: Path, caplog: pytest.LogCaptureFixture):
    run = tmp_path / "run"
    with pytest.raises(FileNotFoundError, match="holds no checkpoint_best.pt or checkpoint_last.pt"):
        resolve_checkpoint(tmp_path)
    run.mkdir()
    (run / LAST_CHECKPOINT).write_bytes(b"")
    assert resolve_checkpoint(run) == run / LAST_CHECKPOINT
    (run / BEST_CHECKPOINT).write_bytes(b"")
    assert resolve_checkpoint(run) == run / BEST_CHECKPOINT
    with pytest.raises(FileNotFoundError, match="metrics.jsonl does not exist"):
        read_metrics(run)
    (run / "metrics.jsonl").write_text('{"type": "epoch", "epoch": 1}\n\n{"type": "epoch", "epoch": 2}\n')
    assert [r["epoch"] for r in read_metrics(run)] == [1, 2]

    record = {"checkpoint": str(run / BEST_CHECKPOINT), "random_init": True, "attention": {"sites": {}}}
    folder = analysis_dir(run / BEST_CHECKPOINT, random_init=True)
    folder.mkdir()
    (folder / "analysis.json").write_text(json.dumps(record))
    assert read_analyses([run]) == [record] and run_label(record) == "run (random init)"
    old = {**record, "attention": {"sites": {}, "paibb": None}}
    (folder / "analysis.json").write_text(json.dumps(old))
    with caplog.at_level(logging.WARNING):
        read_analyses([folder])
    assert "older layout" in caplog.text
    with pytest.raises(FileNotFoundError, match="run analyze first"):
        read_analyses([tmp_path])
