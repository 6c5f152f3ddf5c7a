"""Detectors by name (``model.arch``), their typed outputs, matcher, losses, post-processing and weight loading.

Importing this package registers the built-in models (``detr``); see ``registry.py`` for adding one.
"""

from .build import build_activation, build_criterion
from .criterion import SetCriterion
from .detr import DETR, build_detr
from .matcher import HungarianMatcher
from .outputs import DetectionOutput
from .postprocess import PostProcess
from .registry import available_models, build_model, register_model
from .weights import detr_from_official, load_official, load_state_dict_checked

__all__ = [
    "DETR",
    "DetectionOutput",
    "HungarianMatcher",
    "PostProcess",
    "SetCriterion",
    "available_models",
    "build_activation",
    "build_criterion",
    "build_detr",
    "build_model",
    "detr_from_official",
    "load_official",
    "load_state_dict_checked",
    "register_model",
]
