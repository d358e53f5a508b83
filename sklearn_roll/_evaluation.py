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
from collections.abc import Callable, Iterator

import numpy as np
import torch
from torch import Tensor, nn
from tqdm import tqdm

from ._chain import linear_chain
from ._forward_errors import chain_forward_errors
from ._linearization import AxisTangents, Linearization, Magnitudes
from ._margins import (
    Block,
    axis_bounds,
    decision_gaps,
    decision_terms,
    directional,
    dual_order,
    norm_reducer,
    pair_errors,
)
from ._pruning import ChainPruner
from ._recording import first_output
from ._recurrent import (
    RecurrentAllowance,
    RecurrentGram,
    TangentErrors,
    causal_linearize,
    directional_linearize,
    gram_recurrence,
    is_structured,
    recurrent_allowance,
    unit_counts,
)
from ._rounding import (
    FLOAT32_RTOL,
    SHRINK64,
    SMALLEST_ACCURATE32,
    Float32Chain,
    float32_bounded,
    float64_blocks,
    float64_errors,
    gamma64,
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
    module: nn.Module,
    x: np.ndarray,
    requested: int | None,
    k: int,
    per_input: int = 0,
    units: tuple[int, int] | None = None,
) -> int:
    """Samples per batch so that the tangent tensors stay within the memory budget.

    ``k`` values per unit and output and ``per_input`` per input coordinate are held
    for each example (tangents, or activations and gradients). A ``requested`` size
    is kept if a batch of that many samples (at most ``len(x)``) fits the memory cap
    (an eighth of physical memory, at most 2 GiB), and refused otherwise.

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
    units : tuple of (int, int), or None, default=None
        Units and outputs per example, where the caller knows them; None counts
        them by recording one example.

    Returns
    -------
    int

    Raises
    ------
    ValueError
        If ``requested`` is not a positive integer or None, or if a batch of that
        size would not fit the memory cap; the message names the batch size, the
        memory it needs, the cap and the largest batch size that fits.
    """
    if requested is not None and (
        not isinstance(requested, numbers.Integral) or isinstance(requested, bool) or requested < 1
    ):
        raise ValueError(f"batch_size must be a positive integer or None, got {requested!r}.")
    if len(x) == 0:
        return 1
    dtype = _dtype(module)
    if units is None:
        with torch.no_grad():
            lin = record(module, torch.from_numpy(x[:1]).to(dtype))
        units = (lin.n_units, lin.output.shape[1])
    itemsize = torch.finfo(dtype).bits // 8
    per_example = itemsize * (max(k, 1) * sum(units) + per_input * math.prod(x.shape[1:]))
    if requested is None:
        return int(max(1, min(len(x), MEMORY_BUDGET // per_example)))
    cap = _memory_cap()
    most = max(1, cap // per_example)
    if min(requested, len(x)) > most:
        # Refused rather than lowered: a batch size asked for is kept or fails loudly.
        raise ValueError(
            f"batch_size={requested} needs about "
            f"{_size(per_example * min(requested, len(x)))} of working memory per batch, "
            f"more than the {_size(cap)} memory cap (an eighth of physical memory, at most "
            f"{_size(_MEMORY_CAP)}); pass batch_size={most} or less, or None to size "
            "batches automatically."
        )
    return int(requested)


def _size(n_bytes: float) -> str:
    """A byte count for messages: '512 bytes', '12.3 MiB'."""
    if n_bytes < 1024:
        return f"{n_bytes:.0f} bytes"
    for unit in ("KiB", "MiB"):
        n_bytes /= 1024
        if n_bytes < 1024:
            return f"{n_bytes:.1f} {unit}"
    return f"{n_bytes / 1024:.1f} GiB"


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
    bounds their rounding; everything else runs in float64. The built-in
    :class:`~sklearn_roll.nn.ElmanRNN` (with its own forward pass) takes the paths
    of :mod:`sklearn_roll._recurrent`, with their rounding allowance: l2 margins
    and radii from the Gram recurrence, l1 / l_inf ones (and l2 ones in a subspace
    of ``features``) and stability bounds from the causal tangents, directional
    margins from one directional pass.

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
        self.structured = x.ndim == 3 and is_structured(self.exact)
        # The float32 contract (within FLOAT32_RTOL below the float64 value) holds
        # whichever arithmetic serves it.
        self.rtol = FLOAT32_RTOL if precision == "float32" else 0.0

    def record(self, rows: slice) -> Linearization:
        """The float64 record of some rows, refusing values that overflow."""
        exact = record(self.exact, torch.from_numpy(self.x[rows]).double())
        _refuse_overflow(exact)
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

        The built-in RNN follows its time structure. Linear chains compute exact rows
        only for the units that can set the minimum
        (:class:`~sklearn_roll._pruning.ChainPruner`), and the dense Jacobian for the
        samples where that would cost more; :attr:`survivors` then holds, per sample,
        how many rows were computed (every unit's, and gap's, for a dense sample).
        ``prune=False`` takes the dense path for every sample (the benchmarks' and
        tests' comparison).
        """
        if self.structured:
            self.survivors = None
            return self._recurrent_margins(p, requested, decision, progress)
        dense = _DensePath(self, p, decision)
        out = np.empty(len(self.x))
        # Pruning holds _PRUNED_VALUES float64 values per unit; where the dense path
        # holds no more (few input axes), it is as cheap and computes every row.
        dense_bytes = dense.k * _dtype(dense.work).itemsize
        if self.chain is None or not prune or dense_bytes <= 8 * _PRUNED_VALUES:
            self.survivors = None
            for rows, xb, exact in self._batches(dense.work, requested, dense.k, progress):
                allowance = self._allowance(xb, exact, self._ones(xb))
                value = dense.values(xb, exact, allowance)
                gaps = _sure_gaps(exact, allowance, decision)
                out[rows] = self._finish(value, exact, allowance.pre, gaps)
            return out
        pruner = ChainPruner(self.exact, self.chain, dual_order(p), self.features)
        cost = dense.k * pruner.dense_products * (1 if dense.work is self.module else 2)
        self.survivors = np.empty(len(self.x), dtype=np.int64)
        values = _PRUNED_VALUES
        if decision:
            # The radius's bounds hold each class's weight row against the predicted
            # one's, (classes x last width) per sample, in about three temporaries.
            classes, width = self.chain[-1][0].weight.shape
            units = sum(linear.out_features for linear, _ in self.chain)
            values = max(values, math.ceil(3 * classes * width / units))
        if requested is None:
            dense_size = batch_size(dense.work, self.x, None, dense.k)
        else:
            # One check of the requested size for both paths: a batch may go dense whole.
            values = max(values, math.ceil(dense_bytes / 8))
            dense_size = requested
        for rows, xb, exact in self._batches(self.exact, requested, values, progress):
            allowance = self._allowance(xb, exact, self._ones(xb))
            value, hard, computed = pruner.margins(exact, allowance, decision, self.rtol, cost)
            computed[hard] = exact.n_units + (exact.output.shape[1] - 1 if decision else 0)
            for part in hard.nonzero()[:, 0].split(dense_size) if hard.any() else ():
                value[part] = dense.values(
                    xb[part], _sample_rows(exact, part), _sample_rows(allowance, part)
                )
            self.survivors[rows] = computed.numpy()
            gaps = _sure_gaps(exact, allowance, decision)
            out[rows] = self._finish(value, exact, allowance.pre, gaps)
        return out

    def _smallest(
        self, blocks: list[Block], exact: Linearization, errors: list[Tensor], decision: bool
    ) -> np.ndarray:
        """The certificate of a batch from its ratio blocks: 0 where it is not sure."""
        value = sound_min(blocks, exact.output.shape[0], self.rtol)
        gaps = (blocks[-1].num, blocks[-1].counted) if decision else None
        return self._finish(value, exact, errors, gaps)

    def _finish(
        self,
        value: Tensor,
        exact: Linearization,
        errors: list[Tensor],
        gaps: tuple[Tensor, Tensor] | None,
    ) -> np.ndarray:
        """Certificates from a batch's smallest ratios: the final rounding, ties, doubts.

        ``errors`` bound the rounding of ``exact.pre``; ``gaps`` (radii only) are the
        logit gaps less their rounding allowances, with the mask of the other classes:
        a gap that may be zero is a tie or a flip, and gives 0.
        """
        value = value * SHRINK64
        if gaps is not None:
            gap, others = gaps
            value = torch.where(((gap <= 0) & others).any(dim=1), 0.0, value)
        return torch.where(unsure(exact, errors), 0.0, value).numpy()

    def _recurrent_margins(
        self, p: float, requested: int | None, decision: bool, progress: bool
    ) -> np.ndarray:
        """:meth:`margins` of the built-in RNN, following its time structure."""
        q = dual_order(p)
        gram = q == 2 and self.features is None
        # Values held per unit: a few for the Gram recurrence; for the causal
        # tangents, those of every input axis (C per step), as state, spare and block.
        k = 10 if gram else 4 * self.x.shape[2]
        out = np.empty(len(self.x))
        for rows, xb, allowance in self._recurrent_batches(requested, k, progress):
            if gram:
                result = gram_recurrence(self.exact, xb, allowance=allowance)
                blocks = _gram_blocks(result, allowance, decision)
            else:
                blocks = self._causal_blocks(xb, allowance, q, decision)
            out[rows] = self._smallest(blocks, allowance.record, allowance.pre, decision)
        return out

    def _causal_blocks(
        self, xb: Tensor, allowance: RecurrentAllowance, q: float, decision: bool
    ) -> list[Block]:
        """Ratio blocks of the RNN's full unit gradients, norms raised by their errors."""
        columns = self.features
        # The norm's own computation: k magnitudes or squares, their sum, a square root.
        grow = 1 + gamma64(self._moving() + 2)
        lin, output_errors = causal_linearize(
            self.exact, xb, _NormReducer(q, columns, grow), allowance=allowance
        )
        record = allowance.record
        blocks = [
            Block((z.abs() - ez).clamp(min=0), norm, counted)
            for z, ez, norm, counted in zip(
                record.pre, allowance.pre, lin.pre_tangents, record.counted
            )
        ]
        if decision:
            jacobian = lin.output_tangents
            if columns is not None:
                jacobian = jacobian[:, :, columns]
            gap, norm, y, others = decision_terms(jacobian, record.output, q)
            # Forming a difference of rows rounds once more.
            slope_error = pair_errors(output_errors.norms(q, columns), y)
            gap_error = pair_errors(allowance.output, y)
            blocks.append(
                Block(gap - gap_error, (norm + slope_error) * (1 + gamma64(3)) * grow, others)
            )
        return blocks

    def _recurrent_batches(
        self, requested: int | None, k: int, progress: bool
    ) -> Iterator[tuple[slice, Tensor, RecurrentAllowance]]:
        """(rows, float64 points, rounding allowance) batch by batch, without autograd."""
        units = unit_counts(self.exact, self.x.shape[1])
        size = batch_size(self.exact, self.x, requested, k, units=units)
        with torch.no_grad():
            for rows in batches(len(self.x), size, progress):
                xb = torch.from_numpy(self.x[rows]).double()
                allowance = recurrent_allowance(self.exact, xb)
                _refuse_overflow(allowance.record)
                yield rows, xb, allowance

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
        errors = float64_errors(self.exact, xb, tangents, patterns)
        if self.chain is None:
            return errors
        # Both bound the same roundings; the layered one is far tighter in deep chains.
        pre, output = chain_forward_errors(self.chain, xb, exact.pre, exact.output)
        return dataclasses.replace(
            errors,
            pre=[torch.minimum(a, b) for a, b in zip(errors.pre, pre)],
            output=torch.minimum(errors.output, output),
        )

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
        if self.structured:
            return self._recurrent_directional(directions, requested, progress)
        out = np.empty(len(self.x))
        for rows, xb, exact in self._batches(self.exact, requested, 1, progress):
            d = torch.from_numpy(directions[rows]).double()[None]
            lin = linearize(self.exact, xb, d)
            allowance = self._allowance(xb, exact, d.abs())
            rates = [g[:, :, 0] for g in lin.pre_tangents]
            errors = (allowance.pre, [e[:, :, 0] for e in allowance.pre_tangents])
            value = directional(len(xb), exact.pre, rates, lin.counted, errors) * SHRINK64
            out[rows] = torch.where(unsure(exact, allowance.pre), 0.0, value).numpy()
        return out

    def _recurrent_directional(
        self, directions: np.ndarray, requested: int | None, progress: bool
    ) -> np.ndarray:
        """:meth:`directional` of the built-in RNN: one linearized pass per batch."""
        out = np.empty(len(self.x))
        for rows, xb, allowance in self._recurrent_batches(requested, 2, progress):
            d = torch.from_numpy(directions[rows]).double()
            lin, _ = directional_linearize(self.exact, xb, d, _rates, allowance=allowance)
            rates = [rate for rate, _ in lin.pre_tangents]
            errors = (allowance.pre, [error for _, error in lin.pre_tangents])
            record = allowance.record
            value = directional(len(xb), record.pre, rates, record.counted, errors) * SHRINK64
            out[rows] = torch.where(unsure(record, allowance.pre), 0.0, value).numpy()
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
        if self.structured:
            # The causal tangents as for l1 margins, and per block their entrywise
            # errors and the crossing distances: three times the values per unit.
            k = 12 * self.x.shape[2]
            for rows, xb, allowance in self._recurrent_batches(requested, k, progress):
                bounds = _AxisBounds(allowance, self.features, len(moving))
                causal_linearize(self.exact, xb, bounds, allowance=allowance)
                doubt = unsure(allowance.record, allowance.pre)[:, None]
                lower[rows, moving] = torch.where(doubt, 0.0, bounds.lower * SHRINK64).numpy()
                upper[rows, moving] = torch.where(doubt, 0.0, bounds.upper * SHRINK64).numpy()
            return lower.reshape(self.x.shape), upper.reshape(self.x.shape)
        # The tangents' magnitudes are held beside them: twice the tangents per unit.
        for rows, xb, exact in self._batches(self.exact, requested, 2 * len(moving), progress):
            t = "basis" if self.features is None else self._feature_axes(len(xb))
            lin = linearize(self.exact, xb, t)
            allowance = self._allowance(xb, exact, t)
            errors = (allowance.pre, allowance.pre_tangents)
            shape = (len(xb), len(moving))
            lo, up = axis_bounds(shape, exact.pre, lin.pre_tangents, lin.counted, errors)
            doubt = unsure(exact, allowance.pre)[:, None]
            lower[rows, moving] = torch.where(doubt, 0.0, lo * SHRINK64).numpy()
            upper[rows, moving] = torch.where(doubt, 0.0, up * SHRINK64).numpy()
        return lower.reshape(self.x.shape), upper.reshape(self.x.shape)


def _refuse_overflow(exact: Linearization) -> None:
    """Refuse a record whose counted pre-activations or outputs are not finite."""
    values = [z if c is None else torch.where(c, z, 0) for z, c in zip(exact.pre, exact.counted)]
    if not all(torch.isfinite(v).all() for v in [*values, exact.output]):
        raise ValueError(
            "The network's pre-activations or outputs are not finite in float64 "
            "(overflow) for some samples: its weights or the inputs are too large "
            "to certify."
        )


def _gram_blocks(gram: RecurrentGram, allowance: RecurrentAllowance, decision: bool) -> list[Block]:
    """Ratio blocks of the RNN's l2 norms from the Gram recurrence, with their errors.

    A norm is ``sqrt(grad_sq + error)``, which the exact norm cannot exceed; forming
    it rounds twice (the sum, the square root).
    """
    grow = 1 + gamma64(4)
    blocks = [
        Block((z.abs() - ez).clamp(min=0), (g.clamp(min=0) + e).sqrt() * grow, counted)
        for z, ez, g, e, counted in zip(
            gram.pre, allowance.pre, gram.grad_sq, gram.grad_sq_error, gram.counted
        )
    ]
    if decision:
        output = gram.output
        gap, y, others = decision_gaps(output)
        rows = torch.arange(output.shape[0])
        diagonal = gram.output_gram.diagonal(dim1=1, dim2=2)
        # ||grad f_y - grad f_k||^2 = G_yy + G_kk - 2 G_yk.
        square = diagonal[rows, y][:, None] + diagonal - 2 * gram.output_gram[rows, y]
        norm = (square.clamp(min=0) + gram.output_gap_error[rows, y]).sqrt() * grow
        blocks.append(Block(gap - pair_errors(allowance.output, y), norm, others))
    return blocks


class _NormReducer:
    """Per block of causal tangents, the q-norms of the rows (over ``columns``) raised
    by the q-norms of their errors and by ``grow``: upper bounds on the exact norms."""

    def __init__(self, q: float, columns: Tensor | None, grow: float) -> None:
        self.q, self.columns, self.grow = q, columns, grow

    def __call__(self, index: int, block: Tensor, errors: TangentErrors) -> Tensor:
        g = block if self.columns is None else block[:, :, self.columns]
        norm = torch.linalg.vector_norm(g, ord=self.q, dim=2)
        return (norm + errors.norms(self.q, self.columns)) * self.grow


class _AxisBounds:
    """Stability bounds accumulated over the blocks of a causal sweep (as its reduce)."""

    def __init__(self, allowance: RecurrentAllowance, columns: Tensor | None, d: int) -> None:
        self.allowance, self.columns = allowance, columns
        n = allowance.record.output.shape[0]
        self.lower = torch.full((n, d), -math.inf, dtype=torch.float64)
        self.upper = torch.full((n, d), math.inf, dtype=torch.float64)

    def __call__(self, index: int, block: Tensor, errors: TangentErrors) -> None:
        g = block if self.columns is None else block[:, :, self.columns]
        record = self.allowance.record
        lo, up = axis_bounds(
            tuple(self.lower.shape),
            [record.pre[index]],
            [g],
            [record.counted[index]],
            ([self.allowance.pre[index]], [errors.entries(self.columns)]),
        )
        self.lower = torch.maximum(self.lower, lo)
        self.upper = torch.minimum(self.upper, up)


def _rates(index: int, block: Tensor, errors: TangentErrors) -> tuple[Tensor, Tensor]:
    """A block of directional derivatives (n, u, 1) as rates (n, u) and their errors."""
    return block[:, :, 0], errors.entries()[:, :, 0]


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


def _sure_gaps(
    exact: Linearization, allowance: Magnitudes, decision: bool
) -> tuple[Tensor, Tensor] | None:
    """For radii, the logit gaps to the predicted class less their rounding allowances."""
    if not decision:
        return None
    gap, y, others = decision_gaps(exact.output)
    return gap - pair_errors(allowance.output, y), others


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
