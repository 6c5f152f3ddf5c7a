"""``sparse-detector study``: a matrix of attention maps x seeds, run and reported."""

from __future__ import annotations

import argparse
import sys

from .outputs import show_progress
from .parsing import Subparsers, add_command, add_overrides


def add_study_command(commands: Subparsers) -> None:
    parser = add_command(
        commands,
        "study",
        "a matrix of attention maps x seeds: train, evaluate, analyze, figures, report.md + report.html",
        "sparse-detector study shapes_maps --output-dir runs/study --set train.epochs=10",
        _study,
    )
    parser.description = (
        f"{parser.description}.\nCONFIG is a study YAML or an embedded study (shapes_maps). A finished run is never "
        "redone; an unfinished one resumes; a failed one is reported and the others still run."
    )
    parser.add_argument("config", metavar="CONFIG", help="study YAML or embedded study name")
    parser.add_argument("--output-dir", help="study directory (default: the study's output_dir)")
    add_overrides(parser, "train.epochs=10 (applied to every run)")
    parser.add_argument("--device", help="auto | cpu | cuda | cuda:N | mps (default: the preset's train.device)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")


def _study(args: argparse.Namespace) -> int:
    from ..study import StudyStopped, load_study, run_study

    study = load_study(args.config, args.set)
    try:
        result = run_study(study, args.output_dir, device=args.device or "", progress=show_progress(args))
    except StudyStopped as stopped:
        print(f"[study] {stopped}")
        return 0
    if result.complete:
        return 0
    missing = [*map(str, result.failed_runs), *(f"figure {kind}" for kind in result.figures_not_drawn)]
    print(f"error: the report lacks {'; '.join(missing)} (see report.md for why)", file=sys.stderr)
    return 1
