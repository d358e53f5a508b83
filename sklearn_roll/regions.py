"""Linear regions and their certificates (DESIGN section 2).

The first half of this module is the math: it turns a
:class:`~sklearn_roll.linearize.Linearization` into l_p margins, directional margins,
per-coordinate stability bounds and decision radii, and evaluates them on a module
batch by batch so memory stays bounded (:func:`module_margin`; ``progress=True`` shows a
progress bar over the batches). The second half holds the public functions, which
take a fitted ROLL estimator, unwrap its module and input conversion, and call that
math.

Pipelines. Every public function also takes a fitted ``Pipeline`` whose last step is a
ROLL estimator and whose other steps are affine maps ``x -> A x + c``:
``StandardScaler``, ``RobustScaler``, ``MinMaxScaler`` and ``MaxAbsScaler`` (without
clipping), ``PCA`` and ``IncrementalPCA`` (whitened or not), ``TruncatedSVD``,
``"passthrough"``, nested pipelines of these, and any transformer that declares its map
with a method ``roll_affine_map()`` returning ``(A, c)`` such that
``transform(X) == X @ A.T + c`` (``A`` of shape (n_outputs, n_inputs), or (n_features,)
for a feature-wise map). The steps are folded into the network in float64, so margins,
bounds and gradients concern the composed function and are in the units of the raw
features that the pipeline receives. Any other step raises a ``ValueError`` naming it.

Precision. Certificates concern the network as a real-valued function of its
weights, at the activation pattern of a float64 forward pass. With
``precision="float64"`` everything is computed in float64. With
``precision="float32"`` (the default) the l_p margins and robust radii of Linear
chains (:class:`~sklearn_roll.nn.MLP`) take a faster path whose result provably never
exceeds the exact value:

* the Jacobian is computed in float32 with the activation pattern frozen to the
  float64 one (:func:`~sklearn_roll.linearize.linearize` with ``patterns``), so a
  unit that float32 rounding would flip next to a boundary cannot change the
  gradients of the units above it;
* every float32 gradient row gets a rigorous bound on its rounding error, from
  the standard model of IEEE arithmetic (each inner product of length m errs by at
  most ``gamma_m = m u / (1 - m u)``, u = 2^-24, times the sum of the absolute
  products, plus ``2^-126`` per operation for underflow, also with flush-to-zero),
  propagated through the layers;
* a unit whose bound is within ``FLOAT32_RTOL`` of its float32 gradient norm enters
  with that norm enlarged by ``1 + FLOAT32_RTOL``; any other unit whose ratio could
  still be the smallest, judged from the bounds, has its gradient recomputed
  exactly in float64 (:func:`~sklearn_roll.linearize.chain_vjp`), also enlarged by
  ``1 + FLOAT32_RTOL``; overflow (inf or NaN in float32) is handled the same way.

So a float32 margin m32 and the float64 one m64 satisfy
``m64 * (1 - FLOAT32_RTOL) / (1 + FLOAT32_RTOL) <= m32 <= m64`` up to float64 rounding
(bookkeeping in float64 adds a relative ``1e-9`` to every bound). Where float32
matrix products may be less accurate than IEEE float32
(``torch.get_float32_matmul_precision()`` other than ``"highest"``), for other
modules, and for
directional margins and stability bounds (which compare single partial derivatives,
whose rounding has no useful relative bound), certificates are computed in float64
whatever ``precision`` says (l_p margins and radii still enlarge the norms by
``1 + FLOAT32_RTOL`` for ``"float32"``, so the bounds above hold for every module).

Values too large for float64 (the network's pre-activations, outputs or gradients
overflow) are refused with a ``ValueError``, never reported as NaN.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import numbers
import os
import warnings
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.base import is_classifier
from sklearn.pipeline import Pipeline
from sklearn.utils.validation import check_is_fitted
from torch import Tensor, nn
from tqdm import tqdm

from ._affine import check_raw_input, fold, split_pipeline
from .linearize import (
    Linearization,
    chain_vjp,
    first_output,
    float64_copy,
    frozen_slopes,
    linear_chain,
    linearize,
    record,
    tangent_count,
)

__all__ = [
    "FLOAT32_RTOL",
    "activation_patterns",
    "certified_margin",
    "certified_radius",
    "count_linear_regions",
    "directional_margin",
    "explain",
    "module_margin",
    "stability_bounds",
]

FLOAT32_RTOL = 1e-4
"""Relative enlargement of gradient norms in ``precision="float32"``.

Float32 gradient norms are used only where their rigorous rounding bound is within
this tolerance; float32 margins then lie within a factor
``(1 - FLOAT32_RTOL) / (1 + FLOAT32_RTOL)`` below the exact ones.
"""

# Tangent memory per batch. Small enough that a layer's tangents stay in cache-friendly
# sizes (batches of 32-64 samples were fastest for a 784-300x4 MLP), large enough that
# each layer is one big matrix product.
_MEMORY_BUDGET = 64 * 2**20
# A batch_size passed explicitly may use more, up to this many bytes of tangents.
_MEMORY_CAP = 2 * 2**30
_PRECISIONS = ("float32", "float64")

# IEEE float32: unit roundoff, and the largest error of an underflowing operation
# (the smallest normal number, so flush-to-zero is covered too).
_U32 = 2.0**-24
_TINY32 = float(torch.finfo(torch.float32).tiny)
# Below this, float32 numbers have lost relative precision to underflow.
_SMALLEST_ACCURATE32 = _TINY32 / float(torch.finfo(torch.float32).eps)
# Relative rounding of the float64 arithmetic that evaluates the bounds themselves.
_BOOKKEEPING = 1e-9
# Gradient rows recomputed exactly per call of the refinement (bounds their memory).
_REFINE_CHUNK = 4096

# ------------------------------------------------------------------------ math


def dual_order(p: float) -> float:
    """The dual norm order q of an l_p norm (1/p + 1/q = 1), for p in {1, 2, inf}.

    Parameters
    ----------
    p : {1, 2, np.inf}
        Order of the ball.

    Returns
    -------
    float
    """
    if isinstance(p, numbers.Real) and not isinstance(p, bool):
        if p == 2:
            return 2.0
        if p == 1:
            return math.inf
        if p == math.inf:
            return 1.0
    raise ValueError(f"p must be 1, 2 or np.inf, got {p!r}.")


def _ratios(num: Tensor, den: Tensor) -> Tensor:
    """num / den where den > 0, +inf where den == 0, 0 where den is NaN (no claim)."""
    ratio = torch.where(den > 0, num / torch.where(den > 0, den, 1), math.inf)
    return torch.where(torch.isnan(den), 0.0, ratio)


def _min_ratio(num: Tensor, den: Tensor, counted: Tensor | None) -> Tensor:
    """Per-example minimum of num / den over counted units with den > 0 (inf if none)."""
    ratio = _ratios(num, den)
    if counted is not None:
        ratio = torch.where(counted, ratio, math.inf)
    if ratio.shape[1] == 0:
        return torch.full(ratio.shape[:1], math.inf, dtype=ratio.dtype)
    return ratio.amin(dim=1)


def _inflate(norm: Tensor, rtol: float) -> Tensor:
    return norm.double() * (1.0 + rtol)


def norm_reducer(p: float) -> Callable[[Tensor], Tensor]:
    """The reduction that turns unit tangents (n, u, k) into dual norms (n, u).

    Parameters
    ----------
    p : {1, 2, np.inf}
        Order of the ball; the norm taken is its dual.

    Returns
    -------
    callable
    """
    q = dual_order(p)
    return lambda g: torch.linalg.vector_norm(g, ord=q, dim=2)


def lp_margin(lin: Linearization, pre: list[Tensor], rtol: float = 0.0) -> Tensor:
    """Radius of the largest l_p ball around each point inside its linear region.

    ``min_u |z_u| / ||g_u||_q`` over counted units with ``g_u != 0``; +inf if none.
    A NaN norm (overflow) gives 0, never a claim.

    Parameters
    ----------
    lin : Linearization
        Whose ``pre_tangents`` hold the dual norms ``||g_u||_q`` of the unit
        gradients, shaped (n, u): ``linearize(..., reduce=norm_reducer(p))``.
    pre : list of Tensor of shape (n, u)
        Pre-activations (float64 ones for the float32 path).
    rtol : float
        Relative enlargement of the gradient norms.

    Returns
    -------
    Tensor of shape (n,), float64
    """
    best = torch.full((lin.output.shape[0],), math.inf, dtype=torch.float64)
    for z, norm, mask in zip(pre, lin.pre_tangents, lin.counted):
        best = torch.minimum(best, _min_ratio(z.abs().double(), _inflate(norm, rtol), mask))
    return best


def _crossing(z: Tensor, slope: Tensor, rtol: float) -> Tensor:
    """Distance along a direction at which each unit changes state.

    A unit is on where z > 0. Moving with rate ``slope`` it switches at
    ``|z| / |slope|`` if it heads towards zero, at once if it sits at zero and
    rises, and never otherwise.
    """
    step = _inflate(slope.abs(), rtol)
    dist = torch.where(z * slope < 0, z.abs() / torch.where(step > 0, step, 1), math.inf)
    return torch.where((z == 0) & (slope > 0), 0.0, dist)


def directional(lin: Linearization, pre: list[Tensor], rtol: float = 0.0) -> Tensor:
    """Distance along each point's tangent direction to its region's boundary.

    Parameters
    ----------
    lin : Linearization
        With one tangent per example.
    pre : list of Tensor
        Pre-activations to use.
    rtol : float
        Relative enlargement of the directional derivatives.

    Returns
    -------
    Tensor of shape (n,), float64
    """
    best = torch.full((lin.output.shape[0],), math.inf, dtype=torch.float64)
    for z, g, counted in zip(pre, lin.pre_tangents, lin.counted):
        dist = _crossing(z.double(), g[:, :, 0].double(), rtol)
        if counted is not None:
            dist = torch.where(counted, dist, math.inf)
        if dist.shape[1]:
            best = torch.minimum(best, dist.amin(dim=1))
    return best


def axis_bounds(lin: Linearization, pre: list[Tensor], rtol: float = 0.0) -> tuple[Tensor, Tensor]:
    """Per-coordinate distances to the region boundary, downwards and upwards.

    Parameters
    ----------
    lin : Linearization
        With the standard basis as tangents.
    pre : list of Tensor
        Pre-activations to use.
    rtol : float
        Relative enlargement of the partial derivatives.

    Returns
    -------
    lower, upper : Tensor of shape (n, D), float64
        ``lower <= 0 <= upper``: each coordinate alone can move within
        ``[lower, upper]`` with the activation pattern unchanged.
    """
    n = lin.output.shape[0]
    d = lin.output_tangents.shape[2]
    up = torch.full((n, d), math.inf, dtype=torch.float64)
    down = up.clone()
    for z, g, counted in zip(pre, lin.pre_tangents, lin.counted):
        if not z.shape[1]:
            continue
        z = z.double()[:, :, None]
        g = g.double()
        rise, fall = _crossing(z, g, rtol), _crossing(z, -g, rtol)
        if counted is not None:
            rise = torch.where(counted[:, :, None], rise, math.inf)
            fall = torch.where(counted[:, :, None], fall, math.inf)
        up = torch.minimum(up, rise.amin(dim=1))
        down = torch.minimum(down, fall.amin(dim=1))
    return -down, up


def _decision_terms(
    output_tangents: Tensor, output: Tensor, q: float
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Logit gaps to the predicted class, q-norms of their gradients, the class, the others.

    Returns gap (n, K), norm (n, K), predicted index (n,) and a mask of the classes
    other than the predicted one (n, K).
    """
    output = output.double()
    y = output.argmax(dim=1)
    rows = torch.arange(output.shape[0])
    gap = output[rows, y][:, None] - output
    grad = output_tangents[rows, y][:, None, :] - output_tangents
    norm = torch.linalg.vector_norm(grad, ord=q, dim=2)
    others = torch.ones_like(gap, dtype=torch.bool)
    others[rows, y] = False
    return gap, norm, y, others


# ------------------------------------------------- float32 with rounding bounds


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


@dataclasses.dataclass
class _Block:
    """Ratios ``num / norm`` of one layer (or the decision), and how sure each norm is.

    ``error`` None means the norms are exact; else it bounds ``|norm - exact|`` and
    ``exact(rows, cols)`` recomputes selected norms exactly.
    """

    num: Tensor
    norm: Tensor
    counted: Tensor | None = None
    error: Tensor | None = None
    exact: Callable[[Tensor, Tensor], Tensor] | None = None


_OVERFLOW = (
    "The network's gradients are not finite in float64 (overflow): its weights are "
    "too large to certify."
)


def _sound_min(blocks: list[_Block], n: int, rtol: float) -> Tensor:
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
                raise ValueError(_OVERFLOW)
            best = torch.minimum(best, _min_ratio(block.num, den, block.counted))
            continue
        finite = torch.isfinite(block.norm) & torch.isfinite(block.error)
        hi = (block.norm + block.error) * (1 + _BOOKKEEPING)
        lo = (block.norm - block.error) * (1 - _BOOKKEEPING)
        safe = finite & (hi <= den)
        best = torch.minimum(best, _min_ratio(block.num, torch.where(safe, den, 0), block.counted))
        ceiling = torch.where(finite & (lo > 0), lo, 0)
        upper = torch.minimum(upper, _min_ratio(block.num, ceiling, block.counted))
        uncertain.append((block, safe, torch.where(finite, _ratios(block.num, hi), 0)))
    for block, safe, lower in uncertain:
        need = ~safe & (lower <= upper[:, None]) & (lower < math.inf)
        if block.counted is not None:
            need &= block.counted
        rows, cols = need.nonzero(as_tuple=True)
        for start in range(0, len(rows), _REFINE_CHUNK):
            r, c = rows[start : start + _REFINE_CHUNK], cols[start : start + _REFINE_CHUNK]
            norm = block.exact(r, c)
            if not torch.isfinite(norm).all():
                raise ValueError(_OVERFLOW)
            best = best.scatter_reduce(0, r, _ratios(block.num[r, c], norm * (1 + rtol)), "amin")
    return best


# ------------------------------------------------------------ evaluation


def _check_precision(precision: str) -> None:
    if precision not in _PRECISIONS:
        raise ValueError(f"precision must be one of {_PRECISIONS}, got {precision!r}.")


def _memory_cap() -> int:
    """Bytes of tangents one batch may use: an eighth of physical memory, at most 2 GiB."""
    try:
        physical = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):
        return _MEMORY_CAP
    return max(_MEMORY_BUDGET, min(_MEMORY_CAP, physical // 8))


def _batch_size(
    module: nn.Module, x: np.ndarray, batch_size: int | None, k: int, per_input: int = 0
) -> int:
    """Samples per batch so that the tangent tensors stay within the memory budget.

    ``k`` values per unit and output and ``per_input`` per input coordinate are held
    for each example (tangents, or activations and gradients). A requested
    ``batch_size`` is kept unless that would exceed the memory cap; it is then
    lowered, with a warning, instead of exhausting memory.
    """
    if batch_size is not None and (
        not isinstance(batch_size, numbers.Integral)
        or isinstance(batch_size, bool)
        or batch_size < 1
    ):
        raise ValueError(f"batch_size must be a positive integer or None, got {batch_size!r}.")
    if len(x) == 0:
        return 1
    dtype = next(_dtypes(module))
    probe = torch.from_numpy(x[:1]).to(dtype)
    with torch.no_grad():
        lin = record(module, probe)
    itemsize = torch.finfo(dtype).bits // 8
    per_example = itemsize * (
        max(k, 1) * (lin.n_units + lin.output.shape[1]) + per_input * math.prod(x.shape[1:])
    )
    if batch_size is None:
        return int(max(1, min(len(x), _MEMORY_BUDGET // per_example)))
    cap = _memory_cap()
    most = max(1, cap // per_example)
    if min(batch_size, len(x)) > most:
        warnings.warn(
            f"batch_size={batch_size} would need about "
            f"{per_example * min(batch_size, len(x)) / 2**20:.0f} MiB of tangents per "
            f"batch; using batch_size={most}, the most that fits the "
            f"{cap / 2**20:.0f} MiB cap.",
            UserWarning,
            stacklevel=4,
        )
        return int(most)
    return int(batch_size)


def _dtypes(module: nn.Module) -> Iterator[torch.dtype]:
    for param in module.parameters():
        yield param.dtype
    yield torch.float32


def _chunks(n: int, size: int, progress: bool = False) -> Iterable[slice]:
    """Row slices of at most ``size``, under a tqdm bar when ``progress``."""
    starts = range(0, n, size)
    if progress:
        starts = tqdm(starts, unit="batch", desc="sklearn-roll")
    return (slice(start, min(start + size, n)) for start in starts)


def _check_parameters(module: nn.Module) -> None:
    if not all(torch.isfinite(param).all() for param in module.parameters()):
        raise ValueError(
            "The network's parameters contain NaN or infinity (did training diverge?); "
            "it has no certificate."
        )


class _Evaluator:
    """Linearize a module batch by batch: a float64 record, Jacobians in a working precision.

    The working precision is float32 only for the margins of Linear chains on 2-D
    input with IEEE float32 matrix products, where :func:`chain_rounding` bounds
    the rounding; everything else runs in float64.
    """

    def __init__(
        self, module: nn.Module, x: np.ndarray, precision: str, exact: nn.Module | None = None
    ) -> None:
        _check_precision(precision)
        _check_parameters(module)
        self.x = x
        # ``exact`` is the float64 network when ``module`` was derived from it (a
        # pipeline's network folded with its preprocessing); else a copy of ``module``.
        self.exact = float64_copy(module) if exact is None else exact
        self.chain = linear_chain(self.exact) if x.ndim == 2 else None
        self.bounded = (
            precision == "float32"
            and self.chain is not None
            and all(param.dtype == torch.float32 for param in module.parameters())
            and torch.get_float32_matmul_precision() == "highest"
        )
        self.work = module if self.bounded else self.exact
        if self.bounded:
            self.absolute = [linear.weight.detach().abs() for linear, _ in self.chain]
        # The float32 contract (within FLOAT32_RTOL below the float64 value) holds
        # whichever arithmetic serves it.
        self.rtol = FLOAT32_RTOL if precision == "float32" else 0.0

    def record(self, rows: slice) -> Linearization:
        """The float64 record of some rows, refusing values that overflow."""
        exact = record(self.exact, torch.from_numpy(self.x[rows]).double())
        values = [
            z if c is None else torch.where(c, z, 0) for z, c in zip(exact.pre, exact.counted)
        ]
        if not all(torch.isfinite(v).all() for v in [*values, exact.output]):
            raise ValueError(
                "The network's pre-activations or outputs are not finite in float64 "
                "(overflow) for some samples: its weights or the inputs are too large "
                "to certify."
            )
        return exact

    def batches(
        self,
        tangents: str | Callable[[slice], Tensor],
        k: int,
        batch_size: int | None,
        progress: bool = False,
    ) -> Iterator[tuple[slice, Linearization, Linearization]]:
        """Yield (rows, float64 linearization, float64 record)."""
        size = _batch_size(self.exact, self.x, batch_size, k)
        with torch.no_grad():
            for rows in _chunks(len(self.x), size, progress):
                exact = self.record(rows)
                xb = torch.from_numpy(self.x[rows]).double()
                t = tangents(rows) if callable(tangents) else tangents
                yield rows, linearize(self.exact, xb, t), exact

    def margins(
        self, p: float, batch_size: int | None, decision: bool, progress: bool = False
    ) -> np.ndarray:
        """l_p margins, or with ``decision`` robust radii, of every sample."""
        q = dual_order(p)
        if self.bounded:
            first, tangents, k = self._float32_tangents(p)
        else:
            tangents = "l2" if p == 2 else "basis"
            probe = torch.from_numpy(self.x[:1]).double()
            k = tangent_count(self.exact, probe, tangents) if len(self.x) else 1
        size = _batch_size(self.work, self.x, batch_size, k)
        out = np.empty(len(self.x))
        with torch.no_grad():
            for rows in _chunks(len(self.x), size, progress):
                exact = self.record(rows)
                if self.bounded:
                    xb = torch.from_numpy(self.x[rows]).float()
                    blocks = self._float32_blocks(xb, exact, tangents, first, k, p, decision)
                else:
                    xb = torch.from_numpy(self.x[rows]).double()
                    lin = linearize(self.exact, xb, tangents, norm_reducer(p))
                    blocks = [
                        _Block(z.abs(), norm, counted)
                        for z, norm, counted in zip(exact.pre, lin.pre_tangents, lin.counted)
                    ]
                    if decision:
                        gap, norm, _, others = _decision_terms(lin.output_tangents, exact.output, q)
                        blocks.append(_Block(gap, norm, others))
                value = _sound_min(blocks, len(exact.output), self.rtol)
                if decision:
                    gap, others = blocks[-1].num, blocks[-1].counted
                    value = torch.where(((gap <= 0) & others).any(dim=1), 0.0, value)
                out[rows] = value.numpy()
        return out

    # ---------------------------------------------------------- float32 path

    def _float32_tangents(self, p: float) -> tuple[Tensor, Callable[[int], Any], int]:
        """First-layer error bounds (per unit), tangents for n examples, tangents per row."""
        weight = self.chain[0][0].weight.detach()
        width, d = weight.shape
        if p != 2 or d <= width:
            # Columns of the first weight matrix: exact.
            return torch.zeros(width, dtype=torch.float64), lambda n: "basis", d
        # l2 norms are those of the rows times an orthonormal basis of the first
        # layer's row space, computed in float64 and rounded to float32 once.
        basis = torch.linalg.qr(weight.T).Q
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

    def _float32_blocks(
        self,
        xb: Tensor,
        exact: Linearization,
        tangents: Callable[[int], Any],
        first: Tensor,
        k: int,
        p: float,
        decision: bool,
    ) -> list[_Block]:
        """Ratio blocks from a float32 Jacobian at the float64 pattern, with error bounds."""
        n, q = len(xb), dual_order(p)
        patterns = [z > 0 for z in exact.pre]
        lin = linearize(self.work, xb, tangents(n), norm_reducer(p), patterns=patterns)
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
            first.expand(n, -1),
            k,
            q,
        )
        blocks = [
            _Block(z.abs(), norm, error=error + r, exact=self._exact_norms(patterns, i, q))
            for i, (z, norm, r, error) in enumerate(zip(exact.pre, norms, rounding, errors))
        ]
        if decision:
            gap, norm, y, others = _decision_terms(lin.output_tangents.double(), exact.output, q)
            # The rows of the differences err by at most the sum of both rows' errors.
            error = errors[-1].gather(1, y[:, None]) + errors[-1]
            exact_norms = self._exact_norms(patterns, len(patterns), q, y)
            blocks.append(_Block(gap, norm, others, error=error, exact=exact_norms))
        return blocks

    def _exact_norms(
        self, patterns: list[Tensor], layer: int, q: float, predicted: Tensor | None = None
    ) -> Callable[[Tensor, Tensor], Tensor]:
        """Float64 q-norms of selected gradient rows of a layer, by reverse mode.

        Hidden layers: the gradient of unit ``cols``. Output (with ``predicted``):
        the gradient of logit ``predicted`` minus logit ``cols``.
        """

        def exact_norms(rows: Tensor, cols: Tensor) -> Tensor:
            width = (
                patterns[layer].shape[1] if predicted is None else self.chain[-1][0].out_features
            )
            cotangents = F.one_hot(cols, width).double()
            if predicted is not None:
                cotangents = F.one_hot(predicted[rows], width).double() - cotangents
            grads = chain_vjp(self.exact, [on[rows] for on in patterns], layer, cotangents)
            return torch.linalg.vector_norm(grads, ord=q, dim=1)

        return exact_norms


def module_margin(
    module: nn.Module,
    x: np.ndarray,
    p: float = 2,
    *,
    precision: str = "float32",
    batch_size: int | None = None,
    decision: bool = False,
    progress: bool = False,
) -> np.ndarray:
    """Certified l_p margins (or robust radii) of a module at points, batch by batch.

    The math behind :func:`certified_margin` and :func:`certified_radius`, on a
    module and arrays rather than a fitted estimator.

    Parameters
    ----------
    module : nn.Module
        A piecewise-linear network in eval mode; its first output is the logits.
    x : ndarray of shape (n, ...)
        Points, in the layout the module reads (float64 for exact certificates).
    p : {1, 2, np.inf}, default=2
        Order of the ball.
    precision : {"float32", "float64"}, default="float32"
        See the module docstring: float32 margins lie within a factor
        ``(1 - FLOAT32_RTOL) / (1 + FLOAT32_RTOL)`` below the exact ones.
    batch_size : int or None, default=None
        Samples per batch; None keeps the tangent tensors near 64 MiB.
    decision : bool, default=False
        Return the robust radius ``min(margin, distance to the nearest tie)``.
    progress : bool, default=False
        Show a tqdm progress bar over the batches.

    Returns
    -------
    ndarray of shape (n,), float64

    Examples
    --------
    >>> import numpy as np
    >>> from sklearn_roll.nn import MLP
    >>> from sklearn_roll.regions import module_margin
    >>> net = MLP(4, 3, hidden_layer_sizes=(8, 8)).eval()
    >>> module_margin(net, np.random.RandomState(0).randn(5, 4)).shape
    (5,)
    """
    dual_order(p)
    evaluator = _Evaluator(module, np.ascontiguousarray(x), precision)
    return evaluator.margins(p, batch_size, decision, progress)


# ---------------------------------------------------------------- estimators


@dataclasses.dataclass
class _Fitted:
    """What the certificates need from a fitted estimator or pipeline.

    ``module`` is the network in its own precision; ``module64``, when set, is the
    float64 network the certificates concern (a pipeline's network folded with its
    preprocessing, from which ``module`` was derived); otherwise it is a float64 copy
    of ``module``. ``inputs`` validates more arrays (directions) in the layout of ``x``.
    """

    module: nn.Module
    x: np.ndarray
    restore: Callable[[np.ndarray], Any]
    classes: np.ndarray | None
    inputs: Callable[[Any], tuple[np.ndarray, Callable[[np.ndarray], Any]]]
    module64: nn.Module | None = None

    def exact_module(self) -> nn.Module:
        """The float64 network, in eval mode."""
        return float64_copy(self.module) if self.module64 is None else self.module64

    def evaluator(self, precision: str) -> _Evaluator:
        """Batch-wise linearization of this network at ``x``."""
        return _Evaluator(self.module, self.x, precision, exact=self.module64)


def _final_estimator(estimator: Any) -> Any:
    """The ROLL estimator behind ``estimator``: itself, or a pipeline's last step.

    Parameters
    ----------
    estimator : ROLLClassifier, ROLLRegressor or Pipeline
        A fitted estimator, or a fitted pipeline ending in one.

    Returns
    -------
    ROLLClassifier or ROLLRegressor

    Raises
    ------
    TypeError
        If there is no ROLL estimator, naming the estimator or the pipeline step.
    NotFittedError
        If it is not fitted.
    """
    if isinstance(estimator, Pipeline):
        return split_pipeline(estimator)[1]
    if not hasattr(estimator, "_roll_input"):
        raise TypeError(
            f"{type(estimator).__name__} is not a sklearn-roll estimator; pass a fitted "
            "ROLLClassifier or ROLLRegressor, or a Pipeline ending in one."
        )
    check_is_fitted(estimator)
    return estimator


def _network(estimator: Any) -> nn.Module:
    """The estimator's network in eval mode, on the CPU (inputs come from numpy)."""
    module = estimator.module_
    module.eval()
    if any(param.device.type != "cpu" for param in module.parameters()):
        module = copy.deepcopy(module).cpu()
    return module


def _unwrap(estimator: Any, X: Any) -> _Fitted:
    if isinstance(estimator, Pipeline):
        return _unwrap_pipeline(estimator, X)
    _final_estimator(estimator)
    x, restore = estimator._roll_input(X)
    classes = estimator.classes_ if is_classifier(estimator) else None
    return _Fitted(_network(estimator), x, restore, classes, inputs=estimator._roll_input)


def _unwrap_pipeline(pipeline: Pipeline, X: Any) -> _Fitted:
    """Fold the pipeline's affine steps into its network: certificates in raw units."""
    amap, estimator = split_pipeline(pipeline)
    if amap is None:
        return _unwrap(estimator, X)
    network = _network(estimator)
    module64 = fold(float64_copy(network), amap, _module_input_shape(estimator))
    # The working copy keeps the network's own precision, as for a bare estimator.
    module = copy.deepcopy(module64).to(next(_dtypes(network)))

    def inputs(data: Any) -> tuple[np.ndarray, Callable[[np.ndarray], Any]]:
        return check_raw_input(pipeline, data, amap.n_in), _identity

    x, restore = inputs(X)
    classes = estimator.classes_ if is_classifier(estimator) else None
    return _Fitted(module, x, restore, classes, inputs=inputs, module64=module64)


def _identity(a: np.ndarray) -> np.ndarray:
    return a


def _module_input_shape(estimator: Any) -> tuple[int, ...]:
    """Shape of one sample as the estimator's network reads it."""
    kind = getattr(estimator, "input_kind_", "tabular")
    if kind == "image":
        return tuple(estimator.image_shape_)
    if kind == "sequence":
        raise ValueError(
            "A sequence model cannot follow affine preprocessing steps in a pipeline: they "
            "transform 2-D tables, not sequences."
        )
    return (estimator.n_features_in_,)


def certified_margin(
    estimator: Any,
    X: Any,
    p: float = 2,
    *,
    precision: str = "float32",
    batch_size: int | None = None,
    progress: bool = False,
) -> np.ndarray:
    """Certified l_p margin of each sample's linear region.

    The radius of the largest l_p ball around x on which the activation pattern,
    hence the input gradient, is provably constant: ``min_u |z_u| / ||g_u||_q`` with
    ``1/p + 1/q = 1`` (DESIGN section 2). +inf where no unit can change.

    Parameters
    ----------
    estimator : ROLLClassifier, ROLLRegressor or Pipeline
        A fitted estimator, or a fitted pipeline ending in one whose other steps are
        affine (see *Pipelines* in the module docstring).
    X : array-like
        Samples, in the layout the estimator (or pipeline) was fitted on.
    p : {1, 2, np.inf}, default=2
        Order of the ball.
    precision : {"float32", "float64"}, default="float32"
        ``"float64"`` computes everything in float64. ``"float32"`` computes the
        Jacobian of Linear chains in float32 with rigorous rounding bounds (see the
        module docstring): the margin never exceeds the float64 one and lies within
        a factor ``(1 - FLOAT32_RTOL) / (1 + FLOAT32_RTOL)`` below it.
    batch_size : int or None, default=None
        Samples per batch; None keeps the tangent tensors near 64 MiB.
    progress : bool, default=False
        Show a tqdm progress bar over the batches.

    Returns
    -------
    margins : ndarray of shape (n_samples,), float64

    Examples
    --------
    >>> from sklearn.datasets import load_iris
    >>> from sklearn_roll import ROLLClassifier
    >>> from sklearn_roll.regions import certified_margin
    >>> X, y = load_iris(return_X_y=True)
    >>> clf = ROLLClassifier(hidden_layer_sizes=(16,), max_epochs=5, random_state=0).fit(X, y)
    >>> certified_margin(clf, X[:3]).shape
    (3,)
    """
    dual_order(p)
    fitted = _unwrap(estimator, X)
    return fitted.evaluator(precision).margins(p, batch_size, False, progress)


def certified_radius(
    estimator: Any,
    X: Any,
    p: float = 2,
    *,
    precision: str = "float32",
    batch_size: int | None = None,
    progress: bool = False,
) -> np.ndarray:
    """Certified robust radius: within it the prediction provably cannot change.

    ``min(margin_p(x), min_k (f_y - f_k) / ||grad f_y - grad f_k||_q)`` for the
    predicted class y: inside the linear region the logits are affine, so the second
    term is the exact distance to the nearest tie within the region.

    Parameters
    ----------
    estimator : ROLLClassifier or Pipeline
        A fitted classifier, or a fitted pipeline ending in one whose other steps are
        affine (see *Pipelines* in the module docstring).
    X : array-like
        Samples.
    p : {1, 2, np.inf}, default=2
        Order of the ball.
    precision : {"float32", "float64"}, default="float32"
        As in :func:`certified_margin`.
    batch_size : int or None, default=None
        As in :func:`certified_margin`.
    progress : bool, default=False
        Show a tqdm progress bar over the batches.

    Returns
    -------
    radius : ndarray of shape (n_samples,), float64
    """
    dual_order(p)
    fitted = _unwrap(estimator, X)
    if fitted.classes is None:
        raise TypeError(
            "certified_radius needs a classifier; a regressor has no decision to certify."
        )
    return fitted.evaluator(precision).margins(p, batch_size, True, progress)


def directional_margin(
    estimator: Any,
    X: Any,
    directions: Any,
    *,
    precision: str = "float32",
    batch_size: int | None = None,
    progress: bool = False,
) -> np.ndarray:
    """Distance along a direction from each sample to the boundary of its region.

    The largest t such that ``x + s d`` stays in the linear region of x for all
    ``s`` in ``[0, t]``, with d the direction scaled to unit l2 norm.

    Parameters
    ----------
    estimator : ROLLClassifier, ROLLRegressor or Pipeline
        A fitted estimator, or a fitted pipeline ending in one whose other steps are
        affine (see *Pipelines* in the module docstring).
    X : array-like
        Samples.
    directions : array-like
        One direction per sample, or a single direction for all, in the same layout
        as a sample of X. Zero directions are refused.
    precision : {"float32", "float64"}, default="float32"
        Both compute in float64: float32 single partial derivatives have no
        useful rounding bound (see the module docstring).
    batch_size : int or None, default=None
        As in :func:`certified_margin`.
    progress : bool, default=False
        Show a tqdm progress bar over the batches.

    Returns
    -------
    distances : ndarray of shape (n_samples,), float64
    """
    fitted = _unwrap(estimator, X)
    d = _directions(fitted, directions)
    norms = np.sqrt((d.reshape(len(d), -1).astype(np.float64) ** 2).sum(axis=1))
    if np.any(norms == 0):
        raise ValueError("directions must be non-zero.")
    d = d / norms.reshape((-1,) + (1,) * (d.ndim - 1))
    # One direction costs about a forward pass: always in float64 (module docstring).
    _check_precision(precision)
    out = np.empty(len(fitted.x))

    def tangent(rows: slice) -> Tensor:
        return torch.from_numpy(d[rows]).double()[None]

    for rows, lin, exact in fitted.evaluator("float64").batches(tangent, 1, batch_size, progress):
        out[rows] = directional(lin, exact.pre).numpy()
    return out


def _directions(fitted: _Fitted, directions: Any) -> np.ndarray:
    """Directions in the module's input layout, one per sample, zero at padding."""
    x = fitted.x
    d = None
    if not isinstance(directions, (list, tuple)):
        try:
            single = np.asarray(directions, dtype=np.float64)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"directions must be numeric: {exc}") from exc
        if single.shape == x.shape[1:]:
            d = np.broadcast_to(single, x.shape)
        elif single.ndim < x.ndim:
            raise ValueError(
                f"directions must be shaped like one sample {x.shape[1:]} or like X "
                f"{x.shape}; got {single.shape}."
            )
    if d is None:
        try:
            d, _ = fitted.inputs(directions)
        except ValueError as exc:
            raise ValueError(f"Invalid directions: {exc}") from exc
    if d.shape != x.shape:
        raise ValueError(
            f"directions must have one direction per sample, shaped like X {x.shape} "
            f"or like one sample {x.shape[1:]}; got {d.shape}."
        )
    padding = np.isnan(x)
    if not np.isfinite(d[~padding]).all():
        raise ValueError(
            "directions must be finite (NaN is allowed only at padded time steps of sequences)."
        )
    return np.where(padding, 0.0, d)


def stability_bounds(
    estimator: Any,
    X: Any,
    *,
    precision: str = "float32",
    batch_size: int | None = None,
    progress: bool = False,
) -> tuple[Any, Any]:
    """Per-coordinate stability bounds: how far each input value alone can move.

    For every coordinate k, ``[lower_k, upper_k]`` with ``lower_k = -t(-e_k)`` and
    ``upper_k = t(e_k)``, the directional margins along the coordinate axes: moving
    only that value within the interval provably leaves the gradient unchanged
    (the paper's Figure 3). NaN at padded positions of sequences.

    Parameters
    ----------
    estimator : ROLLClassifier, ROLLRegressor or Pipeline
        A fitted estimator, or a fitted pipeline ending in one whose other steps are
        affine (see *Pipelines* in the module docstring).
    X : array-like
        Samples.
    precision : {"float32", "float64"}, default="float32"
        Both compute in float64: float32 single partial derivatives have no
        useful rounding bound (see the module docstring).
    batch_size : int or None, default=None
        As in :func:`certified_margin`.
    progress : bool, default=False
        Show a tqdm progress bar over the batches.

    Returns
    -------
    lower, upper : arrays shaped like X (a list of arrays for list input)
    """
    fitted = _unwrap(estimator, X)
    # Single partial derivatives have no useful float32 bound: always float64.
    _check_precision(precision)
    x = fitted.x
    lower = np.empty(x.shape)
    upper = np.empty(x.shape)
    k = math.prod(x.shape[1:])
    evaluator = fitted.evaluator("float64")
    for rows, lin, exact in evaluator.batches("basis", k, batch_size, progress):
        lo, up = axis_bounds(lin, exact.pre)
        lower[rows] = lo.reshape(lower[rows].shape).numpy()
        upper[rows] = up.reshape(upper[rows].shape).numpy()
    padding = np.isnan(x)
    lower[padding] = np.nan
    upper[padding] = np.nan
    return fitted.restore(lower), fitted.restore(upper)


def _target_indices(fitted: _Fitted, target: Any, n: int, n_outputs: int) -> np.ndarray | None:
    """Output index per sample, or None to take each sample's predicted class."""
    if fitted.classes is None:
        if target is None:
            if n_outputs > 1:
                raise ValueError(
                    f"The regressor has {n_outputs} outputs; pass target=<output index>."
                )
            return np.zeros(n, dtype=np.int64)
        if not isinstance(target, numbers.Integral) or not 0 <= target < n_outputs:
            raise ValueError(
                f"target must be an output index in [0, {n_outputs}) for a regressor, got {target!r}."
            )
        return np.full(n, int(target), dtype=np.int64)
    if target is None:
        return None
    labels = np.asarray(target, dtype=object)
    if labels.ndim == 0:
        labels = np.full(n, labels.item(), dtype=object)
    if labels.shape != (n,):
        raise ValueError(
            f"target must be one label or one label per sample ({n}), got shape {labels.shape}."
        )
    lookup = {label: i for i, label in enumerate(fitted.classes.tolist())}
    unknown = [label for label in labels.tolist() if label not in lookup]
    if unknown:
        raise ValueError(
            f"target contains labels not among classes_ {fitted.classes.tolist()}: {unknown[:5]}."
        )
    return np.array([lookup[label] for label in labels.tolist()], dtype=np.int64)


def explain(
    estimator: Any,
    X: Any,
    target: Any = None,
    *,
    precision: str = "float32",
    batch_size: int | None = None,
    progress: bool = False,
) -> Any:
    """Exact input gradient of a logit (classifier) or of the output (regressor).

    The gradient is constant over the sample's linear region, whose size
    :func:`certified_margin` certifies.

    Parameters
    ----------
    estimator : ROLLClassifier, ROLLRegressor or Pipeline
        A fitted estimator, or a fitted pipeline ending in one whose other steps are
        affine (see *Pipelines* in the module docstring).
    X : array-like
        Samples.
    target : label, array-like of labels, int or None, default=None
        Classifier: the class whose logit is explained, one label for all samples
        or one per sample; None takes the predicted class. Regressor: the index of
        the output (None for a single output).
    precision : {"float32", "float64"}, default="float32"
        Arithmetic of the gradient computation. Samples whose float32 gradient
        overflows, or is so small (below ~1e-31) that float32 underflow would eat
        its precision, are recomputed in float64.
    batch_size : int or None, default=None
        Samples per backward pass; None keeps the memory near 64 MiB. Larger
        requests are lowered, with a warning, where they would exceed the memory
        cap.
    progress : bool, default=False
        Show a tqdm progress bar over the batches.

    Returns
    -------
    gradients : array shaped like X (a list of arrays for list input)
        NaN at padded positions of sequences.

    Raises
    ------
    ValueError
        If a gradient is not finite even in float64 (the network's weights are too
        large), or the parameters are not finite.
    """
    fitted = _unwrap(estimator, X)
    _check_precision(precision)
    _check_parameters(fitted.module)
    exact = fitted.exact_module()
    module = exact if precision == "float64" else fitted.module
    dtype = torch.float64 if precision == "float64" else torch.float32
    with torch.no_grad():
        n_outputs = first_output(exact(torch.from_numpy(fitted.x[:1]).double())).shape[1]
    indices = _target_indices(fitted, target, len(fitted.x), n_outputs)
    # Saved activations and their gradients, and the input, its gradient and their
    # float64 copies: a few values per unit and per input coordinate.
    size = _batch_size(module, fitted.x, batch_size, 4, per_input=6)
    grads = np.empty(fitted.x.shape)
    for rows in _chunks(len(fitted.x), size, progress):
        xb = torch.from_numpy(fitted.x[rows])
        picked = None if indices is None else indices[rows]
        grad = _input_gradient(module, xb.to(dtype), picked).double()
        bad = ~torch.isfinite(grad).reshape(len(xb), -1).all(dim=1)
        if module is not exact:
            # Rows that overflow float32, or so small that its underflow eats their
            # precision, are recomputed in float64.
            small = grad.reshape(len(xb), -1).abs().amax(dim=1) < _SMALLEST_ACCURATE32
            redo = bad | small
            if redo.any():
                sub = None if picked is None else picked[redo.numpy()]
                grad[redo] = _input_gradient(exact, xb[redo].double(), sub)
                bad = ~torch.isfinite(grad).reshape(len(xb), -1).all(dim=1)
        if bad.any():
            raise ValueError(
                f"The input gradient of sample {rows.start + int(bad.nonzero()[0, 0])} is not "
                "finite in float64 (overflow): the network's weights are too large to explain."
            )
        # Padded positions of sequences (NaN in X) have no gradient; batch by batch,
        # since a mask of all of X would be as large as X.
        grads[rows] = torch.where(torch.isnan(xb), math.nan, grad).numpy()
    return fitted.restore(grads)


def _input_gradient(module: nn.Module, x: Tensor, picked: np.ndarray | None) -> Tensor:
    """Gradient of one output per example (the argmax where ``picked`` is None).

    NaN for examples whose outputs overflow: their pattern and argmax are unreliable.
    """
    x = x.clone().requires_grad_(True)
    with torch.enable_grad():
        out = first_output(module(x))
        index = out.argmax(dim=1) if picked is None else torch.from_numpy(picked)
        (grad,) = torch.autograd.grad(out.gather(1, index[:, None]).sum(), x)
    finite = torch.isfinite(out).all(dim=1).reshape(-1, *[1] * (x.dim() - 1))
    return torch.where(finite, grad.detach(), math.nan)


def activation_patterns(estimator: Any, X: Any, *, precision: str = "float32") -> np.ndarray:
    """Activation pattern of each sample: which units are on (z_u > 0).

    Parameters
    ----------
    estimator : ROLLClassifier, ROLLRegressor or Pipeline
        A fitted estimator, or a fitted pipeline ending in one whose other steps are
        affine (see *Pipelines* in the module docstring).
    X : array-like
        Samples.
    precision : {"float32", "float64"}, default="float32"
        Arithmetic of the forward pass.

    Returns
    -------
    patterns : ndarray of bool, shape (n_samples, n_units)
        Units in recording order (layer by layer; for recurrent networks, step by
        step). Units that do not count (padded time steps) read False.
    """
    return _patterns(_unwrap(estimator, X), precision)


def _patterns(fitted: _Fitted, precision: str) -> np.ndarray:
    _check_precision(precision)
    module = fitted.exact_module() if precision == "float64" else fitted.module
    dtype = torch.float64 if precision == "float64" else torch.float32
    patterns = []
    with torch.no_grad():
        for rows in _chunks(len(fitted.x), _batch_size(module, fitted.x, None, 1)):
            lin = record(module, torch.from_numpy(fitted.x[rows]).to(dtype))
            blocks = [
                (z > 0) if counted is None else (z > 0) & counted
                for z, counted in zip(lin.pre, lin.counted)
            ]
            empty = torch.zeros(len(lin.output), 0, dtype=torch.bool)
            patterns.append(torch.cat(blocks or [empty], dim=1).numpy())
    return np.concatenate(patterns)


def _output_jacobians(
    module: nn.Module, x: np.ndarray, batch_size: int = 256, progress: bool = False
) -> np.ndarray:
    """Input-output Jacobians (n, n_outputs * D) by reverse mode, one pass per output."""
    blocks = []
    for rows in _chunks(len(x), batch_size, progress):
        xb = torch.from_numpy(x[rows]).double().requires_grad_(True)
        with torch.enable_grad():
            out = first_output(module(xb))
            grads = [
                torch.autograd.grad(out[:, k].sum(), xb, retain_graph=True)[0].reshape(len(xb), -1)
                for k in range(out.shape[1])
            ]
        blocks.append(torch.cat(grads, dim=1).numpy())
    return np.concatenate(blocks) if blocks else np.zeros((0, 0))


def count_linear_regions(estimator: Any, X: Any, *, progress: bool = False) -> tuple[int, int]:
    """Bounds on the number of complete linear regions touched by X (#CLR).

    If no sample lies exactly on a region boundary, the number of complete linear
    regions among the samples is at most the number of distinct activation
    patterns and at least the number of distinct input-output Jacobians (Lemma 7 of
    the paper). Jacobians are computed in float64 for one sample per distinct
    pattern and compared at float32 resolution.

    Parameters
    ----------
    estimator : ROLLClassifier, ROLLRegressor or Pipeline
        A fitted estimator, or a fitted pipeline ending in one whose other steps are
        affine (see *Pipelines* in the module docstring).
    X : array-like
        Samples.
    progress : bool, default=False
        Show a tqdm progress bar over the batches.

    Returns
    -------
    n_patterns : int
        Number of distinct activation patterns (upper bound).
    n_jacobians : int
        Number of distinct Jacobians of the output (lower bound).
    """
    fitted = _unwrap(estimator, X)
    patterns = _patterns(fitted, "float64")
    _, representatives = np.unique(patterns, axis=0, return_index=True)
    jacobians = _output_jacobians(
        fitted.exact_module(), fitted.x[np.sort(representatives)], progress=progress
    )
    jacobians = np.nan_to_num(jacobians.astype(np.float32))
    return len(representatives), len(np.unique(jacobians, axis=0)) if len(jacobians) else 0
