"""Float32 certificates that provably never exceed the float64 ones.

Certificates concern the network as a real-valued function of its weights, at the
activation pattern of a float64 forward pass. With ``precision="float64"`` everything
is computed in float64. With ``precision="float32"`` (the default) the l_p margins and
robust radii of Linear chains (:class:`~sklearn_roll.nn.MLP`) take a faster path
(:class:`Float32Chain`) whose result provably never exceeds the float64 value:

* the Jacobian is computed in float32 with the activation pattern frozen to the
  float64 one (:func:`~sklearn_roll.linearize.linearize` with ``patterns``), so a
  unit that float32 rounding would flip next to a boundary cannot change the
  gradients of the units above it;
* every float32 gradient row gets a rigorous bound on its rounding error, from
  the standard model of IEEE arithmetic (each inner product of length m errs by at
  most ``gamma_m = m u / (1 - m u)``, u = 2^-24, times the sum of the absolute
  products, plus ``2^-126`` per operation for underflow, also with flush-to-zero),
  propagated through the layers (:func:`chain_rounding`); the slopes below zero of
  LeakyReLU units are rounded to float32 once, one of the roundings each layer
  counts;
* a unit whose bound is within ``FLOAT32_RTOL`` of its float32 gradient norm enters
  with that norm enlarged by ``1 + FLOAT32_RTOL``; any other unit whose ratio could
  still be the smallest, judged from the bounds, has its gradient recomputed
  exactly in float64 by reverse mode, also enlarged by ``1 + FLOAT32_RTOL``
  (:func:`sound_min`); overflow (inf or NaN in float32) is handled the same way.

So a float32 margin m32 and the float64 one m64 satisfy
``m64 * (1 - FLOAT32_RTOL) / (1 + FLOAT32_RTOL) <= m32 <= m64`` up to float64 rounding
(bookkeeping in float64 adds a relative ``1e-9`` to every bound). Where float32
matrix products may be less accurate than IEEE float32
(``torch.get_float32_matmul_precision()`` other than ``"highest"``) and for other
modules, certificates are computed in float64 whatever ``precision`` says (l_p
margins and radii still enlarge the norms by ``1 + FLOAT32_RTOL`` for ``"float32"``,
so the bounds above hold for every module).

Float64 values carry a rigorous allowance too, so that no certificate exceeds the
exact value, the one of the network in real arithmetic at the given float64 point:

* :func:`float64_errors` bounds the rounding of the float64 record and of any
  linearization: a value that r roundings reach errs by at most ``gamma_r`` (u =
  2^-53) times the sum of the absolute values of its terms, which
  :func:`~sklearn_roll.linearize.magnitudes` computes (the network on ``|x|`` with
  absolute weights and biases and absolute frozen slopes), with r counted along the
  longest chain of inner products and sums (:mod:`sklearn_roll._ops` says, per
  operation, how many roundings it adds);
* for Linear chains, the pre-activations and outputs also get the layer-by-layer
  bound of :mod:`sklearn_roll._forward_errors` (the first layer recomputed without
  rounding, every later one adding its own rounding to the propagated error), and
  the smaller of the two bounds holds;
* the distance of a unit to its boundary enters as ``|z| - error(z)``, its gradient
  norm as ``||g||_q + error`` (the q-norm of the entrywise errors is at most their
  sum, the error bound of the Jacobian's row along the all-ones tangent), and a
  directional rate with its error, so that a rate that may head towards the
  boundary counts (:func:`~sklearn_roll._margins.crossing`);
* a sample where a unit's sign is within its rounding error of zero gets a
  certificate of 0: its activation pattern is not certain.

So float64 certificates (margins, radii, directional margins and stability bounds)
never exceed the exact values and lie below them by a relative amount of the order
of ``gamma_r`` times the ratio of a unit's magnitude to its value, which is tiny
except for units within rounding distance of their boundaries.

Values too large for float64 (the network's pre-activations, outputs or gradients
overflow) are refused with a ``ValueError``, never reported as NaN.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ._chain import Chain, chain_vjp
from ._linearization import AxisTangents, Linearization, Magnitudes
from ._margins import (
    Block,
    decision_terms,
    dual_order,
    min_ratio,
    norm_reducer,
    pair_errors,
    ratios,
)
from ._recording import frozen_slopes
from .linearize import linearize, magnitudes

__all__ = [
    "FLOAT32_RTOL",
    "OVERFLOW",
    "SMALLEST_ACCURATE32",
    "Float32Chain",
    "chain_rounding",
    "float32_bounded",
    "float64_blocks",
    "float64_errors",
    "gamma64",
    "sound_min",
    "unsure",
]

FLOAT32_RTOL = 1e-4
"""Relative enlargement of gradient norms in ``precision="float32"``.

Float32 gradient norms are used only where their rigorous rounding bound is within
this tolerance; float32 margins then lie within a factor
``(1 - FLOAT32_RTOL) / (1 + FLOAT32_RTOL)`` below the exact ones.
"""

# IEEE float32: unit roundoff, and the largest error of an underflowing operation
# (the smallest normal number, so flush-to-zero is covered too).
_U32 = 2.0**-24
_TINY32 = float(torch.finfo(torch.float32).tiny)
SMALLEST_ACCURATE32 = _TINY32 / float(torch.finfo(torch.float32).eps)
"""Below this, float32 numbers have lost relative precision to underflow."""
# Relative rounding of the float64 arithmetic that evaluates the bounds themselves.
_BOOKKEEPING = 1e-9
# Gradient rows recomputed exactly per call of the refinement (bounds their memory).
_REFINE_CHUNK = 4096
# IEEE float64 unit roundoff; the final ratios are lowered by a few of them for the
# roundings of the subtraction, the sum and the division that form them.
_U64 = 2.0**-53
SHRINK64 = 1 - 16 * _U64
"""The factor that covers the float64 roundings in forming a certificate's ratios."""


def gamma64(m: int) -> float:
    """Higham's gamma_m for float64: the relative error bound of m rounded operations."""
    return m * _U64 / (1 - m * _U64)


def float64_errors(
    module: nn.Module, x: Tensor, tangents: Tensor | AxisTangents | str, patterns: list[Tensor]
) -> Magnitudes:
    """Bounds on the float64 rounding errors of the record and a linearization at ``x``.

    Parameters
    ----------
    module : nn.Module
        The float64 network.
    x : Tensor of shape (n, ...), float64
        The points.
    tangents : Tensor of shape (k, n, ...), AxisTangents or "basis"
        The tangents of the linearization, made absolute: ``|d|`` for a direction,
        the basis for stability bounds, all ones for a bound on the errors' row sums.
    patterns : list of Tensor of bool
        The float64 activation pattern.

    Returns
    -------
    Magnitudes
        Whose entries bound ``|computed - exact|`` of the pre-activations, outputs and
        their derivatives along the tangents.
    """
    bounds = magnitudes(module, x, tangents, patterns)

    def scale(r: int) -> float:
        # gamma_r times the exact magnitude M, which the computed one M' (a sum without
        # cancellation, r roundings deep) underestimates: M <= M' (1 + gamma_r). So the
        # error is at most gamma_r (1 + gamma_r) M', and with the roundings of this
        # factor and of its product with M' below gamma_(r+4) M' while r^2 u < 4.
        return gamma64(r + 4) if r * r * _U64 < 4 else gamma64(2 * r + 4)

    return Magnitudes(
        pre=[scale(r) * t for t, r in zip(bounds.pre, bounds.roundings)],
        pre_tangents=[scale(r) * t for t, r in zip(bounds.pre_tangents, bounds.roundings)],
        output=scale(bounds.output_roundings) * bounds.output,
        output_tangents=scale(bounds.output_roundings) * bounds.output_tangents,
        roundings=bounds.roundings,
        output_roundings=bounds.output_roundings,
    )


def unsure(exact: Linearization, errors: list[Tensor]) -> Tensor:
    """Per sample, whether some counted unit's sign is within its rounding error of zero.

    ``errors`` bound the rounding of ``exact.pre``, block by block.
    """
    flags = torch.zeros(exact.output.shape[0], dtype=torch.bool)
    for z, error, counted in zip(exact.pre, errors, exact.counted):
        doubt = (z.abs() <= error) & (error > 0)
        if counted is not None:
            doubt &= counted
        flags |= doubt.any(dim=1)
    return flags


def float64_blocks(
    exact: Linearization, lin: Linearization, errors: Magnitudes, q: float, decision: bool
) -> list[Block]:
    """Ratio blocks of float64 norms ``lin.pre_tangents`` with their rounding allowances.

    ``errors`` are :func:`float64_errors` along the all-ones tangent (one per
    sample); ``lin`` holds the q-norms of k tangents per row and its output
    tangents (when ``decision``).
    """
    k = lin.output_tangents.shape[2] if lin.output_tangents is not None else 1
    # The norm's own computation: k squares or magnitudes, their sum, a square root.
    grow = 1 + gamma64(k + 2)
    blocks = [
        Block((z.abs() - ez).clamp(min=0), (norm + eg[:, :, 0]) * grow, counted)
        for z, norm, counted, ez, eg in zip(
            exact.pre, lin.pre_tangents, lin.counted, errors.pre, errors.pre_tangents
        )
    ]
    if decision:
        gap, norm, y, others = decision_terms(lin.output_tangents, exact.output, q)
        blocks.append(_decision_block(gap, norm, y, others, errors, grow))
    return blocks


def _decision_block(
    gap: Tensor, norm: Tensor, y: Tensor, others: Tensor, errors: Magnitudes, grow: float
) -> Block:
    """The logit gaps and their gradients' norms, with both logits' rounding allowances."""
    gap_error = pair_errors(errors.output, y)
    slope_error = pair_errors(errors.output_tangents[:, :, 0], y)
    return Block(gap - gap_error, (norm + slope_error) * grow, others)


def float32_bounded(precision: str, chain: Chain | None, module: nn.Module) -> bool:
    """Whether the float32 path with rounding bounds serves a certificate of ``module``.

    Only for ``precision="float32"``, Linear chains (``chain`` not None) with float32
    parameters, and IEEE float32 matrix products.
    """
    return (
        precision == "float32"
        and chain is not None
        and all(param.dtype == torch.float32 for param in module.parameters())
        and torch.get_float32_matmul_precision() == "highest"
    )


def _gamma(m: int) -> float:
    """Higham's gamma_m for float32: the relative error bound of m rounded operations."""
    return m * _U32 / (1 - m * _U32)


def _entries(k: int, q: float) -> float:
    """The q-norm of a row of k entries equal to 1."""
    return k ** (1 / q)


def _norm_rounding(norm: Tensor, k: int, q: float) -> Tensor:
    """Bound on |computed - exact| q-norm of a float32 row of k entries, any summation order."""
    if q == math.inf:
        return torch.zeros_like(norm)
    g = _gamma(k + 1)
    # Each underflowing square or sum loses at most the smallest normal number.
    absolute = math.sqrt(k * _TINY32) if q == 2 else k * _TINY32
    return (g * norm + absolute) / (1 - g)


def chain_rounding(
    absolute: list[Tensor],
    negative_slopes: list[float],
    slopes: list[Tensor],
    norms: list[Tensor],
    first: Tensor,
    k: int,
    q: float,
) -> list[Tensor]:
    """Rigorous bounds on the rounding error of a float32 Linear-chain Jacobian.

    Row u of layer i is computed as ``fl(W_i fl(s ⊙ J_{i-1}))``. With the error of a
    float32 inner product of length m bounded by ``gamma_m`` times the sum of the
    absolute products (plus underflow), the q-norm error of each row obeys
    ``E_i <= |W_i| (|s| (gamma_{m+2} N_{i-1} + E_{i-1}))`` plus underflow terms,
    where ``N`` bounds the q-norms of the computed rows (any monotone norm obeys the
    triangle inequality used here).

    Parameters
    ----------
    absolute : list of Tensor
        Absolute values of the chain's weight matrices, float64, output layer last.
    negative_slopes : list of float
        Slope below zero of each hidden layer's activation.
    slopes : list of Tensor of shape (n, u_i)
        The frozen slopes of each hidden layer, float64.
    norms : list of Tensor of shape (n, u_i)
        Upper bounds on the q-norms of the computed rows of each hidden layer.
    first : Tensor of shape (n, u_0)
        Error bounds of the first layer's rows.
    k : int
        Tangents per row.
    q : float
        The norm.

    Returns
    -------
    list of Tensor
        Error bounds of each hidden layer's rows, then of the output rows, float64.
    """
    per_row = _entries(k, q)
    errors = [first]
    for i, weight in enumerate(absolute[1:]):
        fan_in = weight.shape[1]
        s = slopes[i].abs()
        carried = s * (_gamma(fan_in + 2) * norms[i] + errors[i])
        if negative_slopes[i] not in (0.0, 1.0):
            # The product with the rounded slope may underflow.
            carried = carried + (norms[i] > 0).double() * (_TINY32 * per_row)
        products = (s * norms[i]) @ weight.T
        underflow = (products > 0).double() * (2 * fan_in * _TINY32 * per_row)
        errors.append(carried @ weight.T + underflow)
    return errors


OVERFLOW = (
    "The network's gradients are not finite in float64 (overflow): its weights are "
    "too large to certify."
)
"""The message of the ``ValueError`` raised where gradients overflow float64."""


def sound_min(blocks: list[Block], n: int, rtol: float) -> Tensor:
    """Per example, the smallest ``num / (norm (1 + rtol))``, never above the exact one.

    Norms with an error bound within ``rtol`` are used as computed; any other unit
    whose ratio could be the smallest, judged from the bounds, gets its exact norm.
    """
    best = torch.full((n,), math.inf, dtype=torch.float64)
    upper = best.clone()
    uncertain = []
    for block in blocks:
        den = block.norm * (1 + rtol)
        if block.error is None:
            counted = block.norm if block.counted is None else block.norm[block.counted]
            if not torch.isfinite(counted).all():
                raise ValueError(OVERFLOW)
            best = torch.minimum(best, min_ratio(block.num, den, block.counted))
            continue
        finite = torch.isfinite(block.norm) & torch.isfinite(block.error)
        hi = (block.norm + block.error) * (1 + _BOOKKEEPING)
        lo = (block.norm - block.error) * (1 - _BOOKKEEPING)
        safe = finite & (hi <= den)
        best = torch.minimum(best, min_ratio(block.num, torch.where(safe, den, 0), block.counted))
        ceiling = torch.where(finite & (lo > 0), lo, 0)
        upper = torch.minimum(upper, min_ratio(block.num, ceiling, block.counted))
        uncertain.append((block, safe, torch.where(finite, ratios(block.num, hi), 0)))
    for block, safe, lower in uncertain:
        need = ~safe & (lower <= upper[:, None]) & (lower < math.inf)
        if block.counted is not None:
            need &= block.counted
        rows, cols = need.nonzero(as_tuple=True)
        for start in range(0, len(rows), _REFINE_CHUNK):
            r, c = rows[start : start + _REFINE_CHUNK], cols[start : start + _REFINE_CHUNK]
            norm = block.exact(r, c)
            if not torch.isfinite(norm).all():
                raise ValueError(OVERFLOW)
            best = best.scatter_reduce(0, r, ratios(block.num[r, c], norm * (1 + rtol)), "amin")
    return best


class Float32Chain:
    """Float32 ratio blocks of a Linear chain, with rigorous rounding bounds.

    Parameters
    ----------
    module : nn.Module
        The float32 chain that computes.
    exact : nn.Module
        Its float64 copy (or the float64 network it was derived from), whose values
        the bounds refer to.
    chain : list of (nn.Linear, float or None)
        ``linear_chain(exact)``.
    p : {1, 2, np.inf}
        Order of the ball.
    features : Tensor of int64 or None, default=None
        The input coordinates that may move; None for all.
    """

    def __init__(
        self,
        module: nn.Module,
        exact: nn.Module,
        chain: Chain,
        p: float,
        features: Tensor | None = None,
    ) -> None:
        self.module = module
        self.exact = exact
        self.chain = chain
        self.p = p
        self.features = features
        self.q = dual_order(p)
        self.absolute = [linear.weight.detach().abs() for linear, _ in chain]
        # A bound on how far the squared norms in the row-space basis may differ
        # from those over all input axes (0 when the basis is not used).
        self.basis_error = 0.0
        self.first, self._tangents, self.k = self._first_layer()

    @staticmethod
    def tangent_count(chain: Chain, p: float, features: Tensor | None = None) -> int:
        """Tangents per gradient row: the row space of the first layer for l2 when smaller."""
        width, d = chain[0][0].weight.shape
        if features is not None:
            return len(features)
        return width if p == 2 and d > width else d

    def _first_layer(self) -> tuple[Tensor, Callable[[int], Any], int]:
        """First-layer error bounds (per unit), tangents for n examples, tangents per row."""
        weight = self.chain[0][0].weight.detach()
        width, d = weight.shape
        if self.features is not None:
            # Columns of the first weight matrix, selected: exact.
            k = len(self.features)

            def axes(n: int) -> AxisTangents:
                return AxisTangents(self.features[:, None].expand(-1, n).contiguous())

            return torch.zeros(width, dtype=torch.float64), axes, k
        if self.tangent_count(self.chain, self.p) == d:
            # Columns of the first weight matrix: exact.
            return torch.zeros(width, dtype=torch.float64), lambda n: "basis", d
        # l2 norms are those of the rows times an orthonormal basis of the first
        # layer's row space, computed in float64 and rounded to float32 once.
        basis = torch.linalg.qr(weight.T).Q
        self.basis_error = _basis_error(weight, basis)
        directions = basis.float()
        rounded = directions.double()
        spread = weight.abs() @ rounded.abs()
        first = (
            _gamma(d) * torch.linalg.vector_norm(spread, dim=1)
            + torch.linalg.vector_norm(weight @ (rounded - basis), dim=1)
            + (spread.sum(dim=1) > 0).double() * (2 * d * _TINY32 * math.sqrt(width))
        )

        def tangents(n: int) -> Tensor:
            return directions.T[:, None, :].expand(width, n, d)

        return first, tangents, width

    def blocks(
        self, xb: Tensor, exact: Linearization, decision: bool, allowance: Magnitudes
    ) -> list[Block]:
        """Ratio blocks of a float32 batch ``xb`` at the float64 pattern of ``exact``.

        Each block's ``error`` bounds its float32 norms' rounding (and, with the
        row-space basis, the basis' departure from orthonormality); ``exact``
        recomputes selected norms in float64, with their float64 allowance; the
        distances ``|z|`` are lowered by the record's float64 allowance
        (``allowance``: :func:`float64_errors` along the all-ones tangent).
        """
        n, q, k = len(xb), self.q, self.k
        patterns = [z > 0 for z in exact.pre]
        lin = linearize(self.module, xb, self._tangents(n), norm_reducer(self.p), patterns=patterns)
        slopes = [
            frozen_slopes(on, slope, torch.float64)
            for on, slope in zip(patterns, exact.negative_slopes)
        ]
        norms = [norm.double() for norm in lin.pre_tangents]
        rounding = [_norm_rounding(norm, k, q) for norm in norms]
        errors = chain_rounding(
            self.absolute,
            exact.negative_slopes,
            slopes,
            [norm + r for norm, r in zip(norms, rounding)],
            self.first.expand(n, -1),
            k,
            q,
        )
        basis = self._basis_allowance(slopes, [*norms, None], [*errors])
        blocks = [
            Block(
                (z.abs() - ez).clamp(min=0),
                norm,
                error=error + r + b,
                exact=self._exact_norms(patterns, i, q, allowance.roundings[i]),
            )
            for i, (z, norm, r, error, ez, b) in enumerate(
                zip(exact.pre, norms, rounding, errors, allowance.pre, basis)
            )
        ]
        if decision:
            gap, norm, y, others = decision_terms(lin.output_tangents.double(), exact.output, q)
            pick = y[:, None]
            # The rows of the differences err by at most the sum of both rows' errors.
            error = errors[-1].gather(1, pick) + errors[-1] + basis[-1].gather(1, pick) + basis[-1]
            gap_error = pair_errors(allowance.output, y)
            exact_norms = self._exact_norms(
                patterns, len(patterns), q, allowance.output_roundings, y
            )
            blocks.append(Block(gap - gap_error, norm, others, error=error, exact=exact_norms))
        return blocks

    def _basis_allowance(
        self, slopes: list[Tensor], norms: list[Tensor | None], errors: list[Tensor]
    ) -> list[Tensor]:
        """Per row, how far its norm in the row-space basis may be from the true one.

        For a row ``c W1`` the squared norms differ by at most ``eps ||c||^2`` (eps
        bounds ``||W1 Q Q^T W1^T - W1 W1^T||``), so the norms by ``min(sqrt(eps) ||c||,
        eps ||c||^2 / lower)`` with ``lower`` a lower bound on the computed norm;
        ``||c||`` is bounded by pushing ones through the absolute chain.
        """
        eps = self.basis_error
        if eps == 0:
            return [torch.zeros_like(error) for error in errors]
        out: list[Tensor] = []
        size = torch.ones_like(errors[0])
        for i, error in enumerate(errors):
            if i:
                size = (slopes[i - 1].abs() * size) @ self.absolute[i].T
            loose = math.sqrt(eps) * size
            if norms[i] is None:
                out.append(loose)
                continue
            lower = (norms[i] - error).clamp(min=0)
            tight = eps * size**2 / torch.where(lower > 0, lower, 1)
            out.append(torch.where(lower > 0, torch.minimum(loose, tight), loose))
        return out

    def _exact_norms(
        self,
        patterns: list[Tensor],
        layer: int,
        q: float,
        roundings: int,
        predicted: Tensor | None = None,
    ) -> Callable[[Tensor, Tensor], Tensor]:
        """Float64 q-norms of selected gradient rows of a layer, by reverse mode.

        Hidden layers: the gradient of unit ``cols``. Output (with ``predicted``):
        the gradient of logit ``predicted`` minus logit ``cols``. Each norm is raised
        by its float64 allowance (the row's magnitudes, ``roundings`` deep).
        """

        def exact_norms(rows: Tensor, cols: Tensor) -> Tensor:
            width = (
                patterns[layer].shape[1] if predicted is None else self.chain[-1][0].out_features
            )
            cotangents = F.one_hot(cols, width).double()
            if predicted is not None:
                cotangents = F.one_hot(predicted[rows], width).double() - cotangents
            on = [pattern[rows] for pattern in patterns]
            grads = chain_vjp(self.exact, on, layer, cotangents)
            spread = chain_vjp(self.exact, on, layer, cotangents.abs(), absolute=True)
            if self.features is not None:
                # The norm over the moving coordinates, as the float32 one it replaces.
                grads, spread = grads[:, self.features], spread[:, self.features]
            allowance = gamma64(2 * roundings + 4) * spread.sum(dim=1)
            norm = torch.linalg.vector_norm(grads, ord=q, dim=1) + allowance
            return norm * (1 + gamma64(grads.shape[1] + 2))

        return exact_norms


def _basis_error(weight: Tensor, basis: Tensor) -> float:
    """A bound on ``||W Q Q^T W^T - W W^T||_2`` in exact arithmetic, Q the computed basis.

    The Frobenius norm of the computed difference, plus bounds on the rounding of
    every product that forms it.
    """
    d, width = basis.shape
    product = weight @ basis
    spread = weight.abs() @ basis.abs()
    product_error = gamma64(d) * spread
    difference = product @ product.T - weight @ weight.T
    slack = (
        gamma64(width) * (product.abs() @ product.abs().T)
        + 2 * product_error @ (product.abs() + product_error).T
        + gamma64(d) * (weight.abs() @ weight.abs().T)
    )
    total = torch.linalg.matrix_norm(difference) * (1 + 4 * _U64) + torch.linalg.matrix_norm(slack)
    return float(total) * (1 + gamma64(2 * (d + width) + 8))
