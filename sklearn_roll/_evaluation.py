"""Evaluating a network on many samples, batch by batch, within a memory budget.

Every certificate, every explanation and every prediction walks the samples with
:func:`batches`, in batches that :func:`batch_size` sizes so that the tangents of one
batch stay near :data:`MEMORY_BUDGET`. :class:`Evaluator` holds one network at one
set of points and turns its linearizations into certificates with the math of
:mod:`sklearn_roll._margins` and the soundness rules of :mod:`sklearn_roll._rounding`.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
import os
import warnings
from collections.abc import Callable, Iterator

import numpy as np
import torch
from torch import Tensor, nn
from tqdm import tqdm

from ._chain import linear_chain
from ._linearization import AxisTangents, Linearization, Magnitudes
from ._margins import axis_bounds, decision_gaps, directional, dual_order, norm_reducer
from ._pruning import ChainPruner
from ._recording import first_output
from ._rounding import (
    FLOAT32_RTOL,
    SHRINK64,
    SMALLEST_ACCURATE32,
    Float32Chain,
    float32_bounded,
    float64_blocks,
    float64_errors,
    sound_min,
    unsure,
)
from .linearize import float64_copy, linearize, record

__all__ = [
    "MEMORY_BUDGET",
    "PRECISIONS",
    "Evaluator",
    "batch_size",
    "batches",
    "check_parameters",
    "check_precision",
    "forward",
    "input_gradients",
    "output_jacobians",
    "patterns",
]

MEMORY_BUDGET = 64 * 2**20
"""Bytes of tangents per batch when no batch size is given.

Small enough that a layer's tangents stay in cache-friendly sizes, large enough that
each layer is one big matrix product.
"""
# Values per unit that the pruned margins of a Linear chain hold per sample (record,
# allowances, bounds, their order), in units of the float64 network's values.
_PRUNED_VALUES = 16
# A batch_size passed explicitly may use more, up to this many bytes of tangents.
_MEMORY_CAP = 2 * 2**30
PRECISIONS = ("float32", "float64")


def check_precision(precision: str) -> None:
    """Refuse a ``precision`` that is not "float32" or "float64"."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}.")


def check_parameters(module: nn.Module) -> None:
    """Refuse a network with NaN or infinite parameters: it has no certificate."""
    if not all(torch.isfinite(param).all() for param in module.parameters()):
        raise ValueError(
            "The network's parameters contain NaN or infinity (did training diverge?); "
            "it has no certificate."
        )


def _memory_cap() -> int:
    """Bytes of tangents one batch may use: an eighth of physical memory, at most 2 GiB."""
    try:
        physical = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):
        return _MEMORY_CAP
    return max(MEMORY_BUDGET, min(_MEMORY_CAP, physical // 8))


def _dtype(module: nn.Module) -> torch.dtype:
    return next((param.dtype for param in module.parameters()), torch.float32)


def batch_size(
    module: nn.Module, x: np.ndarray, requested: int | None, k: int, per_input: int = 0
) -> int:
    """Samples per batch so that the tangent tensors stay within the memory budget.

    ``k`` values per unit and output and ``per_input`` per input coordinate are held
    for each example (tangents, or activations and gradients). A ``requested`` size
    is kept unless that would exceed the memory cap; it is then lowered, with a
    warning, instead of exhausting memory.

    Parameters
    ----------
    module : nn.Module
        The network (its dtype sets the bytes per value).
    x : ndarray of shape (n, ...)
        The samples.
    requested : int or None
        The user's ``batch_size``; None for the budget's.
    k : int
        Values per unit.
    per_input : int, default=0
        Values per input coordinate.

    Returns
    -------
    int
    """
    if requested is not None and (
        not isinstance(requested, numbers.Integral) or isinstance(requested, bool) or requested < 1
    ):
        raise ValueError(f"batch_size must be a positive integer or None, got {requested!r}.")
    if len(x) == 0:
        return 1
    dtype = _dtype(module)
    with torch.no_grad():
        lin = record(module, torch.from_numpy(x[:1]).to(dtype))
    itemsize = torch.finfo(dtype).bits // 8
    per_example = itemsize * (
        max(k, 1) * (lin.n_units + lin.output.shape[1]) + per_input * math.prod(x.shape[1:])
    )
    if requested is None:
        return int(max(1, min(len(x), MEMORY_BUDGET // per_example)))
    cap = _memory_cap()
    most = max(1, cap // per_example)
    if min(requested, len(x)) > most:
        warnings.warn(
            f"batch_size={requested} would need about "
            f"{per_example * min(requested, len(x)) / 2**20:.0f} MiB of tangents per "
            f"batch; using batch_size={most}, the most that fits the "
            f"{cap / 2**20:.0f} MiB cap.",
            UserWarning,
            stacklevel=4,
        )
        return int(most)
    return int(requested)


def batches(n: int, size: int, progress: bool = False) -> Iterator[slice]:
    """Row slices of at most ``size`` covering ``range(n)``, under a tqdm bar if ``progress``.

    Parameters
    ----------
    n : int
        Number of rows.
    size : int
        Rows per slice.
    progress : bool, default=False
        Show a progress bar over the slices.

    Yields
    ------
    slice
    """
    starts = range(0, n, size)
    if progress:
        starts = tqdm(starts, unit="batch", desc="sklearn-roll")
    for start in starts:
        yield slice(start, min(start + size, n))


def forward(
    module: nn.Module, x: np.ndarray, size: int, nonlinearity: Callable[[Tensor], Tensor]
) -> np.ndarray:
    """``nonlinearity(logits)`` of every sample, batch by batch, in the module's dtype."""
    dtype = _dtype(module)
    with torch.no_grad():
        outputs = [
            nonlinearity(first_output(module(torch.from_numpy(x[rows]).to(dtype)))).numpy()
            for rows in batches(len(x), size)
        ]
    return np.concatenate(outputs)


class Evaluator:
    """Certificates of one network at a set of points.

    The pre-activations always come from a float64 record. The Jacobians are
    float32 only for the l_p margins and radii of Linear chains on 2-D input under
    ``precision="float32"``, where :class:`~sklearn_roll._rounding.Float32Chain`
    bounds their rounding; everything else runs in float64.

    Parameters
    ----------
    module : nn.Module
        The network in its own precision, in eval mode.
    x : ndarray of shape (n, ...)
        The points, in the layout the network reads.
    precision : {"float32", "float64"}
        The certificates' contract (see :mod:`sklearn_roll._rounding`).
    exact : nn.Module or None, default=None
        The float64 network when ``module`` was derived from it (a pipeline's network
        folded with its preprocessing); None for a float64 copy of ``module``.
    features : ndarray of int or None, default=None
        The input coordinates (flat indices into one sample) that may move, the
        others held fixed: l_p balls and stability bounds in that subspace. None for
        all coordinates.
    """

    def __init__(
        self,
        module: nn.Module,
        x: np.ndarray,
        precision: str,
        exact: nn.Module | None = None,
        features: np.ndarray | None = None,
    ) -> None:
        check_precision(precision)
        check_parameters(module)
        self.module = module
        self.x = x
        self.features = None if features is None else torch.as_tensor(features, dtype=torch.int64)
        self.exact = float64_copy(module) if exact is None else exact
        self.chain = linear_chain(self.exact) if x.ndim == 2 else None
        self.bounded = float32_bounded(precision, self.chain, module)
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

    def margins(
        self,
        p: float,
        requested: int | None,
        decision: bool,
        progress: bool = False,
        prune: bool = True,
    ) -> np.ndarray:
        """l_p margins, or with ``decision`` robust radii, of every sample.

        Linear chains compute exact rows only for the units that can set the minimum
        (:class:`~sklearn_roll._pruning.ChainPruner`), and the dense Jacobian for the
        samples where that would cost more; :attr:`survivors` then holds, per sample,
        how many rows were computed (every unit's, and gap's, for a dense sample).
        ``prune=False`` takes the dense path for every sample (the benchmarks' and
        tests' comparison).
        """
        dense = _DensePath(self, p, decision)
        out = np.empty(len(self.x))
        if self.chain is None or not prune:
            self.survivors = None
            for rows, xb, exact in self._batches(dense.work, requested, dense.k, progress):
                allowance = self._allowance(xb, exact, self._ones(xb))
                value = dense.values(xb, exact, allowance)
                out[rows] = self._finish(value, exact, allowance, decision)
            return out
        pruner = ChainPruner(self.exact, self.chain, dual_order(p), self.features)
        cost = dense.k * pruner.dense_products * (1 if dense.work is self.module else 2)
        dense_size = batch_size(dense.work, self.x, requested, dense.k)
        self.survivors = np.empty(len(self.x), dtype=np.int64)
        values = _PRUNED_VALUES
        if decision:
            # The radius's bounds hold each class's weight row against the predicted
            # one's, (classes x last width) per sample, in about three temporaries.
            classes, width = self.chain[-1][0].weight.shape
            units = sum(linear.out_features for linear, _ in self.chain)
            values = max(values, math.ceil(3 * classes * width / units))
        for rows, xb, exact in self._batches(self.exact, requested, values, progress):
            allowance = self._allowance(xb, exact, self._ones(xb))
            value, hard, computed = pruner.margins(exact, allowance, decision, self.rtol, cost)
            computed[hard] = exact.n_units + (exact.output.shape[1] - 1 if decision else 0)
            for part in hard.nonzero()[:, 0].split(dense_size) if hard.any() else ():
                value[part] = dense.values(
                    xb[part], _sample_rows(exact, part), _sample_rows(allowance, part)
                )
            self.survivors[rows] = computed.numpy()
            out[rows] = self._finish(value, exact, allowance, decision)
        return out

    def _finish(
        self, value: Tensor, exact: Linearization, allowance: Magnitudes, decision: bool
    ) -> np.ndarray:
        """Certificates from a batch's smallest ratios: the final roundings, ties, doubts."""
        value = value * SHRINK64
        if decision:
            # A gap within its rounding allowance of zero may be a tie or a flip.
            gap, y, others = decision_gaps(exact.output)
            gap = gap - allowance.output.gather(1, y[:, None]) - allowance.output
            value = torch.where(((gap <= 0) & others).any(dim=1), 0.0, value)
        return torch.where(unsure(exact, allowance), 0.0, value).numpy()

    def _moving(self) -> int:
        """How many input coordinates may move."""
        return math.prod(self.x.shape[1:]) if self.features is None else len(self.features)

    def _feature_axes(self, n: int, rows: slice | None = None) -> AxisTangents:
        """The moving coordinates as tangents, the same for each of n examples."""
        return AxisTangents(self.features[:, None].expand(-1, n).contiguous())

    def _ones(self, x: Tensor) -> Tensor:
        """The all-ones tangent over the moving coordinates, zero at padding: (1, n, ...)."""
        ones = torch.isfinite(x).to(x.dtype)
        if self.features is not None:
            mask = torch.zeros(math.prod(x.shape[1:]), dtype=x.dtype)
            mask[self.features] = 1
            ones = ones * mask.reshape(x.shape[1:])
        return ones[None]

    def _allowance(self, xb: Tensor, exact: Linearization, tangents: Tensor | str) -> Magnitudes:
        """The float64 rounding allowance of a batch's record and linearization."""
        patterns = [z > 0 for z in exact.pre]
        return float64_errors(self.exact, xb, tangents, patterns)

    def _batches(
        self, work: nn.Module, requested: int | None, k: int, progress: bool
    ) -> Iterator[tuple[slice, Tensor, Linearization]]:
        """(rows, float64 points, float64 record) batch by batch, without autograd."""
        size = batch_size(work, self.x, requested, k)
        with torch.no_grad():
            for rows in batches(len(self.x), size, progress):
                yield rows, torch.from_numpy(self.x[rows]).double(), self.record(rows)

    def directional(
        self, directions: np.ndarray, requested: int | None, progress: bool = False
    ) -> np.ndarray:
        """Distance from every sample along its direction (one per sample) to the boundary."""
        out = np.empty(len(self.x))
        for rows, xb, exact in self._batches(self.exact, requested, 1, progress):
            d = torch.from_numpy(directions[rows]).double()[None]
            lin = linearize(self.exact, xb, d)
            allowance = self._allowance(xb, exact, d.abs())
            rates = [g[:, :, 0] for g in lin.pre_tangents]
            errors = (allowance.pre, [e[:, :, 0] for e in allowance.pre_tangents])
            value = directional(len(xb), exact.pre, rates, lin.counted, errors) * SHRINK64
            out[rows] = torch.where(unsure(exact, allowance), 0.0, value).numpy()
        return out

    def axis_bounds(
        self, requested: int | None, progress: bool = False
    ) -> tuple[np.ndarray, np.ndarray]:
        """Per-coordinate stability bounds of every sample, shaped like the points.

        With ``features``, NaN at the coordinates held fixed.
        """
        n, d = len(self.x), math.prod(self.x.shape[1:])
        lower = np.full((n, d), np.nan)
        upper = np.full((n, d), np.nan)
        moving = np.arange(d) if self.features is None else self.features.numpy()
        # The tangents' magnitudes are held beside them: twice the tangents per unit.
        for rows, xb, exact in self._batches(self.exact, requested, 2 * len(moving), progress):
            t = "basis" if self.features is None else self._feature_axes(len(xb))
            lin = linearize(self.exact, xb, t)
            allowance = self._allowance(xb, exact, t)
            errors = (allowance.pre, allowance.pre_tangents)
            shape = (len(xb), len(moving))
            lo, up = axis_bounds(shape, exact.pre, lin.pre_tangents, lin.counted, errors)
            doubt = unsure(exact, allowance)[:, None]
            lower[rows, moving] = torch.where(doubt, 0.0, lo * SHRINK64).numpy()
            upper[rows, moving] = torch.where(doubt, 0.0, up * SHRINK64).numpy()
        return lower.reshape(self.x.shape), upper.reshape(self.x.shape)


class _DensePath:
    """Every unit's gradient norm at once: the Jacobian pushed through the network.

    The float32 chain with rounding bounds where it serves the certificate, else the
    float64 Jacobian along the moving input axes. ``k`` tangents per unit, on ``work``.
    """

    def __init__(self, evaluator: Evaluator, p: float, decision: bool) -> None:
        self.evaluator = evaluator
        self.p = p
        self.decision = decision
        self.work = evaluator.module if evaluator.bounded else evaluator.exact
        if evaluator.bounded:
            self.k = Float32Chain.tangent_count(evaluator.chain, p, evaluator.features)
        else:
            self.k = evaluator._moving()
        self._chain: Float32Chain | None = None

    def values(self, xb: Tensor, exact: Linearization, allowance: Magnitudes) -> Tensor:
        """Per sample of the batch, the smallest certified ratio."""
        ev, q = self.evaluator, dual_order(self.p)
        if ev.bounded:
            if self._chain is None:
                # Built on first use: its row-space basis costs a QR factorization.
                self._chain = Float32Chain(ev.module, ev.exact, ev.chain, self.p, ev.features)
            blocks = self._chain.blocks(xb.float(), exact, self.decision, allowance)
        else:
            tangents = ev._feature_axes(len(xb)) if ev.features is not None else "basis"
            lin = linearize(ev.exact, xb, tangents, norm_reducer(self.p))
            blocks = float64_blocks(exact, lin, allowance, q, self.decision)
        return sound_min(blocks, len(xb), ev.rtol)


def _sample_rows(value, index: Tensor):
    """A :class:`Linearization` or :class:`Magnitudes` restricted to some samples."""

    def pick(field):
        if isinstance(field, Tensor):
            return field[index]
        if isinstance(field, list):
            return [pick(item) for item in field]
        return field

    return dataclasses.replace(
        value, **{f.name: pick(getattr(value, f.name)) for f in dataclasses.fields(value)}
    )


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


def input_gradients(
    module: nn.Module,
    exact: nn.Module,
    x: np.ndarray,
    indices: np.ndarray | None,
    requested: int | None,
    progress: bool = False,
) -> np.ndarray:
    """Input gradients of one output per sample (the argmax where ``indices`` is None).

    Computed with ``module``; where that is not the float64 ``exact`` network, rows
    whose gradient overflows or is so small that float32 underflow eats its precision
    are recomputed with ``exact``. NaN at padded positions of sequences (NaN in x).
    """
    dtype = _dtype(module)
    # Saved activations and their gradients, and the input, its gradient and their
    # float64 copies: a few values per unit and per input coordinate.
    size = batch_size(module, x, requested, 4, per_input=6)
    grads = np.empty(x.shape)
    for rows in batches(len(x), size, progress):
        xb = torch.from_numpy(x[rows])
        picked = None if indices is None else indices[rows]
        grad = _input_gradient(module, xb.to(dtype), picked).double()
        bad = ~torch.isfinite(grad).reshape(len(xb), -1).all(dim=1)
        if module is not exact:
            small = grad.reshape(len(xb), -1).abs().amax(dim=1) < SMALLEST_ACCURATE32
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
        # Padded positions of sequences have no gradient; batch by batch, since a
        # mask of all of x would be as large as x.
        grads[rows] = torch.where(torch.isnan(xb), math.nan, grad).numpy()
    return grads


def patterns(module: nn.Module, x: np.ndarray) -> np.ndarray:
    """Activation pattern (z > 0, False where a unit does not count) of every sample."""
    dtype = _dtype(module)
    blocks = []
    with torch.no_grad():
        for rows in batches(len(x), batch_size(module, x, None, 1)):
            lin = record(module, torch.from_numpy(x[rows]).to(dtype))
            parts = [
                (z > 0) if counted is None else (z > 0) & counted
                for z, counted in zip(lin.pre, lin.counted)
            ]
            empty = torch.zeros(len(lin.output), 0, dtype=torch.bool)
            blocks.append(torch.cat(parts or [empty], dim=1).numpy())
    return np.concatenate(blocks)


def output_jacobians(
    module: nn.Module, x: np.ndarray, size: int = 256, progress: bool = False
) -> np.ndarray:
    """Input-output Jacobians (n, n_outputs * D) in float64, by reverse mode."""
    blocks = []
    for rows in batches(len(x), size, progress):
        xb = torch.from_numpy(x[rows]).double().requires_grad_(True)
        with torch.enable_grad():
            out = first_output(module(xb))
            grads = [
                torch.autograd.grad(out[:, k].sum(), xb, retain_graph=True)[0].reshape(len(xb), -1)
                for k in range(out.shape[1])
            ]
        blocks.append(torch.cat(grads, dim=1).numpy())
    return np.concatenate(blocks) if blocks else np.zeros((0, 0))
