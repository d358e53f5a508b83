"""Tight bounds on the float64 rounding of a Linear chain's forward pass.

The generic allowance (:func:`~sklearn_roll._rounding.float64_errors`) bounds the
error of every value by ``gamma_r`` times the network run on absolute values, with r
the roundings along the longest chain of sums. For a deep MLP that product of
absolute weights exceeds the values by orders of magnitude, and a unit close to
its boundary loses a relative ``1e-5`` of its distance to it. Here the error is
followed layer by layer instead:

* the first layer, whose inner products are the longest (one term per input
  feature), is recomputed without rounding: both operands are split into slices of
  ``beta`` bits on a common grid per row (Ozaki's scheme), so that every product of
  slices and every partial sum of their matrix product is an integer below 2^53,
  exact in any summation order; what the slices leave out is bounded;
* every later layer adds its own inner products' rounding, ``gamma_(m+1)`` times
  its absolute terms, to the propagated error ``|W| |D| e`` of the layer below
  (``D`` the frozen slopes, the float64 pattern).

The bounds concern the values the float64 record computed (passed in, since another
batch size may round differently) and hold whatever the summation order of the
matrix products. Where a value overflows, its bound is infinite.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from ._chain import Chain
from ._rounding import gamma64

__all__ = ["chain_forward_errors"]

_U64 = 2.0**-53
# The smallest subnormal: the largest error of an operation that underflows.
_TINY = 2.0**-1074
# Slices per operand: 3 x 21 bits reach far below float64's 53.
_SLICES = 3
# Exponents (of a row, or of a product of two rows) beyond this take the generic
# bound: the power-of-two scalings of the slices must not overflow, and their factors
# must not underflow (2^-(900 + 6 beta) is still a subnormal power of two).
_EXPONENT_RANGE = 900


def _finite_or_inf(bound: Tensor) -> Tensor:
    """NaN (from an overflow) read as an infinite bound."""
    return torch.where(torch.isnan(bound), math.inf, bound)


def _slice_bits(m: int) -> int:
    """Bits per slice for which every inner product of length m is exact."""
    return (53 - math.ceil(math.log2(m + 1))) // 2


def _slices(a: Tensor, beta: int) -> tuple[list[Tensor], Tensor]:
    """Integer-valued slices of the rows of ``a`` and the rows' exponents.

    ``a = 2^E (sum_k I_k 2^(-k beta) + R 2^(-K beta))`` row by row, with ``|I_k| <
    2^beta`` integers and ``|R| < 1``; every step (power-of-two scaling, truncation,
    subtraction of the truncated part) is exact.
    """
    _, exponent = torch.frexp(a.abs().amax(dim=1, keepdim=True))
    rest = torch.ldexp(a, -exponent)
    parts = []
    for _ in range(_SLICES):
        rest = torch.ldexp(rest, torch.tensor(beta))
        part = torch.trunc(rest)
        parts.append(part)
        rest = rest - part
    return parts, exponent


def _first_layer_error(weight: Tensor, bias: Tensor | None, x: Tensor, z: Tensor) -> Tensor:
    """Bound on ``|z - (x W^T + b)|`` in exact arithmetic, for computed values ``z``."""
    m = weight.shape[1]
    beta = _slice_bits(m)
    w_parts, w_exp = _slices(weight, beta)
    x_parts, x_exp = _slices(x, beta)
    scale = x_exp + w_exp.T  # (n, out)
    exponents = (w_exp.abs().max(), x_exp.abs().max(), scale.abs().max())
    if max(e.item() for e in exponents) > _EXPONENT_RANGE:
        return torch.full_like(z, math.inf)
    total = torch.zeros_like(z) if bias is None else bias.expand_as(z).clone()
    absolute = total.abs()
    terms = 1
    for j, wj in enumerate(w_parts, start=1):
        for k, xk in enumerate(x_parts, start=1):
            if j + k > _SLICES + 1 or not (wj.any() and xk.any()):
                continue
            # Integers below 2^(2 beta) summed m at a time: exact in any order.
            term = torch.ldexp(xk @ wj.T, scale - (j + k) * beta)
            total = total + term
            absolute = absolute + term.abs()
            terms += 1
    # Left out: the remainders R (|R| < 1 against slices of at most 1 in the scaled
    # units) and the products of slices with j + k > K + 1 (at most 3 of them, each
    # below 2^(-K beta)): per product of entries at most 2^(E_w + E_x - K beta) times
    # 2 + 3 + 2^(-K beta), m of them.
    left_out = torch.ldexp(torch.full_like(z, 5.01 * m), scale - _SLICES * beta)
    bound = ((z - total).abs() + gamma64(terms + 2) * absolute + left_out) * (
        1 + gamma64(terms + 8)
    ) + (terms + 8) * _TINY
    return _finite_or_inf(bound)


def chain_forward_errors(
    chain: Chain, x: Tensor, pre: list[Tensor], output: Tensor
) -> tuple[list[Tensor], Tensor]:
    """Bounds on ``|computed - exact|`` of a Linear chain's float64 record.

    Parameters
    ----------
    chain : list of (nn.Linear, float or None)
        :func:`~sklearn_roll.linearize.linear_chain` of the float64 module.
    x : Tensor of shape (n, d), float64
        The points.
    pre : list of Tensor of shape (n, u_l)
        The record's pre-activations of the hidden layers, whose signs are the
        pattern the exact network is frozen to.
    output : Tensor of shape (n, n_outputs)
        The record's outputs.

    Returns
    -------
    pre_errors : list of Tensor
        One bound per entry of ``pre``.
    output_errors : Tensor
        The bound of ``output``.

    Examples
    --------
    >>> import torch
    >>> from torch import nn
    >>> from sklearn_roll._chain import linear_chain
    >>> from sklearn_roll._forward_errors import chain_forward_errors
    >>> net = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2)).double()
    >>> x = torch.randn(5, 3, dtype=torch.float64)
    >>> z = net[0](x)
    >>> pre, out = chain_forward_errors(linear_chain(net), x, [z], net(x))
    >>> bool((pre[0] <= 1e-15 * (z.abs() + 1)).all()), out.shape
    (True, torch.Size([5, 2]))
    """
    values = [*pre, output]
    first, _ = chain[0]
    errors = [_first_layer_error(first.weight, first.bias, x, values[0])]
    for (layer, _), (_, slope), z_below in zip(chain[1:], chain, values):
        # The computed activation: z where on, fl(slope z) below; its magnitude,
        # allowing for that product's rounding, and the propagated exact error.
        on = z_below > 0
        slope_abs = abs(slope)
        h = torch.where(on, z_below.abs(), slope_abs * z_below.abs() * (1 + 2 * _U64))
        below = torch.where(on, errors[-1], slope_abs * errors[-1]) + torch.where(
            on, 0.0, _U64 * slope_abs * z_below.abs()
        )
        m = layer.weight.shape[1]
        weight = layer.weight.abs()
        bias = None if layer.bias is None else layer.bias.abs()
        own = gamma64(m + 1) * F.linear(h, weight, bias)
        bound = (own + below @ weight.T) * (1 + gamma64(2 * m + 8)) + (m + 4) * _TINY
        errors.append(_finite_or_inf(bound))
    return errors[:-1], errors[-1]
