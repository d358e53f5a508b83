"""Piecewise-linear building blocks that sklearn-roll can train and certify."""

from ..linearize import UnsupportedOperationError, unit_mask
from .mlp import MLP

__all__ = ["MLP", "UnsupportedOperationError", "unit_mask"]
