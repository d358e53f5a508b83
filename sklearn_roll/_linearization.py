"""The result type of every linearization engine, and tangents given by axis."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable

import torch
from torch import Tensor

__all__ = ["AxisTangents", "Linearization", "Magnitudes", "Reduce", "Tangents"]

Reduce = Callable[[Tensor], Tensor]


@dataclasses.dataclass(frozen=True)
class AxisTangents:
    """Input coordinate axes as tangents, given by index rather than as one-hot tensors.

    A Linear chain pushes an axis through its first layer by selecting a column of the
    weight matrix instead of multiplying by a one-hot vector.

    Attributes
    ----------
    indices : Tensor of int64, shape (k, n)
        ``indices[j, i]`` is the flat input coordinate of example i's j-th tangent.

    Examples
    --------
    >>> import torch
    >>> from sklearn_roll.linearize import AxisTangents
    >>> axes = AxisTangents(torch.tensor([[0, 2]]))  # one axis for each of 2 examples
    >>> axes.dense(torch.zeros(2, 3))[0]
    tensor([[1., 0., 0.],
            [0., 0., 1.]])
    """

    indices: Tensor

    def dense(self, x: Tensor) -> Tensor:
        """The tangents as one-hot tensors of shape (k, n, ...) like x."""
        k, n = self.indices.shape
        flat = torch.zeros(k, n, math.prod(x.shape[1:]), dtype=x.dtype, device=x.device)
        flat.scatter_(2, self.indices[:, :, None], 1.0)
        return flat.reshape(k, *x.shape)


Tangents = str | Tensor | AxisTangents


@dataclasses.dataclass
class Linearization:
    """Unit pre-activations and their directional derivatives at a batch of points.

    Each list holds one entry per recorded activation call (a layer, or a layer at
    one time step), with the units of that call flattened.

    Attributes
    ----------
    output : Tensor of shape (n, n_outputs)
        The network's output (logits) at the points.
    pre : list of Tensor of shape (n, u)
        Pre-activations ``z_u(x)``.
    counted : list of (Tensor of bool, shape (n, u)) or None
        Which units count (False at padded time steps); None means all of them.
    negative_slopes : list of float
        Slope of each call's activation below zero (0 for ReLU).
    pre_tangents : list of Tensor of shape (n, u, k), or None
        ``g_u(x) . v_j`` for the k tangent directions.
    output_tangents : Tensor of shape (n, n_outputs, k), or None
        Directional derivatives of the output.

    Examples
    --------
    >>> import torch
    >>> from sklearn_roll.linearize import linearize
    >>> from sklearn_roll.nn import MLP
    >>> lin = linearize(MLP(3, 2, hidden_layer_sizes=(4,)), torch.randn(5, 3))
    >>> lin.n_units, lin.pre_tangents[0].shape
    (4, torch.Size([5, 4, 3]))
    """

    output: Tensor
    pre: list[Tensor]
    counted: list[Tensor | None]
    negative_slopes: list[float]
    pre_tangents: list[Tensor] | None = None
    output_tangents: Tensor | None = None

    @property
    def n_units(self) -> int:
        """Number of units per example, padded ones included."""
        return sum(z.shape[1] for z in self.pre)


@dataclasses.dataclass
class Magnitudes:
    """Upper bounds on what a float64 forward pass and its linearization sum.

    The network run on the absolute value of the points, with absolute weights and
    biases, additions for subtractions and the absolute frozen slopes: every entry
    bounds the sum of the absolute values of the terms that the corresponding
    pre-activation, output or directional derivative adds up, and ``roundings``
    counts the roundings that reach it.

    Attributes
    ----------
    pre : list of Tensor of shape (n, u)
        Bounds for the pre-activations.
    pre_tangents : list of Tensor of shape (n, u, k)
        Bounds for their derivatives along the k (absolute) tangents.
    output : Tensor of shape (n, n_outputs)
        Bounds for the outputs.
    output_tangents : Tensor of shape (n, n_outputs, k)
        Bounds for the outputs' derivatives.
    roundings : list of int
        Roundings that reach each block of pre-activations (and their derivatives).
    output_roundings : int
        Roundings that reach the outputs.

    Examples
    --------
    See :func:`sklearn_roll.linearize.magnitudes`, which returns them:

    >>> import torch
    >>> from sklearn_roll.linearize import Magnitudes, magnitudes
    >>> from sklearn_roll.nn import MLP
    >>> net = MLP(3, 2, hidden_layer_sizes=(4,)).double()
    >>> on = [torch.ones(5, 4, dtype=torch.bool)]
    >>> isinstance(magnitudes(net, torch.randn(5, 3).double(), "basis", on), Magnitudes)
    True
    """

    pre: list[Tensor]
    pre_tangents: list[Tensor]
    output: Tensor
    output_tangents: Tensor
    roundings: list[int]
    output_roundings: int
