"""Writing files so that Ctrl-C, a kill or a full disk never leaves a half-written one where a reader looks; and
naming what a file given by mistake is."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO

PARTIAL_SUFFIX = ".tmp"  # of the hidden temporary file write_atomically writes before renaming it

#: How the files a user gives by mistake start (first bytes -> what the file is), named when one is refused.
FILE_SIGNATURES = {
    b"\x89PNG": "a PNG image",
    b"\xff\xd8\xff": "a JPEG image",
    b"GIF8": "a GIF image",
    b"%PDF": "a PDF document",
    b"\x1f\x8b": "a gzip archive",
    b"PK\x03\x04": "a zip archive",
}


def file_kind(head: bytes) -> str | None:
    """What a file starting with the bytes ``head`` is (:data:`FILE_SIGNATURES`), or None."""
    return next((name for signature, name in FILE_SIGNATURES.items() if head.startswith(signature)), None)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_atomically(path: str | Path, content: str | bytes | Callable[[IO[bytes]], object]) -> Path:
    """Write ``content`` (text as UTF-8, bytes, or a function writing into the open binary file) to a temporary file
    beside ``path``, then rename it over ``path``: Ctrl-C, a kill or a full disk leaves the file there before or the
    new one, never a part of one that a later command reads as complete, and no temporary file (but after SIGKILL:
    see :func:`remove_partial_writes`). The file gets the permissions ``open()`` would give it (not a temporary
    file's owner-only ones). A write error names the file. Returns ``path``."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=PARTIAL_SUFFIX, dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            if callable(content):
                content(f)
            else:
                f.write(content.encode("utf-8") if isinstance(content, str) else content)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except OSError as err:
        Path(tmp).unlink(missing_ok=True)
        reason = err.strerror or str(err)
        raise OSError(f"cannot write {path}: {reason}; the file there before (if any) is unchanged") from err
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def remove_partial_writes(folder: Path) -> list[Path]:
    """Delete the temporary files :func:`write_atomically` left in ``folder`` when its process was killed (SIGKILL)
    while writing (a partial checkpoint is as large as a whole one); returns them. Only for a folder no other
    process is writing into (a claimed run directory)."""
    partial = [path for path in folder.glob(f".*{PARTIAL_SUFFIX}") if path.is_file()]
    for path in partial:
        path.unlink(missing_ok=True)
    return partial
