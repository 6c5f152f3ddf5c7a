"""sparse-detector: DETR-family detectors with sparse attention maps, and tools to analyse their attention.

The names below are imported on first use (PEP 562), so importing the package (and ``sparse-detector --help``)
does not load torch.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    "Config": "sparse_detector.config",
    "load_config": "sparse_detector.config",
    "available_models": "sparse_detector.models",
    "build_criterion": "sparse_detector.models",
    "build_model": "sparse_detector.models",
    "deformable_detr_from_official": "sparse_detector.models",
    "detr_from_official": "sparse_detector.models",
    "load_trained_model": "sparse_detector.engine.inference",
    "record_run_batch": "sparse_detector.engine.inference",
    "register_model": "sparse_detector.models",
}

__all__ = ["__version__", *sorted(_EXPORTS)]


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'sparse_detector' has no attribute {name!r}")
