"""Wording shared by messages and figure titles."""

from __future__ import annotations

import difflib
from collections.abc import Iterable


def counted(count: int, noun: str, plural: str = "") -> str:
    """``count`` and ``noun`` in the number that fits: ``1 image``, ``0 images``, ``3 boxes`` (``plural`` when the
    plural is not the noun + s)."""
    return f"{count} {noun if count == 1 else plural or noun + 's'}"


def did_you_mean(word: str, names: Iterable[str]) -> str:
    """`` (did you mean 'name'?)`` with the name of ``names`` closest to a mistyped ``word`` (difflib's ratio of at
    least 0.6), else nothing."""
    close = difflib.get_close_matches(word, list(names), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""
