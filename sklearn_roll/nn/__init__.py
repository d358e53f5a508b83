"""Piecewise-linear building blocks that sklearn-roll can train and certify."""

from ..linearize import UnsupportedOperationError, unit_mask
from .cnn import ResidualBlock, ResNet
from .cnn1d import ConvBlock1d, ConvNet1d
from .mlp import MLP
from .rnn import CayleyLinear, ElmanRNN

__all__ = [
    "MLP",
    "CayleyLinear",
    "ConvBlock1d",
    "ConvNet1d",
    "ElmanRNN",
    "ResNet",
    "ResidualBlock",
    "UnsupportedOperationError",
    "unit_mask",
]
