"""Scorers for model selection by certified margin, and the stability of explanations.

Each factory returns a small callable ``scorer(estimator, X, y=None) -> float`` (greater
is better), usable wherever scikit-learn takes a scorer, alone or in a dict::

    GridSearchCV(est, grid, scoring={"accuracy": "accuracy", "margin": margin_scorer()})

The estimator may be a fitted ROLL estimator or a fitted pipeline ending in one whose
other steps are affine; margins are then in the units of the pipeline's raw features
(see :mod:`sklearn_roll.regions`). With ``features=`` the certificates concern the
subspace of those raw columns, the others held fixed (tables with categorical columns). Scoring runs with the estimator's ``n_threads``
torch threads, like its ``predict``.

:func:`gradient_distortion` measures what the certificates do not: how much the
explanation (the input gradient) changes within a small l_inf ball around each sample,
on average and at worst, the paper's gradient-distortion measures.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from sklearn.utils import Bunch, check_random_state

from ._adapter import view
from ._distortion import distortions, view_gradients
from ._docs import fill_doc
from ._evaluation import batch_size as batch_rows
from ._evaluation import check_parameters, check_precision, forward
from ._margins import dual_order
from .linearize import first_output
from .regions import _target_indices, certified_margin, certified_radius

__all__ = [
    "certified_accuracy_scorer",
    "gradient_distortion",
    "margin_scorer",
    "radius_scorer",
]

Scorer = Callable[..., float]


def _quantile(values: np.ndarray, q: float) -> float:
    """Linear-interpolation quantile that keeps +inf (np.quantile turns inf - inf into NaN).

    Margins are +inf where no unit can change.
    """
    values = np.sort(np.asarray(values, dtype=np.float64))
    position = q * (len(values) - 1)
    lo, hi = math.floor(position), math.ceil(position)
    if values[lo] == values[hi]:
        return float(values[lo])
    return float(values[lo] + (position - lo) * (values[hi] - values[lo]))


def _check_quantile(quantile: float) -> float:
    if (
        not isinstance(quantile, numbers.Real)
        or isinstance(quantile, bool)
        or not 0 <= quantile <= 1
    ):
        raise ValueError(f"quantile must be a number in [0, 1], got {quantile!r}.")
    return float(quantile)


def _format(value: Any) -> str:
    return "np.inf" if value == math.inf else repr(value)


def _features(features: Any) -> str:
    return "" if features is None else f", features={features!r}"


class _QuantileScorer:
    """A quantile over samples of a per-sample certificate."""

    def __init__(
        self,
        factory: str,
        certificate: Callable[..., np.ndarray],
        p: float,
        quantile: float,
        precision: str,
        features: Any,
    ) -> None:
        dual_order(p)
        check_precision(precision)
        self.factory = factory
        self.certificate = certificate
        self.p = p
        self.quantile = _check_quantile(quantile)
        self.precision = precision
        self.features = features

    def __call__(self, estimator: Any, X: Any, y: Any = None) -> float:
        values = self.certificate(
            estimator, X, self.p, features=self.features, precision=self.precision
        )
        return _quantile(values, self.quantile)

    def __repr__(self) -> str:
        return (
            f"{self.factory}(p={_format(self.p)}, quantile={self.quantile!r}, "
            f"precision={self.precision!r}{_features(self.features)})"
        )


def margin_scorer(
    p: float = 2, quantile: float = 0.5, precision: str = "float32", *, features: Any = None
) -> Scorer:
    """Scorer: a quantile of the certified l_p margins on the scoring data.

    The margin of a sample is the radius of the largest l_p ball around it on which
    the input gradient is provably constant (:func:`sklearn_roll.certified_margin`).

    Parameters
    ----------
    p : {1, 2, np.inf}, default=2
        Order of the ball.
    quantile : float in [0, 1], default=0.5
        Which quantile of the per-sample margins to report (0.5: the median, the
        paper's measure). Interpolated linearly; +inf margins stay +inf.
    precision : {"float32", "float64"}, default="float32"
        Arithmetic of the certificate.
    features : str, int, array-like of them, or None, default=None
        Raw input columns that may move, the others held fixed (see
        :func:`sklearn_roll.certified_margin`); None for all.

    Returns
    -------
    scorer : callable
        ``scorer(estimator, X, y=None) -> float``, greater is better. It raises a
        ``TypeError`` naming the estimator when that is not a ROLL estimator or a
        pipeline ending in one.

    Examples
    --------
    >>> from sklearn.datasets import load_iris
    >>> from sklearn.model_selection import cross_validate
    >>> from sklearn_roll import ROLLClassifier
    >>> from sklearn_roll.metrics import margin_scorer
    >>> X, y = load_iris(return_X_y=True)
    >>> clf = ROLLClassifier(hidden_layer_sizes=(16,), max_epochs=5, random_state=0)
    >>> scores = cross_validate(
    ...     clf, X, y, cv=2, scoring={"accuracy": "accuracy", "margin": margin_scorer()}
    ... )
    >>> sorted(scores)[-2:]
    ['test_accuracy', 'test_margin']
    """
    return _QuantileScorer("margin_scorer", certified_margin, p, quantile, precision, features)


def radius_scorer(
    p: float = 2, quantile: float = 0.5, precision: str = "float32", *, features: Any = None
) -> Scorer:
    """Scorer: a quantile of the certified robust radii (classifiers only).

    Within a sample's radius the prediction provably cannot change
    (:func:`sklearn_roll.regions.certified_radius`).

    Parameters
    ----------
    p : {1, 2, np.inf}, default=2
        Order of the ball.
    quantile : float in [0, 1], default=0.5
        Which quantile of the per-sample radii to report.
    precision : {"float32", "float64"}, default="float32"
        Arithmetic of the certificate.
    features : str, int, array-like of them, or None, default=None
        Raw input columns that may move, the others held fixed; None for all.

    Returns
    -------
    scorer : callable
        ``scorer(estimator, X, y=None) -> float``, greater is better; a regressor
        raises a ``TypeError``.

    Examples
    --------
    >>> from sklearn_roll.metrics import radius_scorer
    >>> radius_scorer(p=1, quantile=0.25)
    radius_scorer(p=1, quantile=0.25, precision='float32')
    """
    return _QuantileScorer("radius_scorer", certified_radius, p, quantile, precision, features)


class _CertifiedAccuracyScorer:
    """Fraction of samples predicted right with a certified radius of at least ``radius``."""

    def __init__(self, radius: float, p: float, precision: str, features: Any) -> None:
        if not isinstance(radius, numbers.Real) or isinstance(radius, bool) or not radius >= 0:
            raise ValueError(f"radius must be a non-negative number, got {radius!r}.")
        dual_order(p)
        check_precision(precision)
        self.radius = radius
        self.p = p
        self.precision = precision
        self.features = features

    def __call__(self, estimator: Any, X: Any, y: Any = None) -> float:
        if y is None:
            raise ValueError("certified_accuracy_scorer needs the true labels y.")
        radii = certified_radius(
            estimator, X, self.p, features=self.features, precision=self.precision
        )
        correct = estimator.predict(X) == np.asarray(y)
        return float(np.mean(correct & (radii >= self.radius)))

    def __repr__(self) -> str:
        return (
            f"certified_accuracy_scorer(radius={self.radius!r}, p={_format(self.p)}, "
            f"precision={self.precision!r}{_features(self.features)})"
        )


def certified_accuracy_scorer(
    radius: float, p: float = 2, precision: str = "float32", *, features: Any = None
) -> Scorer:
    """Scorer: certified accuracy, the fraction of samples provably right within ``radius``.

    A sample counts when it is classified correctly and its certified robust radius
    (:func:`sklearn_roll.regions.certified_radius`) is at least ``radius``: no input
    within that l_p distance can change its prediction.

    Parameters
    ----------
    radius : float >= 0
        The l_p radius, in the units of the input (a pipeline's raw features).
    p : {1, 2, np.inf}, default=2
        Order of the ball.
    precision : {"float32", "float64"}, default="float32"
        Arithmetic of the certificate.
    features : str, int, array-like of them, or None, default=None
        Raw input columns that may move, the others held fixed; None for all.

    Returns
    -------
    scorer : callable
        ``scorer(estimator, X, y) -> float`` in [0, 1], greater is better.

    Examples
    --------
    >>> import numpy as np
    >>> from sklearn_roll.metrics import certified_accuracy_scorer
    >>> certified_accuracy_scorer(0.1, p=np.inf)
    certified_accuracy_scorer(radius=0.1, p=np.inf, precision='float32')
    """
    return _CertifiedAccuracyScorer(radius, p, precision, features)


def _count(value: Any, name: str, least: int) -> int:
    if not isinstance(value, numbers.Integral) or isinstance(value, bool) or value < least:
        raise ValueError(f"{name} must be an integer >= {least}, got {value!r}.")
    return int(value)


def _radius(eps: Any) -> float:
    if (
        not isinstance(eps, numbers.Real)
        or isinstance(eps, bool)
        or not math.isfinite(eps)
        or eps <= 0
    ):
        raise ValueError(f"eps must be a positive finite number, got {eps!r}.")
    return float(eps)


def _domain(domain: Any, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The domain's bounds shaped like one sample of x, checked to hold every sample."""
    shape = x.shape[1:]
    size = math.prod(shape)
    if domain is None:
        return np.full(shape, -np.inf), np.full(shape, np.inf)
    if not isinstance(domain, (tuple, list)) or len(domain) != 2:
        raise ValueError(
            f"domain must be a pair (lower, upper) of numbers or per-feature arrays, or None; "
            f"got {domain!r}."
        )
    bounds = []
    for name, bound in zip(("lower", "upper"), domain):
        try:
            a = np.asarray(bound, dtype=np.float64)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"The domain's {name} bound must be numeric: {exc}") from exc
        if a.ndim == 0:
            a = np.full(shape, float(a))
        elif a.shape in (shape, (size,)):
            a = a.reshape(shape)
        else:
            raise ValueError(
                f"The domain's {name} bound must be a number or one value per feature, of "
                f"shape {shape}" + (f" or ({size},)" if len(shape) > 1 else "") + f"; got "
                f"shape {a.shape}."
            )
        if np.isnan(a).any():
            raise ValueError(f"The domain's {name} bound contains NaN.")
        bounds.append(a)
    lower, upper = bounds
    empty = ~(lower < upper)
    if empty.any():
        k = int(np.flatnonzero(empty)[0])
        raise ValueError(
            f"The domain is empty or degenerate: lower >= upper at {int(empty.sum())} "
            f"feature(s), first at flat index {k} ({lower.flat[k]!r} >= {upper.flat[k]!r})."
        )
    outside = ((x < lower) | (x > upper)).reshape(len(x), -1).any(axis=1)
    if outside.any():
        raise ValueError(
            f"{int(outside.sum())} sample(s) lie outside the domain, first sample "
            f"{int(np.flatnonzero(outside)[0])}; the ball is centred on each sample, which must "
            "lie inside the domain."
        )
    return lower, upper


def _box(
    x: np.ndarray, radius: float, domain: Any, moving: np.ndarray | None
) -> tuple[np.ndarray, np.ndarray]:
    """Each sample's l_inf ball within the domain, over the moving coordinates only.

    The coordinates that do not move get a box of width 0 at their value.
    """
    if moving is None:
        lower, upper = _domain(domain, x)
        return np.maximum(x - radius, lower), np.minimum(x + radius, upper)
    flat = x.reshape(len(x), -1)
    lower, upper = _domain(domain, flat[:, moving])
    lo, hi = flat.copy(), flat.copy()
    lo[:, moving] = np.maximum(flat[:, moving] - radius, lower)
    hi[:, moving] = np.minimum(flat[:, moving] + radius, upper)
    return lo.reshape(x.shape), hi.reshape(x.shape)


@fill_doc
def gradient_distortion(
    estimator: Any,
    X: Any,
    eps: float,
    *,
    target: Any = None,
    domain: Any = None,
    features: Any = None,
    n_uniform: int = 100,
    population: int = 24,
    generations: int = 20,
    precision: str = "float64",
    random_state: Any = None,
    batch_size: int | None = None,
    progress: bool = False,
) -> Bunch:
    """Expected and maximum change of the explanation within an l_inf ball of each sample.

    For a sample x explained by output y (the gradient :func:`~sklearn_roll.regions.explain`
    returns), the gradient distortion of a nearby x' is
    ``Delta(x, x') = ||grad f_y(x') - grad f_y(x)||_1``, over the box B of x' within l_inf
    distance ``eps`` of x and inside ``domain``. Reported per sample: its expectation for
    x' uniform in B, estimated from ``n_uniform`` draws, and the largest value a genetic
    search finds (the gradient is piecewise constant, so the search is black-box, as
    in the paper). The search starts from the best uniform draws, so the maximum is at
    least the largest draw and hence at least the estimated expectation; it is a lower
    bound on the true maximum. Within the certified l_inf margin
    (:func:`~sklearn_roll.regions.certified_margin` with ``p=np.inf``) the gradient is
    constant: an ``eps`` below it gives 0 for both.

    Parameters
    ----------
    %(estimator)s
    X : array-like
        Tabular samples or images, of the kind the estimator (or pipeline) was fitted
        on. Sequences are refused: a ball around a sequence would mix its padding.
    eps : float > 0
        Radius of the l_inf ball, in the units of X (a pipeline's raw features).
    %(target)s
        The same output is explained at x and at every x' of its ball.
    domain : (lower, upper) or None, default=None
        Bounds of the valid inputs, for instance ``(0, 1)`` for pixel intensities,
        each a number or one value per feature (shaped like one sample, or
        flattened); the ball is intersected with them. Every sample must lie inside,
        and lower < upper everywhere. None: no bounds. With ``features``, the values
        are per moving column, in their sorted order.
    %(features)s
        The ball lies in the subspace of these columns, and the distortion is the
        l1 change of the gradient entries of these columns.
    n_uniform : int >= 1, default=100
        Uniform draws per sample for the expectation.
    population : int >= 2, default=24
        Population of the genetic search, per sample.
    generations : int >= 0, default=20
        Generations of the search, ``population`` gradient evaluations each, per
        sample; 0 reports the largest uniform draw.
    precision : {"float32", "float64"}, default="float64"
        Arithmetic of the gradients. In float32, gradients at two points of one
        linear region can differ by rounding, which reads as a small distortion;
        float64 computes the same gradient for the same activation pattern up to far
        smaller rounding.
    random_state : int, RandomState or None, default=None
        Seed of every draw; an int gives reproducible results.
    %(batch_size)s
    progress : bool, default=False
        Show a tqdm progress bar over the rounds of gradient evaluations.

    Returns
    -------
    result : Bunch
        ``expected`` and ``maximum``, ndarrays of shape (n_samples,), float64: the
        estimated expected and the largest found l1 distortion of each sample, in the
        units of the gradient (output per unit of X). ``maximum >= expected``.

    Raises
    ------
    ValueError
        If eps is not a positive finite number, the domain is malformed, empty or
        degenerate (lower >= upper anywhere) or does not hold every sample, a count is
        out of range, X holds sequences, or the target is invalid (a regressor with
        several outputs needs one).

    Examples
    --------
    >>> import numpy as np
    >>> from sklearn_roll.metrics import gradient_distortion
    %(fitted_iris)s
    >>> result = gradient_distortion(clf, X[:3], eps=0.5, domain=(0, 10), random_state=0)
    >>> result.expected.shape, bool((result.maximum >= result.expected).all())
    ((3,), True)

    A ball inside every sample's linear region leaves the explanation unchanged:

    >>> from sklearn_roll.regions import certified_margin
    >>> eps = 0.5 * certified_margin(clf, X[:3], p=np.inf).min()
    >>> float(gradient_distortion(clf, X[:3], eps, random_state=0).maximum.max())
    0.0
    """
    radius = _radius(eps)
    n_uniform = _count(n_uniform, "n_uniform", 1)
    population = _count(population, "population", 2)
    generations = _count(generations, "generations", 0)
    check_precision(precision)
    rng = check_random_state(random_state)
    fitted = view(estimator, X, features)
    if fitted.x.ndim == 3:
        raise ValueError(
            "gradient_distortion takes tabular samples or images, not sequences: a ball "
            "around a sequence of varying length has no natural definition here."
        )
    x = fitted.x.astype(np.float64)
    lower, upper = _box(x, radius, domain, fitted.features)
    check_parameters(fitted.module)
    exact = fitted.exact_module()
    module = exact if precision == "float64" else fitted.module
    with torch.no_grad():
        n_outputs = first_output(exact(torch.from_numpy(x[:1]).double())).shape[1]
    indices = _target_indices(fitted, target, len(x), n_outputs)
    with fitted.threads():
        if indices is None:
            # The class predicted at x is explained over the whole ball.
            rows = batch_rows(module, x, None, 1)
            indices = forward(module, x, rows, lambda out: out.argmax(dim=1)).astype(np.int64)
        gradients = view_gradients(fitted, indices, precision, batch_size)
        expected, maximum = distortions(
            gradients,
            x,
            lower,
            upper,
            n_uniform,
            population,
            generations,
            rng,
            progress,
        )
    return Bunch(expected=expected, maximum=maximum)
