"""sparse-detector: DETR-family detectors with sparse attention maps, and tools to analyse their attention."""

from .config import Config, load_config
from .models import available_models, build_criterion, build_model, detr_from_official, register_model

__version__ = "0.1.0"

__all__ = [
    "Config",
    "__version__",
    "available_models",
    "build_criterion",
    "build_model",
    "detr_from_official",
    "load_config",
    "register_model",
]
