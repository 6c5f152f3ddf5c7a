"""Wording shared by messages and figure titles."""

from __future__ import annotations


def counted(count: int, noun: str, plural: str = "") -> str:
    """``count`` and ``noun`` in the number that fits: ``1 image``, ``0 images``, ``3 boxes`` (``plural`` when the
    plural is not the noun + s)."""
    return f"{count} {noun if count == 1 else plural or noun + 's'}"
