"""The study runner: a matrix of attention maps × seeds over one preset, each run trained → evaluated and analysed
(COCO AP and attention metrics in one pass) → drawn, then one report comparing them.

A study config (YAML; embedded ones in ``configs/studies/`` are named without a path)::

    preset: shapes_tiny              # the training config every run starts from
    output_dir: runs/study           # the study directory
    shapes: {train: 1000, val: 100, seed: 0}   # optional: generate the shapes data set into <study>/data
    set: [train.epochs=8]            # overrides for every run
    maps:                            # run name -> its overrides
      softmax: [model.attention.decoder_cross.activation=softmax]
      sparsemax: [model.attention.decoder_cross.activation=sparsemax]
    seeds: [0]
    figure_images: 2                 # validation images drawn per run

Runs live in ``<study>/runs/<map>-seed<seed>/`` (ordinary run directories). A run whose ``study_status.json`` says
``done`` is never retrained, but its figures are redrawn (and its analysis redone if it is missing), so the report is
complete and current after any re-run; an unfinished one resumes from its last checkpoint, or restarts when it has
none. Every map's settings are checked (config loaded, model built) before any run trains; a setting they reject
stops the study then. A run that fails later is recorded as failed (stage and error) and the others still run; the
report lists it.
"""

from __future__ import annotations

import inspect
import json
import logging
import shutil
import signal
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .config import (
    PRESET_DIR,
    Config,
    ConfigError,
    config_differences,
    config_to_dict,
    dataclass_from_dict,
    load_config,
    read_yaml,
    run_config_here,
    site_activation,
    without_pretrained,
)
from .data import generate_shapes_splits
from .data.build import absolute_data_paths, build_dataset, build_loader
from .data.shapes import generate_shapes
from .engine.analyze import analyze, load_analysis_model
from .engine.checkpoint import run_checkpoints
from .engine.device import resolve_device
from .engine.inference import LoadedModel, load_trained_model
from .engine.trainer import Trainer, alpha_values
from .files import write_atomically
from .models import build_criterion, build_model
from .report import write_analysis
from .report.study import write_study_report
from .runs import ANALYSIS_DIRS, ANALYSIS_FILE, CONFIG_FILE, where_its_checkpoint_is
from .text import counted, did_you_mean
from .viz.figure import replace_previous_figures
from .viz.kinds import VisualizeRequest, object_query_kind, visualize

log = logging.getLogger(__name__)

STUDY_PRESET_DIR = PRESET_DIR / "studies"
STATUS_FILE = "study_status.json"
STUDY_FIGURES = ("curves", "sparsity", "compare")  # over all finished runs; compare: attention over the feature grid


@dataclass
class StudyConfig:
    """A study file: a preset, the maps to compare (each a list of overrides), seeds and shared settings."""

    preset: str
    maps: dict[str, list[str]]
    seeds: list[int] = field(default_factory=lambda: [0])
    set: list[str] = field(default_factory=list)
    shapes: dict[str, int] | None = None
    output_dir: str = "runs/study"
    figure_images: int = 2
    source: str = ""


def check_shapes_options(shapes: dict[str, int] | None) -> None:
    """A study's ``shapes``: the split sizes ``train`` and ``val``, an optional ``seed``, and the whole-number options
    of :func:`generate_shapes` (image_size, min_shapes, ...)."""
    if shapes is None:
        return
    parameters = inspect.signature(generate_shapes).parameters
    options = [name for name, p in parameters.items() if type(p.default) is int and name != "seed"]
    if unknown := sorted(set(shapes) - {"train", "val", "seed", *options}):
        raise ConfigError(f"shapes: unknown option {unknown[0]!r}; give train, val, seed or one of {options}")
    if missing := [split for split in ("train", "val") if split not in shapes]:
        raise ConfigError(f"shapes needs {missing[0]} (its number of images), e.g. shapes: {{train: 1000, val: 100}}")


def load_study(source: str | Path, overrides: list[str] | None = None) -> StudyConfig:
    """A study config from a YAML file or an embedded study's name; ``overrides`` are added to its ``set``."""
    path = Path(source)
    if not path.is_file():
        path = STUDY_PRESET_DIR / f"{Path(source).stem}.yaml"
    if not path.is_file():
        names = sorted(p.stem for p in STUDY_PRESET_DIR.glob("*.yaml"))
        raise ConfigError(
            f"study config {str(source)!r} is neither a file nor an embedded study{did_you_mean(str(source), names)}; "
            f"embedded: {names}"
        )
    data = read_yaml(path)
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping (preset, maps, ...), got {type(data).__name__}")
    known = {name for name in StudyConfig.__dataclass_fields__ if name != "source"}
    unknown = sorted(set(data) - known)
    if unknown:
        meant = did_you_mean(str(unknown[0]), known)
        raise ConfigError(f"{path}: unknown study keys {unknown}{meant}; valid keys: {sorted(known)}")
    for key in ("preset", "maps"):
        if key not in data:
            raise ConfigError(f"{path}: the study needs {key!r}")
    if not isinstance(data["maps"], dict) or not data["maps"]:
        raise ConfigError(f"{path}: 'maps' must map run names to lists of overrides")
    data["maps"] = {str(name): [] if values is None else values for name, values in data["maps"].items()}
    try:
        study = dataclass_from_dict(StudyConfig, {**data, "source": str(path)})
        check_shapes_options(study.shapes)
    except ConfigError as err:
        raise ConfigError(f"{path}: {err}") from None
    study.set = [*study.set, *(overrides or [])]
    return study


@dataclass
class RunOutcome:
    """What happened to one run of the matrix."""

    name: str  # <map>-seed<seed>
    map: str
    seed: int
    run_dir: Path
    status: str  # done | failed (its status file also says running or stopped while unfinished)
    stage: str = ""  # the stage that failed
    error: str = ""
    seconds: float = 0.0
    figures: list[Path] = field(default_factory=list)
    query_kind: str = ""  # the figure kind that drew its object queries (attention or deformable)
    figures_not_drawn: list[str] = field(default_factory=list)  # "kind: error" of each of its figures that failed


def _data_overrides(study: StudyConfig, study_dir: Path) -> list[str]:
    """Generate the shapes data once (when the study asks for it) and point every run at it."""
    if not study.shapes:
        return []
    options = dict(study.shapes)
    num_train, num_val, seed = options.pop("train"), options.pop("val"), options.pop("seed", 0)
    data_dir = study_dir / "data"
    annotations = {split: data_dir / "annotations" / f"{split}.json" for split in ("train", "val")}
    if not all(path.is_file() for path in annotations.values()):
        annotations = generate_shapes_splits(data_dir, num_train, num_val, seed=seed, **options)
    images = data_dir / "images"
    return [
        f"data.{split}.{key}={value}"
        for split in ("train", "val")
        for key, value in (("images", images), ("annotations", annotations[split]))
    ]


def run_config(study: StudyConfig, map_name: str, seed: int, data_overrides: list[str]) -> Config:
    """The config of one run of the study: its map's overrides and seed on top of the preset and shared settings, its
    data paths absolute (as train's, so that its config.yaml reads the same from any folder)."""
    overrides = [*data_overrides, *study.set, *study.maps[map_name], f"train.seed={seed}"]
    return absolute_data_paths(load_config(study.preset, overrides))


def check_variants(study: StudyConfig, data_overrides: list[str], device: str = "") -> None:
    """Load every map's config, build its model (on the CPU, without pretrained weights) and check its device
    (``device``: --device, else train.device) before any run trains, so a setting the config, the model or the
    machine rejects stops the study at once, naming the map (or the preset and shared ``set`` where the mistake is
    theirs), rather than when its turn comes after the others trained (or every run failing alike)."""
    seed = study.seeds[0] if study.seeds else 0
    try:  # the preset and the shared settings first: their mistake is no map's
        load_config(study.preset, [*data_overrides, *study.set])
    except ConfigError as err:
        raise ConfigError(
            f"{study.source or 'study'}: preset {study.preset!r} with set {study.set}: {err}; nothing was trained"
        ) from None
    for map_name in study.maps:
        try:
            config = run_config(study, map_name, seed, data_overrides)
            build_model(without_pretrained(config))
            resolve_device(device or config.train.device, "--device" if device else "train.device")
        except (ValueError, RuntimeError) as err:  # ConfigError, or what a model builder rejects
            raise ConfigError(
                f"{study.source or 'study'}: map {map_name!r} ({study.maps[map_name]}): {err}; nothing was trained"
            ) from None


@dataclass
class StudyResult:
    """Where a study wrote its report, and what is missing from it."""

    study_dir: Path
    failed_runs: list[str]  # names of the runs that failed (listed in the report with their stage and error)
    figures_not_drawn: list[str]  # "kind: error" of each study figure, "<run> kind: error" of each run's, that failed

    @property
    def complete(self) -> bool:
        return not self.failed_runs and not self.figures_not_drawn


class StudyStopped(KeyboardInterrupt):
    """SIGTERM / SIGINT stopped a run's training: its checkpoint is written, the study stops, and running the study
    again continues that run."""


def _train(config: Config, run_dir: Path, progress: bool, name: str) -> bool:
    """Train, resuming a run that has a checkpoint; a run without one starts over in an emptied directory; False when
    its last checkpoint has every epoch already. A signal that stops the training stops the study
    (:class:`StudyStopped`), leaving the run unfinished."""
    checkpoints = run_checkpoints(run_dir)  # not only checkpoint_last.pt: one killed while writing it has none
    if checkpoints:
        if checkpoints[0].epoch >= config.train.epochs:
            return False
        print(f"[study] {name}: training on in {run_dir}")
        trainer = Trainer(config, run_dir, resume=True, progress=progress)
    else:
        print(f"[study] {name}: training in {run_dir}")
        for path in run_dir.iterdir() if run_dir.is_dir() else ():  # the study's own account of the run stays
            if path.name != STATUS_FILE:
                shutil.rmtree(path) if path.is_dir() else path.unlink()
        trainer = Trainer(config, run_dir, progress=progress)
    trainer.fit()
    if trainer.stop_signal is not None:
        raise StudyStopped(
            f"{run_dir.name} stopped by {signal.Signals(trainer.stop_signal).name} at step {trainer.step}, its "
            "checkpoint written; run the same study command again to continue it"
        )
    return True


def analyze_run(run_dir: Path, device: str) -> dict[str, Any]:
    """COCO AP and attention metrics of the run's best checkpoint on its validation data -> ``<run>/analysis``."""
    loaded = load_analysis_model(run_dir)
    dataset = build_dataset(loaded.config, "val")
    target = resolve_device(device)
    stats, aggregator = analyze(
        loaded.model.to(target),
        build_criterion(loaded.config).matcher,
        build_loader(dataset, loaded.config, train=False),
        target,
        loaded.label_map,
    )
    result = aggregator.result()
    record = {
        "checkpoint": str(loaded.source),
        "data": str(dataset.annotation_file),
        "random_init": False,
        "seed": None,
        "sites": list(result["sites"]),
        "maps": {site: site_activation(loaded.config.model.attention, site) for site in result["sites"]},
        "ap": stats,
        "attention": result,
    }
    write_analysis(record, run_dir / ANALYSIS_DIRS[False])
    return record


def _analysis_current(run_dir: Path) -> bool:
    """Whether the run's analysis exists and is newer than the checkpoint it analysed, found in the run directory
    where the study folder was moved (:func:`where_its_checkpoint_is`)."""
    path = run_dir / ANALYSIS_DIRS[False] / ANALYSIS_FILE
    if not path.is_file():
        return False
    checkpoint = Path(where_its_checkpoint_is(json.loads(path.read_text()), path)["checkpoint"])
    return checkpoint.is_file() and checkpoint.stat().st_mtime <= path.stat().st_mtime


def _draw(kind: str, request: VisualizeRequest, not_drawn: list[str], run: str = "") -> list[Path]:
    """The figures of ``kind``, or none where drawing fails: then why is added to ``not_drawn``, logged and printed
    (after ``run``, the run's name, for a run's figure), and the kind's files of an earlier drawing are removed, which
    would otherwise look current."""
    try:
        return visualize(kind, request)
    except Exception as err:  # a figure that cannot be drawn must cost neither its run nor the report
        replace_previous_figures(request.output, kind, [])
        not_drawn.append(f"{kind}: {type(err).__name__}: {err}")
        log.error("study %sfigure %s failed:\n%s", run, kind, traceback.format_exc())
        print(f"[study] {run}figure {kind} NOT DRAWN: {type(err).__name__}: {err}")
        return []


def run_figure_kinds(loaded: LoadedModel) -> list[str]:
    """The per-run figure kinds that apply to a trained run: its object queries over the image
    (:func:`object_query_kind`: attention over the feature grid, or sampling points), matching, ``alpha`` where the
    model has learnable α, ``diagnostics`` where training recorded them (``train.diagnostics_every``)."""
    kinds = [object_query_kind(loaded.model), "matching"]
    if alpha_values(loaded.model):
        kinds.append("alpha")
    if loaded.config.train.diagnostics_every:
        kinds.append("diagnostics")
    return kinds


def _run_figures(run_dir: Path, study: StudyConfig, device: str) -> tuple[list[Path], str, list[str]]:
    """Draw the per-run figures that apply (:func:`run_figure_kinds`); returns the files written, the kind that drew
    the object queries, and why any figure that applies was not drawn (the report says so; the run stays done)."""
    kinds = run_figure_kinds(load_trained_model(run_dir))
    written: list[Path] = []
    not_drawn: list[str] = []
    request = VisualizeRequest(
        runs=[run_dir],
        output=run_dir / "figures",
        num_images=study.figure_images,
        device=device,
        max_queries=2,
    )
    for kind in kinds:
        written += _draw(kind, request, not_drawn, f"{run_dir.name}: ")
    return written, kinds[0], not_drawn


def _changed_settings(
    run_dir: Path, study: StudyConfig, map_name: str, seed: int, data: list[str]
) -> tuple[list[str], bool]:
    """The settings (``key: old -> new``) in which a run's saved config differs from what the study asks now (the
    device it ran on and the folder it is in are not settings of its results; its data paths are compared as they
    lead from where the run is now, so a moved study folder keeps its runs), and whether the only change is more
    epochs, which a finished run can be trained on to."""
    saved = run_config_here(read_yaml(run_dir / CONFIG_FILE), run_dir)
    asked = config_to_dict(run_config(study, map_name, seed, data))
    changed = [
        change
        for change in config_differences(saved, asked)
        if not change.startswith(("train.device:", "train.output_dir:"))
    ]
    more_epochs = changed == [f"train.epochs: {saved['train']['epochs']!r} -> {asked['train']['epochs']!r}"]
    return changed, more_epochs and asked["train"]["epochs"] > saved["train"]["epochs"]


def _earlier_seconds(run_dir: Path, earlier: dict[str, Any]) -> float:
    """The run's time in earlier invocations (``earlier``: its status file), failed and stopped ones too; an
    invocation killed while at the run (SIGKILL, out of memory, a lost machine) counts up to the run directory's last
    write, as its status still says ``running``."""
    seconds = earlier.get("seconds", 0.0)
    if earlier.get("status") == "running":
        started = earlier.get("started", 0.0)
        written = [p.stat().st_mtime for p in run_dir.rglob("*") if p.is_file() and p.name != STATUS_FILE]
        newest = max(written, default=started)
        seconds += max(newest - started, 0.0)
    return seconds


def _write_status(status_file: Path, outcome: RunOutcome, **extra: Any) -> None:
    """The run's ``study_status.json``: its outcome (``running`` while an invocation is at it) and time so far."""
    status = {
        "status": outcome.status,
        "stage": outcome.stage,
        "error": outcome.error,
        "seconds": outcome.seconds,
        "figures": [str(p) for p in outcome.figures],
        **extra,
    }
    write_atomically(status_file, json.dumps(status, indent=2))


def _run_one(
    study: StudyConfig, map_name: str, seed: int, study_dir: Path, data: list[str], device: str, progress: bool
) -> RunOutcome:
    name = f"{map_name}-seed{seed}"
    run_dir = study_dir / "runs" / name
    status_file = run_dir / STATUS_FILE
    earlier = json.loads(status_file.read_text()) if status_file.is_file() else {}
    seconds_before, kept = _earlier_seconds(run_dir, earlier), False
    # finished once: a later invocation killed or stopped while at it (redrawing, training on to more epochs) leaves
    # it unfinished, yet its results stay this study's only while its settings do
    done_before = earlier.get("status") == "done" or earlier.get("done_before", False)
    if done_before:
        changed, more_epochs = _changed_settings(run_dir, study, map_name, seed, data)
        kept = not changed and earlier.get("status") == "done"
        if kept:
            print(f"[study] {name}: done before, kept (its figures redrawn)")
        elif changed and not more_epochs:
            error = (
                f"done before with other settings than this study's ({'; '.join(changed)}); revert them, or move "
                f"{run_dir} away to redo the run with them"
            )
            print(f"[study] {name}: NOT REDONE: {error}")
            return RunOutcome(
                name, map_name, seed, run_dir, "failed", stage="config", error=error, seconds=round(seconds_before, 1)
            )
        elif changed:
            print(f"[study] {name}: done before; {changed[0]}: continuing it")
    start, stage = time.perf_counter(), "config"
    # until this invocation is done with the run, a kill leaves it 'running' (not done, its time counted on rerun)
    run_dir.mkdir(parents=True, exist_ok=True)
    running = RunOutcome(name, map_name, seed, run_dir, "running", seconds=round(seconds_before, 1))
    _write_status(status_file, running, started=time.time(), done_before=done_before)
    outcome = RunOutcome(name, map_name, seed, run_dir, "done")
    try:
        config = run_config(study, map_name, seed, data)
        config.train.output_dir = str(run_dir.absolute())  # its config.yaml names the directory it is in, as train's
        if device:
            config.train.device = device
        stage = "train"
        trained = not kept and _train(config, run_dir, progress, name)
        stage = "analyze"
        if trained or not _analysis_current(run_dir):
            analyze_run(run_dir, config.train.device)
        stage = "figures"
        outcome.figures, outcome.query_kind, outcome.figures_not_drawn = _run_figures(
            run_dir, study, config.train.device
        )
    except Exception as err:  # one failed run must not stop the study: it is recorded and reported
        outcome.status, outcome.stage = "failed", stage
        outcome.error = f"{type(err).__name__}: {err}"
        log.error("study run %s failed in %s:\n%s", name, stage, traceback.format_exc())
        print(f"[study] {name}: FAILED in {stage}: {outcome.error}")
    except KeyboardInterrupt:  # a signal stopped the study (StudyStopped) or Ctrl-C: the run stays unfinished
        outcome.status, outcome.stage = "stopped", stage
        outcome.seconds = round(seconds_before + time.perf_counter() - start, 1)
        _write_status(status_file, outcome, done_before=done_before)
        raise
    outcome.seconds = round(seconds_before + time.perf_counter() - start, 1)
    _write_status(status_file, outcome, done_before=done_before)
    return outcome


def _study_figures(
    outcomes: list[RunOutcome], study: StudyConfig, figures_dir: Path, device: str
) -> tuple[list[Path], list[str]]:
    """Figures over every finished run: curves, sparsity and (first seed of each map) attention compared; and why
    any of them was not drawn (the report says so; the study goes on)."""
    done = [o for o in outcomes if o.status == "done"]
    written: list[Path] = []
    not_drawn: list[str] = []
    if not done:
        return written, not_drawn
    first_seed = list({o.map: o for o in reversed(done)}.values())[::-1]
    for kind in STUDY_FIGURES:
        runs = [o.run_dir for o in (first_seed if kind == "compare" else done)]
        if kind == "compare" and (len(runs) < 2 or any(o.query_kind != "attention" for o in first_seed)):
            # not an earlier matrix's comparison, left looking current
            replace_previous_figures(figures_dir, kind, [])
            continue  # compare draws attention over the feature grid; sampling points are in each run's figures
        request = VisualizeRequest(runs=runs, output=figures_dir, num_images=study.figure_images, device=device)
        written += _draw(kind, request, not_drawn)
    return written, not_drawn


def run_study(
    study: StudyConfig, output_dir: str | Path | None = None, device: str = "", progress: bool = False
) -> StudyResult:
    """Run (or finish) every run of the matrix, draw the figures and write ``report.md`` and ``report.html``, even
    when some runs or figures fail (they are listed there and in the result)."""
    check_variants(study, [], device)
    study_dir = Path(output_dir or study.output_dir)
    study_dir.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    data = _data_overrides(study, study_dir)
    outcomes = [
        _run_one(study, map_name, seed, study_dir, data, device, progress)
        for map_name in study.maps
        for seed in study.seeds
    ]
    figures, not_drawn = _study_figures(outcomes, study, study_dir / "figures", device or "auto")
    not_drawn += [f"{o.name} {reason}" for o in outcomes for reason in o.figures_not_drawn]
    minutes = (time.perf_counter() - start) / 60
    paths = write_study_report(study_dir, study, outcomes, figures, minutes, not_drawn)
    failed = [o.name for o in outcomes if o.status == "failed"]
    print(
        f"[study] {len(outcomes) - len(failed)} of {counted(len(outcomes), 'run')} done in {minutes:.1f} min"
        + (f"; failed: {failed}" if failed else "")
    )
    for path in paths:
        print(f"written: {path}")
    return StudyResult(study_dir, failed, not_drawn)
