"""Checking and converting user input into the arrays the networks read.

Three kinds of input, fixed at fit:

* ``"tabular"``: 2-D (n_samples, n_features), through scikit-learn's ``validate_data``
  (so ``n_features_in_`` and ``feature_names_in_`` behave as everywhere in
  scikit-learn);
* ``"sequence"``: a 3-D array (n_samples, n_timesteps, n_channels) in which trailing
  all-NaN time steps mark the end of shorter sequences, or a list of 2-D arrays
  (T_i, n_channels); both become one NaN-padded array;
* ``"image"``: a 4-D array (n_samples, channels, height, width), or a 2-D array of
  flattened images with the estimator's ``input_shape``.

Every conversion returns a C-contiguous float array (float32 input stays float32,
anything else becomes float64, so certificates in float64 concern the exact points
the user passed) and a ``restore`` function that maps an array of the same shape
(gradients, bounds) back to the layout the user passed.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np
from scipy.sparse import issparse
from sklearn.utils import check_array
from sklearn.utils.validation import validate_data

Restore = Callable[[np.ndarray], Any]

_SEQUENCE_MODULES = {"rnn", "cnn1d"}
_IMAGE_MODULES = {"cnn"}


def _identity(a: np.ndarray) -> np.ndarray:
    return a


def _is_sequence_list(X: Any) -> bool:
    if not isinstance(X, (list, tuple)) or not X:
        return False
    return all(np.ndim(x) == 2 for x in X)


def _ndim(X: Any) -> int:
    if _is_sequence_list(X):
        return 3
    if hasattr(X, "shape"):
        return len(X.shape)
    try:
        return np.asarray(X).ndim
    except ValueError as exc:
        raise ValueError(
            "X has an inhomogeneous shape (nested lists of different lengths): pass a "
            "2-D array, or sequences as a list of 2-D arrays (T_i, n_channels). "
            f"numpy says: {exc}"
        ) from exc


def infer_kind(module: Any, X: Any, input_shape: Any) -> str:
    """The kind of input a fit sets up, from the module and the data's shape."""
    ndim = _ndim(X)
    if module in _SEQUENCE_MODULES:
        if ndim != 3:
            raise ValueError(
                f"module={module!r} expects sequences: a 3-D array (n_samples, n_timesteps, "
                f"n_channels) or a list of 2-D arrays (T_i, n_channels); got {ndim}-D input."
            )
        return "sequence"
    if module in _IMAGE_MODULES or input_shape is not None:
        if ndim == 4 or (ndim == 2 and input_shape is not None):
            return "image"
        raise ValueError(
            "Image input must be a 4-D array (n_samples, channels, height, width), or 2-D "
            f"with input_shape=(channels, height, width); got {ndim}-D input"
            + ("." if input_shape is not None else " and no input_shape.")
        )
    if module == "mlp" and ndim > 2:
        raise ValueError(
            f"module='mlp' expects 2-D input (n_samples, n_features); got {ndim}-D input. "
            "Use module='rnn' for sequences or module='cnn' for images."
        )
    if ndim <= 2:
        # validate_data explains how to reshape 1-D input.
        return "tabular"
    if ndim == 3:
        return "sequence"
    if ndim == 4:
        return "image"
    raise ValueError(f"Expected 2-D, 3-D (sequences) or 4-D (images) input, got {ndim}-D input.")


def check_tabular(estimator: Any, X: Any, reset: bool) -> tuple[np.ndarray, Restore]:
    """Validate 2-D input with scikit-learn's ``validate_data``."""
    x = validate_data(
        estimator, X, reset=reset, dtype=[np.float64, np.float32], ensure_min_samples=1
    )
    return np.ascontiguousarray(x), _identity


def _as_float_array(x: Any, what: str) -> np.ndarray:
    try:
        arr = np.asarray(x, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{what} must be numeric: {exc}") from exc
    return arr


def _check_padding(x: np.ndarray) -> np.ndarray:
    """Validate NaN padding of (n, T, C) sequences; return the lengths."""
    if np.isinf(x).any():
        raise ValueError("Input X contains infinity; sequences may contain NaN only as padding.")
    nan = np.isnan(x)
    step_nan = nan.all(axis=2)
    partial = nan.any(axis=2) & ~step_nan
    if partial.any():
        i, t = np.argwhere(partial)[0]
        raise ValueError(
            f"Input X contains NaN in some channels of sample {i} at time step {t} but "
            "not in all: missing values are not supported, and NaN marks padding only "
            "as whole time steps at the end of a sequence."
        )
    lengths = (~step_nan).sum(axis=1)
    # A valid step after a padded one means padding in the middle.
    padded_then_valid = step_nan[:, :-1] & ~step_nan[:, 1:]
    if padded_then_valid.any():
        i, t = np.argwhere(padded_then_valid)[0]
        raise ValueError(
            f"Input X has NaN at time step {t} of sample {i} followed by valid steps: "
            "NaN marks padding only at the end of a sequence."
        )
    if (lengths == 0).any():
        i = int(np.flatnonzero(lengths == 0)[0])
        raise ValueError(f"Sequence {i} has no valid time steps (zero length).")
    return lengths


def check_sequences(estimator: Any, X: Any, reset: bool) -> tuple[np.ndarray, Restore]:
    """Validate sequences given as a 3-D NaN-padded array or a list of 2-D arrays."""
    if _is_sequence_list(X):
        arrays = [_as_float_array(s, f"Sequence {i}") for i, s in enumerate(X)]
        channels = {a.shape[1] for a in arrays}
        if len(channels) > 1:
            raise ValueError(
                f"All sequences must have the same number of channels; got {sorted(channels)}."
            )
        empty = [i for i, a in enumerate(arrays) if a.shape[0] == 0]
        if empty:
            raise ValueError(f"Sequence {empty[0]} has zero length.")
        t_max = max(a.shape[0] for a in arrays)
        x = np.full((len(arrays), t_max, arrays[0].shape[1]), np.nan)
        for i, a in enumerate(arrays):
            x[i, : len(a)] = a
        from_list = True
    else:
        if not hasattr(X, "shape") and not isinstance(X, (list, tuple)):
            raise ValueError(f"Expected sequences, got {type(X).__name__}.")
        if isinstance(X, (list, tuple)) and X:
            dims = sorted({np.ndim(s) for s in X})
            raise ValueError(
                "Expected sequences as a 3-D array (n_samples, n_timesteps, n_channels) or "
                f"a list of 2-D arrays (T_i, n_channels); got a list of {dims}-D items."
            )
        x = _as_float_array(X, "Input X")
        if x.ndim != 3:
            raise ValueError(
                "Expected sequences as a 3-D array (n_samples, n_timesteps, n_channels) or a "
                f"list of 2-D arrays; got a {x.ndim}-D array."
            )
        from_list = False
    if x.shape[0] == 0:
        raise ValueError(
            f"Found array with 0 sample(s) (shape={x.shape}) while a minimum of 1 is required."
        )
    if x.shape[1] == 0 or x.shape[2] == 0:
        raise ValueError(
            f"Sequences must have at least one time step and one channel; got shape {x.shape}."
        )
    lengths = _check_padding(x)
    n_channels = x.shape[2]
    if reset:
        estimator.n_features_in_ = n_channels
    elif n_channels != estimator.n_features_in_:
        raise ValueError(
            f"X has {n_channels} channels, but {type(estimator).__name__} is expecting "
            f"{estimator.n_features_in_} channels as input."
        )
    x = np.ascontiguousarray(x)
    if not from_list:
        return x, _identity

    def restore(a: np.ndarray) -> list[np.ndarray]:
        return [a[i, :n] for i, n in enumerate(lengths)]

    return x, restore


def check_images(
    estimator: Any, X: Any, reset: bool, input_shape: Any
) -> tuple[np.ndarray, Restore]:
    """Validate images given as (n, C, H, W) or flattened with ``input_shape``."""
    arr = X if hasattr(X, "shape") else np.asarray(X)
    if len(arr.shape) == 2:
        if input_shape is None:
            raise ValueError("Flattened images need input_shape=(channels, height, width).")
        shape = tuple(int(s) for s in input_shape)
        x = validate_data(estimator, X, reset=reset, dtype=[np.float64, np.float32])
        if x.shape[1] != math.prod(shape):
            raise ValueError(
                f"X has {x.shape[1]} features per sample, but input_shape={shape} needs {math.prod(shape)}."
            )
        x = x.reshape(len(x), *shape)
        flat = True
    else:
        x = check_array(X, allow_nd=True, dtype=[np.float64, np.float32], ensure_min_samples=1)
        if x.ndim != 4:
            raise ValueError(
                f"Expected images as a 4-D array (n_samples, channels, height, width); got {x.ndim}-D."
            )
        flat = False
        if reset:
            estimator.n_features_in_ = math.prod(x.shape[1:])
    if reset:
        estimator.image_shape_ = tuple(x.shape[1:])
    elif tuple(x.shape[1:]) != estimator.image_shape_:
        raise ValueError(
            f"X has images of shape {tuple(x.shape[1:])}, but {type(estimator).__name__} was "
            f"fitted on images of shape {estimator.image_shape_}."
        )
    x = np.ascontiguousarray(x)
    if not flat:
        return x, _identity
    return x, lambda a: a.reshape(len(a), -1)


def check_input(estimator: Any, X: Any, reset: bool) -> tuple[np.ndarray, Restore]:
    """Validate X for the estimator's input kind (set from X when ``reset``)."""
    if issparse(X):
        raise TypeError(
            "Sparse data was passed for X, but dense data is required. Use '.toarray()' "
            "to convert to a dense numpy array."
        )
    if reset:
        estimator.input_kind_ = infer_kind(estimator.module, X, estimator.input_shape)
    kind = estimator.input_kind_
    if kind == "tabular":
        if _ndim(X) > 2:
            raise ValueError(
                f"{type(estimator).__name__} was fitted on 2-D input (n_samples, n_features); "
                f"got {_ndim(X)}-D input."
            )
        return check_tabular(estimator, X, reset)
    if kind == "sequence":
        return check_sequences(estimator, X, reset)
    return check_images(estimator, X, reset, estimator.input_shape)
