"""Linear regions and their certificates (DESIGN section 2).

The first half of this module is the math: it turns a
:class:`~sklearn_roll.linearize.Linearization` into l_p margins, directional margins,
per-coordinate stability bounds and decision radii. The second half holds the public
functions, which take a fitted ROLL estimator, unwrap its module and input
conversion, and call that math batch by batch so memory stays bounded
(``progress=True`` shows a progress bar over the batches).

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
weights. With ``precision="float64"`` everything is computed in float64. With
``precision="float32"`` (the default) the expensive Jacobian work runs in float32
while the pre-activations ``z_u`` come from a float64 forward pass; the float32
gradient norms are enlarged by the factor ``1 + FLOAT32_RTOL`` so that rounding in
the Jacobian cannot make a margin over-claim.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import numbers
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import numpy as np
import torch
from sklearn.base import is_classifier
from sklearn.pipeline import Pipeline
from sklearn.utils.validation import check_is_fitted
from torch import Tensor, nn
from tqdm import tqdm

from ._affine import check_raw_input, fold, split_pipeline
from .linearize import (
    Linearization,
    first_output,
    float64_copy,
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
    "stability_bounds",
]

FLOAT32_RTOL = 1e-4
"""Relative enlargement of float32 gradient norms in ``precision="float32"``."""

# Tangent memory per batch. Small enough that a layer's tangents stay in cache-friendly
# sizes (batches of 32-64 samples were fastest for a 784-300x4 MLP), large enough that
# each layer is one big matrix product.
_MEMORY_BUDGET = 64 * 2**20
_PRECISIONS = ("float32", "float64")

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


def _min_ratio(num: Tensor, den: Tensor, counted: Tensor | None) -> Tensor:
    """Per-example minimum of num / den over units with den > 0 (inf if none)."""
    ratio = torch.where(den > 0, num / torch.where(den > 0, den, 1), math.inf)
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


def decision_distance(lin: Linearization, p: float, output: Tensor, rtol: float = 0.0) -> Tensor:
    """l_p distance to the nearest tie of the predicted class within the region.

    Inside the linear region the logits are affine, so the tie with class k lies at
    ``(f_y - f_k) / ||grad f_y - grad f_k||_q``.

    Parameters
    ----------
    lin : Linearization
        With output tangents spanning the input space.
    p : {1, 2, np.inf}
        Order of the ball.
    output : Tensor of shape (n, K)
        Logits to use (float64 ones for the float32 path).
    rtol : float
        Relative enlargement of the gradient norms.

    Returns
    -------
    Tensor of shape (n,), float64
    """
    q = dual_order(p)
    output = output.double()
    y = output.argmax(dim=1)
    rows = torch.arange(output.shape[0])
    gap = output[rows, y][:, None] - output
    grad = lin.output_tangents[rows, y][:, None, :] - lin.output_tangents
    norm = _inflate(torch.linalg.vector_norm(grad, ord=q, dim=2), rtol)
    dist = torch.where(norm > 0, gap / torch.where(norm > 0, norm, 1), math.inf)
    dist = torch.where((norm == 0) & (gap <= 0), 0.0, dist)
    dist[rows, y] = math.inf
    return dist.amin(dim=1)


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


def _unwrap(estimator: Any, X: Any) -> _Fitted:
    if isinstance(estimator, Pipeline):
        return _unwrap_pipeline(estimator, X)
    _final_estimator(estimator)
    x, restore = estimator._roll_input(X)
    module = estimator.module_
    module.eval()
    classes = estimator.classes_ if is_classifier(estimator) else None
    return _Fitted(
        module=module, x=x, restore=restore, classes=classes, inputs=estimator._roll_input
    )


def _unwrap_pipeline(pipeline: Pipeline, X: Any) -> _Fitted:
    """Fold the pipeline's affine steps into its network: certificates in raw units."""
    amap, estimator = split_pipeline(pipeline)
    if amap is None:
        return _unwrap(estimator, X)
    module64 = fold(float64_copy(estimator.module_), amap, _module_input_shape(estimator))
    # The working copy keeps the network's own precision, as for a bare estimator.
    module = copy.deepcopy(module64).to(next(_dtypes(estimator.module_)))

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


def _check_precision(precision: str) -> None:
    if precision not in _PRECISIONS:
        raise ValueError(f"precision must be one of {_PRECISIONS}, got {precision!r}.")


def _batch_size(
    module: nn.Module, x: np.ndarray, batch_size: int | None, tangents: str | None
) -> int:
    """Samples per batch so that the tangent tensors stay within the memory budget."""
    if batch_size is not None:
        if not isinstance(batch_size, numbers.Integral) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer or None, got {batch_size!r}.")
        return int(batch_size)
    if len(x) == 0:
        return 1
    dtype = next(_dtypes(module))
    probe = torch.from_numpy(x[:1]).to(dtype)
    with torch.no_grad():
        lin = record(module, probe)
    k = 1 if tangents is None else tangent_count(module, probe, tangents)
    itemsize = torch.finfo(dtype).bits // 8
    per_example = itemsize * k * (lin.n_units + lin.output.shape[1])
    return int(max(1, min(len(x), _MEMORY_BUDGET // per_example)))


def _dtypes(module: nn.Module) -> Iterator[torch.dtype]:
    for param in module.parameters():
        yield param.dtype
    yield torch.float32


def _progress(batches: range, enabled: bool) -> Iterable[int]:
    """The batch starts, under a tqdm bar when ``enabled``."""
    return tqdm(batches, unit="batch", desc="sklearn-roll") if enabled else batches


class _Evaluator:
    """Run linearizations batch by batch in the requested precision."""

    def __init__(self, fitted: _Fitted, precision: str) -> None:
        _check_precision(precision)
        self.fitted = fitted
        self.exact = fitted.exact_module()
        self.work = self.exact if precision == "float64" else fitted.module
        self.dtype = torch.float64 if precision == "float64" else torch.float32
        self.rtol = 0.0 if precision == "float64" else FLOAT32_RTOL

    def batches(
        self,
        tangents: str | Callable[[Tensor, slice], Tensor] | None,
        batch_size: int | None,
        reduce: Callable[[Tensor], Tensor] | None = None,
        progress: bool = False,
    ) -> Iterator[tuple[slice, Linearization, Linearization]]:
        """Yield (rows, linearization in working precision, float64 record)."""
        x = self.fitted.x
        size = _batch_size(self.work, x, batch_size, None if callable(tangents) else tangents)
        with torch.no_grad():
            for start in _progress(range(0, len(x), size), progress):
                rows = slice(start, min(start + size, len(x)))
                xb = torch.from_numpy(x[rows])
                exact = record(self.exact, xb.double())
                if tangents is None:
                    yield rows, exact, exact
                    continue
                xw = xb.to(self.dtype)
                t = tangents(xw, rows) if callable(tangents) else tangents
                yield rows, linearize(self.work, xw, t, reduce), exact


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
        ``"float64"`` computes everything in float64; ``"float32"`` computes the
        Jacobian in float32 and enlarges its norms by ``1 + FLOAT32_RTOL``.
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
    evaluator = _Evaluator(_unwrap(estimator, X), precision)
    out = np.empty(len(evaluator.fitted.x))
    tangents = "l2" if p == 2 else "basis"
    for rows, lin, exact in evaluator.batches(tangents, batch_size, norm_reducer(p), progress):
        out[rows] = lp_margin(lin, exact.pre, evaluator.rtol).numpy()
    return out


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
    evaluator = _Evaluator(fitted, precision)
    out = np.empty(len(fitted.x))
    tangents = "l2" if p == 2 else "basis"
    for rows, lin, exact in evaluator.batches(tangents, batch_size, norm_reducer(p), progress):
        margin = lp_margin(lin, exact.pre, evaluator.rtol)
        tie = decision_distance(lin, p, exact.output, evaluator.rtol)
        out[rows] = torch.minimum(margin, tie).numpy()
    return out


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
        As in :func:`certified_margin`.
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
    evaluator = _Evaluator(fitted, precision)
    out = np.empty(len(fitted.x))

    def tangent(xw: Tensor, rows: slice) -> Tensor:
        return torch.from_numpy(d[rows]).to(xw.dtype)[None]

    for rows, lin, exact in evaluator.batches(tangent, batch_size, progress=progress):
        out[rows] = directional(lin, exact.pre, evaluator.rtol).numpy()
    return out


def _directions(fitted: _Fitted, directions: Any) -> np.ndarray:
    """Directions in the module's input layout, one per sample, zero at padding."""
    x = fitted.x
    if not isinstance(directions, (list, tuple)):
        single = np.asarray(directions, dtype=np.float64)
        if single.shape == x.shape[1:]:
            return np.broadcast_to(np.nan_to_num(single), x.shape)
    d, _ = fitted.inputs(directions)
    if d.shape != x.shape:
        raise ValueError(
            f"directions must have one direction per sample, shaped like X {x.shape} "
            f"or like one sample {x.shape[1:]}; got {d.shape}."
        )
    return np.nan_to_num(d)


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
        As in :func:`certified_margin`.
    batch_size : int or None, default=None
        As in :func:`certified_margin`.
    progress : bool, default=False
        Show a tqdm progress bar over the batches.

    Returns
    -------
    lower, upper : arrays shaped like X (a list of arrays for list input)
    """
    evaluator = _Evaluator(_unwrap(estimator, X), precision)
    x = evaluator.fitted.x
    lower = np.empty(x.shape)
    upper = np.empty(x.shape)
    for rows, lin, exact in evaluator.batches("basis", batch_size, progress=progress):
        lo, up = axis_bounds(lin, exact.pre, evaluator.rtol)
        lower[rows] = lo.reshape(lower[rows].shape).numpy()
        upper[rows] = up.reshape(upper[rows].shape).numpy()
    padding = np.isnan(x)
    lower[padding] = np.nan
    upper[padding] = np.nan
    return evaluator.fitted.restore(lower), evaluator.fitted.restore(upper)


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
    batch_size: int = 1024,
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
        Arithmetic of the gradient computation.
    batch_size : int, default=1024
        Samples per backward pass.
    progress : bool, default=False
        Show a tqdm progress bar over the batches.

    Returns
    -------
    gradients : array shaped like X (a list of arrays for list input)
        NaN at padded positions of sequences.
    """
    fitted = _unwrap(estimator, X)
    _check_precision(precision)
    module = fitted.exact_module() if precision == "float64" else fitted.module
    dtype = torch.float64 if precision == "float64" else torch.float32
    grads = np.empty(fitted.x.shape)
    indices = None
    for start in _progress(range(0, len(fitted.x), batch_size), progress):
        rows = slice(start, min(start + batch_size, len(fitted.x)))
        xb = torch.from_numpy(fitted.x[rows]).to(dtype).requires_grad_(True)
        with torch.enable_grad():
            out = first_output(module(xb))
            if start == 0:
                indices = _target_indices(fitted, target, len(fitted.x), out.shape[1])
            picked = out.argmax(dim=1) if indices is None else torch.from_numpy(indices[rows])
            (grad,) = torch.autograd.grad(out.gather(1, picked[:, None]).sum(), xb)
        grads[rows] = grad.double().numpy()
    grads[np.isnan(fitted.x)] = np.nan
    return fitted.restore(grads)


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
    with torch.no_grad():
        lin = record(module, torch.from_numpy(fitted.x).to(dtype))
    blocks = [
        (z > 0) if counted is None else (z > 0) & counted
        for z, counted in zip(lin.pre, lin.counted)
    ]
    if not blocks:
        return np.zeros((len(fitted.x), 0), dtype=bool)
    return torch.cat(blocks, dim=1).numpy()


def _output_jacobians(
    module: nn.Module, x: np.ndarray, batch_size: int = 256, progress: bool = False
) -> np.ndarray:
    """Input-output Jacobians (n, n_outputs * D) by reverse mode, one pass per output."""
    blocks = []
    for start in _progress(range(0, len(x), batch_size), progress):
        xb = torch.from_numpy(x[start : start + batch_size]).double().requires_grad_(True)
        with torch.enable_grad():
            out = first_output(module(xb))
            rows = [
                torch.autograd.grad(out[:, k].sum(), xb, retain_graph=True)[0].reshape(len(xb), -1)
                for k in range(out.shape[1])
            ]
        blocks.append(torch.cat(rows, dim=1).numpy())
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
