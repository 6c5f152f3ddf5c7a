"""Wording shared by messages and figure titles."""

from __future__ import annotations

import difflib
import math
from collections.abc import Iterable


def counted(count: int, noun: str, plural: str = "") -> str:
    """``count`` and ``noun`` in the number that fits: ``1 image``, ``0 images``, ``3 boxes`` (``plural`` when the
    plural is not the noun + s)."""
    return f"{count} {noun if count == 1 else plural or noun + 's'}"


def decimals(value: float, places: int = 3) -> str:
    """``value`` with ``places`` decimals (``0.354``), but a nonzero value that would show as zero there with two
    significant digits (``0.00049``, ``7.8e-05``), so a table never prints ``0.000`` for something measured."""
    text = f"{value:.{places}f}"
    if value == 0 or not math.isfinite(value) or float(text) != 0:
        return text
    return f"{value:.2g}"


def closest_name(text: str, names: Iterable[str]) -> str | None:
    """The name most like a mistyped ``text``, if any: difflib's ratio of at least 0.6 between the names without
    their leading dashes (which every option shares) and letter case (``SPARSEMAX``: ``sparsemax``), 0.75 for a
    word of 4 or 5 letters (``--set`` is not ``--site``), 0.66 for shorter ones, which one wrong letter puts at 2/3
    (``vok``: ``voc``)."""
    by_word: dict[str, str] = {}
    for name in names:
        by_word.setdefault(name.lstrip("-").lower(), name)
    word = text.lstrip("-").lower()
    cutoff = 0.66 if len(word) <= 3 else 0.75 if len(word) < 6 else 0.6
    return next((by_word[match] for match in difflib.get_close_matches(word, list(by_word), n=1, cutoff=cutoff)), None)


def did_you_mean(word: str, names: Iterable[str]) -> str:
    """`` (did you mean 'name'?)`` with the name of ``names`` closest to a mistyped ``word``
    (:func:`closest_name`), else nothing."""
    close = closest_name(word, names)
    return f" (did you mean {close!r}?)" if close else ""
