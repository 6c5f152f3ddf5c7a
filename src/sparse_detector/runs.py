"""The run directory, one home for its layout: file names, ``metrics.jsonl``, checkpoints and analyses.

A run directory holds::

    config.yaml                 the resolved config of the run
    metrics.jsonl               one JSON object per logged step / epoch (MetricsLogger)
    checkpoint_last.pt          written every epoch and on SIGTERM / SIGINT (atomic; engine/checkpoint.py)
    checkpoint_epochNNNN.pt     earlier end-of-epoch checkpoints kept by train.keep_last / keep_every / lr drops
    checkpoint_best.pt          the best validation AP so far
    <checkpoint>.meta.json      size and SHA-256 of each checkpoint, recorded when it was written
    eval.json                   the last evaluation on the run's validation data: train's names its "epoch",
                                `sparse-detector evaluate`'s its "checkpoint" (eval-<annotations stem>.json on
                                other data); evaluate writes its precision arrays beside it (eval_pr.npz)
    diagnostics.jsonl           with train.diagnostics_every (engine/diagnostics.py)
    tensorboard/, wandb/, wandb-run-id.txt       with train.tensorboard / train.wandb (engine/logger.py)
    analysis/analysis.{json,csv,md}                  `sparse-detector analyze` (analysis-<stem>/ on other data)
    analysis-random-init/analysis.{json,csv,md}      the same with --random-init
    figures/                    `sparse-detector visualize`'s default output folder
    .training.lock              flock of the process training into the directory (claim_run_dir); the file stays
                                when training ends: removing a lock file races with a process opening it
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from filelock import FileLock, Timeout

from .files import write_atomically

CONFIG_FILE = "config.yaml"
METRICS_FILE = "metrics.jsonl"
EVAL_FILE = "eval.json"
LAST_CHECKPOINT = "checkpoint_last.pt"
BEST_CHECKPOINT = "checkpoint_best.pt"
CHECKPOINT_SUFFIXES = (".pt", ".pth")  # of checkpoint files: ours (.pt) and official DETR's (.pth)
#: Of files that may hold weights, named when a folder without a run's checkpoints is given (other tools' too:
#: ``pytorch_model.bin``, ``model.safetensors``, Lightning's ``.ckpt``, which then get their own message).
WEIGHT_FILE_SUFFIXES = (*CHECKPOINT_SUFFIXES, ".bin", ".safetensors", ".ckpt")
EPOCH_CHECKPOINTS = "checkpoint_epoch*.pt"  # the numbered ones (epoch_checkpoint_name), as a glob pattern
_EPOCH_CHECKPOINT = re.compile(r"checkpoint_epoch(\d+)\.pt")
ANALYSIS_FILE = "analysis.json"
ANALYSIS_DIRS = {False: "analysis", True: "analysis-random-init"}  # by random_init
#: The run directory ``sparse-detector quickstart`` trains in, inside its own folder (``runs/quickstart-<time>/train``);
#: named in titles and legends with that folder (``quickstart-<time>/train``), as the quickstart prints it.
QUICKSTART_RUN_DIR = "train"
TRAINING_LOCK = ".training.lock"

log = logging.getLogger(__name__)


def read_metrics(run_dir: str | Path) -> list[dict]:
    """Every record of the run's ``metrics.jsonl``, in order."""
    path = Path(run_dir) / METRICS_FILE
    if not Path(run_dir).exists():
        raise FileNotFoundError(f"run directory {run_dir} does not exist")
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist: is {run_dir} a run directory?")
    return read_json_lines(path)


def read_json_lines(path: Path) -> list[dict]:
    """The records of a log of one JSON object per line. A last line cut short (its process was killed while writing
    it, or the disk was full) is left out with a warning, as ``train --resume`` redoes what it held; a bad line
    elsewhere is an error naming the file and the line."""
    text = path.read_text()
    lines = text.splitlines()
    records = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError as err:
            if number == len(lines) and not text.endswith("\n"):
                log.warning("%s: its last line was cut short (the process killed while writing it?); left out", path)
                break
            raise ValueError(f"{path}, line {number}, is not a JSON record ({err}); was the file edited?") from None
    return records


def write_json_lines(path: Path, records: Iterable[Mapping[str, Any]]) -> None:
    """Replace the log at ``path`` with ``records``, one JSON object per line (atomically: a kill keeps the old one)."""
    text = "".join(json.dumps(record) + "\n" for record in records)
    write_atomically(path, text)


def claim_run_dir(run_dir: str | Path) -> FileLock:
    """Hold an existing run directory for this training process until the lock is released or the process ends,
    however it ends: a second ``train`` into it, or a ``--resume`` of it, while the first still runs would write
    every step into its logs a second time and its checkpoints in turn. An error if another process holds it."""
    path = Path(run_dir) / TRAINING_LOCK
    lock = FileLock(path)
    try:
        lock.acquire(timeout=0)
    except Timeout:
        raise RuntimeError(
            f"run directory {run_dir} is being trained by another process right now (it holds {path}); wait for "
            "it to end, or stop it and then continue with --resume, or choose another --output-dir"
        ) from None
    return lock


def holds_checkpoint(folder: Path) -> bool:
    """Whether ``folder`` holds a checkpoint file (by its suffix, :data:`CHECKPOINT_SUFFIXES`)."""
    return any(path.suffix in CHECKPOINT_SUFFIXES for path in folder.glob("*.pt*"))  # glob: unreadable = none


def is_run_or_checkpoint(path: Path) -> bool:
    """Whether ``path`` names a model: a checkpoint file or a run directory (its config or a checkpoint); any other
    folder is one of images."""
    if path.is_dir():
        return (path / CONFIG_FILE).is_file() or holds_checkpoint(path)
    return path.suffix in CHECKPOINT_SUFFIXES


def epoch_checkpoint_name(epoch: int) -> str:
    """The file name of the checkpoint kept at the end of ``epoch``."""
    return f"checkpoint_epoch{epoch:04d}.pt"


def checkpoint_epoch(name: str) -> int | None:
    """The epoch in a numbered checkpoint's file name (:func:`epoch_checkpoint_name`); None for another name."""
    match = _EPOCH_CHECKPOINT.fullmatch(name)
    return int(match.group(1)) if match else None


def resolve_checkpoint(path: str | Path) -> Path:
    """A checkpoint file, or a run directory (its best checkpoint, else its last), or a Hugging Face model folder
    (its weights file)."""
    from .models.huggingface import huggingface_files  # models import this module

    path = Path(path)
    if path.is_dir():
        for name in (BEST_CHECKPOINT, LAST_CHECKPOINT):
            if (path / name).is_file():
                return path / name
        if files := huggingface_files(path):
            return files[1]
        files = sorted(p.name for p in path.iterdir() if p.suffix in WEIGHT_FILE_SUFFIXES and p.is_file())
        inside = f"; weight files in it: {', '.join(files[:5])}: give one of them" if files else ""
        raise FileNotFoundError(f"run directory {path} holds no {BEST_CHECKPOINT} or {LAST_CHECKPOINT}{inside}")
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    return path


def other_data_suffix(run_annotations: str | Path, evaluated_annotations: str | Path) -> str:
    """``""`` when an evaluation reads the run's own validation annotations, else ``-<their file stem>``: what
    ``evaluate`` and ``analyze`` add to their default output names so that results on other data sit beside the
    run's own instead of replacing them."""
    same = Path(run_annotations).expanduser().resolve() == Path(evaluated_annotations).expanduser().resolve()
    return "" if same else f"-{Path(evaluated_annotations).stem}"


def eval_file(checkpoint: Path, data_suffix: str = "") -> Path:
    """Where ``evaluate`` writes by default: ``eval.json`` beside the checkpoint (``eval-<data>.json`` on other
    data)."""
    path = Path(EVAL_FILE)
    return checkpoint.parent / f"{path.stem}{data_suffix}{path.suffix}"


def analysis_dir(checkpoint: Path, random_init: bool, data_suffix: str = "") -> Path:
    """Where ``analyze`` writes by default: ``analysis`` (or ``analysis-random-init``) beside the checkpoint, with
    ``data_suffix`` (:func:`other_data_suffix`) added on other data."""
    return checkpoint.parent / f"{ANALYSIS_DIRS[random_init]}{data_suffix}"


def find_analyses(inputs: Iterable[str | Path]) -> list[Path]:
    """``analysis.json`` files: given directly, or found in an analysis folder or in a run directory's
    ``analysis/`` and ``analysis-random-init/``."""
    found: list[Path] = []
    for path in map(Path, inputs):
        if path.is_file():
            found.append(path)
            continue
        candidates = [path / ANALYSIS_FILE, *(path / name / ANALYSIS_FILE for name in ANALYSIS_DIRS.values())]
        hits = [candidate for candidate in candidates if candidate.is_file()]
        if not hits:
            is_run = path.is_dir() and (path / CONFIG_FILE).is_file()  # a run not analysed yet: the command to run
            first = f"`sparse-detector analyze --checkpoint {path}`" if is_run else "analyze"
            raise FileNotFoundError(f"{path} is not an {ANALYSIS_FILE} nor a folder holding one (run {first} first)")
        found += hits
    return found


def read_analyses(inputs: Iterable[str | Path]) -> list[dict[str, Any]]:
    """The analysis records of ``find_analyses(inputs)``."""
    records = []
    for path in find_analyses(inputs):
        try:
            record = json.loads(path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            beside = path.with_name(ANALYSIS_FILE)  # analyze's analysis.csv / .md given for the record beside them
            give = f"give {beside}" if beside.is_file() else "give analysis.json files, analysis folders or run dirs"
            raise ValueError(f"{path} is not valid JSON ({err}); {give}") from None
        if not isinstance(record, dict) or not {"checkpoint", "random_init", "attention"} <= record.keys():
            raise ValueError(
                f"{path} is not an {ANALYSIS_FILE} written by `sparse-detector analyze` (it lacks checkpoint, "
                "random_init or attention); give analysis.json files, analysis folders or run directories"
            )
        if "paibb" in record.get("attention", {}):
            log.warning(
                "%s has the older layout (one PAIBB block, not per site): its PAIBB is not shown; run analyze again",
                path,
            )
        records.append(where_its_checkpoint_is(record, path))
    return records


def where_its_checkpoint_is(record: dict[str, Any], path: Path) -> dict[str, Any]:
    """``record`` (read from ``path``) naming its checkpoint where it is now: analyze stores the path it was given,
    which no longer leads to it from another folder or once the run directory was moved, copied from a cluster or
    renamed, and then labelled the run by its old folder; the checkpoint of that name in the run directory around
    the analysis folder (where analyze writes by default) is taken instead."""
    stored = Path(record["checkpoint"])
    here = path.parent.parent / stored.name
    return {**record, "checkpoint": str(here)} if not stored.is_file() and here.is_file() else record


def analysis_labels(records: Sequence[Mapping[str, Any]]) -> list[str]:
    """The run of each analysis record: its checkpoint's folder name, plus `` (random init)`` for a random-init
    baseline; told apart by their parent folders where the run folders have the same name, then by their checkpoint
    files (two official checkpoints in one folder, or two epochs of a run), then (one checkpoint analysed more than
    once) by their data sets, then by number."""
    suffixes = [" (random init)" if record["random_init"] else "" for record in records]
    checkpoints = [Path(record["checkpoint"]) for record in records]
    labels = distinct_names([checkpoint.parent for checkpoint in checkpoints], suffixes)
    labels = [
        f"{label} ({checkpoint.name})"
        if any(other == label and c.name != checkpoint.name for other, c in zip(labels, checkpoints, strict=True))
        else label
        for label, checkpoint in zip(labels, checkpoints, strict=True)
    ]
    same = [i for i, label in enumerate(labels) if labels.count(label) > 1]
    data = [Path(str(records[i].get("data", ""))) for i in same]
    if len(set(data)) > 1:
        for i, data_name in zip(same, distinct_names(data), strict=True):
            labels[i] += f" on {data_name}"
    return [f"{label} #{labels[: i + 1].count(label)}" if labels.count(label) > 1 else label
            for i, label in enumerate(labels)]  # fmt: skip


def distinct_names(paths: Sequence[Path], suffixes: Sequence[str] | None = None) -> list[str]:
    """Each path's last folder (plus its suffix), with as many parent folders as it takes to tell apart paths that
    would otherwise get the same name (``exp1/runs/softmax``, ``exp2/runs/softmax``); equal paths keep equal names.
    A quickstart's run keeps its quickstart folder (``quickstart-<time>/train``, not ``train``)."""
    parts = [Path(path).absolute().parts for path in paths]
    suffixes = list(suffixes or [""] * len(paths))
    depths = [2 if p[-1] == QUICKSTART_RUN_DIR and len(p) > 2 else 1 for p in parts]
    while True:
        names = [
            Path(*p[-depth:]).as_posix() + suffix for p, depth, suffix in zip(parts, depths, suffixes, strict=True)
        ]
        clashes = [
            any(n == name and q != p for n, q in zip(names, parts, strict=True))
            for name, p in zip(names, parts, strict=True)
        ]
        longer = [i for i, clash in enumerate(clashes) if clash and depths[i] < len(parts[i])]
        if not longer:
            return names
        for i in longer:
            depths[i] += 1
