"""The study runner end to end on a minimal matrix: runs, resume without redoing, failures reported, report links."""

from __future__ import annotations

import json
import os
import re
import shutil
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml

from sparse_detector.cli import main
from sparse_detector.config import ConfigError
from sparse_detector.engine.checkpoint import load_checkpoint
from sparse_detector.report.study import AP_COLUMNS, study_tables, study_title, write_study_report
from sparse_detector.runs import ANALYSIS_DIRS, ANALYSIS_FILE
from sparse_detector.study import STATUS_FILE, RunOutcome, _analysis_current, load_study
from sparse_detector.viz.kinds import FIGURE_KINDS

from .conftest import SMALL_MODEL

MINIMAL_STUDY = {
    "preset": "shapes_tiny",
    "shapes": {"train": 8, "val": 3, "seed": 0, "image_size": 96, "min_size": 20, "max_size": 40},
    "set": [
        *SMALL_MODEL,
        "train.epochs=1",
        "train.max_steps_per_epoch=1",
        "data.train_scales=[96]",
        "data.val_size=96",
    ],
    "maps": {
        "softmax": [],
        "sparsemax": ["model.attention.decoder_cross.activation=sparsemax"],
        "unlucky": ["train.seed=1"],  # trains with the others; made to fail in training where a test needs a failure
    },
    "seeds": [0],
    "figure_images": 1,
}


def figure_files(study_dir: Path) -> set[str]:
    return {p.relative_to(study_dir).as_posix() for p in study_dir.rglob("figures/*.png")}


def test_study_runs_resumes_and_reports(tmp_path: Path, capsys, monkeypatch):
    import sparse_detector.study as study_module

    def train_failing_unlucky(config, run_dir: Path, progress: bool, name: str) -> bool:
        if name.startswith("unlucky"):
            run_dir.mkdir(parents=True, exist_ok=True)
            raise RuntimeError("the unlucky run's training failed")
        return train(config, run_dir, progress, name)

    train = study_module._train
    monkeypatch.setattr(study_module, "_train", train_failing_unlucky)
    config = tmp_path / "study.yaml"
    config.write_text(yaml.safe_dump(MINIMAL_STUDY))
    study_dir = tmp_path / "study"
    # the report is written, and the exit status says it lacks a run (it was 0, as if the study were complete)
    assert main(["study", str(config), "--output-dir", str(study_dir), "--no-progress"]) == 1
    first, second = study_dir / "runs" / "softmax-seed0", study_dir / "runs" / "sparsemax-seed0"
    out, err = capsys.readouterr()
    assert "2 of 3 runs done" in out and "error: the report lacks unlucky-seed0 (see report.md for why)" in err

    report = (study_dir / "report.md").read_text()
    figures = figure_files(study_dir)
    assert {"figures/curves.png", "figures/sparsity.png"} <= figures
    assert any(name.startswith("runs/sparsemax-seed0/figures/attention_") for name in figures)
    # named by the validation image's file (was matching_image1.png, compare_decoder_cross_image1.png)
    assert {"runs/sparsemax-seed0/figures/matching_val_000000.png", "figures/compare_decoder_cross_val_000000.png"} <= (
        figures
    )
    linked = set(re.findall(r"!\[[^\]]*\]\(([^)]+)\)", report))
    assert linked == figures, "the report links every figure, and only existing ones"
    html = (study_dir / "report.html").read_text()
    assert html.count('src="data:image/png;base64,') == len(figures), "report.html embeds every figure"
    assert "unlucky-seed0" in report and "training failed" in report, "the failed run is reported with its error"
    assert "| softmax | 1 |" in report and "| sparsemax | 1 |" in report

    # Delete the first run half-way (its analysis, figures and status) and the figures of the second (done before),
    # then run the study again: the report is complete again, its figures redrawn.
    shutil.rmtree(first / "analysis")
    shutil.rmtree(first / "figures")
    (first / STATUS_FILE).unlink()
    shutil.rmtree(second / "figures")
    kept = [second / "checkpoint_last.pt", second / "analysis" / "analysis.json"]
    mtimes = {path: path.stat().st_mtime_ns for path in kept}
    trained = (first / "checkpoint_last.pt").stat().st_mtime_ns

    def no_matching(request) -> None:  # a run's figure that applies yet fails (was: left out, said nowhere)
        if request.runs[0] == first:
            raise ValueError("no matching today")
        return matching(request)

    matching = FIGURE_KINDS["matching"]
    with monkeypatch.context() as patched:  # a figure that fails costs neither the report, its run nor the others
        patched.setitem(FIGURE_KINDS, "compare", lambda request: 1 / 0)
        patched.setitem(FIGURE_KINDS, "matching", no_matching)
        assert main(["study", str(config), "--output-dir", str(study_dir), "--no-progress"]) == 1
    out, err = capsys.readouterr()
    assert "unlucky-seed0; figure compare: ZeroDivisionError" in err
    assert "; figure softmax-seed0 matching: ValueError: no matching today" in err
    assert "[study] softmax-seed0: figure matching NOT DRAWN: ValueError: no matching today" in out
    assert json.loads((first / STATUS_FILE).read_text())["status"] == "done"
    report = (study_dir / "report.md").read_text()
    assert "**Not drawn**: softmax-seed0 matching: ValueError: no matching today" in report
    assert "Not drawn: softmax-seed0 matching: ValueError: no matching today" in (study_dir / "report.html").read_text()
    # alpha and diagnostics do not apply to these runs (no learnable α, none recorded): skipped, not failures
    assert report.count("**Not drawn**") == 2 and not any("alpha_" in name for name in figure_files(study_dir))
    assert "sparsemax-seed0: done before, kept (its figures redrawn)" in out
    assert "[study] figure compare NOT DRAWN: ZeroDivisionError" in out
    assert all(path.stat().st_mtime_ns == mtime for path, mtime in mtimes.items()), "a finished run is not redone"
    assert (first / "checkpoint_last.pt").stat().st_mtime_ns == trained, "finished training is not redone"
    assert (first / "analysis" / "analysis.json").is_file() and (first / "figures").is_dir()
    assert any(name.startswith("runs/sparsemax-seed0/figures/attention_") for name in figure_files(study_dir))
    report = (study_dir / "report.md").read_text()
    assert set(re.findall(r"!\[[^\]]*\]\(([^)]+)\)", report)) == figure_files(study_dir) - {
        p for p in figure_files(study_dir) if p.startswith("figures/compare_")
    }, "was: the kept run's figures, deleted, were still linked and not redrawn"
    assert "**Not drawn**: compare: ZeroDivisionError" in report and "| sparsemax | 1 |" in report

    # Asked for more epochs, a finished run trains on; asked for other settings, it is not mixed into the report.
    more = ["study", str(config), "--output-dir", str(study_dir), "--no-progress", "--set", "train.epochs=2"]
    assert main(more) == 1  # the unlucky run fails again
    assert "sparsemax-seed0: done before; train.epochs: 1 -> 2: continuing it" in capsys.readouterr().out
    assert load_checkpoint(second / "checkpoint_last.pt")["epoch"] == 2
    assert main([*more, "optim.lr=1e-5"]) == 1
    assert (
        "sparsemax-seed0: NOT REDONE: done before with other settings than this study's (optim.lr: 0.0002 -> 1e-05)"
        in (capsys.readouterr().out)
    )
    assert "| sparsemax | 1 |" not in (study_dir / "report.md").read_text()


def test_a_moved_study_keeps_its_analyses(tmp_path: Path):
    """analysis.json stores the checkpoint's path at analysis time; once the study folder was moved that path led
    nowhere, so every finished run was analysed again. Its checkpoint is found in the run directory now, as compare
    finds it (runs.where_its_checkpoint_is)."""
    run = tmp_path / "study" / "runs" / "softmax-seed0"
    (run / ANALYSIS_DIRS[False]).mkdir(parents=True)
    (run / "checkpoint_best.pt").write_bytes(b"weights")
    analysis = run / ANALYSIS_DIRS[False] / ANALYSIS_FILE
    analysis.write_text(json.dumps({"checkpoint": str(run / "checkpoint_best.pt")}))
    os.utime(run / "checkpoint_best.pt", (1_000_000_000, 1_000_000_000))  # trained before it was analysed
    assert _analysis_current(run)
    moved = tmp_path / "elsewhere" / "study"
    moved.parent.mkdir()
    (tmp_path / "study").rename(moved)
    assert _analysis_current(moved / "runs" / "softmax-seed0")
    os.utime(moved / "runs" / "softmax-seed0" / "checkpoint_best.pt")  # trained on after the analysis: redone
    os.utime(moved / "runs" / "softmax-seed0" / analysis.relative_to(run), (1_000_000_000, 1_000_000_000))
    assert not _analysis_current(moved / "runs" / "softmax-seed0")


def test_a_moved_study_with_generated_data_goes_on_where_it_is(tmp_path: Path, capsys):
    """A study generates its shapes data into <study>/data, and its runs' configs named it absolute: once the study
    folder was moved, running it again marked every run 'NOT REDONE: done before with other settings' (its data paths
    old -> new), and a kept run's analysis and figures would still have read the data where it was."""
    config, study = tmp_path / "study.yaml", {**MINIMAL_STUDY, "maps": {"softmax": []}}
    config.write_text(yaml.safe_dump(study))
    assert main(["study", str(config), "--output-dir", str(tmp_path / "study"), "--no-progress"]) == 0
    moved = tmp_path / "elsewhere" / "renamed"
    moved.parent.mkdir()
    (tmp_path / "study").rename(moved)
    run = moved / "runs" / "softmax-seed0"
    kept = [run / "checkpoint_last.pt", run / ANALYSIS_DIRS[False] / ANALYSIS_FILE]
    mtimes = {path: path.stat().st_mtime_ns for path in kept}
    shutil.rmtree(run / "figures")  # drawn again from the data where it is now
    config.write_text(yaml.safe_dump({**study, "seeds": [0, 1]}))
    capsys.readouterr()
    assert main(["study", str(config), "--output-dir", str(moved), "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "softmax-seed0: done before, kept (its figures redrawn)" in out and "softmax-seed1: training in" in out
    assert all(path.stat().st_mtime_ns == mtime for path, mtime in mtimes.items()), "neither trained nor analysed again"
    figures = figure_files(moved)
    assert {
        "figures/curves.png",
        "figures/sparsity.png",
        "runs/softmax-seed0/figures/matching_val_000000.png",
    } <= figures
    assert "runs/softmax-seed1/figures/matching_val_000000.png" in figures
    assert "| softmax | 2 |" in (moved / "report.md").read_text()


def test_a_run_s_minutes_add_up_over_invocations_failed_ones_too(tmp_path: Path, monkeypatch):
    """The report's "minutes (all invocations)" dropped the time of an invocation whose run failed (e.g. in
    training) when a later one finished it: 1 min instead of 2 here."""
    import sparse_detector.study as study_module

    clock, attempts = [0.0], []

    def train_a_minute_failing_first(config, run_dir: Path, progress: bool, name: str) -> bool:
        run_dir.mkdir(parents=True, exist_ok=True)
        clock[0] += 60.0
        attempts.append(name)
        if len(attempts) == 1:
            raise RuntimeError("out of memory")
        return True

    monkeypatch.setattr(study_module, "time", SimpleNamespace(perf_counter=lambda: clock[0], time=lambda: clock[0]))
    monkeypatch.setattr(study_module, "run_config", lambda *args: SimpleNamespace(train=SimpleNamespace(device="")))
    monkeypatch.setattr(study_module, "_train", train_a_minute_failing_first)
    monkeypatch.setattr(study_module, "analyze_run", lambda *args: None)
    monkeypatch.setattr(study_module, "_run_figures", lambda *args: ([], None, []))
    outcomes = [study_module._run_one(None, "softmax", 0, tmp_path, [], "", False) for _ in range(2)]
    assert [(o.status, o.seconds) for o in outcomes] == [("failed", 60.0), ("done", 120.0)]
    assert study_tables(outcomes[1:])["Runs"][1][0][2] == "2.0"  # the report's minutes


def test_a_run_killed_while_training_counts_its_minutes_and_is_not_done(tmp_path: Path, monkeypatch):
    """A study killed with SIGKILL (or out of memory) while training a run lost that invocation's time: the run's
    time was recorded only when the invocation was done with it, so the report's "minutes (all invocations)" said 2.0
    after 1 min + 1 min (killed) + 1 min. And a finished run asked for more epochs, killed while training on, kept its
    'done' status: the next invocation said 'done before, kept' and reported it at the epoch it was killed in. Its
    status now says 'running' from the start, and the next invocation counts the killed one's time up to the run
    directory's last write and trains the run on."""
    import sparse_detector.study as study_module

    clock, trained = [time.time()], []
    run_dir = tmp_path / "runs" / "softmax-seed0"
    run_dir.mkdir(parents=True)
    (run_dir / STATUS_FILE).write_text(json.dumps({"status": "done", "seconds": 60.0}))  # a first invocation

    def killed_after_a_minute(config, run_dir: Path, progress: bool, name: str) -> bool:
        clock[0] += 60.0
        (run_dir / "metrics.jsonl").write_text("{}\n")  # the last thing the killed process wrote
        os.utime(run_dir / "metrics.jsonl", (clock[0], clock[0]))
        raise SystemExit(-9)  # (SIGKILL runs no handler: nothing after this point may count)

    def a_minute(config, run_dir: Path, progress: bool, name: str) -> bool:
        clock[0] += 60.0
        trained.append(name)
        return True

    more_epochs = (["train.epochs: 1 -> 2"], True)
    monkeypatch.setattr(study_module, "time", SimpleNamespace(perf_counter=lambda: clock[0], time=lambda: clock[0]))
    monkeypatch.setattr(study_module, "run_config", lambda *args: SimpleNamespace(train=SimpleNamespace(device="")))
    monkeypatch.setattr(study_module, "_changed_settings", lambda *args: more_epochs)
    monkeypatch.setattr(study_module, "_train", killed_after_a_minute)
    with pytest.raises(SystemExit):
        study_module._run_one(None, "softmax", 0, tmp_path, [], "", False)
    assert json.loads((run_dir / STATUS_FILE).read_text())["status"] == "running"

    monkeypatch.setattr(study_module, "_changed_settings", lambda *args: ([], False))  # its config.yaml says 2 now
    monkeypatch.setattr(study_module, "_train", a_minute)
    monkeypatch.setattr(study_module, "analyze_run", lambda *args: None)
    monkeypatch.setattr(study_module, "_run_figures", lambda *args: ([], None, []))
    outcome = study_module._run_one(None, "softmax", 0, tmp_path, [], "", False)
    assert trained == ["softmax-seed0"], "the unfinished run is trained on, not kept as done"
    assert (outcome.status, outcome.seconds) == ("done", 180.0)
    assert json.loads((run_dir / STATUS_FILE).read_text())["seconds"] == 180.0

    # killed again while its figures were redrawn, then asked with other settings: not mixed into the report
    def killed_while_drawing(*args):
        raise SystemExit(-9)

    monkeypatch.setattr(study_module, "_run_figures", killed_while_drawing)
    with pytest.raises(SystemExit):
        study_module._run_one(None, "softmax", 0, tmp_path, [], "", False)
    monkeypatch.setattr(study_module, "_changed_settings", lambda *args: (["optim.lr: 0.0002 -> 1e-05"], False))
    outcome = study_module._run_one(None, "softmax", 0, tmp_path, [], "", False)
    assert (outcome.status, outcome.stage) == ("failed", "config") and "optim.lr: 0.0002 -> 1e-05" in outcome.error
    # its minutes (all invocations) are still the run's: the report said 0.0 for a run that had taken 3 min and more
    assert outcome.seconds >= 180.0


@pytest.mark.parametrize(
    "setting, rejected",
    [
        ("model.attention.decoder_cross.activation=nope", "unknown attention activation 'nope'"),
        ("model.attention.no_such_site.activation=softmax", "no such attention site"),
        ("model.transformer.nheads=3", "must be a positive multiple"),
        ("train.device=cuda:7", "train.device: 'cuda:7' asked for, but"),  # was: every run failed alike, exit 0
    ],
)
def test_a_map_with_rejected_settings_stops_the_study_before_any_run_trains(
    tmp_path: Path, capsys, setting: str, rejected: str
):
    config = tmp_path / "study.yaml"
    config.write_text(yaml.safe_dump({**MINIMAL_STUDY, "maps": {"softmax": [], "bad": [setting]}}))
    study_dir = tmp_path / "study"
    assert main(["study", str(config), "--output-dir", str(study_dir), "--no-progress"]) == 2
    out, err = capsys.readouterr()
    assert f"map 'bad' (['{setting}'])" in err and rejected in err and "nothing was trained" in err
    assert "training in" not in out and not study_dir.exists(), "was: the softmax run trained before 'bad' failed"


@pytest.mark.parametrize(
    ("change", "rejected"),
    [
        ({"preset": "shapes_tiy"}, "config 'shapes_tiy' is neither a file nor a preset (did you mean shapes_tiny?)"),
        ({"set": ["train.batchsize=2"]}, "unknown config key train.batchsize (did you mean train.batch_size?)"),
    ],
)
def test_a_mistake_in_the_preset_or_shared_settings_is_not_blamed_on_a_map(
    tmp_path: Path, capsys, change: dict, rejected: str
):
    """A misspelt preset or shared setting was reported as map 'softmax' (the first map)'s, sending the user there."""
    config = tmp_path / "study.yaml"
    config.write_text(yaml.safe_dump({**MINIMAL_STUDY, **change}))
    assert main(["study", str(config), "--output-dir", str(tmp_path / "study"), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert f"study.yaml: preset '{change.get('preset', 'shapes_tiny')}' with set [" in err and rejected in err
    assert "map 'softmax'" not in err and "nothing was trained" in err


def test_study_config_errors_name_the_problem(tmp_path: Path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"preset": "shapes_tiny", "maps": {"a": []}, "seedz": [0]}))
    with pytest.raises(ConfigError, match=re.escape("unknown study keys ['seedz'] (did you mean 'seeds'?)")):
        load_study(bad)
    mistakes = {  # were tracebacks, or an override read as its characters ('t' must look like key.sub=value)
        "seeds: 0": "seeds: expected a list, got 0",
        "set: train.epochs=1": "set: expected a list, got 'train.epochs=1'",
        "figure_images: abc": "figure_images: expected int, got 'abc'",
        "shapes: {train: 10}": "shapes needs val",
        "shapes: {train: 10, val: 2, size: 64}": "shapes: unknown option 'size'; give train, val, seed or one of",
    }
    for line, message in mistakes.items():
        bad.write_text(f"preset: shapes_tiny\nmaps: {{a: }}\n{line}\n")
        with pytest.raises(ConfigError, match=re.escape(f"bad.yaml: {message}")):
            load_study(bad)
    bad.write_text("preset: shapes_tiny\nmaps: {a: }\nshapes: {train: 10, val: 2, image_size: 64}\n")
    assert load_study(bad).maps == {"a": []} and load_study(bad).shapes == {"train": 10, "val": 2, "image_size": 64}
    bad.write_text("preset: shapes_tiny\nmaps:\n  a: [\n")
    with pytest.raises(ConfigError, match="bad.yaml, line 4, column 1: not valid YAML"):
        load_study(bad)
    with pytest.raises(ConfigError, match="embedded: \\['shapes_maps'\\]"):
        load_study("no_such_study")
    with pytest.raises(ConfigError, match=re.escape("embedded study (did you mean 'shapes_maps'?)")):
        load_study("shapes_map")
    assert load_study("shapes_maps").maps.keys() == {"softmax", "sparsemax", "entmax15", "alpha_entmax"}


def test_a_signal_stops_the_study_and_leaves_its_run_unfinished(tmp_path: Path, capsys, monkeypatch):
    import signal

    import sparse_detector.study as study_module

    class SignalledTrainer(study_module.Trainer):
        def fit(self) -> None:  # as a SIGTERM during the first step would leave it: stop_signal set
            self.stop_signal = signal.SIGTERM

    monkeypatch.setattr(study_module, "Trainer", SignalledTrainer)
    config = tmp_path / "study.yaml"
    config.write_text(yaml.safe_dump(MINIMAL_STUDY))
    study_dir = tmp_path / "study"
    assert main(["study", str(config), "--output-dir", str(study_dir), "--no-progress"]) == 0
    out = capsys.readouterr().out  # was: the run analysed and marked done, then the next run trained
    assert "softmax-seed0 stopped by SIGTERM at step 0, its checkpoint written; run the same study command again" in out
    assert "sparsemax-seed0" not in out and not (study_dir / "report.md").exists()
    status = json.loads((study_dir / "runs" / "softmax-seed0" / STATUS_FILE).read_text())
    assert (status["status"], status["stage"]) == ("stopped", "train")  # its time kept, and not done


def test_report_states_the_zeros_ratio_threshold_of_every_map(tmp_path: Path):
    """The report's attention table set softmax's zeros ratio (p <= 1e-6) beside sparsemax's (p <= 0) with no
    threshold anywhere; a threshold shared by every map now names the column, one that differs follows the value."""
    stats = {"per_layer": {"mean": [0.5], "std": [0.0], "count": [4]}}

    def outcome(name: str, cross_threshold: float) -> RunOutcome:
        sites = {
            site: {"metrics": {"gini": stats, "zeros_ratio": stats}, "zero_threshold": threshold, "paibb": None}
            for site, threshold in (("encoder_self", 1e-6), ("decoder_cross", cross_threshold))
        }
        folder = tmp_path / name / ANALYSIS_DIRS[False]
        folder.mkdir(parents=True)
        (folder / ANALYSIS_FILE).write_text(
            json.dumps({"ap": dict.fromkeys(AP_COLUMNS, 0.1), "attention": {"sites": sites}})
        )
        return RunOutcome(f"{name}-seed0", name, 0, tmp_path / name, "done")

    tables = study_tables([outcome("softmax", 1e-6), outcome("sparsemax", 0.0)])
    header, rows, _ = next(table for heading, table in tables.items() if heading.startswith("Attention"))
    assert "encoder_self zeros ratio (p ≤ 1e-06)" in header and "decoder_cross zeros ratio" in header
    cross = header.index("decoder_cross zeros ratio")
    assert [row[cross] for row in rows] == ["0.500 (p ≤ 1e-06)", "0.500 (p ≤ 0)"]
    assert rows[0][header.index("encoder_self zeros ratio (p ≤ 1e-06)")] == "0.500"


def test_report_shows_small_nonzero_means_and_stds_over_seeds_as_measured(tmp_path: Path):
    """A map whose seeds reached AP 0.0004, 0.0001 and 0.0002 read "0.000 ± 0.000" in report.md, as if every seed had
    found nothing and all agreed: a nonzero mean or sample std now keeps two significant digits."""
    aps = [0.0004, 0.0001, 0.0002]
    outcomes = []
    for seed, ap in enumerate(aps):
        folder = tmp_path / f"softmax-seed{seed}" / ANALYSIS_DIRS[False]
        folder.mkdir(parents=True)
        (folder / ANALYSIS_FILE).write_text(
            json.dumps({"ap": {**dict.fromkeys(AP_COLUMNS, 0.5), "AP": ap}, "attention": {"sites": {}}})
        )
        outcomes.append(RunOutcome(f"softmax-seed{seed}", "softmax", seed, folder.parent, "done"))
    header, rows, _ = study_tables(outcomes)["Detection (COCO on the held-out data, best checkpoint)"]
    mean, std = (float(text) for text in rows[0][header.index("AP")].split(" ± "))
    by_hand = sum(aps) / 3, (sum((ap - sum(aps) / 3) ** 2 for ap in aps) / 2) ** 0.5  # sample std: n - 1
    assert mean == pytest.approx(by_hand[0], rel=0.05) and std == pytest.approx(by_hand[1], rel=0.05)
    assert rows[0][header.index("AP50")] == "0.500 ± 0.000"  # seeds that agree exactly still read 0.000


def test_report_title_of_a_plain_study_yaml_reads_well():
    """A study file named study.yaml gave the report the heading "Study study: softmax, sparsemax × seeds [0]"."""
    plain = SimpleNamespace(source="runs/x/study.yaml", maps=["softmax", "sparsemax"], seeds=[0])
    assert study_title(plain) == "Study: softmax, sparsemax × seeds [0]"
    assert study_title(SimpleNamespace(**{**vars(plain), "source": "ablation.yaml"})).startswith("Study ablation: ")


def test_the_html_report_shows_code_spans_as_code(tmp_path: Path):
    """report.html printed the intro's Markdown backticks: "Preset `shapes_tiny`, overrides `train.epochs=1`"."""
    study = SimpleNamespace(source="s.yaml", maps={}, seeds=[0], preset="shapes_tiny", set=["train.epochs=1"])
    write_study_report(tmp_path, study, [], [], 0.1)
    page = (tmp_path / "report.html").read_text()
    assert "Preset <code>shapes_tiny</code>, overrides <code>train.epochs=1</code>;" in page and "`" not in page
    assert "Preset `shapes_tiny`, overrides `train.epochs=1`;" in (tmp_path / "report.md").read_text()


def test_report_says_what_each_map_sets(tmp_path: Path):
    """The report named the maps ("sparse") in every table but never said what they set, so a map that changed two
    sites read as one; a Maps table now lists each map's overrides, in both reports."""
    maps = {
        "softmax": [],
        "sparse": ["model.attention.decoder_cross.activation=sparsemax", "model.attention.decoder_self.alpha_init=1.3"],
    }
    study = SimpleNamespace(source="s.yaml", maps=maps, seeds=[0], preset="shapes_tiny", set=[])
    write_study_report(tmp_path, study, [], [], 0.1)
    markdown = (tmp_path / "report.md").read_text()
    assert (
        "## Maps\n\n| map | settings |\n|---|---|\n| softmax | (none) |\n"
        "| sparse | model.attention.decoder_cross.activation=sparsemax model.attention.decoder_self.alpha_init=1.3 |"
    ) in markdown
    page = (tmp_path / "report.html").read_text()
    assert (
        "<h2>Maps</h2><table><thead><tr><th>map</th><th>settings</th></tr></thead><tbody>"
        "<tr><td>softmax</td><td>(none)</td></tr><tr><td>sparse</td><td>model.attention.decoder_cross.activation="
        "sparsemax model.attention.decoder_self.alpha_init=1.3</td></tr></tbody></table>"
    ) in page.replace("\n", "")


def test_report_marks_paibb_of_sampling_points_beside_grid_mass(tmp_path: Path):
    """The attention table set a DETR map's PAIBB (attention mass over the feature grid) and a Deformable DETR map's
    (weight of the sampling points inside the box) in one column with no note; the points' values are now marked and
    the table's note says they are not comparable, in the figures' words."""
    stats = {"per_layer": {"mean": [0.5], "std": [0.0], "count": [4]}}

    def outcome(name: str, keys: str) -> RunOutcome:
        site = {"metrics": {"gini": stats}, "zero_threshold": 0.0, "keys": keys, "paibb": {"overall": stats}}
        folder = tmp_path / name / ANALYSIS_DIRS[False]
        folder.mkdir(parents=True)
        record = {"ap": dict.fromkeys(AP_COLUMNS, 0.1), "attention": {"sites": {"decoder_cross": site}}}
        (folder / ANALYSIS_FILE).write_text(json.dumps(record))
        return RunOutcome(f"{name}-seed0", name, 0, tmp_path / name, "done")

    detr, deformable = outcome("detr", "grid"), outcome("deformable", "points")
    table = next(t for heading, t in study_tables([detr, deformable]).items() if heading.startswith("Attention"))
    column = table.header.index("decoder_cross PAIBB")
    assert [row[column] for row in table.rows] == ["0.500", "0.500 †"]
    assert table.note == (
        "† decoder_cross PAIBB: mass inside the matched box; over sampling points for deformable: NOT comparable with "
        "attention mass on the grid"
    )
    same = next(t for heading, t in study_tables([detr]).items() if heading.startswith("Attention"))
    assert same.rows[0][column] == "0.500" and same.note == ""
