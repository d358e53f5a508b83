"""Affine preprocessing folded into the network, so certificates are in raw feature units.

A fitted ``Pipeline([..., affine steps, ROLL estimator])`` computes ``f(A x + c)``: the
network ``f`` after the affine map ``x -> A x + c`` of its preprocessing. That composition
is again a piecewise-linear network, whose unit gradients in raw units are ``A^T g_u``.
This module extracts ``(A, c)`` from the fitted steps and builds the composed network in
float64, so the certificates of :mod:`sklearn_roll.regions` concern the exact function of
the raw input.

Steps folded (exact types; a subclass may change ``transform``):

* ``StandardScaler``, ``RobustScaler``, ``MinMaxScaler`` and ``MaxAbsScaler`` (the last
  two with ``clip=False``; clipping is not affine);
* ``PCA`` and ``IncrementalPCA`` (whitened or not) and ``TruncatedSVD``;
* ``"passthrough"`` and ``None`` steps, ``FunctionTransformer()`` without functions (the
  identity), and nested ``Pipeline`` objects of such steps;
* ``ColumnTransformer`` whose parts are such steps or ``"drop"``;
* any transformer with a method ``roll_affine_map()`` returning ``(A, c)`` with
  ``transform(X) == X @ A.T + c``: ``A`` of shape (n_outputs, n_inputs), or of shape
  (n_features,) for a map acting feature by feature, and ``c`` of shape (n_outputs,).
  Declaring it is a promise: the certificates are only as true as the map.

Certificates in the subspace of some raw columns (``features=``), the others held fixed,
need less: :func:`moving_map` asks only that the columns that move reach the network
through affine maps. A ``ColumnTransformer`` part that reads none of them may be any
transformer (a ``OneHotEncoder`` of categorical columns): for fixed inputs its output is
a constant, which the pipeline's own ``transform`` computes as a per-sample offset.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.base import BaseEstimator
from sklearn.compose import ColumnTransformer
from sklearn.decomposition import PCA, IncrementalPCA, TruncatedSVD
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import (
    FunctionTransformer,
    MaxAbsScaler,
    MinMaxScaler,
    RobustScaler,
    StandardScaler,
)
from sklearn.utils import check_array
from sklearn.utils.validation import check_is_fitted, validate_data
from torch import Tensor, nn

from ._chain import linear_chain

__all__ = [
    "AffineInput",
    "AffineMap",
    "affine_map",
    "check_raw_input",
    "compose",
    "fold",
    "moving_map",
]

_FLOAT_DTYPES = [np.float64, np.float32]


@dataclasses.dataclass(frozen=True)
class AffineMap:
    """The map ``x -> x @ A.T + c`` on rows x, in float64.

    Attributes
    ----------
    weight : ndarray of shape (n_out, n_in), or (n,) for a diagonal map
        ``A``.
    bias : ndarray of shape (n_out,)
        ``c``.
    """

    weight: np.ndarray
    bias: np.ndarray

    @property
    def diagonal(self) -> bool:
        """Whether ``A`` is stored as its diagonal."""
        return self.weight.ndim == 1

    @property
    def n_in(self) -> int:
        """Input dimension."""
        return self.weight.shape[-1]

    @property
    def n_out(self) -> int:
        """Output dimension."""
        return self.bias.shape[0]

    def __call__(self, X: np.ndarray) -> np.ndarray:
        """Apply the map to the rows of X."""
        if self.diagonal:
            return X * self.weight + self.bias
        return X @ self.weight.T + self.bias

    def then(self, outer: AffineMap) -> AffineMap:
        """The composition ``outer(self(x))``."""
        if self.diagonal and outer.diagonal:
            weight = outer.weight * self.weight
        elif outer.diagonal:
            weight = outer.weight[:, None] * self.weight
        elif self.diagonal:
            weight = outer.weight * self.weight[None, :]
        else:
            weight = outer.weight @ self.weight
        return AffineMap(weight, outer(self.bias))


def _map(weight: Any, bias: Any) -> AffineMap:
    return AffineMap(np.asarray(weight, dtype=np.float64), np.asarray(bias, dtype=np.float64))


def _centre_and_scale(n: int, center: Any, scale: Any) -> AffineMap:
    """``(x - center) / scale``; None for a step that does not centre or does not scale."""
    center = np.zeros(n) if center is None else np.asarray(center, dtype=np.float64)
    scale = np.ones(n) if scale is None else np.asarray(scale, dtype=np.float64)
    return _map(1.0 / scale, -center / scale)


def _standard(step: StandardScaler) -> AffineMap:
    return _centre_and_scale(
        step.n_features_in_,
        step.mean_ if step.with_mean else None,
        step.scale_ if step.with_std else None,
    )


def _robust(step: RobustScaler) -> AffineMap:
    return _centre_and_scale(
        step.n_features_in_,
        step.center_ if step.with_centering else None,
        step.scale_ if step.with_scaling else None,
    )


def _min_max(step: MinMaxScaler) -> AffineMap:
    return _map(step.scale_, step.min_)


def _max_abs(step: MaxAbsScaler) -> AffineMap:
    scale = np.asarray(step.scale_, dtype=np.float64)
    return _map(1.0 / scale, np.zeros_like(scale))


def _pca(step: PCA | IncrementalPCA) -> AffineMap:
    weight = np.asarray(step.components_, dtype=np.float64)
    if step.whiten:
        # The same floor on tiny variances as scikit-learn's transform.
        scale = np.sqrt(np.asarray(step.explained_variance_, dtype=np.float64))
        scale = np.maximum(scale, np.finfo(step.explained_variance_.dtype).eps)
        weight = weight / scale[:, None]
    return _map(weight, -weight @ np.asarray(step.mean_, dtype=np.float64))


def _svd(step: TruncatedSVD) -> AffineMap:
    weight = np.asarray(step.components_, dtype=np.float64)
    return _map(weight, np.zeros(weight.shape[0]))


_BUILTIN: dict[type, Callable[[Any], AffineMap]] = {
    StandardScaler: _standard,
    RobustScaler: _robust,
    MinMaxScaler: _min_max,
    MaxAbsScaler: _max_abs,
    PCA: _pca,
    IncrementalPCA: _pca,
    TruncatedSVD: _svd,
}


def _declared(step: Any, name: str) -> AffineMap:
    """The map a transformer declares through ``roll_affine_map()``, checked for shape."""
    declared = step.roll_affine_map()
    if not isinstance(declared, tuple) or len(declared) != 2:
        raise ValueError(
            f"Step '{name}' ({type(step).__name__}): roll_affine_map() must return a pair "
            f"(A, c), got {type(declared).__name__}."
        )
    amap = _map(*declared)
    if amap.weight.ndim not in (1, 2) or amap.bias.ndim != 1:
        raise ValueError(
            f"Step '{name}' ({type(step).__name__}): roll_affine_map() must return A of "
            f"shape (n_outputs, n_inputs) or (n_features,) and c of shape (n_outputs,); got "
            f"shapes {amap.weight.shape} and {amap.bias.shape}."
        )
    rows = amap.weight.shape[0]
    if rows != amap.n_out or not (np.isfinite(amap.weight).all() and np.isfinite(amap.bias).all()):
        raise ValueError(
            f"Step '{name}' ({type(step).__name__}): roll_affine_map() returned A with "
            f"{rows} rows and c of length {amap.n_out}; they must agree and be finite."
        )
    return amap


def _is_identity(step: Any) -> bool:
    if type(step) is FunctionTransformer:
        # What ColumnTransformer fits for "passthrough" parts.
        return step.func is None and step.inverse_func is None
    return step is None or (isinstance(step, str) and step == "passthrough")


def _column_indices(spec: Any, n: int, names: np.ndarray | None, where: str) -> np.ndarray:
    """Input column indices of a fitted ColumnTransformer part's column specification."""
    if isinstance(spec, slice):
        if isinstance(spec.start, str) or isinstance(spec.stop, str):
            # Name slices include their end, as in pandas.
            labels = list(names) if names is not None else []
            start = 0 if spec.start is None else labels.index(spec.start)
            stop = n if spec.stop is None else labels.index(spec.stop) + 1
            return np.arange(start, stop)
        return np.arange(n)[spec]
    values = np.atleast_1d(np.asarray(spec))
    if values.dtype.kind == "b":
        return np.flatnonzero(values)
    if values.dtype.kind in "iu":
        return values.astype(np.int64) % n
    if values.dtype.kind in "UO" and names is not None:
        lookup = {name: i for i, name in enumerate(names)}
        return np.array([lookup[v] for v in values.tolist()], dtype=np.int64)
    raise ValueError(f"Cannot resolve the columns {spec!r} of part {where!r}.")


def _parts(step: ColumnTransformer, name: str) -> list[tuple[str, Any, np.ndarray, slice]]:
    """(name, fitted transformer or "drop", input columns, output slice) of each part."""
    check_is_fitted(step)
    names = getattr(step, "feature_names_in_", None)
    parts = []
    for part, transformer, spec in step.transformers_:
        where = f"{name}__{part}"
        columns = _column_indices(spec, step.n_features_in_, names, where)
        parts.append((where, transformer, columns, step.output_indices_[part]))
    return parts


def _n_outputs(step: ColumnTransformer) -> int:
    return max((s.stop for s in step.output_indices_.values()), default=0)


def _check_part_size(amap: AffineMap, where: str, step: Any, n_in: int, out: slice) -> None:
    n_out = out.stop - out.start
    if amap.n_in != n_in or amap.n_out != n_out:
        raise ValueError(
            f"Step '{where}' ({type(step).__name__}) maps {amap.n_in} features to "
            f"{amap.n_out}, but its ColumnTransformer gives it {n_in} columns and "
            f"{n_out} outputs."
        )


def _column_transformer(step: ColumnTransformer, name: str) -> AffineMap:
    """The map of a ColumnTransformer all of whose parts are affine, as one dense (A, c)."""
    n_out = _n_outputs(step)
    weight = np.zeros((n_out, step.n_features_in_))
    bias = np.zeros(n_out)
    for where, transformer, columns, out in _parts(step, name):
        if isinstance(transformer, str) and transformer == "drop":
            continue
        try:
            amap = affine_map(transformer, where)
        except ValueError as exc:
            raise ValueError(
                f"{exc} To certify the other columns with this part's columns held fixed, "
                "pass features=<the columns that move>."
            ) from exc
        if amap is None:
            weight[out, columns] = np.eye(len(columns))
        else:
            _check_part_size(amap, where, transformer, len(columns), out)
            weight[out, columns] = np.diag(amap.weight) if amap.diagonal else amap.weight
            bias[out] = amap.bias
    return AffineMap(weight, bias)


def affine_map(step: Any, name: str) -> AffineMap | None:
    """The affine map of one fitted pipeline step, or None for an identity step.

    Parameters
    ----------
    step : transformer, "passthrough" or None
        A fitted pipeline step.
    name : str
        Its name in the pipeline, for error messages.

    Returns
    -------
    AffineMap or None

    Raises
    ------
    ValueError
        If the step is not one of the affine maps listed in the module docstring.
    """
    if _is_identity(step):
        return None
    if hasattr(step, "roll_affine_map"):
        return _declared(step, name)
    if isinstance(step, Pipeline):
        return compose((f"{name}__{inner}", sub) for inner, sub in step.steps)
    if type(step) is ColumnTransformer:
        return _column_transformer(step, name)
    if type(step) in (MinMaxScaler, MaxAbsScaler) and getattr(step, "clip", False):
        raise ValueError(
            f"Step '{name}' ({type(step).__name__}) clips its output (clip=True), which is "
            "not affine, so it cannot be folded into the network; use clip=False."
        )
    if type(step) in _BUILTIN:
        check_is_fitted(step)
        return _BUILTIN[type(step)](step)
    raise ValueError(
        f"Step '{name}' ({type(step).__name__}) is not an affine map that sklearn-roll can "
        "fold into the network, so certificates in raw feature units cannot be computed. "
        "Supported: "
        f"{', '.join(sorted(t.__name__ for t in _BUILTIN))}, 'passthrough', nested "
        "Pipelines, ColumnTransformers of these, and transformers that declare themselves affine with a method "
        "roll_affine_map() -> (A, c). Otherwise, transform X yourself and pass the fitted "
        "ROLL estimator."
    )


def compose(named_steps: Iterable[tuple[str, Any]]) -> AffineMap | None:
    """The affine map of a sequence of fitted (name, step) pairs, or None if all are identities.

    Parameters
    ----------
    named_steps : iterable of (str, transformer)
        Fitted steps, applied in order, e.g. ``pipeline.steps[:-1]``.

    Returns
    -------
    AffineMap or None

    Raises
    ------
    ValueError
        If a step is not affine, or its input size does not match the steps before it.

    Examples
    --------
    >>> import numpy as np
    >>> from sklearn.preprocessing import StandardScaler
    >>> from sklearn_roll._affine import compose
    >>> scaler = StandardScaler().fit(np.array([[0.0], [2.0]]))
    >>> compose([("scale", scaler)]).weight
    array([1.])
    """
    total: AffineMap | None = None
    for name, step in named_steps:
        amap = affine_map(step, name)
        if amap is None:
            continue
        if total is not None and amap.n_in != total.n_out:
            raise ValueError(
                f"Step '{name}' ({type(step).__name__}) expects {amap.n_in} features, but "
                f"the steps before it produce {total.n_out}."
            )
        total = amap if total is None else total.then(amap)
    return total


def moving_map(
    named_steps: Iterable[tuple[str, Any]], moving: np.ndarray, n_in: int, labels: list[str]
) -> np.ndarray:
    """The linear part of fitted steps as a function of some raw columns, the rest fixed.

    With the other columns held fixed, the steps compute ``x -> W x_F + o`` of the
    moving columns ``x_F``, with an offset ``o`` that depends on the fixed columns
    only, provided every path from a moving column to the output is affine: a step is
    an affine map (:func:`affine_map`), or a ``ColumnTransformer`` whose parts that
    read a moving column are (the others may be any transformer).

    Parameters
    ----------
    named_steps : iterable of (str, transformer)
        Fitted steps, applied in order.
    moving : ndarray of int
        Indices of the raw columns that move.
    n_in : int
        Number of raw columns.
    labels : list of str
        How to name each moving column in error messages.

    Returns
    -------
    ndarray of shape (n_outputs, len(moving)), float64
        ``W``.

    Raises
    ------
    ValueError
        If a moving column reaches a step that is not affine, naming both.

    Examples
    --------
    >>> import numpy as np
    >>> from sklearn.compose import ColumnTransformer
    >>> from sklearn.preprocessing import OneHotEncoder, StandardScaler
    >>> from sklearn_roll._affine import moving_map
    >>> X = np.array([[0.0, 1.0], [2.0, 2.0]])
    >>> ct = ColumnTransformer([("num", StandardScaler(), [0]), ("cat", OneHotEncoder(), [1])])
    >>> moving_map([("ct", ct.fit(X))], np.array([0]), 2, ["x0"])
    array([[1.],
           [0.],
           [0.]])
    """
    weight = np.eye(n_in)[:, moving]
    for name, step in named_steps:
        weight = _moving_step(step, name, weight, labels)
    return weight


def _moving_step(step: Any, name: str, weight: np.ndarray, labels: list[str]) -> np.ndarray:
    """``weight`` (the moving columns' map so far) carried through one fitted step."""
    if _is_identity(step):
        return weight
    if isinstance(step, Pipeline):
        for inner, sub in step.steps:
            weight = _moving_step(sub, f"{name}__{inner}", weight, labels)
        return weight
    if type(step) is ColumnTransformer:
        _check_width(step, name, step.n_features_in_, weight)
        out = np.zeros((_n_outputs(step), weight.shape[1]))
        for where, transformer, columns, rows in _parts(step, name):
            part = weight[columns]
            if not part.any() or (isinstance(transformer, str) and transformer == "drop"):
                continue
            try:
                out[rows] = _moving_step(transformer, where, part, labels)
            except ValueError as exc:
                reached = [labels[i] for i in np.flatnonzero(part.any(axis=0))]
                raise ValueError(
                    f"features= moves {reached}, which step '{where}' "
                    f"({type(transformer).__name__}) reads; certificates can move only columns "
                    "that reach the network through affine maps, so hold these fixed (leave "
                    f"them out of features). The step: {exc}"
                ) from exc
        return out
    amap = affine_map(step, name)
    _check_width(step, name, amap.n_in, weight)
    return amap.weight[:, None] * weight if amap.diagonal else amap.weight @ weight


def _check_width(step: Any, name: str, n_in: int, weight: np.ndarray) -> None:
    if n_in != weight.shape[0]:
        raise ValueError(
            f"Step '{name}' ({type(step).__name__}) expects {n_in} features, but the steps "
            f"before it produce {weight.shape[0]}."
        )


def _first_transformer(steps: list[tuple[str, Any]]) -> Any:
    """The first step that is not an identity, looking into nested pipelines."""
    for _, step in steps:
        if isinstance(step, Pipeline):
            step = _first_transformer(step.steps)
        if not _is_identity(step):
            return step
    return None


def check_raw_input(named_steps: list[tuple[str, Any]], X: Any, n_in: int) -> np.ndarray:
    """Validate raw input as the first preprocessing step does: feature count and names.

    Parameters
    ----------
    named_steps : list of (str, transformer)
        The fitted preprocessing steps of a pipeline.
    X : array-like of shape (n_samples, n_features)
        Raw samples.
    n_in : int
        Input dimension of the composed affine map.

    Returns
    -------
    ndarray of shape (n_samples, n_in), float32 or float64, C-contiguous
    """
    first = _first_transformer(named_steps)
    if isinstance(first, BaseEstimator):
        x = validate_data(first, X, reset=False, dtype=_FLOAT_DTYPES, ensure_min_samples=1)
    else:
        x = check_array(X, dtype=_FLOAT_DTYPES, ensure_min_samples=1)
    if x.shape[1] != n_in:
        raise ValueError(f"X has {x.shape[1]} features, but the pipeline is expecting {n_in}.")
    # A DataFrame's values can be a read-only view, which torch would share.
    return np.require(x, requirements=["C_CONTIGUOUS", "WRITEABLE"])


class AffineInput(nn.Module):
    """First layer ``x -> reshape(x @ A.T + c)`` of a network folded with its preprocessing.

    Parameters
    ----------
    amap : AffineMap
        The map.
    shape : tuple of int
        Shape of one sample after the map, as the network reads it.
    """

    def __init__(self, amap: AffineMap, shape: tuple[int, ...]) -> None:
        super().__init__()
        self.register_buffer("weight", torch.from_numpy(amap.weight.copy()))
        self.register_buffer("bias", torch.from_numpy(amap.bias.copy()))
        self.shape = tuple(shape)

    def forward(self, x: Tensor) -> Tensor:
        if self.weight.dim() == 1:
            h = x * self.weight + self.bias
        else:
            h = F.linear(x, self.weight, self.bias)
        return h.reshape(x.shape[0], *self.shape)


def fold(module: nn.Module, amap: AffineMap, shape: tuple[int, ...]) -> nn.Module:
    """The float64 network ``x -> module(reshape(A x + c))``.

    A plain Linear chain (such as :class:`~sklearn_roll.nn.MLP`) absorbs the map into
    its first ``nn.Linear`` (``W A``, ``W c + b``), so the fast chain path of
    :mod:`sklearn_roll.linearize` still applies; any other module gets an
    :class:`AffineInput` layer in front.

    Parameters
    ----------
    module : nn.Module
        A float64 network, which becomes part of the result.
    amap : AffineMap
        The preprocessing.
    shape : tuple of int
        Shape of one sample as ``module`` reads it; its size must be ``amap.n_out``.

    Returns
    -------
    nn.Module
        In float64 and eval mode.
    """
    if int(np.prod(shape)) != amap.n_out:
        raise ValueError(
            f"The preprocessing produces {amap.n_out} features, but the network reads "
            f"samples of shape {tuple(shape)}."
        )
    chain = linear_chain(module)
    if chain is None or len(shape) != 1:
        return nn.Sequential(AffineInput(amap, shape), module).to(torch.float64).eval()
    first = chain[0][0]
    index = next(i for i, layer in enumerate(module) if layer is first)
    weight = first.weight.detach().to(torch.float64)
    bias = first.bias.detach().to(torch.float64) if first.bias is not None else 0.0
    A, c = torch.from_numpy(amap.weight), torch.from_numpy(amap.bias)
    folded = nn.Linear(amap.n_in, weight.shape[0], dtype=torch.float64)
    with torch.no_grad():
        folded.weight.copy_(weight * A if amap.diagonal else weight @ A)
        folded.bias.copy_(weight @ c + bias)
    module[index] = folded
    return module.to(torch.float64).eval()
