"""Writing files so that a kill or a full disk never leaves a half-written one where a reader looks."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO


def write_atomic(path: str | Path, content: str | bytes | Callable[[IO[bytes]], object]) -> Path:
    """Write ``content`` (text, bytes, or a function writing into the open binary file) to a temporary file beside
    ``path``, then rename it over ``path``: a process killed meanwhile leaves the old file or the new one, never a
    part of one that a later command reads as complete. The file gets the permissions the umask gives a new file
    (not the owner-only ones of a temporary file). Returns ``path``."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            if callable(content):
                content(f)
            else:
                f.write(content.encode() if isinstance(content, str) else content)
            f.flush()
            os.fsync(f.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path
