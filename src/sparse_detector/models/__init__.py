"""DETR models, matcher, losses and post-processing."""

from .build import build_activation, build_criterion, build_model
from .criterion import SetCriterion
from .detr import DETR
from .matcher import HungarianMatcher
from .postprocess import PostProcess
from .weights import deformable_detr_from_official, detr_from_official, load_state_dict_checked

__all__ = [
    "DETR",
    "HungarianMatcher",
    "PostProcess",
    "SetCriterion",
    "build_activation",
    "build_criterion",
    "build_model",
    "deformable_detr_from_official",
    "detr_from_official",
    "load_state_dict_checked",
]
