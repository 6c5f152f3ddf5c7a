"""The command line's shape: instant help with an example per command, and messages a new user can act on."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image
from tqdm import tqdm

from sparse_detector.cli import _close_progress_bars, build_parser, main
from sparse_detector.config import load_config
from sparse_detector.data.build import absolute_data_paths


def subcommands(parser: argparse.ArgumentParser, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    """Every leaf command path, e.g. ("train",), ("data", "import")."""
    found = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                found += subcommands(sub, (*prefix, name)) or [(*prefix, name)]
    return found


@pytest.mark.parametrize("command", subcommands(build_parser()))
def test_every_command_has_help_with_an_example(command: tuple[str, ...], capsys) -> None:
    with pytest.raises(SystemExit) as exit_:
        main([*command, "--help"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    assert "example:\n  sparse-detector " + " ".join(command) in out


def test_help_does_not_import_torch() -> None:
    """`--help` stays instant because nothing heavy is imported to build the parser (timed in benchmarks/)."""
    code = (
        "import sys; from sparse_detector.cli import build_parser; build_parser().parse_args(['train']); "
        "print(sorted(m for m in ('torch', 'torchvision', 'numpy', 'PIL', 'pycocotools') if m in sys.modules))"
    )
    src = Path(__file__).resolve().parents[1] / "src"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env={"PYTHONPATH": str(src)})
    assert result.stdout.strip() == "[]", result.stderr


def test_preset_without_its_data_says_how_to_make_it(tmp_path: Path, monkeypatch, capsys) -> None:
    monkeypatch.chdir(tmp_path)
    assert main(["train", "--config", "shapes_tiny"]) == 2
    err = capsys.readouterr().err
    assert "data of preset 'shapes_tiny' is not there yet" in err
    assert "sparse-detector data shapes data/shapes --num-images 1200 --num-val 200" in err


def test_own_annotations_with_the_presets_image_folder_name_the_key(tmp_path: Path, monkeypatch, capsys) -> None:
    """Overriding only data.*.annotations of a preset leaves its images folder, which the error names with the fix."""
    monkeypatch.chdir(tmp_path)
    coco = {"images": [], "annotations": [], "categories": [{"id": 1, "name": "cell"}]}
    (tmp_path / "mine.json").write_text(json.dumps(coco))
    overrides = ["data.train.annotations=mine.json", "data.val.annotations=mine.json"]
    assert main(["train", "--config", "shapes_tiny", "--output-dir", "run", "--set", *overrides]) == 2
    err = capsys.readouterr().err
    assert "data/shapes/images is not a folder" in err and "data.train.images=" in err
    assert """--set 'data.train.images=""'""" in err


def test_train_and_val_with_other_category_ids_is_an_error_before_training(tmp_path: Path, capsys) -> None:
    """Two CSV files imported apart number their classes apart (val lacks 'a'): an error up front naming the ids,
    not a cryptic one at the first evaluation; importing both with the same --classes file fixes it."""
    Image.new("RGB", (40, 30)).save(tmp_path / "x.jpg")
    (tmp_path / "train.csv").write_text("x.jpg,1,1,9,9,a\nx.jpg,2,2,20,20,b\n")
    (tmp_path / "val.csv").write_text("x.jpg,2,2,20,20,b\n")
    (tmp_path / "classes.txt").write_text("a\nb\n")
    for split, extra in (("train", []), ("val", []), ("val_fixed", ["--classes", str(tmp_path / "classes.txt")])):
        source = tmp_path / f"{split.split('_')[0]}.csv"
        assert main(["data", "import", "csv", str(source), "--out", str(tmp_path / f"{split}.json"), *extra]) == 0
    overrides = [f"data.train.annotations={tmp_path / 'train.json'}", f"data.val.annotations={tmp_path / 'val.json'}"]
    overrides += ['data.train.images=""', 'data.val.images=""', "model.num_classes=2", "train.epochs=1"]
    run = ["train", "--config", "shapes_tiny", "--output-dir", str(tmp_path / "run"), "--set", *overrides]
    capsys.readouterr()
    assert main(run) == 2
    assert (
        "do not share their categories (train vs val: id 1: 'a' vs 'b'; id 2: 'b' vs 'absent')"
        in capsys.readouterr().err
    )
    assert json.loads((tmp_path / "val_fixed.json").read_text())["categories"][1]["name"] == "b"


def test_run_config_paths_are_absolute(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    config = absolute_data_paths(load_config("small_data"))
    assert config.data.train.annotations == str(tmp_path / "data" / "splits" / "train.json")
    assert config.data.train.images == ""  # unset stays unset: the JSON's own folder


def test_errors_start_on_their_own_line() -> None:
    bar = tqdm(total=3, file=sys.stderr)
    bar.update()
    _close_progress_bars()
    assert bar not in getattr(tqdm, "_instances", set())


def test_visualize_kinds_and_formats_named_in_the_cli_match_the_registry():
    from sparse_detector.cli import FIGURE_FORMATS, FIGURE_KIND_NAMES
    from sparse_detector.viz.figure import FORMATS
    from sparse_detector.viz.kinds import FIGURE_KINDS

    assert sorted(FIGURE_KIND_NAMES) == sorted(FIGURE_KINDS)
    assert tuple(FIGURE_FORMATS) == tuple(FORMATS)
