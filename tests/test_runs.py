"""The run directory's one home: checkpoints, metrics.jsonl and analyses are found by name."""

from __future__ import annotations

import errno
import json
import logging
import os
import shutil
import signal
from pathlib import Path

import pytest

from sparse_detector.cli import main
from sparse_detector.config import load_config
from sparse_detector.data import generate_shapes_splits
from sparse_detector.engine.checkpoint import load_checkpoint
from sparse_detector.engine.diagnostics import DIAGNOSTICS_FILE, read_diagnostics
from sparse_detector.files import write_atomically
from sparse_detector.runs import (
    BEST_CHECKPOINT,
    LAST_CHECKPOINT,
    METRICS_FILE,
    TRAINING_LOCK,
    analysis_dir,
    analysis_labels,
    distinct_names,
    read_analyses,
    read_metrics,
    resolve_checkpoint,
)

from .conftest import shapes_overrides


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
    assert read_analyses([run]) == [record] and analysis_labels([record]) == ["run (random init)"]
    old = {**record, "attention": {"sites": {}, "paibb": None}}
    (folder / "analysis.json").write_text(json.dumps(old))
    with caplog.at_level(logging.WARNING):
        read_analyses([folder])
    assert "older layout" in caplog.text
    with pytest.raises(FileNotFoundError, match="run analyze first"):
        read_analyses([tmp_path])
    unanalysed = tmp_path / "unanalysed"  # `compare runs/a runs/b` before `analyze`: the command to run
    unanalysed.mkdir()
    (unanalysed / "config.yaml").write_text("{}\n")
    with pytest.raises(FileNotFoundError, match=rf"\(run `sparse-detector analyze --checkpoint {unanalysed}` first\)"):
        read_analyses([unanalysed])


def test_a_log_whose_last_line_was_cut_short_is_read_up_to_it(tmp_path: Path, caplog: pytest.LogCaptureFixture):
    """A process killed while writing metrics.jsonl (or diagnostics.jsonl) left half a line: `visualize curves` and
    `train --resume` stopped with 'error: Unterminated string starting at: line 1 column 31', naming no file."""
    (tmp_path / METRICS_FILE).write_text('{"type": "train", "step": 1}\n{"type": "train", "step": 2, "ti')
    with caplog.at_level(logging.WARNING):
        assert read_metrics(tmp_path) == [{"type": "train", "step": 1}]
    assert "last line was cut short" in caplog.text
    (tmp_path / DIAGNOSTICS_FILE).write_text('{"step": 0, "weights": {"a": {"std"\n{"step": 3}\n')
    with pytest.raises(ValueError, match=rf"{DIAGNOSTICS_FILE}, line 1, is not a JSON record"):
        read_diagnostics(tmp_path)  # a bad line before the end is no cut: an error naming the file and line


def test_missing_diagnostics_advice_depends_on_how_the_run_was_trained(tmp_path: Path):
    """A run trained with diagnostics whose diagnostics.jsonl was deleted was told to train with
    train.diagnostics_every=N, as if it never had been; that advice is now only for runs trained without."""
    (tmp_path / "config.yaml").write_text("train:\n  diagnostics_every: 0\n")
    with pytest.raises(FileNotFoundError, match=r"train with --set train.diagnostics_every=N to record it"):
        read_diagnostics(tmp_path)
    (tmp_path / "config.yaml").write_text("train:\n  diagnostics_every: 5\n")
    with pytest.raises(FileNotFoundError) as missing:
        read_diagnostics(tmp_path)
    assert str(missing.value) == (
        f"{tmp_path / DIAGNOSTICS_FILE} does not exist, though the run was trained with train.diagnostics_every=5: "
        "it was moved or deleted"
    )


def test_the_readme_names_the_lock_file_a_run_directory_keeps():
    """Every finished run directory holds .training.lock (an flock, kept: removing it would race with a process
    opening it), and the README's list of a run directory's files did not name it."""
    readme = (Path(__file__).parents[1] / "README.md").read_text()
    runs_section = readme.split("\n### Runs\n", 1)[1].split("\n### ", 1)[0]
    assert f"`{TRAINING_LOCK}`" in runs_section


def test_runs_of_the_same_name_get_labels_told_apart_by_their_parents(tmp_path: Path):
    from sparse_detector.report import compare_markdown
    from sparse_detector.viz.kinds import run_labels as figure_labels

    runs = [tmp_path / "exp1" / "runs" / "softmax", tmp_path / "exp2" / "runs" / "softmax", tmp_path / "sparsemax"]
    records = [{"checkpoint": str(run / BEST_CHECKPOINT), "random_init": False} for run in runs]
    records.append({"checkpoint": str(runs[0] / BEST_CHECKPOINT), "random_init": True})
    expected = ["exp1/runs/softmax", "exp2/runs/softmax", "sparsemax", "softmax (random init)"]
    assert analysis_labels(records) == expected  # were softmax, softmax, ...: one table column or curve hid the other
    assert figure_labels(runs) == expected[:3]
    for record in records:
        record.update(data="val.json", ap={"AP": 0.1}, attention={"num_images": 1, "sites": {}})
    assert "| site | layer | gini: exp1/runs/softmax | gini: exp2/runs/softmax |" in compare_markdown(records, ["gini"])


def test_a_moved_run_is_labelled_by_the_folder_it_is_in_now(tmp_path: Path, monkeypatch):
    """analysis.json names the checkpoint by the path analyze was given ('runs/softmax/checkpoint_best.pt'): a run
    copied from a cluster into 'from-cluster/softmax-lr2' was still labelled 'softmax' in compare's columns."""
    from sparse_detector.runs import read_analyses

    record = {"checkpoint": f"runs/softmax/{BEST_CHECKPOINT}", "random_init": False, "attention": {"sites": {}}}
    run = tmp_path / "from-cluster" / "softmax-lr2"
    (run / "analysis").mkdir(parents=True)
    (run / "analysis" / "analysis.json").write_text(json.dumps(record))
    (run / BEST_CHECKPOINT).write_bytes(b"")
    monkeypatch.chdir(tmp_path)
    (moved,) = read_analyses([run])
    assert moved["checkpoint"] == str(run / BEST_CHECKPOINT) and analysis_labels([moved]) == ["softmax-lr2"]
    (tmp_path / "runs" / "softmax").mkdir(parents=True)  # the stored path still leads to a checkpoint: kept
    (tmp_path / "runs" / "softmax" / BEST_CHECKPOINT).write_bytes(b"")
    assert read_analyses([run])[0]["checkpoint"] == f"runs/softmax/{BEST_CHECKPOINT}"


def test_one_checkpoint_analysed_twice_gets_two_labels(tmp_path: Path):
    """Two analyses of one run (other data, or the same data twice) were both labelled '//tmp/.../run': the compare
    table's columns could not be told apart."""
    checkpoint = str(tmp_path / "runs" / "mine" / BEST_CHECKPOINT)
    records = [
        {"checkpoint": checkpoint, "random_init": False, "data": str(tmp_path / name)}
        for name in ("val.json", "test.json", "test.json")
    ]
    assert analysis_labels(records) == ["mine on val.json", "mine on test.json #1", "mine on test.json #2"]
    assert analysis_labels(records[1:]) == ["mine #1", "mine #2"]
    downloads = tmp_path / "Downloads"  # official checkpoints: were 'Downloads #1' and 'Downloads #2'
    records = [{"checkpoint": str(downloads / name), "random_init": False} for name in ("plain.pth", "refine.pth")]
    assert analysis_labels(records) == ["Downloads (plain.pth)", "Downloads (refine.pth)"]
    from sparse_detector.viz.kinds import run_label

    downloads.mkdir()
    (downloads / "plain.pth").touch()
    assert run_label(downloads / "plain.pth") == "plain.pth"  # visualize --official: was the folder, 'Downloads'
    (downloads / "config.yaml").touch()  # a checkpoint in a run directory: the run's name
    assert run_label(downloads / "plain.pth") == "Downloads"
    assert distinct_names([Path("/a/b"), Path("/a/b"), Path("/c/b")]) == ["a/b", "a/b", "c/b"]
    assert distinct_names([Path("/b"), Path("/c/b")]) == ["/b", "c/b"]  # not '//b'


def _an_analysis(tmp_path: Path) -> Path:
    path = tmp_path / "run" / "analysis" / "analysis.json"
    path.parent.mkdir(parents=True)
    record = {"checkpoint": str(tmp_path / "run" / BEST_CHECKPOINT), "data": "val.json", "random_init": False}
    path.write_text(json.dumps({**record, "ap": {"AP": 0.5}, "attention": {"sites": {}, "num_images": 1}}))
    return path


@pytest.mark.parametrize("failure", [OSError(errno.ENOSPC, "No space left on device"), KeyboardInterrupt()])
def test_a_full_disk_or_ctrl_c_while_writing_keeps_the_file_there_before(tmp_path: Path, monkeypatch, capsys, failure):
    """A full disk while compare / evaluate / analyze / predict wrote their output printed '[Errno 28] No space left on
    device' without the file, and left the earlier file there cut short; so did Ctrl-C in the middle."""
    output = tmp_path / "table.md"
    output.write_text("the earlier table")
    monkeypatch.setattr("sparse_detector.files.os.fsync", lambda fd: (_ for _ in ()).throw(failure))
    code = main(["compare", str(_an_analysis(tmp_path)), "--output", str(output)])
    err = capsys.readouterr().err
    if isinstance(failure, OSError):
        assert code == 2 and f"cannot write {output}: No space left on device" in err and "Errno" not in err
    else:
        assert code == 128 + signal.SIGINT and "interrupted" in err
    assert output.read_text() == "the earlier table"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run", "table.md"]  # no temporary file left behind


def test_outputs_written_atomically_are_readable_as_open_makes_them(tmp_path: Path):
    output = tmp_path / "table.md"
    assert main(["compare", str(_an_analysis(tmp_path)), "--output", str(output)]) == 0
    mask = os.umask(0)
    os.umask(mask)
    assert output.stat().st_mode & 0o777 == 0o666 & ~mask


def test_a_write_killed_midway_leaves_the_old_file_whole_and_no_temporary_file(tmp_path: Path):
    """eval.json, analysis.json, study_status.json, config.yaml and the resume's cut of metrics.jsonl were written in
    place: a process killed while writing left half a file that a later command read as the whole one (or failed
    on). Checkpoints, written through a temporary file, were readable by their owner only."""
    path = write_atomically(tmp_path / "eval.json", '{"AP": 0.5}')
    assert path.read_text() == '{"AP": 0.5}'

    def killed_midway(f) -> None:
        f.write(b'{"AP": 0.')
        raise KeyboardInterrupt  # Ctrl-C (or any error) while writing

    with pytest.raises(KeyboardInterrupt):
        write_atomically(path, killed_midway)
    assert path.read_text() == '{"AP": 0.5}'
    assert [p.name for p in tmp_path.iterdir()] == ["eval.json"]
    umask = os.umask(0)
    os.umask(umask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask


def _train_a_step(run_dir: Path, train: dict[str, Path], val: dict[str, Path]) -> None:
    """A tiny run of one training step on ``train``'s shapes, validated on ``val``'s, trained as ``train`` does."""
    data = shapes_overrides(train) + [
        f"data.val.{key}={val[name]}" for key, name in (("images", "images"), ("annotations", "val"))
    ]
    command = ["train", "--config", "shapes_tiny", "--output-dir", str(run_dir), "--no-progress", "--set", *data]
    assert main([*command, "train.epochs=1", "train.max_steps_per_epoch=1"]) == 0


def _shapes(folder: Path) -> dict[str, Path]:
    return {"images": folder / "images", **generate_shapes_splits(folder, 4, 2, seed=3, image_size=96, max_size=40)}


def test_a_moved_folder_holding_a_run_and_its_data_reads_the_data_where_it_is_now(
    tmp_path: Path, capsys, caplog: pytest.LogCaptureFixture
):
    """quickstart keeps its data beside its run (<folder>/data, <folder>/train), and the run's config.yaml and
    checkpoints name both absolute: once the folder was moved, analyze, evaluate, visualize and train --resume failed
    with 'annotation file <old folder>/data/annotations/val.json does not exist'."""
    folder = tmp_path / "quickstart"
    data = _shapes(folder / "data")
    _train_a_step(folder / "train", data, data)
    moved = tmp_path / "elsewhere" / "renamed"
    moved.parent.mkdir()
    folder.rename(moved)
    run, val = moved / "train", moved / "data" / "annotations" / "val.json"
    caplog.set_level(logging.WARNING)
    capsys.readouterr()
    assert main(["analyze", "--checkpoint", str(run), "--device", "cpu"]) == 0
    assert json.loads((run / "analysis" / "analysis.json").read_text())["data"] == str(val)
    assert main(["evaluate", "--checkpoint", str(run), "--device", "cpu"]) == 0
    assert f"on {val} (2 images)" in capsys.readouterr().out
    assert main(["visualize", "attention", str(run), "--num-images", "1", "--device", "cpu"]) == 0
    assert list((run / "figures").glob("attention_*.png"))
    assert main(["train", "--resume", str(run), "--set", "train.epochs=2", "--no-progress"]) == 0
    assert load_checkpoint(run / LAST_CHECKPOINT)["epoch"] == 2
    resumed = load_config(run / "config.yaml")  # the continued run's config names the data and folder it has now
    assert (resumed.data.train.images, resumed.train.output_dir) == (str(moved / "data" / "images"), str(run))
    warnings = [record.getMessage() for record in caplog.records if record.levelno == logging.WARNING]
    assert [message for message in warnings if "moved" in message] == [
        f"moved run: its data under {folder}, which leads nowhere now, is read under {moved}"
    ], "said once (per process), not once per loading"
    changes = [message for message in warnings if "the config changes" in message]
    assert changes == ["resume: the config changes train.epochs: 1 -> 2"], "the move is no change of settings"


def test_data_outside_a_moved_folder_is_read_where_its_config_names_it(tmp_path: Path, capsys):
    """A moved run's own data set elsewhere stays as its config names it, even beside a copy at the same place
    relative to the run's new folder; a path that leads nowhere from either place is the data loader's error."""
    project, own = tmp_path / "project", tmp_path / "datasets" / "val"
    _train_a_step(project / "runs" / "mine", _shapes(project / "data"), _shapes(own))
    moved = tmp_path / "moved" / "project"
    moved.parent.mkdir()
    project.rename(moved)
    copy = tmp_path / "moved" / own.relative_to(tmp_path)  # where a data set moved along with the project would be
    shutil.copytree(own, copy)
    run = moved / "runs" / "mine"
    assert main(["train", "--resume", str(run), "--set", "train.epochs=2", "--no-progress"]) == 0
    config = load_config(run / "config.yaml")
    assert config.data.train.images == str(moved / "data" / "images"), "the data moved with the run"
    assert config.data.val.annotations == str(own / "annotations" / "val.json"), "the data elsewhere stays"
    shutil.rmtree(own)
    shutil.rmtree(copy)
    capsys.readouterr()
    assert main(["analyze", "--checkpoint", str(run), "--device", "cpu"]) == 2
    assert f"annotation file {own / 'annotations' / 'val.json'} does not exist" in capsys.readouterr().err
