"""The math of the certificates: from unit pre-activations and gradients to distances.

Inside the linear region of x the network is affine, and unit u changes state where
``z_u(x) + g_u(x) . (x' - x)`` crosses zero. Hence

* the l_p margin, the radius of the largest l_p ball around x inside the region, is
  ``min_u |z_u| / ||g_u||_q`` with ``1/p + 1/q = 1`` (:func:`min_ratio` over blocks of
  units; units with ``g_u = 0`` never change and are skipped);
* the distance along a direction d is ``min_u |z_u| / |g_u . d|`` over the units that
  head towards zero (:func:`crossing`), and the per-coordinate stability bounds are
  these distances along the coordinate axes (:func:`axis_bounds`);
* the decision certificate adds, for the predicted class y, the distance to the tie
  with every other class k, ``(f_y - f_k) / ||grad f_y - grad f_k||_q``
  (:func:`decision_terms`).

Everything here is exact arithmetic on given values; how sure those values are is the
business of :mod:`sklearn_roll._rounding`.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from collections.abc import Callable

import torch
from torch import Tensor

__all__ = [
    "Block",
    "axis_bounds",
    "crossing",
    "decision_gaps",
    "decision_terms",
    "pair_errors",
    "directional",
    "dual_order",
    "min_ratio",
    "norm_reducer",
    "ratios",
]


def dual_order(p: float) -> float:
    """The dual norm order q of an l_p norm (1/p + 1/q = 1), for p in {1, 2, inf}.

    Parameters
    ----------
    p : {1, 2, np.inf}
        Order of the ball.

    Returns
    -------
    float

    Raises
    ------
    ValueError
        For any other p.
    """
    if isinstance(p, numbers.Real) and not isinstance(p, bool):
        if p == 2:
            return 2.0
        if p == 1:
            return math.inf
        if p == math.inf:
            return 1.0
    raise ValueError(f"p must be 1, 2 or np.inf, got {p!r}.")


def norm_reducer(p: float) -> Callable[[Tensor], Tensor]:
    """The reduction of unit tangents (n, u, k) to the dual norms (n, u) an l_p margin needs."""
    q = dual_order(p)
    return lambda g: torch.linalg.vector_norm(g, ord=q, dim=2)


def ratios(num: Tensor, den: Tensor) -> Tensor:
    """num / den where den > 0, +inf where den == 0, 0 where den is NaN (no claim)."""
    ratio = torch.where(den > 0, num / torch.where(den > 0, den, 1), math.inf)
    return torch.where(torch.isnan(den), 0.0, ratio)


def min_ratio(num: Tensor, den: Tensor, counted: Tensor | None) -> Tensor:
    """Per example, the minimum of num / den over counted units with den > 0 (inf if none).

    This is the certificate formula: with ``num = |z_u|`` and ``den = ||g_u||_q`` it is
    the l_p margin of one block of units.
    """
    ratio = ratios(num, den)
    if counted is not None:
        ratio = torch.where(counted, ratio, math.inf)
    if ratio.shape[1] == 0:
        return torch.full(ratio.shape[:1], math.inf, dtype=ratio.dtype)
    return ratio.amin(dim=1)


@dataclasses.dataclass
class Block:
    """Ratios ``num / norm`` of one block of units (or the decision), and how sure each norm is.

    Attributes
    ----------
    num : Tensor of shape (n, u), float64
        Distances in output units: ``|z_u|``, or logit gaps.
    norm : Tensor of shape (n, u), float64
        Dual norms of the corresponding gradients.
    counted : Tensor of bool or None
        Which entries count; None for all.
    error : Tensor or None
        None when the norms are exact; else a bound on ``|norm - exact norm|``.
    exact : callable or None
        ``exact(rows, cols)`` recomputes selected norms exactly (with ``error``).
    """

    num: Tensor
    norm: Tensor
    counted: Tensor | None = None
    error: Tensor | None = None
    exact: Callable[[Tensor, Tensor], Tensor] | None = None


def crossing(
    z: Tensor, rate: Tensor, z_error: Tensor | None = None, rate_error: Tensor | None = None
) -> Tensor:
    """Distance along a direction at which each unit may change state.

    A unit is on where z > 0. Moving with rate ``rate`` it switches at
    ``|z| / |rate|`` if it heads towards zero, at once if it sits at zero and rises,
    and never otherwise. With error bounds (``|z - exact| <= z_error``, likewise for
    the rate), the smallest distance any values within them allow: 0 if z may be
    either side of zero while the unit moves, ``(|z| - z_error) / (|rate| +
    rate_error)`` if it may head towards zero, inf only if it surely does not.
    """
    if z_error is None:
        z_error = torch.zeros_like(z)
    if rate_error is None:
        rate_error = torch.zeros_like(rate)
    z, rate = torch.broadcast_tensors(z, rate)
    z_error, rate_error = torch.broadcast_tensors(z_error, rate_error)
    num = z.abs() - z_error
    den = rate.abs() + rate_error
    towards = (z * rate < 0) | ((rate.abs() <= rate_error) & (rate_error > 0))
    dist = torch.where(towards, num / torch.where(den > 0, den, 1), math.inf)
    exact = (z_error == 0) & (rate_error == 0)
    # Surely at zero: it switches at once if it rises, never if it falls (it is off).
    at_zero = torch.where(exact & (z == 0), torch.where(rate > 0, 0.0, math.inf), math.inf)
    moving = (rate != 0) | (rate_error > 0)
    unsure = torch.where(moving, 0.0, math.inf)
    return torch.where(num > 0, dist, torch.where(exact, at_zero, unsure))


def directional(
    n: int,
    pre: list[Tensor],
    rates: list[Tensor],
    counted: list[Tensor | None],
    errors: tuple[list[Tensor], list[Tensor]] | None = None,
) -> Tensor:
    """Distance along each point's direction to its region's boundary.

    Parameters
    ----------
    n : int
        Number of points.
    pre : list of Tensor of shape (n, u)
        Pre-activations.
    rates : list of Tensor of shape (n, u)
        Their derivatives along the direction.
    counted : list of (Tensor of bool) or None
        Which units count.
    errors : (list of Tensor, list of Tensor) or None, default=None
        Bounds on the errors of ``pre`` and of ``rates``.

    Returns
    -------
    Tensor of shape (n,), float64
    """
    best = torch.full((n,), math.inf, dtype=torch.float64)
    z_errors, rate_errors = errors if errors is not None else ([None] * len(pre),) * 2
    for z, rate, mask, ze, re in zip(pre, rates, counted, z_errors, rate_errors):
        dist = crossing(z.double(), rate.double(), ze, re)
        if mask is not None:
            dist = torch.where(mask, dist, math.inf)
        if dist.shape[1]:
            best = torch.minimum(best, dist.amin(dim=1))
    return best


def axis_bounds(
    shape: tuple[int, int],
    pre: list[Tensor],
    tangents: list[Tensor],
    counted: list[Tensor | None],
    errors: tuple[list[Tensor], list[Tensor]] | None = None,
) -> tuple[Tensor, Tensor]:
    """Per-coordinate distances to the region boundary, downwards and upwards.

    Parameters
    ----------
    shape : (n, d)
        Number of points and of input coordinates.
    pre : list of Tensor of shape (n, u)
        Pre-activations.
    tangents : list of Tensor of shape (n, u, d)
        The units' partial derivatives along every input coordinate.
    counted : list of (Tensor of bool) or None
        Which units count.
    errors : (list of Tensor, list of Tensor) or None, default=None
        Bounds on the errors of ``pre`` (n, u) and of ``tangents`` (n, u, d).

    Returns
    -------
    lower, upper : Tensor of shape (n, d), float64
        ``lower <= 0 <= upper``: each coordinate alone can move within
        ``[lower, upper]`` with the activation pattern unchanged.
    """
    up = torch.full(shape, math.inf, dtype=torch.float64)
    down = up.clone()
    z_errors, rate_errors = errors if errors is not None else ([None] * len(pre),) * 2
    for z, g, mask, ze, re in zip(pre, tangents, counted, z_errors, rate_errors):
        if not z.shape[1]:
            continue
        z = z.double()[:, :, None]
        g = g.double()
        ze = None if ze is None else ze[:, :, None]
        rise, fall = crossing(z, g, ze, re), crossing(z, -g, ze, re)
        if mask is not None:
            rise = torch.where(mask[:, :, None], rise, math.inf)
            fall = torch.where(mask[:, :, None], fall, math.inf)
        up = torch.minimum(up, rise.amin(dim=1))
        down = torch.minimum(down, fall.amin(dim=1))
    return -down, up


def pair_errors(errors: Tensor, predicted: Tensor) -> Tensor:
    """Per class k, a bound on the error of (row of ``predicted``) minus (row k).

    The sum of both rows' bounds ``errors`` (n, K): the difference of two values errs
    by at most the sum of their errors.
    """
    return errors.gather(1, predicted[:, None]) + errors


def decision_gaps(output: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Logit gaps to the predicted class, the class, and a mask of the other classes.

    Returns gap (n, K), predicted index (n,) and others (n, K), False at the
    predicted class.
    """
    output = output.double()
    y = output.argmax(dim=1)
    rows = torch.arange(output.shape[0])
    gap = output[rows, y][:, None] - output
    others = torch.ones_like(gap, dtype=torch.bool)
    others[rows, y] = False
    return gap, y, others


def decision_terms(
    output_tangents: Tensor, output: Tensor, q: float
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Logit gaps to the predicted class, q-norms of their gradients, the class, the others.

    Returns gap (n, K), norm (n, K), predicted index (n,) and a mask of the classes
    other than the predicted one (n, K).
    """
    gap, y, others = decision_gaps(output)
    rows = torch.arange(output.shape[0])
    grad = output_tangents[rows, y][:, None, :] - output_tangents
    norm = torch.linalg.vector_norm(grad, ord=q, dim=2)
    return gap, norm, y, others
