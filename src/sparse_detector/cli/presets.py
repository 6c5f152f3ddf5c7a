"""Presets whose data the package generates (the shapes), and what to run when that data is missing."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from ..config import Config, load_config

# The quickstart's data: 128 px images, 1-3 shapes of 24-56 px, classes = colours (see configs/shapes_tiny.yaml).
QUICKSTART_TRAIN_IMAGES = 1200
QUICKSTART_VAL_IMAGES = 200

# Presets whose data the package can generate: what to run when it is missing.
SHAPES_DATA_COMMAND = (
    f"sparse-detector data shapes data/shapes --num-images {QUICKSTART_TRAIN_IMAGES} --num-val {QUICKSTART_VAL_IMAGES}"
)
_SHAPES_DATA_HINT = (
    f"{SHAPES_DATA_COMMAND}   (or `sparse-detector quickstart`, which generates the data and trains in one go)"
)
PRESET_DATA_HINTS = {"shapes_tiny": _SHAPES_DATA_HINT, "shapes_tiny_deformable": _SHAPES_DATA_HINT}


def missing_data_hint(config_name: str, config: Config, splits: Sequence[str] = ("train", "val")) -> str:
    """What to run when a preset's data of ``splits`` is not there yet ('' when the data exists, nothing can
    generate it, or the missing file is one given with --set rather than the preset's own)."""
    hint = PRESET_DATA_HINTS.get(Path(config_name).stem)
    if hint is None:
        return ""
    own = load_config(config_name).data
    own_files = {getattr(own, split).annotations for split in splits} - {""}
    given = [getattr(config.data, split).annotations for split in splits]
    missing = [path for path in given if path in own_files and not Path(path).is_file()]
    if not missing:
        return ""
    return (
        f"the data of preset {config_name!r} is not there yet ({', '.join(missing)}, relative to {Path.cwd()}); "
        f"generate it first:\n  {hint}"
    )
