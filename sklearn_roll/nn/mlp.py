"""Fully connected ReLU / LeakyReLU network for tabular data."""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

from ._activation import make_activation


class MLP(nn.Sequential):
    """Multilayer perceptron: ``Linear -> activation`` blocks and a linear output.

    A plain chain of ``nn.Linear`` and activations, so certificates and the ROLL loss
    take the fast Jacobian path of :mod:`sklearn_roll.linearize`.

    Parameters
    ----------
    n_features : int
        Input dimension.
    n_outputs : int
        Output dimension (number of classes, or of regression targets).
    hidden_layer_sizes : sequence of int, default=(100, 100)
        Width of each hidden layer.
    activation : {"relu", "leaky_relu"}, default="relu"
        Hidden activation.
    negative_slope : float, default=0.01
        Slope below zero of the LeakyReLU.

    Examples
    --------
    >>> import torch
    >>> from sklearn_roll.nn import MLP
    >>> net = MLP(4, 3, hidden_layer_sizes=(8, 8))
    >>> net(torch.randn(5, 4)).shape
    torch.Size([5, 3])
    """

    def __init__(
        self,
        n_features: int,
        n_outputs: int,
        hidden_layer_sizes: Sequence[int] = (100, 100),
        activation: str = "relu",
        negative_slope: float = 0.01,
    ) -> None:
        layers: list[nn.Module] = []
        width = n_features
        for size in hidden_layer_sizes:
            layers += [nn.Linear(width, size), make_activation(activation, negative_slope)]
            width = size
        layers.append(nn.Linear(width, n_outputs))
        super().__init__(*layers)
