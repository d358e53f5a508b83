"""From "a fitted estimator or pipeline" to "a network, its input and its output layout".

The certificates work on a torch module and arrays. A fitted ROLL estimator describes
its network through one documented hook, ``__sklearn_roll_network__()``, which
returns a :class:`Network`; this module is the only place that asks for it. Around it:

* a fitted ``Pipeline`` whose last step is a ROLL estimator and whose other steps are
  affine (:mod:`sklearn_roll._affine`) becomes the composed network, in float64, on the
  raw features the pipeline receives;
* with ``features`` (raw columns that move, the others held fixed) the steps need to be
  affine only along the moving columns: the network then reads the moving columns and,
  as coordinates that never move, the offset that the pipeline's own ``transform``
  gives the fixed ones (one-hot blocks of categorical columns, say);
* a fitted ``TransformedTargetRegressor`` around either contributes its target
  transformer's inverse, which must be affine: the predictions are then the network's
  outputs times a per-output scale (plus a constant), and so are their gradients.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import numbers
from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Any

import numpy as np
from scipy.sparse import issparse
from sklearn.compose import TransformedTargetRegressor
from sklearn.pipeline import Pipeline
from sklearn.utils.validation import check_is_fitted
from torch import nn

from ._affine import AffineMap, affine_map, check_raw_input, compose, fold, moving_map
from ._evaluation import Evaluator
from .linearize import float64_copy

__all__ = ["Network", "View", "network_of", "view"]

Restore = Callable[[np.ndarray], Any]

HOOK = "__sklearn_roll_network__"


@dataclasses.dataclass(frozen=True)
class Network:
    """What a fitted estimator tells the certificates about its network.

    Attributes
    ----------
    module : nn.Module
        The network in eval mode, on the CPU, in its own precision; its first output
        is the logits (classifier) or the prediction (regressor), up to
        ``output_scale``.
    convert : callable
        ``convert(X) -> (x, restore)``: validates X as ``predict`` does and returns
        it in the module's layout (C-contiguous float32 or float64), with a function
        that maps an array shaped like ``x`` (gradients, bounds) back to the layout
        of X.
    kind : {"tabular", "sequence", "image"}
        The kind of input, which decides what preprocessing can be folded in.
    sample_shape : tuple of int or None
        The shape of one sample as the module reads it; None for sequences, whose
        length varies.
    classes : ndarray or None
        The class labels of a classifier (logit i is class ``classes[i]``); None for
        a regressor.
    threads : callable
        A context manager factory that sets the estimator's torch threads.
    output_scale : ndarray of shape (n_outputs,) or None, default=None
        A regressor whose predictions are ``module(x) * output_scale + offset``
        (a standardised target): the factor of each output's gradient. None for 1.
    feature_names : ndarray of str or None, default=None
        The column names the estimator was fitted with, if any.
    """

    module: nn.Module
    convert: Callable[[Any], tuple[np.ndarray, Restore]]
    kind: str
    sample_shape: tuple[int, ...] | None
    classes: np.ndarray | None
    threads: Callable[[], AbstractContextManager] = contextlib.nullcontext
    output_scale: np.ndarray | None = None
    feature_names: np.ndarray | None = None


@dataclasses.dataclass
class View:
    """A network at the points of one call, and how to read more arrays like them.

    Attributes
    ----------
    module : nn.Module
        The network in its own precision.
    x : ndarray
        The points, in the module's layout.
    restore : callable
        Maps an array shaped like ``x`` back to the layout the caller passed (with
        ``features``: the raw columns, NaN at those held fixed).
    classes : ndarray or None
        Class labels (classifiers).
    inputs : callable
        ``inputs(data) -> (array, restore)`` for further arrays in the layout of X
        (directions).
    threads : callable
        Context manager factory for the estimator's torch threads.
    module64 : nn.Module or None
        The float64 network the certificates concern when ``module`` was derived
        from it (a pipeline's network folded with its preprocessing); None for a
        float64 copy of ``module``.
    features : ndarray of int or None
        The module's input coordinates that move (the caller's ``features``); None
        for all.
    output_scale : ndarray of shape (n_outputs,) or None
        Factor of each output's gradient (regressors with a scaled target).
    """

    module: nn.Module
    x: np.ndarray
    restore: Restore
    classes: np.ndarray | None
    inputs: Callable[[Any], tuple[np.ndarray, Restore]]
    threads: Callable[[], AbstractContextManager]
    module64: nn.Module | None = None
    features: np.ndarray | None = None
    output_scale: np.ndarray | None = None

    def exact_module(self) -> nn.Module:
        """The float64 network, in eval mode."""
        return float64_copy(self.module) if self.module64 is None else self.module64

    def evaluator(self, precision: str) -> Evaluator:
        """The certificates of this network at ``x`` (in the subspace of ``features``)."""
        return Evaluator(
            self.module, self.x, precision, exact=self.module64, features=self.features
        )


@dataclasses.dataclass
class _Unwrapped:
    """A ROLL estimator, the preprocessing steps before it, and a target scale after it."""

    estimator: Any
    steps: list[tuple[str, Any]]
    target_scale: np.ndarray | None
    raw_names: np.ndarray | None


def _unwrap(estimator: Any) -> _Unwrapped:
    """Peel pipelines and TransformedTargetRegressors off a ROLL estimator."""
    steps: list[tuple[str, Any]] = []
    scale = None
    raw_names = None
    while True:
        if isinstance(estimator, TransformedTargetRegressor):
            check_is_fitted(estimator)
            factor = _target_scale(estimator)
            if factor is not None:
                scale = factor if scale is None else scale * factor
            inner = estimator.regressor_
            if not isinstance(inner, Pipeline) and not hasattr(inner, HOOK):
                raise TypeError(
                    f"The regressor of the TransformedTargetRegressor is "
                    f"{type(inner).__name__}, not a sklearn-roll estimator; certificates need "
                    "a ROLLRegressor or a Pipeline ending in one."
                )
            estimator = inner
        elif isinstance(estimator, Pipeline):
            if raw_names is None and not steps:
                raw_names = getattr(estimator, "feature_names_in_", None)
            name, last = estimator.steps[-1]
            if not hasattr(last, HOOK) and not isinstance(
                last, (Pipeline, TransformedTargetRegressor)
            ):
                kind = repr(last) if isinstance(last, str) or last is None else type(last).__name__
                raise TypeError(
                    f"The last step '{name}' of the pipeline is {kind}, not a sklearn-roll "
                    "estimator; certificates need a Pipeline ending in a fitted ROLLClassifier "
                    "or ROLLRegressor."
                )
            steps += estimator.steps[:-1]
            estimator = last
        elif hasattr(estimator, HOOK):
            break
        else:
            raise TypeError(
                f"{type(estimator).__name__} is not a sklearn-roll estimator; pass a fitted "
                "ROLLClassifier or ROLLRegressor, or a Pipeline or TransformedTargetRegressor "
                "around one."
            )
    check_is_fitted(estimator)
    return _Unwrapped(estimator, steps, scale, raw_names)


def _target_scale(regressor: TransformedTargetRegressor) -> np.ndarray | None:
    """d prediction / d inner prediction of each output, or None for the identity."""
    transformer = regressor.transformer_
    try:
        amap = affine_map(transformer, "transformer")
    except ValueError as exc:
        raise ValueError(
            f"The TransformedTargetRegressor's target transformer "
            f"({type(transformer).__name__}) is not affine, so its predictions are not "
            "affine where the network is: their input gradient is not constant on the "
            "network's linear regions, and there is nothing to certify or explain. Use an "
            "affine transformer (StandardScaler, MinMaxScaler, MaxAbsScaler, RobustScaler) or "
            "none."
        ) from exc
    if amap is None:
        return None
    if not amap.diagonal:
        raise ValueError(
            f"The TransformedTargetRegressor's target transformer "
            f"({type(transformer).__name__}) mixes the outputs; certificates and explanations "
            "need a transformer that scales each output on its own."
        )
    # predict applies the inverse map y = (y' - c) / a.
    return 1.0 / amap.weight


def network_of(estimator: Any) -> Network:
    """The network of a fitted ROLL estimator, or of the one a pipeline or target wrapper holds.

    Parameters
    ----------
    estimator : ROLLClassifier, ROLLRegressor, Pipeline or TransformedTargetRegressor
        A fitted estimator, or a fitted pipeline ending in one, or a fitted
        ``TransformedTargetRegressor`` around either.

    Returns
    -------
    Network
        With ``output_scale`` including the target transformer's.

    Raises
    ------
    TypeError
        If there is no ROLL estimator, naming the estimator or the pipeline step.
    NotFittedError
        If it is not fitted.
    """
    unwrapped = _unwrap(estimator)
    return _scaled(getattr(unwrapped.estimator, HOOK)(), unwrapped.target_scale)


def _scaled(network: Network, target_scale: np.ndarray | None) -> Network:
    if target_scale is None:
        return network
    scale = target_scale if network.output_scale is None else network.output_scale * target_scale
    return dataclasses.replace(network, output_scale=scale)


def view(estimator: Any, X: Any, features: Any = None) -> View:
    """The network of a fitted estimator or pipeline at the samples X.

    Parameters
    ----------
    estimator : ROLLClassifier, ROLLRegressor, Pipeline or TransformedTargetRegressor
        A fitted estimator, or a fitted pipeline ending in one whose other steps are
        affine (along the moving columns, with ``features``), or a fitted
        ``TransformedTargetRegressor`` with an affine transformer around either.
    X : array-like
        Samples, in the layout the estimator or pipeline was fitted on.
    features : str, int, array-like of them, or None, default=None
        Raw input columns that move (names or indices), the others held fixed; None
        for all.

    Returns
    -------
    View
    """
    unwrapped = _unwrap(estimator)
    network = _scaled(getattr(unwrapped.estimator, HOOK)(), unwrapped.target_scale)
    if features is not None:
        if network.kind == "sequence":
            raise ValueError(
                "features= selects columns of 2-D input (or pixels of images); it does not "
                "apply to sequences."
            )
        if unwrapped.steps:
            return _subspace_view(unwrapped, network, X, features)
        x, restore = network.convert(X)
        n = int(np.prod(x.shape[1:]))
        moving = resolve_features(features, n, network.feature_names)
        return View(
            network.module,
            x,
            _masked(restore, moving),
            network.classes,
            network.convert,
            network.threads,
            features=moving,
            output_scale=network.output_scale,
        )
    amap = compose(unwrapped.steps)
    if amap is None:
        x, restore = network.convert(X)
        return View(
            network.module,
            x,
            restore,
            network.classes,
            network.convert,
            network.threads,
            output_scale=network.output_scale,
        )
    if network.kind == "sequence":
        raise ValueError(
            "A sequence model cannot follow affine preprocessing steps in a pipeline: they "
            "transform 2-D tables, not sequences."
        )
    module64, module = _folded(network, amap)

    def inputs(data: Any) -> tuple[np.ndarray, Restore]:
        return check_raw_input(unwrapped.steps, data, amap.n_in), _identity

    x, restore = inputs(X)
    return View(
        module,
        x,
        restore,
        network.classes,
        inputs,
        network.threads,
        module64=module64,
        output_scale=network.output_scale,
    )


def _folded(network: Network, amap: AffineMap) -> tuple[nn.Module, nn.Module]:
    """The float64 network after ``amap``, and a working copy in the network's precision."""
    module64 = fold(float64_copy(network.module), amap, network.sample_shape)
    dtype = next((param.dtype for param in network.module.parameters()), None)
    module = copy.deepcopy(module64).to(dtype) if dtype is not None else module64
    return module64, module


def _subspace_view(unwrapped: _Unwrapped, network: Network, X: Any, features: Any) -> View:
    """A pipeline's network on (moving raw columns, offset of the fixed ones)."""
    n_raw = _n_columns(X)
    names = unwrapped.raw_names
    moving = resolve_features(features, n_raw, names)
    labels = [str(names[i]) if names is not None else f"column {i}" for i in moving]
    weight = moving_map(unwrapped.steps, moving, n_raw, labels)
    k, n_out = len(moving), weight.shape[0]
    # The network reads (x_F, o) and computes its first layer on W x_F + o.
    amap = AffineMap(np.hstack([weight, np.eye(n_out)]), np.zeros(n_out))
    module64, module = _folded(network, amap)

    def restore(a: np.ndarray) -> np.ndarray:
        out = np.full((len(a), n_raw), np.nan)
        out[:, moving] = a.reshape(len(a), -1)[:, :k]
        return out

    def inputs(data: Any) -> tuple[np.ndarray, Restore]:
        if _n_columns(data) != n_raw:
            raise ValueError(
                f"X has {_n_columns(data)} columns, but the pipeline is expecting {n_raw}."
            )
        moved = _numeric_columns(data, moving, labels)
        offset = _transform(unwrapped.steps, _zeroed(data, moving))
        if offset.shape != (len(moved), n_out):
            raise ValueError(
                f"The pipeline's preprocessing gives {offset.shape[1]} features, but it was "
                f"fitted to give {n_out}."
            )
        if not np.isfinite(offset).all():
            raise ValueError(
                "The pipeline's preprocessing of the columns held fixed is not finite for "
                "some samples."
            )
        return np.ascontiguousarray(np.hstack([moved, offset])), restore

    x, _ = inputs(X)
    return View(
        module,
        x,
        restore,
        network.classes,
        inputs,
        network.threads,
        module64=module64,
        features=np.arange(k),
        output_scale=network.output_scale,
    )


def resolve_features(features: Any, n: int, names: np.ndarray | None) -> np.ndarray:
    """Sorted indices of the columns ``features`` names (or indexes) among ``n``.

    Parameters
    ----------
    features : str, int, or array-like of str or int
        Column names (needs ``names``) or indices in ``[0, n)``.
    n : int
        Number of columns.
    names : ndarray of str or None
        The column names, if the estimator was fitted with any.

    Returns
    -------
    ndarray of int64

    Examples
    --------
    >>> import numpy as np
    >>> from sklearn_roll._adapter import resolve_features
    >>> resolve_features(["b", "a"], 3, np.array(["a", "b", "c"]))
    array([0, 1])
    """
    items = [features] if isinstance(features, (str, numbers.Integral)) else list(features)
    if not items:
        raise ValueError("features is empty: name at least one column that may move.")
    indices = []
    for item in items:
        if isinstance(item, str):
            if names is None:
                raise ValueError(
                    f"features names the column {item!r}, but the estimator was fitted without "
                    "column names (X was not a DataFrame with string column names); pass "
                    "column indices."
                )
            found = np.flatnonzero(np.asarray(names) == item)
            if not len(found):
                shown = ", ".join(repr(str(name)) for name in list(names)[:20])
                raise ValueError(
                    f"features names the unknown column {item!r}; the columns are {shown}"
                    + (", ..." if len(names) > 20 else "")
                    + "."
                )
            indices.append(int(found[0]))
        elif isinstance(item, numbers.Integral) and not isinstance(item, bool):
            if not 0 <= item < n:
                raise ValueError(
                    f"features has the column index {item}, outside [0, {n}) for input with "
                    f"{n} columns."
                )
            indices.append(int(item))
        else:
            raise ValueError(
                f"features must hold column names (str) or indices (int), got {item!r}."
            )
    if len(set(indices)) != len(indices):
        raise ValueError(f"features names a column more than once: {items!r}.")
    return np.array(sorted(indices), dtype=np.int64)


def _masked(restore: Restore, moving: np.ndarray) -> Restore:
    """``restore`` after setting the coordinates held fixed to NaN."""

    def masked(a: np.ndarray) -> Any:
        flat = np.full((len(a), int(np.prod(a.shape[1:]))), np.nan)
        flat[:, moving] = a.reshape(len(a), -1)[:, moving]
        return restore(flat.reshape(a.shape))

    return masked


def _n_columns(X: Any) -> int:
    shape = X.shape if hasattr(X, "shape") else np.shape(np.asarray(X, dtype=object))
    if len(shape) != 2:
        raise ValueError(
            f"features= selects columns of 2-D input (n_samples, n_columns); got "
            f"{len(shape)}-D input."
        )
    return int(shape[1])


def _column(X: Any, i: int) -> Any:
    return X.iloc[:, i] if hasattr(X, "iloc") else np.asarray(X)[:, i]


def _numeric_columns(X: Any, moving: np.ndarray, labels: list[str]) -> np.ndarray:
    """The moving columns of raw X as float64, refusing non-numeric or non-finite ones."""
    columns = []
    for i, label in zip(moving, labels):
        column = _column(X, int(i))
        try:
            values = np.asarray(column, dtype=np.float64)
        except (TypeError, ValueError) as exc:
            dtype = getattr(column, "dtype", None)
            raise ValueError(
                f"features names {label!r}, which is not a numeric column (dtype {dtype}); "
                "only numeric columns can move."
            ) from exc
        if not np.isfinite(values).all():
            raise ValueError(f"The column {label!r} in features contains NaN or infinity.")
        columns.append(values)
    return np.stack(columns, axis=1)


def _zeroed(X: Any, moving: np.ndarray) -> Any:
    """A copy of raw X with the moving columns set to 0."""
    if hasattr(X, "iloc"):
        out = X.copy()
        for i in moving:
            out.iloc[:, int(i)] = 0
        return out
    out = np.array(X, copy=True)
    out[:, moving] = 0
    return out


def _transform(steps: list[tuple[str, Any]], X: Any) -> np.ndarray:
    """The preprocessing steps' own transform of X, as a dense float64 array."""
    for _, step in steps:
        if step is None or (isinstance(step, str) and step == "passthrough"):
            continue
        X = step.transform(X)
    if issparse(X):
        X = X.toarray()
    return np.asarray(X, dtype=np.float64).reshape(len(X), -1)


def _identity(a: np.ndarray) -> np.ndarray:
    return a
