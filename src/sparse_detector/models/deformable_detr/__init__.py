"""Deformable DETR (fundamentalvision/Deformable-DETR semantics and names) with sparse sampling weights."""

from .build import build_deformable_criterion, build_deformable_detr
from .criterion import FocalHungarianMatcher, FocalSetCriterion
from .model import DeformableDETR
from .transformer import DeformableTransformer

__all__ = [
    "DeformableDETR",
    "DeformableTransformer",
    "FocalHungarianMatcher",
    "FocalSetCriterion",
    "build_deformable_criterion",
    "build_deformable_detr",
]
