"""Writing files so that Ctrl-C, a kill or a full disk never leaves a half-written one where a reader looks."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_atomically(path: str | Path, write: Callable[[IO[bytes]], Any]) -> None:
    """Write through ``write(file)`` to a temporary file in the same folder, then rename it over ``path``: Ctrl-C, a
    kill or a full disk leaves the file there before unchanged (and no temporary file). A write error names the file."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # as open() would make it (mkstemp makes it private to its owner)
        os.replace(tmp, path)
    except OSError as err:
        Path(tmp).unlink(missing_ok=True)
        reason = err.strerror or str(err)
        raise OSError(f"cannot write {path}: {reason}; the file there before (if any) is unchanged") from err
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_text_atomically(path: str | Path, text: str) -> None:
    """:func:`write_atomically` of a UTF-8 text."""
    write_atomically(path, lambda f: f.write(text.encode("utf-8")))
