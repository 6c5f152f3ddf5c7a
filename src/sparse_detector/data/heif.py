"""HEIC/HEIF photos (phones' default format), read through pillow-heif's Pillow plugin when it is installed
(``pip install 'sparse-detector[heif]'``); without it they are named, not read."""

from __future__ import annotations

import functools
import importlib.util

SUFFIXES = (".heic", ".heif")
# Checked without importing the plugin (it loads libheif): the first image opened registers it (:func:`register`).
INSTALLED = importlib.util.find_spec("pillow_heif") is not None
INSTALL_HINT = "pip install 'sparse-detector[heif]' (pillow-heif) to read HEIC photos"


@functools.cache
def register() -> None:
    """Let Pillow open HEIC/HEIF files, once a process (data loader workers included), when pillow-heif is there."""
    if INSTALLED:
        import pillow_heif

        pillow_heif.register_heif_opener()
