"""Where a command's output goes: output paths checked before any work, progress bars only on a terminal, the
input images that could not be read."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def show_progress(args: argparse.Namespace) -> bool:
    """Progress bars only on a terminal (a log file gets plain lines) and not with ``--no-progress``."""
    return not getattr(args, "no_progress", False) and sys.stderr.isatty()


def file_in_the_way(path: Path) -> Path | None:
    """The existing file, if any, at ``path`` or one of its folders, where a folder is needed."""
    for candidate in (path, *path.parents):
        if candidate.exists():
            return None if candidate.is_dir() else candidate
    return None


def in_the_way_message(option: str, path: Path, blocker: Path) -> str:
    where = "is a file" if blocker == path else f"cannot be written: {blocker} is a file"
    return f"{option} {path} {where}, not a folder; choose another path or move that file"


def check_output(option: str, path: str | Path | None, folder: bool = True, file: tuple[str, str] = ("", "")) -> None:
    """Before any work: ``path`` (a folder to write in, or with ``folder=False`` a file) can be made; a file standing
    where a folder is needed, or a folder given for a file (``file``: what the file is and an example name), is a
    usage error naming both."""
    if path is None:
        return
    path = Path(path)
    if not folder and path.is_dir():
        what, example = file
        raise ValueError(f"{option} {path} is a folder; {option} takes {what} (e.g. {option} {path / example})")
    if blocker := file_in_the_way(path if folder else path.parent):
        raise ValueError(in_the_way_message(option, path, blocker))


def report_unreadable(failed: dict[str, str]) -> int:
    """List the input images a command skipped as unreadable (path -> why) on stderr; the exit status: 1 if any."""
    if not failed:
        return 0
    print(f"error: {len(failed)} image(s) could not be read:", file=sys.stderr)
    for path, why in failed.items():
        print(f"  {path}: {why}", file=sys.stderr)
    return 1
