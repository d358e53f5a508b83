"""Scorers for model selection by certified margin.

Each factory returns a small callable ``scorer(estimator, X, y=None) -> float`` (greater
is better), usable wherever scikit-learn takes a scorer, alone or in a dict::

    GridSearchCV(est, grid, scoring={"accuracy": "accuracy", "margin": margin_scorer()})

The estimator may be a fitted ROLL estimator or a fitted pipeline ending in one whose
other steps are affine; margins are then in the units of the pipeline's raw features
(see :mod:`sklearn_roll.regions`). With ``features=`` the certificates concern the
subspace of those raw columns, the others held fixed (tables with categorical columns). Scoring runs with the estimator's ``n_threads``
torch threads, like its ``predict``.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable
from typing import Any

import numpy as np

from ._evaluation import check_precision
from ._margins import dual_order
from .regions import certified_margin, certified_radius

__all__ = ["certified_accuracy_scorer", "margin_scorer", "radius_scorer"]

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
