"""The ``sparse-detector`` command line (:func:`main`)."""

from .entry import main

__all__ = ["main"]
