"""The fast path for plain chains of ``nn.Linear`` and ReLU / LeakyReLU layers.

Such chains (``nn.Sequential``, including :class:`sklearn_roll.nn.MLP`) are linearized
by explicit Jacobian propagation: each layer is one large matrix product over all
examples and tangents, a ReLU's inactive units are skipped, and for l2 norms the
tangents live in the row space of the first layer (``W1 = R^T Q^T``), so the cost does
not grow with the input dimension. :func:`chain_vjp` gives a few rows exactly in
reverse mode.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ._linearization import AxisTangents, Linearization, Magnitudes, Reduce, Tangents
from ._recording import frozen_slopes

__all__ = ["chain_linearize", "chain_magnitudes", "chain_vjp", "linear_chain"]

Chain = list[tuple[nn.Linear, float | None]]


def linear_chain(module: nn.Module) -> Chain | None:
    """The (Linear, slope) layers of a plain Linear/activation chain, or None.

    Such chains (``nn.Sequential`` of ``nn.Linear`` and ReLU / LeakyReLU, e.g.
    :class:`sklearn_roll.nn.MLP`) take the fast Jacobian path for 2-D input.

    Parameters
    ----------
    module : nn.Module
        Any module.

    Returns
    -------
    list of (nn.Linear, float or None), or None
        Each Linear layer with the slope below zero of the activation after it
        (0 for ReLU), None for the output layer; None if the module is not such a
        chain.

    Examples
    --------
    >>> from torch import nn
    >>> from sklearn_roll.linearize import linear_chain
    >>> chain = linear_chain(nn.Sequential(nn.Linear(3, 4), nn.LeakyReLU(0.1), nn.Linear(4, 2)))
    >>> [slope for _, slope in chain]
    [0.1, None]
    """
    if not isinstance(module, nn.Sequential) or type(module).forward is not nn.Sequential.forward:
        return None
    if module._forward_hooks or module._forward_pre_hooks:
        return None
    chain: list[list[Any]] = []
    for layer in module:
        if layer._forward_hooks or layer._forward_pre_hooks:
            return None
        if type(layer) is nn.Linear:
            if chain and chain[-1][1] is None:
                return None
            chain.append([layer, None])
        elif type(layer) in (nn.ReLU, nn.LeakyReLU):
            if not chain or chain[-1][1] is not None:
                return None
            chain[-1][1] = 0.0 if type(layer) is nn.ReLU else float(layer.negative_slope)
        elif type(layer) is nn.Identity or (
            type(layer) is nn.Dropout and (not layer.training or layer.p == 0)
        ):
            continue
        else:
            return None
    if not chain or chain[-1][1] is not None:
        return None
    return [(layer, slope) for layer, slope in chain]


def chain_linearize(
    chain: Chain,
    x: Tensor,
    tangents: Tangents | None,
    reduce: Reduce | None = None,
    patterns: list[Tensor] | None = None,
) -> Linearization:
    """Linearize a Linear/activation chain by explicit Jacobian propagation.

    Tangent images are kept in the layout (units, n, k) so that each layer is one
    large matrix product ``W @ T`` over all examples and tangents. With ``reduce``
    each layer's tangents are reduced as soon as they exist and then masked in
    place, so only one layer's tangents are alive at a time.
    """
    n = x.shape[0]
    h = x.reshape(n, -1)
    pre: list[Tensor] = []
    pre_tangents: list[Tensor] = []
    slopes: list[float] = []
    T: Tensor | None = None
    on: Tensor | None = None
    output = output_t = None
    for linear, slope in chain:
        z = F.linear(h, linear.weight, linear.bias)
        if tangents is not None:
            W = linear.weight
            if T is None:
                T = _first_tangents(W, h, tangents)
            elif on is not None:
                T = _live_product(W, T, on)
            else:
                T = (W @ T.reshape(T.shape[0], -1)).reshape(W.shape[0], n, -1)
        if slope is None:
            output, output_t = z, None if T is None else T.permute(1, 0, 2)
            break
        active = z > 0 if patterns is None else patterns[len(pre)]
        pre.append(z)
        slopes.append(slope)
        s = frozen_slopes(active, slope, z.dtype)
        if T is not None:
            view = T.permute(1, 0, 2)
            pre_tangents.append(view if reduce is None else reduce(view))
            # In place only on a tensor of its own: not on the first layer's expanded view.
            owned = T.is_contiguous() or view.is_contiguous()
            if reduce is not None and owned and not T.requires_grad:
                T.mul_(s.T[:, :, None])
            else:
                T = T * s.T[:, :, None]
        # A ReLU's inactive units pass zero tangents on, which the next product skips.
        on = active if slope == 0 else None
        h = F.leaky_relu(z, slope) if slope else F.relu(z)
    return Linearization(
        output=output,
        pre=pre,
        counted=[None] * len(pre),
        negative_slopes=slopes,
        pre_tangents=pre_tangents if tangents is not None else None,
        output_tangents=output_t,
    )


def chain_magnitudes(
    chain: Chain, x: Tensor, tangents: Tensor | AxisTangents | str, patterns: list[Tensor]
) -> Magnitudes:
    """The :class:`Magnitudes` of a Linear chain at the points ``x``.

    The chain with absolute weights and biases, on ``|x|``, each activation
    multiplying by the absolute value of its slope in ``patterns``; ``tangents``
    (non-negative, or axes, or ``"basis"``) pushed through its linear part.
    """
    n = x.shape[0]
    h = x.reshape(n, -1).abs()
    pre: list[Tensor] = []
    pre_tangents: list[Tensor] = []
    roundings: list[int] = []
    count = 0
    T: Tensor | None = None
    for i, (linear, slope) in enumerate(chain):
        weight = linear.weight.detach().abs()
        bias = None if linear.bias is None else linear.bias.detach().abs()
        z = F.linear(h, weight, bias)
        if T is None:
            T = _first_tangents(weight, h, tangents)
        else:
            T = (weight @ T.reshape(T.shape[0], -1)).reshape(weight.shape[0], n, -1)
        # An inner product of the layer's fan-in, and the bias.
        count += weight.shape[1] + (bias is not None)
        if slope is None:
            return Magnitudes(pre, pre_tangents, z, T.permute(1, 0, 2), roundings, count)
        pre.append(z)
        pre_tangents.append(T.permute(1, 0, 2))
        roundings.append(count)
        s = frozen_slopes(patterns[i], abs(slope), z.dtype)
        h = z * s
        T = T * s.T[:, :, None]
        count += 0 if slope in (0.0, 1.0) else 1
    raise ValueError("A Linear chain ends with a Linear layer.")


def _live_product(W: Tensor, T: Tensor, on: Tensor) -> Tensor:
    """``W @ T`` per example over its active units only, in the layout (out, n, k).

    ``T`` (units, n, k) is zero at the inactive units of each example (ReLU), so the
    product needs only the active ones: typically a third to a half of the units
    of a trained network, and as much of the work (certificates, without autograd). Inner products only lose zero
    terms, so :func:`sklearn_roll.regions.chain_rounding` still bounds the rounding.
    """
    units, n, k = T.shape
    width = int(on.sum(dim=1).max()) if n else 0
    # The gathers pay off for many tangents and no autograd graph (whose backward
    # through the column gather costs more than the product saves).
    graph = torch.is_grad_enabled() and (W.requires_grad or T.requires_grad)
    if graph or k < 64 or width > 0.75 * units:
        return (W @ T.reshape(units, -1)).reshape(W.shape[0], n, k)
    # Active units first in each row; the padding picks inactive units, whose tangents are zero.
    live = torch.argsort(on.to(torch.uint8), dim=1, descending=True, stable=True)[:, :width]
    tangents = T.permute(1, 0, 2).gather(1, live[:, :, None].expand(-1, -1, k))
    return torch.bmm(W[:, live].permute(1, 0, 2), tangents).permute(1, 0, 2)


def _first_tangents(W: Tensor, h: Tensor, tangents: Tangents) -> Tensor:
    n = h.shape[0]
    if isinstance(tangents, AxisTangents):
        return W[:, tangents.indices.T]
    if isinstance(tangents, Tensor):
        k = tangents.shape[0]
        if n > 1 and tangents.stride(1) == 0:
            # The same directions for every example: one product, shared.
            return (W @ tangents[:, 0].reshape(k, -1).T)[:, None, :].expand(-1, n, -1)
        return torch.einsum("hd,knd->hnk", W, tangents.reshape(k, n, -1))
    if tangents == "l2" and W.shape[1] > W.shape[0]:
        # Row norms of J = M W equal those of M W Q when the columns of Q span the
        # row space of W. Q is held constant: the gradient of ||M W Q|| with
        # respect to W is then still exact, since W Q Q^T = W.
        with torch.no_grad():
            Q = torch.linalg.qr(W.T).Q
        W = W @ Q
    return W[:, None, :].expand(-1, n, -1)


def chain_vjp(
    module: nn.Module,
    patterns: list[Tensor],
    layer: int,
    cotangents: Tensor,
    *,
    absolute: bool = False,
) -> Tensor:
    """Rows ``c^T dz/dx`` of a Linear chain with frozen activation patterns.

    Reverse mode, one row per cotangent: the cheap way to get a few unit gradients
    (or output-gradient differences) exactly, e.g. in float64 for the units whose
    float32 values are too uncertain.

    Parameters
    ----------
    module : nn.Module
        A Linear chain (see :func:`linear_chain`); the arithmetic is that of
        ``cotangents``, to whose dtype the weights are cast.
    patterns : list of Tensor of bool, shape (m, u_i)
        For each row, the activation pattern of its example, one tensor per hidden
        layer (at least the layers below ``layer``).
    layer : int
        Which pre-activations the cotangents weigh: hidden layer index, or
        ``len(hidden layers)`` for the output.
    cotangents : Tensor of shape (m, width of that layer)
        One cotangent per row.
    absolute : bool, default=False
        Use the absolute weights and slopes (with non-negative cotangents, bounds on
        the absolute terms each entry sums).

    Returns
    -------
    Tensor of shape (m, n_features)

    Examples
    --------
    >>> import torch
    >>> from sklearn_roll.nn import MLP
    >>> from sklearn_roll._chain import chain_vjp
    >>> from sklearn_roll.linearize import record
    >>> net, x = MLP(4, 3, hidden_layer_sizes=(5,)), torch.randn(2, 4)
    >>> on = [z > 0 for z in record(net, x).pre]
    >>> chain_vjp(net, on, 1, torch.eye(3)[[0, 2]]).shape
    torch.Size([2, 4])
    """
    chain = linear_chain(module)
    if chain is None:
        raise ValueError(
            f"chain_vjp needs a chain of nn.Linear and ReLU / LeakyReLU layers, got "
            f"{type(module).__name__}."
        )
    v = cotangents
    for i in range(layer, -1, -1):
        linear, _ = chain[i]
        weight = linear.weight.to(v.dtype)
        v = v @ (weight.abs() if absolute else weight)
        if i:
            slope = chain[i - 1][1]
            v = v * frozen_slopes(patterns[i - 1], abs(slope) if absolute else slope, v.dtype)
    return v
