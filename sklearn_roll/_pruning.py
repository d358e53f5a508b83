"""The margin only needs its minimum: cheap bounds on gradient norms discard units.

An l_p margin is ``min_u |z_u| / ||g_u||_q``, and a handful of units near their
boundaries decide it. In a Linear chain the gradient of unit u of layer i >= 1 is
``g_u = J_{i-1}^T c_u`` with ``c_u = W_i[u] * s_{i-1}`` (its weights times the frozen
slopes of the layer below) and ``J_{i-1}`` the Jacobian of that layer, so::

    ||g_u||_q <= ||c_u||_2 * ||J_{i-1}^T||_{2->q}
              <= ||c_u||_2 * n_q(W_0) * prod_{0 < j < i} max|s_{j-1}| ||W_j||_2

with ``n_q`` the first layer's own ``2 -> q`` operator norm: its spectral norm for
q = 2, its largest column norm for q = inf, and for q = 1 the smaller of ``sqrt(d)``
times its spectral norm and the sum of its column norms. The spectral norms are
rigorous upper bounds (:func:`spectral_bound`), computed once per network;
``||c_u||_2`` costs one matrix product per layer for all units of all samples. The
gaps of the robust radius are rows of the same kind,
``c = (W_L[y] - W_L[k]) * s_{L-1}``.

Every unit thus gets a lower bound on its ratio. :class:`ChainPruner` takes each
sample's units in increasing order of that bound and computes their exact gradient
rows in float64 by reverse mode (:func:`~sklearn_roll._chain.chain_vjp`, with the
weights shared across samples, so each layer is one matrix product), round after
round, until the next bound exceeds the smallest ratio found: no unit left can set
the minimum. The first layer's rows are its weights and cost nothing. Samples whose
units survive in such numbers that reverse mode would cost more than the dense
Jacobian (networks trained so that many units sit at similar ratios) are handed back
to the caller for the dense path.

Soundness. A computed row's q-norm enters with the float64 allowance of
:func:`~sklearn_roll._rounding.float64_errors` along the all-ones tangent (which
bounds the error of any evaluation order of the row, forward or reverse) and the
rounding of the norm itself, exactly as a row of the dense float64 path does. A unit
is discarded only when its ratio with the bound in place of its norm, and twice the
allowance (the computed norm exceeds the exact one by at most one allowance), exceeds
the minimum found: its certified ratio would exceed it too. So the result is the
minimum of every unit's certified ratio, as if every row had been computed (the rows
of reverse mode and of the dense Jacobian differ only in their roundings). It never
exceeds the exact margin: a discarded unit's bound, with its pre-activation's
allowance and the norm bound in exact arithmetic, is at most the unit's exact ratio,
up to the few roundings of the ratio that the final ``SHRINK64`` covers.
"""

from __future__ import annotations

import math
from collections import OrderedDict

import torch
from torch import Tensor

from ._chain import Chain, chain_vjp
from ._linearization import Linearization, Magnitudes
from ._margins import decision_gaps, min_ratio, pair_errors, ratios
from ._recording import frozen_slopes
from ._rounding import OVERFLOW, gamma64

__all__ = ["ChainPruner", "spectral_bound"]

# Smallest positive float64 (subnormal): the largest error of an underflowing operation.
_TINY64 = 2.0**-1074
# Units per sample whose exact rows the first round computes; later rounds double it.
_FIRST_ROUND = 8
# Gradient rows computed per matrix product (bounds their memory: 8 bytes per input).
_ROWS_PER_PRODUCT = 2048
# Squarings of the Gram matrix at most, and the relative improvement of the bound
# below which squaring further is not worth its product.
_SQUARINGS = 8
_ENOUGH = 1e-3
# Spectral bounds kept, by the contents of their matrices (a few networks' worth).
_KEPT_BOUNDS = 256
_BOUNDS: OrderedDict[tuple, float] = OrderedDict()


def _up(value: float, roundings: int) -> float:
    """``value`` raised to cover ``roundings`` float64 roundings of the operations that formed it."""
    return value * (1 + gamma64(roundings + 2))


def _frobenius_up(matrix: Tensor) -> float:
    """An upper bound on the exact Frobenius norm of a float64 matrix."""
    count = matrix.numel()
    squares = float((matrix * matrix).sum())
    # Each square may underflow by at most the smallest subnormal.
    return _up(math.sqrt(_up(squares + count * _TINY64, count + 1)), 1)


def spectral_bound(weight: Tensor) -> float:
    """An upper bound on the largest singular value of a matrix, in exact arithmetic.

    ``||M||_2^2 = ||M M^T||_2`` for any matrix, so repeated squaring of the Gram
    matrix (rescaled by powers of two) and a Frobenius norm at the end give
    ``||M||_2 <= (||M_t||_F)^(1 / 2^t)`` with a looseness of at most
    ``rank^(1 / 2^(t+1))``; every product's rounding error is bounded by
    ``gamma_m ||M||_F^2`` (plus underflow) and carried back up the chain. Bounds are
    kept by the matrix's contents, so a network certified again costs nothing here.

    Parameters
    ----------
    weight : Tensor of shape (m, n)
        The matrix (its float64 values are the exact ones).

    Returns
    -------
    float
        At least ``||weight||_2``; ``inf`` if the matrix is not finite or a product
        overflows.

    Examples
    --------
    >>> import torch
    >>> from sklearn_roll._pruning import spectral_bound
    >>> w = torch.randn(30, 50, dtype=torch.float64)
    >>> bound = spectral_bound(w)
    >>> float(torch.linalg.matrix_norm(w, 2)) <= bound <= 1.05 * float(torch.linalg.matrix_norm(w, 2))
    True
    """
    m = weight.detach().double().contiguous()
    # Python's hash of bytes is keyed per process, so no input can be made to collide.
    key = (tuple(m.shape), hash(m.numpy().tobytes()))
    if key not in _BOUNDS:
        _BOUNDS[key] = _spectral_bound(m)
        if len(_BOUNDS) > _KEPT_BOUNDS:
            _BOUNDS.popitem(last=False)
    return _BOUNDS[key]


def _spectral_bound(m: Tensor) -> float:
    if m.numel() == 0:
        return 0.0
    if not torch.isfinite(m).all():
        return math.inf
    if m.shape[0] > m.shape[1]:
        m = m.T
    # Per squaring: ||M_t||_2^2 <= 2^exponent (||M_{t+1}||_2 + scaling) + error.
    steps: list[tuple[int, float, float]] = []
    best = math.inf
    for _ in range(_SQUARINGS + 1):
        fro = _frobenius_up(m)
        bound = fro
        for exponent, scaling, error in reversed(steps):
            bound = _up(math.sqrt(_up(math.ldexp(_up(bound + scaling, 1), exponent) + error, 1)), 1)
        if bound >= best * (1 - _ENOUGH) or fro == 0 or len(steps) == _SQUARINGS:
            return min(best, bound)
        best = bound
        rows, inner = m.shape
        gram = m @ m.T
        if not torch.isfinite(gram).all():
            return best
        # |fl(M M^T) - M M^T| <= gamma_inner |M| |M|^T + inner * tiny, entrywise, and
        # || |M| |M|^T ||_F <= ||M||_F^2.
        error = _up(gamma64(inner) * fro * fro + rows * inner * _TINY64, 4)
        top = float(gram.abs().max())
        if top == 0:
            return min(best, math.sqrt(error))
        exponent = math.frexp(top)[1]
        # Exact but for underflow, which errs by at most tiny per entry.
        m = gram * math.ldexp(1.0, -exponent)
        steps.append((exponent, math.sqrt(gram.numel()) * _TINY64, error))
    return best


class ChainPruner:
    """Certified l_p margins of a Linear chain from the exact rows of the units that matter.

    Parameters
    ----------
    exact : nn.Module
        The float64 chain the certificates concern.
    chain : list of (nn.Linear, float or None)
        ``linear_chain(exact)``.
    q : float
        The dual norm (2, inf or 1).
    features : Tensor of int64 or None, default=None
        The input coordinates that may move; None for all.
    """

    def __init__(self, exact, chain: Chain, q: float, features: Tensor | None = None) -> None:
        self.exact = exact
        self.q = q
        self.features = features
        self.weights = [linear.weight.detach() for linear, _ in chain]
        first = self.weights[0] if features is None else self.weights[0][:, features]
        self.d = first.shape[1]
        self.squares = [w * w for w in self.weights]
        # The first layer's rows are its gradients, exactly; their norms carry only
        # the rounding of the norm.
        self.first_norms = torch.linalg.vector_norm(first, ord=q, dim=1)
        factors: list[float] = [0.0]
        factor = self._lead(first)
        for i in range(1, len(chain)):
            factors.append(factor)
            if i < len(chain) - 1:
                growth = max(1.0, abs(chain[i - 1][1])) * spectral_bound(self.weights[i])
                factor = _up(factor * growth, 2)
        self.factors = factors
        # Multiply-adds of one gradient row of layer i in reverse mode, in float32
        # equivalents (float64 products cost about twice as much).
        full = [w.shape[0] * w.shape[1] for w in self.weights]
        self.row_costs = [2.0 * sum(full[:i]) for i in range(len(chain))]
        self.dense_products = float(sum(full[1:]) + first.numel())

    def _lead(self, first: Tensor) -> float:
        """An upper bound on the first layer's 2 -> q operator norm ``||W_0^T||_{2->q}``."""
        if first.numel() == 0:
            return 0.0
        columns = torch.sqrt((first * first).sum(dim=0) + first.shape[0] * _TINY64)
        if self.q == 2:
            return spectral_bound(first)
        if self.q == math.inf:
            return _up(float(columns.max()), first.shape[0] + 2)
        total = _up(float(columns.sum()), first.shape[0] + first.shape[1] + 2)
        return min(_up(math.sqrt(self.d) * spectral_bound(first), 2), total)

    def margins(
        self,
        exact: Linearization,
        allowance: Magnitudes,
        decision: bool,
        rtol: float,
        dense_cost: float,
    ) -> tuple[Tensor, Tensor, Tensor]:
        """Per sample, the smallest certified ratio, or a request for the dense path.

        Parameters
        ----------
        exact : Linearization
            The float64 record of the batch.
        allowance : Magnitudes
            :func:`~sklearn_roll._rounding.float64_errors` along the all-ones tangent.
        decision : bool
            Include the gaps to the other classes (the robust radius).
        rtol : float
            Relative enlargement of every norm (``FLOAT32_RTOL`` or 0).
        dense_cost : float
            Multiply-adds (float32 equivalents) of one sample's dense Jacobian: a
            sample whose surviving rows would cost more is left to it.

        Returns
        -------
        value : Tensor of shape (n,), float64
            The minimum over all units (and gaps) of the certified ratio; meaningless
            where ``dense``.
        dense : Tensor of bool, shape (n,)
            The samples left to the dense path.
        computed : Tensor of int64, shape (n,)
            Exact rows computed by reverse mode per sample.
        """
        n = exact.output.shape[0]
        patterns = [z > 0 for z in exact.pre]
        slopes = [
            frozen_slopes(on, a, torch.float64) for on, a in zip(patterns, exact.negative_slopes)
        ]
        grow = (1 + gamma64(self.d + 2)) * (1 + rtol)
        best = torch.full((n,), math.inf, dtype=torch.float64)
        blocks = []
        for i, (z, ez, eg) in enumerate(zip(exact.pre, allowance.pre, allowance.pre_tangents)):
            num = (z.abs() - ez).clamp(min=0)
            err = eg[:, :, 0]
            if i == 0:
                best = min_ratio(num, (self.first_norms + err) * grow, None)
                continue
            # Each square and product may underflow by the smallest subnormal.
            fan_in = self.weights[i].shape[1]
            norm = torch.sqrt(slopes[i - 1] ** 2 @ self.squares[i].T + 2 * fan_in * _TINY64)
            bound = _up(self.factors[i], fan_in + 5) * norm
            blocks.append((i, num, err, bound, None))
        if decision:
            gap, predicted, others = decision_gaps(exact.output)
            num = (gap - pair_errors(allowance.output, predicted)).clamp(min=0)
            err = pair_errors(allowance.output_tangents[:, :, 0], predicted)
            layer = len(self.weights) - 1
            diff = self.weights[layer][predicted][:, None, :] - self.weights[layer][None]
            if layer:
                squares = (diff * diff * slopes[layer - 1][:, None, :] ** 2).sum(dim=2)
                norm = torch.sqrt(squares + 3 * diff.shape[2] * _TINY64)
                bound = _up(self.factors[layer], diff.shape[2] + 7) * norm
            else:
                # Without hidden layers the rows are the differences themselves.
                if self.features is not None:
                    diff = diff[:, :, self.features]
                norm = torch.linalg.vector_norm(diff, ord=self.q, dim=2)
                bound = _up(1.0, diff.shape[2] + 4) * norm
            num = torch.where(others, num, math.inf)
            blocks.append((layer, num, err, bound, predicted))
        computed = torch.zeros(n, dtype=torch.int64)
        dense = torch.zeros(n, dtype=torch.bool)
        if not blocks:
            return best, dense, computed
        lower = torch.cat(
            [ratios(num, (bound + 2 * err) * grow) for _, num, err, bound, _ in blocks], dim=1
        )
        # A bound that overflowed (inf * 0, inf / inf) proves nothing: compute the row.
        lower = torch.nan_to_num(lower, nan=0.0)
        block_of = torch.cat(
            [torch.full((block[1].shape[1],), b) for b, block in enumerate(blocks)]
        )
        column = torch.cat([torch.arange(block[1].shape[1]) for block in blocks])
        cost = torch.tensor([self.row_costs[layer] for layer, *_ in blocks])[block_of]
        done = torch.zeros_like(lower, dtype=torch.bool)
        size = _FIRST_ROUND
        while True:
            # Each round the smallest bounds not yet computed; a unit whose bound
            # reaches the minimum found cannot go below it.
            waiting = lower.masked_fill(done | dense[:, None], math.inf)
            bounds, units = waiting.topk(min(size, waiting.shape[1]), dim=1, largest=False)
            take = bounds < best[:, None]
            if not take.any():
                break
            r, j = take.nonzero(as_tuple=True)
            units = units[r, j]
            done[r, units] = True
            computed += take.sum(dim=1)
            for b, (layer, num, err, _, gaps_of) in enumerate(blocks):
                mine = block_of[units] == b
                rb, cb = r[mine], column[units[mine]]
                for part in range(0, len(rb), _ROWS_PER_PRODUCT):
                    rows = rb[part : part + _ROWS_PER_PRODUCT]
                    cols = cb[part : part + _ROWS_PER_PRODUCT]
                    grads = self._rows(layer, rows, cols, patterns, slopes, gaps_of)
                    norm = torch.linalg.vector_norm(grads, ord=self.q, dim=1)
                    if not torch.isfinite(norm).all():
                        raise ValueError(OVERFLOW)
                    ratio = ratios(num[rows, cols], (norm + err[rows, cols]) * grow)
                    best = best.scatter_reduce(0, rows, ratio, "amin")
            if size == _FIRST_ROUND:
                left = (lower < best[:, None]) & ~done
                dense = (left * cost).sum(dim=1) > dense_cost
            size *= 2
        return best, dense, computed

    def _rows(
        self,
        layer: int,
        rows: Tensor,
        cols: Tensor,
        patterns: list[Tensor],
        slopes: list[Tensor],
        predicted: Tensor | None,
    ) -> Tensor:
        """Exact float64 gradient rows of units ``cols`` of ``layer`` at samples ``rows``.

        The output layer (with ``predicted``): the gradient of the predicted logit
        minus logit ``cols``.
        """
        weight = self.weights[layer]
        cotangents = weight[cols] if predicted is None else weight[predicted[rows]] - weight[cols]
        if layer == 0:
            grads = cotangents
        else:
            cotangents = cotangents * slopes[layer - 1][rows]
            on = [pattern[rows] for pattern in patterns[: layer - 1]]
            grads = chain_vjp(self.exact, on, layer - 1, cotangents)
        return grads if self.features is None else grads[:, self.features]
