"""Where numba keeps the compiled CPU kernels (``cache=True``) across processes.

numba writes its cache beside the sources (``__pycache__``) or, where that folder is read-only (a package installed
system-wide or in a read-only image), in the user's cache folder (``~/.cache/numba``). Where neither is writable (a
container's user without a writable home) numba refused the kernels at import: ``RuntimeError: cannot cache function
...: no locator available``, so nothing with attention could run. This module, imported by the kernels' modules
before their kernels, then points numba at a folder of the system's temporary directory. ``NUMBA_CACHE_DIR``, where
set, is numba's and wins.
"""

from __future__ import annotations

import getpass
import logging
import os
import tempfile
from pathlib import Path

import numba

log = logging.getLogger(__name__)


def _probe() -> None:  # a function of this folder, where the kernels are: numba looks for a cache place per folder
    pass


def can_cache_here() -> bool:
    """Whether numba finds a writable place for the cache of this folder's kernels (decorating compiles nothing)."""
    try:
        numba.njit(cache=True)(_probe)
    except RuntimeError:  # "cannot cache function ...: no locator available for file ..."
        return False
    return True


def ensure_cache_dir() -> Path | None:
    """Point numba's cache at ``<temp dir>/sparse-detector-numba-<user id>`` where it has no writable place of its own
    (and ``NUMBA_CACHE_DIR`` is unset); returns that folder, or ``None`` when numba's own choice stands."""
    if numba.config.CACHE_DIR or can_cache_here():
        return None
    # the user id, not the name: a container's user often has no name (getpass.getuser() raises there)
    user = str(os.getuid()) if hasattr(os, "getuid") else getpass.getuser()
    folder = Path(tempfile.gettempdir()) / f"sparse-detector-numba-{user}"
    folder.mkdir(mode=0o700, exist_ok=True)
    owner = getattr(os, "getuid", lambda: folder.stat().st_uid)()
    if folder.is_symlink() or folder.stat().st_uid != owner or folder.stat().st_mode & 0o022:
        # another user's (or anyone's) folder: its cached code is not loaded; this process's own folder instead
        folder = Path(tempfile.mkdtemp(prefix="sparse-detector-numba-"))
    numba.config.CACHE_DIR = str(folder)
    log.debug("neither the package's folder nor the user's cache folder is writable: numba caches in %s", folder)
    return folder


ensure_cache_dir()
