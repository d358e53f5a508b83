"""Recording pre-activations and the linearized forward of piecewise-linear networks.

A network built from affine maps and ReLU / LeakyReLU activations is affine once
its activation pattern is frozen. This module runs a network on a batch, records the
pre-activation ``z_u(x)`` of every hidden unit (every input of a ReLU or LeakyReLU),
and pushes tangent directions ``v`` through the network with the pattern frozen, which
gives the directional derivatives ``g_u(x) . v`` of every unit at once, without one
backward pass per unit.

Two engines produce the same :class:`Linearization`:

* a fast path for plain chains of ``nn.Linear`` and activations (``nn.Sequential``,
  including :class:`sklearn_roll.nn.MLP`), which propagates the Jacobian layer by
  layer as large matrix products and, for l2 norms, works in the row space of the
  first layer, so its cost does not grow with the input dimension;
* a general path for any module, which uses forward-mode automatic differentiation
  (:func:`torch.func.jvp` under :func:`torch.func.vmap`) while a
  :class:`~torch.overrides.TorchFunctionMode` records activations and refuses every
  operation the certificates cannot model (the rules are in one table, one entry per
  operation).
"""

from __future__ import annotations

import copy
import math
from typing import Any

import torch
from torch import Tensor, nn
from torch.func import jvp, vmap

from ._chain import chain_linearize, chain_magnitudes, linear_chain
from ._linearization import AxisTangents, Linearization, Magnitudes, Reduce, Tangents
from ._recording import (
    MagnitudeRecorder,
    UnsupportedOperationError,
    first_output,
    frozen_slopes,
    run,
    unit_mask,
)

__all__ = [
    "AxisTangents",
    "Linearization",
    "Magnitudes",
    "UnsupportedOperationError",
    "check_supported",
    "first_output",
    "float64_copy",
    "frozen_slopes",
    "linear_chain",
    "linearize",
    "magnitudes",
    "record",
    "tangent_count",
    "unit_mask",
]


def float64_copy(module: nn.Module) -> nn.Module:
    """A float64 copy of ``module`` in eval mode, for exact certificates and predictions.

    The copy lives on the CPU, with the inputs that come from numpy, wherever the
    module was trained.

    Parameters
    ----------
    module : nn.Module
        The network, left unchanged.

    Returns
    -------
    nn.Module

    Examples
    --------
    >>> from sklearn_roll.linearize import float64_copy
    >>> from sklearn_roll.nn import MLP
    >>> next(float64_copy(MLP(3, 2)).parameters()).dtype
    torch.float64
    """
    return copy.deepcopy(module).to(device="cpu", dtype=torch.float64).eval()


def _flat(t: Tensor, n: int) -> Tensor:
    return t.reshape(n, -1)


def _general_linearize(
    module: nn.Module,
    x: Tensor,
    tangents: Tensor,
    reduce: Reduce | None = None,
    patterns: list[Tensor] | None = None,
) -> Linearization:
    n = x.shape[0]
    meta: dict[str, Any] = {}

    def f(inp: Tensor):
        out, rec = run(module, inp, patterns)
        meta["slopes"] = rec.negative_slopes
        meta["masked"] = [i for i, m in enumerate(rec.masks) if m is not None]
        masks = tuple(rec.masks[i].to(out.dtype) for i in meta["masked"])
        return out, tuple(rec.pre), masks

    if tangents.shape[0] == 1:
        primal, tangent = jvp(f, (x,), (tangents[0],))
        primal = _map(lambda t: t, primal)
        tangent = _map(lambda t: t.unsqueeze(0), tangent)
    else:
        primal, tangent = vmap(lambda v: jvp(f, (x,), (v,)), randomness="same")(tangents)
        primal = _map(lambda t: t[0], primal)
    (out, pre, masks), (out_t, pre_t, _) = primal, tangent
    counted: list[Tensor | None] = [None] * len(pre)
    for i, m in zip(meta["masked"], masks):
        counted[i] = _flat(m, n) > 0.5
    k = tangents.shape[0]
    pre_t = [t.reshape(k, n, -1).permute(1, 2, 0) for t in pre_t]
    return Linearization(
        output=out,
        pre=[_flat(z, n) for z in pre],
        counted=counted,
        negative_slopes=list(meta["slopes"]),
        pre_tangents=pre_t if reduce is None else [reduce(t) for t in pre_t],
        output_tangents=out_t.reshape(k, n, -1).permute(1, 2, 0),
    )


def _map(fn, tree):
    if isinstance(tree, (tuple, list)):
        return type(tree)(_map(fn, item) for item in tree)
    return fn(tree)


def record(module: nn.Module, x: Tensor) -> Linearization:
    """Run ``module`` on ``x`` and record every unit's pre-activation.

    Parameters
    ----------
    module : nn.Module
        A piecewise-linear network; its first output is taken as the logits.
    x : Tensor of shape (n, ...)
        A batch of inputs in the layout the module expects.

    Returns
    -------
    Linearization
        With ``pre_tangents`` and ``output_tangents`` left None.

    Raises
    ------
    UnsupportedOperationError
        If the module applies an operation to input-dependent values that is not
        affine, ReLU or LeakyReLU.

    Examples
    --------
    >>> import torch
    >>> from sklearn_roll.nn import MLP
    >>> from sklearn_roll.linearize import record
    >>> lin = record(MLP(4, 3, hidden_layer_sizes=(5, 6)), torch.randn(2, 4))
    >>> [z.shape for z in lin.pre]
    [torch.Size([2, 5]), torch.Size([2, 6])]
    """
    chain = linear_chain(module)
    if chain is not None and x.dim() == 2:
        return chain_linearize(chain, x, None)
    out, rec = run(module, x)
    n = x.shape[0]
    return Linearization(
        output=out,
        pre=[_flat(z, n) for z in rec.pre],
        counted=[None if m is None else _flat(m, n) for m in rec.masks],
        negative_slopes=rec.negative_slopes,
    )


def check_supported(module: nn.Module, x: Tensor) -> None:
    """Raise :class:`UnsupportedOperationError` if ``module`` cannot be certified.

    Runs the module once on ``x`` under the recording mode, which refuses max
    pooling, smooth activations, normalisation by input statistics, BatchNorm
    without running statistics, products of input-dependent tensors and unknown
    operations, naming the layer. Train-mode BatchNorm passes: its batch
    statistics are held constant (see :func:`sklearn_roll.loss.roll_penalty`).

    Parameters
    ----------
    module : nn.Module
        The network to check.
    x : Tensor of shape (n, ...)
        A few inputs in the layout the module expects.

    Examples
    --------
    >>> import torch
    >>> from sklearn_roll.linearize import check_supported
    >>> from sklearn_roll.nn import MLP
    >>> check_supported(MLP(3, 2), torch.zeros(1, 3))  # a Linear / ReLU chain: fine
    """
    if linear_chain(module) is not None and x.dim() == 2:
        return
    with torch.no_grad():
        run(module, x)


def tangent_count(module: nn.Module, x: Tensor, tangents: Tangents) -> int:
    """How many tangent directions :func:`linearize` pushes through per example.

    Parameters
    ----------
    module : nn.Module
        The network.
    x : Tensor of shape (n, ...)
        Example inputs (only the shape is used).
    tangents : {"basis", "l2"}, Tensor of shape (k, n, ...) or AxisTangents
        As in :func:`linearize`.

    Returns
    -------
    int

    Examples
    --------
    >>> import torch
    >>> from sklearn_roll.linearize import tangent_count
    >>> from sklearn_roll.nn import MLP
    >>> x = torch.zeros(1, 784)
    >>> tangent_count(MLP(784, 10, hidden_layer_sizes=(300,)), x, "l2")  # the row space
    300
    """
    if isinstance(tangents, AxisTangents):
        return tangents.indices.shape[0]
    if isinstance(tangents, Tensor):
        return tangents.shape[0]
    d = math.prod(x.shape[1:])
    chain = linear_chain(module)
    if tangents == "l2" and chain is not None and x.dim() == 2:
        return min(d, chain[0][0].weight.shape[0])
    return d


def _basis_tangents(x: Tensor) -> Tensor:
    """The standard basis of the input space, one tangent batch per axis.

    Returns a (D, n, ...) tensor, stride-0 along the batch so it costs D^2 memory.
    """
    n = x.shape[0]
    d = math.prod(x.shape[1:])
    eye = torch.eye(d, dtype=x.dtype, device=x.device)
    return eye.reshape(d, 1, *x.shape[1:]).expand(d, n, *x.shape[1:])


def linearize(
    module: nn.Module,
    x: Tensor,
    tangents: Tangents = "basis",
    reduce: Reduce | None = None,
    *,
    patterns: list[Tensor] | None = None,
) -> Linearization:
    """Pre-activations and their derivatives along tangent directions.

    Parameters
    ----------
    module : nn.Module
        A piecewise-linear network.
    x : Tensor of shape (n, ...)
        The points.
    tangents : {"basis", "l2"}, Tensor of shape (k, n, ...) or AxisTangents
        ``"basis"``: the standard basis of the input space, so ``pre_tangents``
        holds the full unit gradients ``g_u(x)``. ``"l2"``: any basis that preserves
        l2 norms and inner products of unit gradients; for Linear chains this is the
        row space of the first layer, of dimension ``min(D, width)``, else the
        standard basis. A tensor: explicit directions, k per example.
        :class:`AxisTangents`: k input axes per example, by index.
    reduce : callable or None, default=None
        Applied to each block of unit tangents, shaped (n, u, k), as soon as it is
        computed (e.g. a norm over the last axis); ``pre_tangents`` then holds the
        results. Saves memory and time when only a reduction is needed.
    patterns : list of Tensor of bool, or None, default=None
        The activation pattern to freeze, one (n, u) tensor per recorded
        activation call (True: the unit is on), e.g. ``[z > 0 for z in
        record(float64_copy(module), x.double()).pre]``. None takes the pattern
        of the module's own forward pass on ``x``. Freezing a float64 pattern keeps
        a float32 Jacobian in the same linear region as the float64 certificate
        next to region boundaries, where float32 rounding may flip a unit. ``pre``
        and ``output`` still hold the module's own forward values.

    Returns
    -------
    Linearization

    Examples
    --------
    >>> import torch
    >>> from sklearn_roll.nn import MLP
    >>> from sklearn_roll.linearize import linearize
    >>> lin = linearize(MLP(4, 3, hidden_layer_sizes=(5,)), torch.randn(2, 4))
    >>> lin.pre_tangents[0].shape
    torch.Size([2, 5, 4])
    """
    chain = linear_chain(module)
    if chain is not None and x.dim() == 2:
        return chain_linearize(chain, x, tangents, reduce, patterns)
    if isinstance(tangents, str):
        if tangents not in ("basis", "l2"):
            raise ValueError(f"tangents must be 'basis', 'l2' or a tensor, got {tangents!r}.")
        tangents = _basis_tangents(x)
    elif isinstance(tangents, AxisTangents):
        tangents = tangents.dense(x)
    return _general_linearize(module, x, tangents, reduce, patterns)


def magnitudes(
    module: nn.Module, x: Tensor, tangents: Tensor | AxisTangents | str, patterns: list[Tensor]
) -> Magnitudes:
    """Bounds on the terms a float64 evaluation of the network at ``x`` sums.

    The network is run on ``|x|`` with every constant (weights, biases, fill values)
    made absolute, subtractions turned into additions and each activation frozen to
    the absolute value of its slope in ``patterns``; ``tangents`` (non-negative) are
    pushed through the linear part of that absolute network. By the standard model of
    floating-point arithmetic, a value that ``r`` roundings reach errs by at most
    ``gamma_r`` times its bound (see *Precision* in :mod:`sklearn_roll.regions`).

    Parameters
    ----------
    module : nn.Module
        A piecewise-linear network in float64 and eval mode.
    x : Tensor of shape (n, ...)
        The points (NaN marks sequence padding, as for the module).
    tangents : Tensor of shape (k, n, ...), AxisTangents or "basis"
        Non-negative tangent directions (e.g. ``|d|``, or ones for a bound on row
        sums of the Jacobian).
    patterns : list of Tensor of bool
        The activation pattern, one (n, u) tensor per activation call.

    Returns
    -------
    Magnitudes

    Examples
    --------
    >>> import torch
    >>> from sklearn_roll.linearize import magnitudes, record
    >>> from sklearn_roll.nn import MLP
    >>> net, x = MLP(3, 2, hidden_layer_sizes=(4,)).double(), torch.randn(5, 3).double()
    >>> on = [z > 0 for z in record(net, x).pre]
    >>> magnitudes(net, x, "basis", on).roundings
    [4]
    """
    chain = linear_chain(module)
    if chain is not None and x.dim() == 2:
        with torch.no_grad():
            return chain_magnitudes(chain, x, tangents, patterns)
    if isinstance(tangents, str):
        tangents = _basis_tangents(x)
    elif isinstance(tangents, AxisTangents):
        tangents = tangents.dense(x)
    n, k = x.shape[0], tangents.shape[0]
    meta: dict[str, Any] = {}

    def f(inp: Tensor):
        recorder = MagnitudeRecorder(module, inp, patterns)
        with recorder:
            out = module(inp)
        meta["roundings"] = recorder.counts
        meta["output"] = recorder.rounds(out[0] if isinstance(out, (tuple, list)) else out)
        return first_output(out), tuple(recorder.pre)

    with torch.no_grad():
        primal, tangent = vmap(lambda v: jvp(f, (x.abs(),), (v,)), randomness="same")(tangents)
    (out, pre), (out_t, pre_t) = _map(lambda t: t[0], primal), tangent
    return Magnitudes(
        pre=[_flat(z, n) for z in pre],
        pre_tangents=[t.reshape(k, n, -1).permute(1, 2, 0) for t in pre_t],
        output=out,
        output_tangents=out_t.reshape(k, n, -1).permute(1, 2, 0),
        roundings=list(meta["roundings"]),
        output_roundings=int(meta["output"]),
    )
