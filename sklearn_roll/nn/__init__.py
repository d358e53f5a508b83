"""Piecewise-linear building blocks that sklearn-roll can train and certify."""

from ..linearize import UnsupportedOperationError, unit_mask
from .cnn import ResidualBlock, ResNet
from .mlp import MLP
from .rnn import CayleyLinear, ElmanRNN

__all__ = [
    "MLP",
    "CayleyLinear",
    "ElmanRNN",
    "ResNet",
    "ResidualBlock",
    "UnsupportedOperationError",
    "unit_mask",
]
