"""Construction of the piecewise-linear activations the networks may use."""

from __future__ import annotations

from torch import nn

ACTIVATIONS = ("relu", "leaky_relu")


def make_activation(activation: str, negative_slope: float) -> nn.Module:
    """Return ``nn.ReLU()`` or ``nn.LeakyReLU(negative_slope)``.

    Parameters
    ----------
    activation : {"relu", "leaky_relu"}
        The activation's name.
    negative_slope : float
        Slope below zero of the LeakyReLU; ignored for ReLU.

    Returns
    -------
    nn.Module
    """
    if activation == "relu":
        return nn.ReLU()
    if activation == "leaky_relu":
        return nn.LeakyReLU(negative_slope)
    raise ValueError(
        f"activation must be one of {ACTIVATIONS}, got {activation!r}; sklearn-roll "
        "certifies piecewise-linear networks only."
    )
