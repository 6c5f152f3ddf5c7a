"""Attention activations (softmax, sparsemax, entmax15, learnable α-entmax, TVMax), their registry, and multi-head
attention with a selectable map."""

from .base import AttentionActivation, KeyGrid
from .entmax import AlphaEntmax, Entmax15, entmax15, entmax_alpha
from .functional import softmax
from .multihead import MultiheadAttention
from .registry import Softmax, available_activations, get_activation, masked_scores, register_activation
from .sparsemax import Sparsemax, sparsemax
from .tvmax import TVMax, tvmax

__all__ = [
    "AlphaEntmax",
    "AttentionActivation",
    "Entmax15",
    "KeyGrid",
    "MultiheadAttention",
    "Softmax",
    "Sparsemax",
    "TVMax",
    "available_activations",
    "entmax15",
    "entmax_alpha",
    "get_activation",
    "masked_scores",
    "register_activation",
    "softmax",
    "sparsemax",
    "tvmax",
]
