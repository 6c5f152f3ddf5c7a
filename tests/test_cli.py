"""The command line's shape: instant help with an example per command, and messages a new user can act on."""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
from PIL import Image
from tqdm import tqdm

import sparse_detector
from sparse_detector.cli import main
from sparse_detector.cli.entry import _close_progress_bars, build_parser
from sparse_detector.config import load_config
from sparse_detector.data.build import absolute_data_paths
from sparse_detector.text import closest_name

from .conftest import SMALL_MODEL


def usage_error(argv: list[str], capsys) -> str:
    """What ``main(argv)`` printed on stderr as it stopped with a usage error (exit status 2)."""
    with pytest.raises(SystemExit) as stop:
        main(argv)
    assert stop.value.code == 2
    return capsys.readouterr().err


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


@pytest.mark.parametrize("command", subcommands(build_parser()))
def test_every_option_with_a_default_shows_it(command: tuple[str, ...], capsys) -> None:
    """The README promises that every `--help` shows its defaults: also a 0 (a seed) and options without help text."""
    with pytest.raises(SystemExit):
        main([*command, "--help"])
    out = " ".join(capsys.readouterr().out.split())
    parser = build_parser()
    for name in command:
        parser = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices[name]
    for action in parser._actions:
        if action.option_strings and action.default not in (None, False, argparse.SUPPRESS, []):
            shown = " ".join(f"{action.help} (default: {action.default})".split())
            assert action.help and ("default" in action.help or shown in out), (command, action.option_strings)


def test_version_names_the_installed_version(capsys) -> None:
    """`sparse-detector --version` prints the package version (pyproject.toml reads it from `__version__`)."""
    with pytest.raises(SystemExit) as stop:
        main(["--version"])
    assert stop.value.code == 0
    assert capsys.readouterr().out.strip() == f"sparse-detector {sparse_detector.__version__}"


def test_help_does_not_import_torch() -> None:
    """`--help` stays instant because nothing heavy is imported to build the parser (timed in benchmarks/)."""
    code = (
        "import sys; from sparse_detector.cli.entry import build_parser; build_parser().parse_args(['train']); "
        "print(sorted(m for m in ('torch', 'torchvision', 'numpy', 'PIL', 'pycocotools') if m in sys.modules))"
    )
    src = Path(__file__).resolve().parents[1] / "src"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env={"PYTHONPATH": str(src)})
    assert result.stdout.strip() == "[]", result.stderr


def test_data_commands_do_not_import_torchvision(tmp_path: Path) -> None:
    """`data shapes / import / check / split` need no model code: they start without torchvision (and `data shapes`
    without torch), which took longer to import than the commands took to run."""
    code = f"""import sys
from sparse_detector.cli import main
assert main(["data", "shapes", {str(tmp_path / "shapes")!r}, "--num-images", "4", "--num-val", "2"]) == 0
torch_for_shapes = "torch" in sys.modules
shapes, json = {str(tmp_path / "shapes")!r}, {str(tmp_path / "imported.json")!r}
argv = ["coco", shapes + "/annotations/train.json", "--images", shapes + "/images", "--out", json]
assert main(["data", "import", *argv]) == 0
assert main(["data", "check", json]) == 0
assert main(["data", "split", json, "--val", "0.5", "--out-dir", {str(tmp_path / "split")!r}]) == 0
print(torch_for_shapes, "torchvision" in sys.modules)
"""
    src = Path(__file__).resolve().parents[1] / "src"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env={"PYTHONPATH": str(src)})
    assert result.returncode == 0, result.stderr
    assert result.stdout.split()[-2:] == ["False", "False"], result.stdout


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["data", "shapes", "out", "--num-images", "-5"], "argument --num-images: must be 1 or more, got -5"),
        (["data", "shapes", "out", "--num-val", "-1"], "argument --num-val: must be 0 or more, got -1"),
        (["quickstart", "--num-train", "0"], "argument --num-train: must be 1 or more, got 0"),
        (["quickstart", "--num-val", "0"], "argument --num-val: must be 1 or more, got 0"),
        (["predict", "--checkpoint", "run", "in", "--threshold", "1.5"], "argument --threshold: scores are from 0"),
        (["visualize", "attention", "run", "--threshold", "-0.1"], "argument --threshold: scores are from 0 to 1"),
        (["visualize", "attention", "run", "--num-images", "0"], "argument --num-images: must be 1 or more, got 0"),
        (["visualize", "attention", "run", "--max-queries", "-1"], "argument --max-queries: must be 0 or more"),
        (["evaluate", "--checkpoint", "run", "--workers", "-1"], "argument --workers: must be 0 or more, got -1"),
        (["data", "shapes", "out", "--num-images", "ten"], "argument --num-images: expected a whole number, got 'ten'"),
        (["predict", "--checkpoint", "run", "in", "--threshold", "high"], "expected a number from 0 to 1, got 'high'"),
        (
            ["visualize", "encoder", "run", "--pixels", "40;60"],
            "argument --pixels: expected a pixel as X,Y (e.g. 40,60)",
        ),
    ],
)
def test_a_number_out_of_range_is_a_usage_error_naming_the_option(argv: list[str], message: str, capsys) -> None:
    """--num-images -5 wrote an empty data set, quickstart --num-train 0 'trained' 12 epochs without a step and
    --num-val 0 evaluated on nothing (all exit 0); --threshold 1.5 kept no detection, --num-images 0 drew nothing.
    A value that is no number (or no X,Y pixel) is named too."""
    assert message in usage_error(argv, capsys)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["trian"], "sparse-detector: error: argument command: invalid choice: 'trian' (choose from"),
        (["trian"], "; did you mean 'train'?"),
        (["data", "chek", "x.json"], "; did you mean 'check'?"),
        (["visualize", "atention", "run"], "; did you mean 'attention'?"),
        (["train", "--confg", "x"], "sparse-detector train: error: unrecognized arguments: --confg x; did you mean "),
        (["train", "--confg", "x"], "did you mean --config instead of --confg?"),
        (["data", "import", "voc", "--out", "o.json", "--exclude-dificult"], "did you mean --exclude-difficult"),
        (["--degub", "evaluate", "--checkpoint", "run"], "sparse-detector evaluate: error: unrecognized arguments"),
        (["data"], "sparse-detector data: error: the following arguments are required: TOOL"),  # was data_command
    ],
)
def test_a_mistyped_name_is_answered_with_the_closest_one(argv: list[str], message: str, capsys) -> None:
    """`sparse-detector trian` got argparse's bare 'invalid choice', and `train --confg x` 'sparse-detector: error:
    unrecognized arguments' under the top level's usage, without naming the option meant."""
    assert message in usage_error(argv, capsys)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (
            ["evaluate", "runs/x"],
            "sparse-detector evaluate: error: the following arguments are required: --checkpoint "
            "(did you mean --checkpoint runs/x?)",
        ),
        (["analyze", "runs/x", "--workers", "0"], "required: --checkpoint (did you mean --checkpoint runs/x?)"),
        (["data", "import", "yolo", "src", "o.json"], "required: --out (did you mean --out o.json?)"),
        (["data", "split", "all.json", "splits"], "required: --out-dir (did you mean --out-dir splits?)"),
        (["evaluate", "--chekpoint", "runs/x"], "required: --checkpoint (did you mean --checkpoint runs/x?)"),
        (["evaluate"], "required: --checkpoint\n"),  # no stray word: nothing to suggest
        (["data", "import", "yolo", "src"], "required: --out\n"),
    ],
)
def test_a_missing_option_is_suggested_with_the_stray_word_given(argv: list[str], message: str, capsys) -> None:
    """`evaluate runs/x` and `data import yolo SRC OUT` got argparse's bare 'the following arguments are required:
    --checkpoint' (--out), not naming the word given without its option."""
    assert message in usage_error(argv, capsys)


@pytest.mark.parametrize(
    ("argv", "hint"),
    [
        (["predict", "runs/x", "photo.png"], " (did you mean --checkpoint runs/x?)\n"),
        (["predict", "mine.pth", "photo.png"], " (did you mean --checkpoint mine.pth?)\n"),
        (["predict", "photos", "photo.png"], "\n"),  # a folder of images: nothing to suggest
        (["predict", "photo.png", "runs/x"], "\n"),  # only the first input is taken for the model
    ],
)
def test_predict_without_checkpoint_suggests_the_run_given_as_an_input(
    argv: list[str], hint: str, tmp_path: Path, monkeypatch, capsys
) -> None:
    """`predict runs/x photo.png` took the run for an image and got argparse's bare 'the following arguments are
    required: --checkpoint'."""
    monkeypatch.chdir(tmp_path)
    Path("runs/x").mkdir(parents=True)
    Path("runs/x/checkpoint_last.pt").touch()
    Path("photos").mkdir()
    Path("photo.png").touch()
    Path("mine.pth").touch()
    assert usage_error(argv, capsys).endswith(f"error: the following arguments are required: --checkpoint{hint}")


def test_an_input_read_as_an_override_says_so(tmp_path: Path, monkeypatch, capsys) -> None:
    """`predict --checkpoint run --set data.val_size=512 photo.png` read photo.png as an override: 'the following
    arguments are required: inputs'."""
    monkeypatch.chdir(tmp_path)
    Path("photo.png").touch()
    argv = ["predict", "--checkpoint", "run", "--set", "data.val_size=512"]
    err = usage_error([*argv, "photo.png"], capsys)
    assert "argument --set: expected KEY=VALUE, got 'photo.png': --set reads every word" in err
    assert build_parser().parse_args([*argv, "--", "photo.png"]).inputs == ["photo.png"]
    with pytest.raises(SystemExit):  # a key without its value
        main(["train", "--set", "train.epochs"])
    assert "got 'train.epochs': give the key a value (train.epochs=VALUE)" in capsys.readouterr().err


def test_a_mistyped_compare_metric_gets_the_closest(capsys) -> None:
    """`compare runs/a --metrics gnii` listed every metric but not the one meant."""
    assert main(["compare", "runs/a", "--metrics", "gnii", "paibb", "zzz"]) == 2
    assert "unknown --metrics ['gnii', 'zzz'] (did you mean gini for gnii?); choose from" in capsys.readouterr().err


def test_a_short_option_is_not_matched_to_a_different_word() -> None:
    """difflib's ratio 0.6 counted the shared dashes: `--set` got 'did you mean --site' (ratio 0.73)."""
    assert closest_name("--set", ["--site", "--output"]) is None
    assert closest_name("--sed", ["--site", "--seed"]) == "--seed"
    assert closest_name("--confg", ["--checkpoint", "--config"]) == "--config"
    assert closest_name("trian", ["train", "evaluate"]) == "train"
    assert closest_name("vok", ["coco", "voc", "yolo", "csv"]) == "voc"  # one wrong letter of three: ratio 2/3
    assert closest_name("dat", ["coco", "voc", "yolo", "csv"]) is None


def test_a_name_in_other_letter_case_gets_the_closest(capsys) -> None:
    """`data import VOC`, `--config SHAPES_TINY`, `--metrics GINI` or an upper-case map name got no 'did you mean':
    the names were compared in their letter case, which shares no letter with the name meant."""
    assert closest_name("SPARSEMAX", ["softmax", "sparsemax", "tvmax"]) == "sparsemax"
    assert closest_name("--Config", ["--checkpoint", "--config"]) == "--config"
    with pytest.raises(SystemExit):
        main(["data", "import", "VOC", "folder"])
    assert "invalid choice: 'VOC' (choose from 'voc', 'yolo', 'csv', 'coco'); did you mean 'voc'?" in (
        capsys.readouterr().err
    )
    assert main(["train", "--config", "SHAPES_TINY"]) == 2
    assert "is neither a file nor a preset (did you mean shapes_tiny?)" in capsys.readouterr().err
    assert main(["compare", "runs/a", "--metrics", "GINI"]) == 2
    assert "unknown --metrics ['GINI'] (did you mean gini for GINI?)" in capsys.readouterr().err
    assert main(["study", "SHAPES_MAPS"]) == 2
    assert "neither a file nor an embedded study (did you mean 'shapes_maps'?)" in capsys.readouterr().err


def test_inputs_given_after_an_option_join_the_others(capsys) -> None:
    """argparse reads a command's positionals in one stretch: an image after an option was 'unrecognized'."""
    parser = build_parser()
    args = parser.parse_args(["predict", "--checkpoint", "r", "a.png", "--threshold", "0.5", "b.png", "c/"])
    assert args.inputs == ["a.png", "b.png", "c/"] and args.threshold == 0.5
    args = parser.parse_args(["visualize", "attention", "r", "--output", "figs", "b.png"])
    assert (args.run, args.inputs, args.output) == ("r", ["b.png"], "figs")
    with pytest.raises(SystemExit):  # a command without a list of inputs still refuses them
        parser.parse_args(["evaluate", "--checkpoint", "r", "b.png"])
    assert "sparse-detector evaluate: error: unrecognized arguments: b.png" in capsys.readouterr().err
    with pytest.raises(SystemExit):  # with an unknown option among them, nothing is taken for an input
        parser.parse_args(["predict", "--checkpoint", "r", "a.png", "--zzz", "b.png"])
    assert "unrecognized arguments: --zzz b.png" in capsys.readouterr().err


def test_a_name_like_none_gets_no_suggestion(capsys) -> None:
    with pytest.raises(SystemExit):
        main(["xyzzy"])
    with pytest.raises(SystemExit):
        main(["train", "--zzz"])
    assert "did you mean" not in capsys.readouterr().err


def test_debug_is_taken_between_data_and_its_tool(capsys) -> None:
    """`data --debug check x.json` said 'unrecognized arguments: --debug; did you mean --debug instead of --debug?'."""
    assert build_parser().parse_args(["data", "--debug", "check", "x.json"]).debug


@pytest.mark.parametrize(
    "argv",
    [
        ["train", "--config", "shapes_tiny"],
        ["predict", "--checkpoint", "missing", "photo.png"],
        ["visualize", "attention", "missing"],
        ["evaluate", "--checkpoint", "missing"],
        ["analyze", "--checkpoint", "missing"],
    ],
)
def test_a_device_that_is_none_is_named_as_given(argv: list[str], capsys) -> None:
    """`train --device tpu` said 'train.device: ...', predict and visualize 'device: ...' (after loading the model)."""
    assert main([*argv, "--device", "tpu"]) == 2
    assert capsys.readouterr().err.startswith("error: --device: 'tpu' is not a device; use auto, cpu, cuda")


def test_shapes_too_large_for_the_image_size_name_the_option(tmp_path: Path, capsys) -> None:
    """`data shapes out --image-size 8` said 'need 1 <= min_size <= max_size <= image_size, got 24, 56, 8'."""
    assert main(["data", "shapes", str(tmp_path / "s"), "--image-size", "8", "--num-images", "1"]) == 2
    assert "--image-size 8: the shapes are 24 to 56 px, so the images need --image-size 56 or more" in (
        capsys.readouterr().err
    )
    assert not (tmp_path / "s").exists()


@pytest.mark.parametrize("command", ["evaluate", "analyze"])
def test_images_that_are_no_folder_name_the_option(command: str, tmp_path: Path, capsys) -> None:
    """`evaluate --images nope` said 'data.val.images=nope is not a folder; ... --set data.val.images=', after loading
    the model."""
    assert main([command, "--checkpoint", str(tmp_path / "missing"), "--images", str(tmp_path / "nope")]) == 2
    assert f"error: --images {tmp_path / 'nope'} is not a folder; give the folder" in capsys.readouterr().err


def test_preset_without_its_data_says_how_to_make_it(tmp_path: Path, monkeypatch, capsys) -> None:
    monkeypatch.chdir(tmp_path)
    assert main(["train", "--config", "shapes_tiny"]) == 2
    err = capsys.readouterr().err
    assert "data of preset 'shapes_tiny' is not there yet" in err
    assert "sparse-detector data shapes data/shapes --num-images 1200 --num-val 200" in err
    given = tmp_path / "mine.json"  # a file of the user's: no advice to generate the preset's shapes data
    paths = [f"data.train.annotations={given}", f"data.val.annotations={given}"]
    assert main(["train", "--config", "shapes_tiny", "--set", *paths]) == 2
    err = capsys.readouterr().err
    assert f"annotation file {given} does not exist" in err and "not there yet" not in err


def test_coco_preset_without_its_data_names_the_missing_annotations(tmp_path: Path, monkeypatch, capsys) -> None:
    """The README's torchrun command without COCO said 'data.train.images=... is not a folder; set it ... or empty
    for the JSON's own folder', a JSON that was not there either."""
    monkeypatch.chdir(tmp_path)
    assert main(["train", "--config", "detr_r50", "--output-dir", "run"]) == 2
    err = capsys.readouterr().err
    assert "data/coco/annotations/instances_train2017.json does not exist" in err and "not a folder" not in err


def test_own_annotations_with_the_presets_image_folder_name_the_key(tmp_path: Path, monkeypatch, capsys) -> None:
    """Overriding only data.*.annotations of a preset leaves its images folder, which the error names with the fix."""
    monkeypatch.chdir(tmp_path)
    coco = {"images": [], "annotations": [], "categories": [{"id": 1, "name": "cell"}]}
    (tmp_path / "mine.json").write_text(json.dumps(coco))
    overrides = ["data.train.annotations=mine.json", "data.val.annotations=mine.json"]
    assert main(["train", "--config", "shapes_tiny", "--output-dir", "run", "--set", *overrides]) == 2
    err = capsys.readouterr().err
    assert "data/shapes/images is not a folder" in err and "data.train.images=" in err
    assert "--set data.train.images= (" in err


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
    overrides += ["data.train.images=", "data.val.images=", "model.num_classes=2", "train.epochs=1"]
    run = ["train", "--config", "shapes_tiny", "--output-dir", str(tmp_path / "run"), "--set", *overrides]
    capsys.readouterr()
    assert main(run) == 2
    assert (
        "do not share their categories (train vs val: id 1: 'a' vs 'b'; id 2: 'b' vs 'absent')"
        in capsys.readouterr().err
    )
    assert json.loads((tmp_path / "val_fixed.json").read_text())["categories"][1]["name"] == "b"
    (tmp_path / "val.csv").write_text("x.jpg,2,2,20,20,c\n")  # a class train lacks: was an error after the epoch
    classes = ["--classes", str(tmp_path / "classes.txt")]
    (tmp_path / "classes.txt").write_text("a\nb\nc\n")
    assert (
        main(["data", "import", "csv", str(tmp_path / "val.csv"), "--out", str(tmp_path / "val.json"), *classes]) == 0
    )
    capsys.readouterr()
    assert main(run) == 2
    assert "do not share their categories (train vs val: id 3: 'absent' vs 'c')" in capsys.readouterr().err


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
    from sparse_detector.cli.visualize import FIGURE_FORMATS, FIGURE_KIND_NAMES
    from sparse_detector.viz.figure import FORMATS
    from sparse_detector.viz.kinds import FIGURE_KINDS

    assert sorted(FIGURE_KIND_NAMES) == sorted(FIGURE_KINDS)
    assert tuple(FIGURE_FORMATS) == tuple(FORMATS)


def test_a_file_where_an_output_folder_goes_is_named_before_any_work(tmp_path: Path, capsys) -> None:
    blocker = tmp_path / "notes.txt"
    blocker.write_text("mine")
    missing_run = str(tmp_path / "no-run")  # never loaded: the output is checked first
    for command in (
        ["analyze", "--checkpoint", missing_run, "--output", str(blocker)],
        ["predict", "--checkpoint", missing_run, str(blocker), "--output", str(blocker)],
        ["visualize", "attention", missing_run, "--output", str(blocker / "figs")],
        ["evaluate", "--checkpoint", missing_run, "--save-detections", str(blocker / "dets.json")],
    ):
        assert main(command) == 2
        err = capsys.readouterr().err
        assert f"{blocker} is a file, not a folder; choose another path" in err, command
        assert "Traceback" not in err
    assert main(["data", "shapes", str(blocker / "shapes"), "--num-images", "2"]) == 2  # caught where it is made
    assert f"cannot be written: {blocker} is a file, not a folder" in capsys.readouterr().err
    assert blocker.read_text() == "mine"


def test_ctrl_c_outside_training_is_one_line_not_a_traceback(monkeypatch, capsys) -> None:
    import sparse_detector.cli.evaluation as evaluation_commands

    def interrupted(args: argparse.Namespace) -> int:
        raise KeyboardInterrupt

    monkeypatch.setattr(evaluation_commands, "_evaluate", interrupted)
    assert main(["evaluate", "--checkpoint", "runs/mine"]) == 130
    err = capsys.readouterr().err
    assert err == "interrupted: sparse-detector evaluate stopped before it finished (Ctrl-C)\n"


def test_sigterm_outside_training_is_one_line_not_a_silent_kill(monkeypatch, capsys) -> None:
    """SIGTERM while train started up (importing torch, reading data, building the model) killed it silently with
    -15; training itself stops on its own terms (a checkpoint), the rest stops as on Ctrl-C."""
    import os
    import signal

    import sparse_detector.cli.train as train_command

    def starting_up(args: argparse.Namespace) -> int:
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(5)  # the signal interrupts this at once
        return 0

    monkeypatch.setattr(train_command, "_train", starting_up)
    before = signal.getsignal(signal.SIGTERM)
    assert main(["train"]) == 128 + signal.SIGTERM
    assert capsys.readouterr().err == "interrupted: sparse-detector train stopped before it finished (SIGTERM)\n"
    assert signal.getsignal(signal.SIGTERM) == before  # the caller's handler is back


def test_resume_given_a_checkpoint_file_names_its_run_directory(tmp_path: Path, capsys) -> None:
    (tmp_path / "config.yaml").write_text("{}\n")
    (tmp_path / "checkpoint_last.pt").write_bytes(b"")
    assert main(["train", "--resume", str(tmp_path / "checkpoint_last.pt")]) == 2
    assert f"--resume takes the run directory (it picks the newest valid checkpoint): --resume {tmp_path}\n" in (
        capsys.readouterr().err
    )
    assert main(["train", "--resume", str(tmp_path / "typo")]) == 2
    assert f"--resume {tmp_path / 'typo'} does not exist" in capsys.readouterr().err
    (tmp_path / "elsewhere").mkdir()  # a folder that is no run: was untested
    assert main(["train", "--resume", str(tmp_path / "elsewhere")]) == 2
    err = capsys.readouterr().err
    assert f"{tmp_path / 'elsewhere'} is not a run directory (no config.yaml); check the --resume path" in err
    assert "Traceback" not in err


def test_resume_of_a_run_stopped_before_its_first_checkpoint_says_to_start_it_with_its_config(
    tmp_path: Path, capsys
) -> None:
    """The advice was `start the run with --output-dir RUN`, which trains the default preset, not the run's config."""
    (tmp_path / "config.yaml").write_text("{}\n")
    assert main(["train", "--resume", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert f"{tmp_path} has no checkpoint to resume from (it stopped before writing its first)" in err
    assert f"sparse-detector train --config {tmp_path / 'config.yaml'} --output-dir {tmp_path}\n" in err


@pytest.mark.parametrize("command", ["train", "evaluate", "analyze", "quickstart", "study"])
def test_every_long_running_command_takes_no_progress(command: str) -> None:
    required = {"evaluate": ["--checkpoint", "r"], "analyze": ["--checkpoint", "r"], "study": ["s"]}
    assert build_parser().parse_args([command, *required.get(command, []), "--no-progress"]).no_progress


def test_train_summary_shows_the_global_batch_of_several_processes() -> None:
    from sparse_detector.cli.summaries import _batch_text

    assert _batch_text(4, 1) == "4"
    assert _batch_text(4, 2) == "4 per process x 2 = 8"


@pytest.mark.parametrize("command", ["evaluate", "analyze"])
def test_evaluate_and_analyze_refuse_model_settings_they_would_ignore(command: str, capsys) -> None:
    assert (
        main([command, "--checkpoint", "runs/mine", "--set", "model.attention.decoder_cross.activation=sparsemax"]) == 2
    )
    err = capsys.readouterr().err  # was accepted and ignored: the checkpoint's model is built from its own config
    assert "--set model.attention.decoder_cross.activation: the model is the checkpoint's" in err


def test_resume_with_init_from_is_refused_not_ignored(capsys) -> None:
    assert main(["train", "--resume", "runs/mine", "--init-from", "other.pt"]) == 2
    assert "--init-from starts a new run from other weights, --resume continues runs/mine" in capsys.readouterr().err


def test_resume_with_a_config_is_refused_not_ignored(capsys) -> None:
    assert main(["train", "--resume", "runs/mine", "--config", "my.yaml"]) == 2
    assert "--resume continues runs/mine with its own config.yaml; --config is for a new run" in capsys.readouterr().err
    # --output-dir and --set train.output_dir were ignored: the run went on in runs/mine
    assert main(["train", "--resume", "runs/mine", "--output-dir", "runs/other"]) == 2
    assert "--resume continues runs/mine in its own directory; --output-dir runs/other is for a new run" in (
        capsys.readouterr().err
    )
    assert main(["train", "--resume", "runs/mine", "--set", "train.output_dir=runs/other"]) == 2
    assert "--set train.output_dir=runs/other: a resumed run stays in its directory" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("mistake", "message"),
    [(["--set", "train.epoch=1"], "unknown config key train.epoch"), (["--device", "cuda:7"], "--device: 'cuda:7'")],
)
def test_quickstart_checks_its_settings_before_generating_images(tmp_path: Path, capsys, mistake, message) -> None:
    """A --set typo or a missing device stopped quickstart only after it had generated 1400 images."""
    run_dir = tmp_path / "quick"
    assert main(["quickstart", "--output-dir", str(run_dir), *mistake]) == 2
    assert message in capsys.readouterr().err and not run_dir.exists()


def test_quickstart_fetches_pretrained_weights_before_generating_images(tmp_path: Path, capsys, monkeypatch) -> None:
    """`quickstart --config detr_r50` without internet generated the data set, then failed on the backbone's ImageNet
    weights, leaving the images behind."""
    from urllib.error import URLError

    from torchvision.models import WeightsEnum

    def offline(self, *args, **kwargs):
        raise URLError("Name or service not known")

    monkeypatch.setattr(WeightsEnum, "get_state_dict", offline)
    run_dir = tmp_path / "quick"
    assert main(["quickstart", "--config", "detr_r50", "--output-dir", str(run_dir), "--num-train", "2"]) == 2
    err = capsys.readouterr().err
    assert "could not load ImageNet weights for resnet50 (<urlopen error Name or service not known>)" in err
    assert "copy https://download.pytorch.org/models/resnet50-0676ba61.pth into " in err
    assert "model.backbone.pretrained=false" in err and not run_dir.exists()


def test_quickstart_into_a_finished_one_stops_before_generating_images(tmp_path: Path, capsys) -> None:
    """A second `quickstart --output-dir q` generated its data set over again, then failed with 'continue it with
    --resume q/train', an option quickstart does not have."""
    run = tmp_path / "quick" / "train"
    run.mkdir(parents=True)
    (run / "checkpoint_last.pt").write_bytes(b"")
    assert main(["quickstart", "--output-dir", str(tmp_path / "quick")]) == 2
    err = capsys.readouterr().err
    assert f"already holds a quickstart run ({run}); choose another --output-dir" in err
    assert f"sparse-detector train --resume {run} --set train.epochs=N" in err
    assert not (tmp_path / "quick" / "data").exists()


def test_quickstart_names_the_run_directory_the_other_commands_take(tmp_path: Path, capsys, monkeypatch) -> None:
    import sparse_detector.cli.quickstart as quickstart
    import sparse_detector.engine.trainer as trainer_module

    class FinishedTrainer(trainer_module.Trainer):
        def fit(self) -> dict:
            return {"AP50": 0.5, "AP": 0.25}

    clock = [0.0]  # the quickstart's own clock: the figures take 3 minutes of it
    monkeypatch.setattr(quickstart, "time", SimpleNamespace(perf_counter=lambda: clock[0], strftime=time.strftime))
    monkeypatch.setattr(trainer_module, "Trainer", FinishedTrainer)
    monkeypatch.setattr(quickstart, "_quickstart_figures", lambda run_dir, config: clock.__setitem__(0, 180.0))
    run = tmp_path / "qs"
    assert main(["quickstart", "--num-train", "4", "--num-val", "2", "--output-dir", str(run), "--no-progress"]) == 0
    out = capsys.readouterr().out
    # was: 'run directory: qs', which evaluate --checkpoint refused (the checkpoints are in qs/train)
    assert f"run directory: {run / 'train'} (for evaluate" in out
    assert "AP50 0.500, AP 0.250 on 2 held-out generated images" in out
    # the time it printed was taken before the figures were drawn (and after torch was imported): was 0.0 min here
    assert out.rstrip().endswith("quickstart finished in 3.0 min")
    # config.yaml is the effective config: it said the preset's output_dir (runs/shapes_tiny), not the run's
    assert load_config(run / "train" / "config.yaml").train.output_dir == str(run / "train")
    data = [f"data.{split}.images={run / 'data' / 'images'}" for split in ("train", "val")]
    data += [f"data.{split}.annotations={run / 'data' / 'annotations' / f'{split}.json'}" for split in ("train", "val")]
    assert main(["train", "--output-dir", str(tmp_path / "mine"), "--no-progress", "--set", *data]) == 0
    assert load_config(tmp_path / "mine" / "config.yaml").train.output_dir == str(tmp_path / "mine")


def test_quickstart_stopped_by_a_signal_says_how_to_resume(tmp_path: Path, capsys, monkeypatch) -> None:
    import signal

    import sparse_detector.engine.trainer as trainer_module

    class SignalledTrainer(trainer_module.Trainer):
        def fit(self) -> dict:  # as a SIGTERM during the first step leaves it: no evaluation, stop_signal set
            self.stop_signal = signal.SIGTERM
            return {}

    monkeypatch.setattr(trainer_module, "Trainer", SignalledTrainer)
    run = tmp_path / "qs"
    assert main(["quickstart", "--num-train", "4", "--num-val", "2", "--output-dir", str(run), "--no-progress"]) == 0
    out = capsys.readouterr().out  # was: KeyError 'AP50' traceback
    assert (
        "stopped by SIGTERM at epoch 1, step 0" in out
        and f"resume with: sparse-detector train --resume {run / 'train'}" in out
    )
    assert not (run / "figures").exists()


@pytest.mark.parametrize("command", [c for c in subcommands(build_parser()) if c[0] in ("train", "study", "evaluate")])
def test_repeated_set_options_all_apply(command: tuple[str, ...]) -> None:
    """`--set train.epochs=1 --set train.batch_size=2` used to keep only the last --set: the run silently trained the
    preset's 12 epochs."""
    positional = ["shapes_maps"] if command == ("study",) else []
    required = ["--checkpoint", "runs/x"] if command == ("evaluate",) else []
    args = build_parser().parse_args(
        [*command, *positional, *required, "--set", "train.epochs=1", "--set", "a.b=2", "c.d=3"]
    )
    assert args.set == ["train.epochs=1", "a.b=2", "c.d=3"]


@pytest.mark.parametrize("command", subcommands(build_parser()))
def test_debug_is_taken_after_the_command_too(command: tuple[str, ...]) -> None:
    """Errors end '(run with --debug ...)', but `train ... --debug` was 'unrecognized arguments: --debug'."""
    parser = build_parser()
    for name in command:
        parser = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices[name]
    assert "--debug" in [option for action in parser._actions for option in action.option_strings]
    if command == ("train",):
        assert build_parser().parse_args(["train", "--debug"]).debug
        assert build_parser().parse_args(["--debug", "train"]).debug
        assert not build_parser().parse_args(["train"]).debug


def test_output_read_by_a_reader_that_stops_early_ends_quietly(tmp_path: Path) -> None:
    """`sparse-detector data import ... | head -1` printed 'error: [Errno 32] Broken pipe' (exit status 2), or
    Python's 'Exception ignored ... BrokenPipeError' at exit; now it stops as a command killed by SIGPIPE does."""
    read_end, write_end = os.pipe()
    os.close(read_end)  # the reader has gone before the first line
    argv = [sys.executable, "-m", "sparse_detector", "data", "shapes", str(tmp_path / "shapes"), "--num-images", "2"]
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1] / "src")}
    result = subprocess.run(argv, stdout=write_end, stderr=subprocess.PIPE, text=True, env=env, timeout=120)
    os.close(write_end)
    assert (result.returncode, result.stderr) == (128 + signal.SIGPIPE, "")


def test_a_stop_at_the_end_of_an_epoch_names_that_epoch() -> None:
    """A signal during an epoch's last step or its validation stops after the epoch's checkpoint: the message said
    'at epoch 13' (the next one, not begun) where epoch 12 had just ended."""
    from sparse_detector.cli.summaries import stopped_message

    def message(epoch: int, progress: dict) -> str:
        trainer = SimpleNamespace(
            stop_signal=signal.SIGTERM, dist=SimpleNamespace(world_size=1), epoch=epoch, step=120,
            epoch_progress=progress, last_checkpoint="run/checkpoint_last.pt",
        )  # fmt: skip
        return stopped_message(trainer, Path("run")).splitlines()[0]

    assert (
        message(12, {})
        == "stopped by SIGTERM at the end of epoch 12, step 120; checkpoint written: run/checkpoint_last.pt"
    )
    assert message(12, {"steps": 3}).startswith("stopped by SIGTERM at epoch 13, step 120;")
    assert message(0, {}).startswith("stopped by SIGTERM at epoch 1, step 120;")  # stopped before any step


def test_quickstart_end_to_end_draws_the_attention_of_held_out_images(tmp_path: Path, capsys) -> None:
    """The main job, small: shapes data -> one epoch of a tiny DETR -> AP -> its attention figures (the last step,
    otherwise replaced in these tests) drawn in <output-dir>/figures and counted."""
    run = tmp_path / "qs"
    small = ["train.epochs=1", "data.train_scales=[96]", "data.val_size=96", *SMALL_MODEL]
    argv = ["quickstart", "--num-train", "4", "--num-val", "2", "--output-dir", str(run), "--no-progress"]
    assert main([*argv, "--set", *small]) == 0
    out = capsys.readouterr().out
    figures = sorted(p.name for p in (run / "figures").glob("*.png"))
    assert len(figures) == 2 and all(
        re.fullmatch(r"attention_decoder_cross_val_00000[01]_q\d\.png", f) for f in figures
    )
    assert f"(up to 3 queries scoring >= 0.5 each, else the best one): 2 figures in {run / 'figures'}/" in out
