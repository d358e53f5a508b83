"""Linear regions and their certificates, for fitted estimators and pipelines.

Around any input x a ReLU / LeakyReLU network is affine on a convex polyhedron, its
linear region; inside it the input gradient is constant. The functions here certify,
per sample, how far the input can move inside the region: the largest l_1, l_2 or
l_inf ball (:func:`certified_margin`), the distance along a direction
(:func:`directional_margin`) or along each coordinate (:func:`stability_bounds`), and
the radius within which the prediction cannot change (:func:`certified_radius`).
:func:`explain` returns the constant gradient itself; :func:`activation_patterns` and
:func:`count_linear_regions` describe the regions the data touch.
:func:`module_margin` is the same certificate for a bare torch module.

Pipelines. Every function also takes a fitted ``Pipeline`` whose last step is a
ROLL estimator and whose other steps are affine maps ``x -> A x + c``:
``StandardScaler``, ``RobustScaler``, ``MinMaxScaler`` and ``MaxAbsScaler`` (without
clipping), ``PCA`` and ``IncrementalPCA`` (whitened or not), ``TruncatedSVD``,
``"passthrough"``, nested pipelines of these, and any transformer that declares its map
with a method ``roll_affine_map()`` returning ``(A, c)`` such that
``transform(X) == X @ A.T + c`` (``A`` of shape (n_outputs, n_inputs), or (n_features,)
for a feature-wise map). The steps are folded into the network in float64, so margins,
bounds and gradients concern the composed function and are in the units of the raw
features that the pipeline receives. A ``ColumnTransformer`` whose parts are such maps
(or ``"drop"``) folds too. Any other step raises a ``ValueError`` naming it. A fitted
``TransformedTargetRegressor`` around an estimator or pipeline works as well when its
target transformer is affine (scalers, or none): gradients are then those of its
predictions, in raw target units; margins do not depend on the target's units.

Tables. With ``features=`` (names or indices of raw input columns) a certificate
concerns the subspace of those columns, every other input held fixed at its value in
X: the largest ball in which the moving columns can go, in their raw units,
``min_u |z_u| / ||(g_u)_F||_q``, per-coordinate bounds for them only, and gradients
with respect to them (NaN at the columns held fixed). The columns held fixed need not
reach the network through affine maps: a pipeline whose ``ColumnTransformer``
one-hot encodes categorical columns (or applies any transformer to columns that do
not move) is certified over its numeric columns, the encoding of the fixed columns
entering the network as a constant that the pipeline's own ``transform`` computes.
Naming a column that is not numeric, or that reaches the network through a step that
is not affine, raises a ``ValueError`` naming the column and the step.

Precision. Certificates concern the network as a real-valued function of its
weights at the given point, in exact arithmetic. Every certificate is a lower bound
on that exact value: the float64 rounding of the pre-activations, outputs and their
derivatives is bounded rigorously (from the magnitudes of the terms each value sums)
and taken off distances and added to gradient norms, and a sample with a unit within
its rounding error of its boundary gets 0. Per unit, the allowance lowers a distance
by at most a relative ``gamma_r`` times the ratio of the unit's magnitude (the sum of
the absolute values of its terms) to its value, r being the roundings that reach it.
``precision="float64"`` computes everything in float64. ``precision="float32"`` (the default) computes
the Jacobians of Linear chains (:class:`~sklearn_roll.nn.MLP`) in float32 with a
rigorous bound on every rounding error, recomputing in float64 the units whose bound
is too loose, so that a float32 margin m32 and the float64 one m64 satisfy
``m64 * (1 - FLOAT32_RTOL) / (1 + FLOAT32_RTOL) <= m32 <= m64`` up to the float64
allowance. Other networks, and directional margins and stability bounds (single
partial derivatives, whose float32 rounding has no useful relative bound), compute in
float64. Values too large for float64 (overflowing pre-activations, outputs or
gradients) are refused with a ``ValueError``, never reported as NaN.
"""

from __future__ import annotations

import numbers
from typing import Any

import numpy as np
import torch
from torch import nn

from ._adapter import View, view
from ._docs import fill_doc
from ._evaluation import (
    Evaluator,
    check_parameters,
    check_precision,
    input_gradients,
    output_jacobians,
    patterns,
)
from ._margins import dual_order
from ._rounding import FLOAT32_RTOL
from ._validation import input_ndim
from .linearize import first_output

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


@fill_doc
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
    """Certified l_p margins (or robust radii) of a module at points.

    The math behind :func:`certified_margin` and :func:`certified_radius`, on a
    module and arrays rather than a fitted estimator.

    Parameters
    ----------
    module : nn.Module
        A piecewise-linear network in eval mode; its first output is the logits.
    x : ndarray of shape (n, ...)
        Points, in the layout the module reads (float64 for exact certificates).
    %(p)s
    %(precision)s
    %(batch_size)s
    decision : bool, default=False
        Return the robust radius ``min(margin, distance to the nearest tie)``.
    %(progress)s

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
    evaluator = Evaluator(module, np.ascontiguousarray(x), precision)
    return evaluator.margins(p, batch_size, decision, progress)


@fill_doc
def certified_margin(
    estimator: Any,
    X: Any,
    p: float = 2,
    *,
    features: Any = None,
    precision: str = "float32",
    batch_size: int | None = None,
    progress: bool = False,
) -> np.ndarray:
    """Certified l_p margin of each sample's linear region.

    The radius of the largest l_p ball around x on which the activation pattern,
    hence the input gradient, is provably constant: ``min_u |z_u| / ||g_u||_q`` with
    ``1/p + 1/q = 1``. +inf where no unit can change. With ``features`` the ball
    lies in the subspace of those columns and the norm is over their gradient entries.

    Parameters
    ----------
    %(margin_parameters)s

    Returns
    -------
    margins : ndarray of shape (n_samples,), float64

    Examples
    --------
    >>> from sklearn_roll.regions import certified_margin
    %(fitted_iris)s
    >>> certified_margin(clf, X[:3]).shape
    (3,)

    Moving the petal measurements only (columns 2 and 3), the sepals held fixed:

    >>> petals = certified_margin(clf, X[:3], features=[2, 3])
    >>> bool((petals >= certified_margin(clf, X[:3])).all())
    True
    """
    dual_order(p)
    fitted = view(estimator, X, features)
    with fitted.threads():
        return fitted.evaluator(precision).margins(p, batch_size, False, progress)


@fill_doc
def certified_radius(
    estimator: Any,
    X: Any,
    p: float = 2,
    *,
    features: Any = None,
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
    %(radius_parameters)s

    Returns
    -------
    radius : ndarray of shape (n_samples,), float64

    Examples
    --------
    >>> from sklearn_roll.regions import certified_margin, certified_radius
    %(fitted_iris)s
    >>> bool((certified_radius(clf, X[:3]) <= certified_margin(clf, X[:3])).all())
    True
    """
    dual_order(p)
    fitted = view(estimator, X, features)
    if fitted.classes is None:
        raise TypeError(
            "certified_radius needs a classifier; a regressor has no decision to certify."
        )
    with fitted.threads():
        return fitted.evaluator(precision).margins(p, batch_size, True, progress)


@fill_doc
def directional_margin(
    estimator: Any,
    X: Any,
    directions: Any,
    *,
    features: Any = None,
    batch_size: int | None = None,
    progress: bool = False,
) -> np.ndarray:
    """Distance along a direction from each sample to the boundary of its region.

    The largest t such that ``x + s d`` stays in the linear region of x for all
    ``s`` in ``[0, t]``, with d the direction scaled to unit l2 norm. Computed in
    float64 (a single directional derivative has no useful float32 rounding bound),
    with a rigorous allowance for its rounding: never above the exact distance
    (see *Precision* in :mod:`sklearn_roll.regions`).

    Parameters
    ----------
    %(estimator)s
    %(X)s
    directions : array-like
        One direction per sample, or a single direction for all, in the same layout
        as a sample of X; with ``features``, one entry per feature (in the sorted
        order of the columns), shape (n_features,) or (n_samples, n_features). Zero
        directions are refused.
    %(features)s
    %(batch_size)s
    %(progress)s

    Returns
    -------
    distances : ndarray of shape (n_samples,), float64

    Examples
    --------
    >>> import numpy as np
    >>> from sklearn_roll.regions import directional_margin
    %(fitted_iris)s
    >>> directional_margin(clf, X[:3], np.array([1.0, 0.0, 0.0, 0.0])).shape
    (3,)
    """
    fitted = view(estimator, X, features)
    d = _directions(fitted, directions) if fitted.features is None else _moving(fitted, directions)
    norms = np.sqrt((d.reshape(len(d), -1).astype(np.float64) ** 2).sum(axis=1))
    if np.any(norms == 0):
        raise ValueError("directions must be non-zero.")
    d = d / norms.reshape((-1,) + (1,) * (d.ndim - 1))
    with fitted.threads():
        return fitted.evaluator("float64").directional(d, batch_size, progress)


def _sequence_directions(fitted: View, directions: Any) -> np.ndarray:
    """Directions for sequences: one per sequence, or one for all, as the caller lays out X.

    A single direction is one 2-D array in the layout of a list item (``sequence_layout``),
    so the estimator's own conversion reads it, as a list of one.
    """
    x = fitted.x
    try:
        single = input_ndim(directions) == 2
        d, _ = fitted.inputs([directions] if single else directions)
    except ValueError as exc:
        raise ValueError(f"Invalid directions: {exc}") from exc
    if single and d.shape[1:] == x.shape[1:]:
        return np.broadcast_to(d[0], x.shape)
    if d.shape != x.shape:
        raise ValueError(
            "directions must be one direction per sequence, shaped like X, or one "
            f"sequence as long as the longest of X ({x.shape[1]} time steps); got "
            f"{len(d)} of {d.shape[1]} time steps for {len(x)} sequences."
        )
    return d


def _directions(fitted: View, directions: Any) -> np.ndarray:
    """Directions in the module's input layout, one per sample, zero at padding."""
    x = fitted.x
    d = _sequence_directions(fitted, directions) if x.ndim == 3 else None
    if d is None and not isinstance(directions, (list, tuple)):
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


def _moving(fitted: View, directions: Any) -> np.ndarray:
    """Directions over the moving coordinates, in the module's layout (0 elsewhere)."""
    try:
        d = np.asarray(directions, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"directions must be numeric: {exc}") from exc
    n, k = len(fitted.x), len(fitted.features)
    if d.shape == (k,):
        d = np.broadcast_to(d, (n, k))
    if d.shape != (n, k):
        raise ValueError(
            f"With features, directions must have one entry per feature: shape ({k},) or "
            f"({n}, {k}); got {d.shape}."
        )
    if not np.isfinite(d).all():
        raise ValueError("directions must be finite.")
    out = np.zeros((n, int(np.prod(fitted.x.shape[1:]))))
    out[:, fitted.features] = d
    return out.reshape(fitted.x.shape)


@fill_doc
def stability_bounds(
    estimator: Any,
    X: Any,
    *,
    features: Any = None,
    batch_size: int | None = None,
    progress: bool = False,
) -> tuple[Any, Any]:
    """Per-coordinate stability bounds: how far each input value alone can move.

    For every coordinate k, ``[lower_k, upper_k]`` with ``lower_k = -t(-e_k)`` and
    ``upper_k = t(e_k)``, the directional margins along the coordinate axes: moving
    only that value within the interval provably leaves the gradient unchanged
    (the paper's Figure 3). NaN at padded positions of sequences. Computed in
    float64 like :func:`directional_margin`, and likewise never above the exact
    bounds. With ``features``, the bounds of those columns only, NaN at the others.

    Parameters
    ----------
    %(estimator)s
    %(X)s
    %(features)s
    %(batch_size)s
    %(progress)s

    Returns
    -------
    lower, upper : arrays shaped like X (a list for list input, a nested DataFrame for one)

    Examples
    --------
    >>> from sklearn_roll.regions import stability_bounds
    %(fitted_iris)s
    >>> lower, upper = stability_bounds(clf, X[:3])
    >>> bool((lower <= 0).all() and (upper >= 0).all())
    True
    """
    fitted = view(estimator, X, features)
    with fitted.threads():
        lower, upper = fitted.evaluator("float64").axis_bounds(batch_size, progress)
    padding = np.isnan(fitted.x)
    lower[padding] = np.nan
    upper[padding] = np.nan
    return fitted.restore(lower), fitted.restore(upper)


def _target_indices(fitted: View, target: Any, n: int, n_outputs: int) -> np.ndarray | None:
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


@fill_doc
def explain(
    estimator: Any,
    X: Any,
    target: Any = None,
    *,
    features: Any = None,
    precision: str = "float32",
    batch_size: int | None = None,
    progress: bool = False,
) -> Any:
    """Exact input gradient of a logit (classifier) or of the prediction (regressor).

    The gradient is constant over the sample's linear region, whose size
    :func:`certified_margin` certifies. A regressor's gradient is that of its
    prediction in raw target units (a standardised target, or the affine target
    transformer of a ``TransformedTargetRegressor``, scales it).

    Parameters
    ----------
    %(estimator)s
    %(X)s
    %(target)s
    %(features)s
    precision : {"float32", "float64"}, default="float32"
        Arithmetic of the gradient computation. Samples whose float32 gradient
        overflows, or is so small (below ~1e-31) that float32 underflow would eat
        its precision, are recomputed in float64.
    %(batch_size)s
    %(progress)s

    Returns
    -------
    gradients : array shaped like X (a list for list input, a nested DataFrame for one)
        NaN at padded positions of sequences; with ``features``, an array of shape
        (n_samples, n_columns) that is NaN at the columns held fixed.

    Raises
    ------
    ValueError
        If a gradient is not finite even in float64 (the network's weights are too
        large), or the parameters are not finite.

    Examples
    --------
    >>> from sklearn_roll.regions import explain
    %(fitted_iris)s
    >>> explain(clf, X[:3], target=0).shape
    (3, 4)
    """
    fitted = view(estimator, X, features)
    check_precision(precision)
    check_parameters(fitted.module)
    exact = fitted.exact_module()
    module = exact if precision == "float64" else fitted.module
    with torch.no_grad():
        n_outputs = first_output(exact(torch.from_numpy(fitted.x[:1]).double())).shape[1]
    indices = _target_indices(fitted, target, len(fitted.x), n_outputs)
    with fitted.threads():
        grads = input_gradients(module, exact, fitted.x, indices, batch_size, progress)
    if fitted.output_scale is not None:
        picked = np.zeros(len(grads), dtype=np.int64) if indices is None else indices
        grads *= fitted.output_scale[picked].reshape((-1,) + (1,) * (grads.ndim - 1))
    return fitted.restore(grads)


@fill_doc
def activation_patterns(
    estimator: Any, X: Any, *, features: Any = None, precision: str = "float32"
) -> np.ndarray:
    """Activation pattern of each sample: which units are on (z_u > 0).

    Parameters
    ----------
    %(estimator)s
    %(X)s
    %(features)s
        The pattern does not depend on it; it lets a pipeline with steps that are
        not affine along the other columns be evaluated.
    precision : {"float32", "float64"}, default="float32"
        Arithmetic of the forward pass.

    Returns
    -------
    patterns : ndarray of bool, shape (n_samples, n_units)
        Units in recording order (layer by layer; for recurrent networks, step by
        step). Units that do not count (padded time steps) read False.

    Examples
    --------
    >>> from sklearn_roll.regions import activation_patterns
    %(fitted_iris)s
    >>> activation_patterns(clf, X[:3]).shape
    (3, 16)
    """
    fitted = view(estimator, X, features)
    check_precision(precision)
    module = fitted.exact_module() if precision == "float64" else fitted.module
    with fitted.threads():
        return patterns(module, fitted.x)


@fill_doc
def count_linear_regions(
    estimator: Any, X: Any, *, features: Any = None, progress: bool = False
) -> tuple[int, int]:
    """Bounds on the number of complete linear regions touched by X (#CLR).

    If no sample lies exactly on a region boundary, the number of complete linear
    regions among the samples is at most the number of distinct activation
    patterns and at least the number of distinct input-output Jacobians (Lemma 7 of
    the paper). Jacobians are computed in float64 for one sample per distinct
    pattern and compared at float32 resolution. With ``features`` the Jacobians are
    those with respect to the moving columns, which distinguish fewer regions: the
    lower bound stays a lower bound.

    Parameters
    ----------
    %(estimator)s
    %(X)s
    %(features)s
    %(progress)s

    Returns
    -------
    n_patterns : int
        Number of distinct activation patterns (upper bound).
    n_jacobians : int
        Number of distinct Jacobians of the output (lower bound).

    Examples
    --------
    >>> from sklearn_roll.regions import count_linear_regions
    %(fitted_iris)s
    >>> upper, lower = count_linear_regions(clf, X)
    >>> lower <= upper
    True
    """
    fitted = view(estimator, X, features)
    exact = fitted.exact_module()
    with fitted.threads():
        found = patterns(exact, fitted.x)
        _, representatives = np.unique(found, axis=0, return_index=True)
        jacobians = output_jacobians(exact, fitted.x[np.sort(representatives)], progress=progress)
    if fitted.features is not None and len(jacobians):
        size = int(np.prod(fitted.x.shape[1:]))
        jacobians = jacobians.reshape(len(jacobians), -1, size)[:, :, fitted.features]
        jacobians = jacobians.reshape(len(jacobians), -1)
    jacobians = np.nan_to_num(jacobians.astype(np.float32))
    return len(representatives), len(np.unique(jacobians, axis=0)) if len(jacobians) else 0
