"""Checking and converting user input into the arrays the networks read.

Three kinds of input, fixed at fit:

* ``"tabular"``: 2-D (n_samples, n_features), through scikit-learn's ``validate_data``
  (so ``n_features_in_`` and ``feature_names_in_`` behave as everywhere in
  scikit-learn);
* ``"sequence"``: a 3-D array in which trailing all-NaN time steps mark the end of
  shorter sequences, a list of 2-D arrays, or a nested DataFrame (sktime's
  ``nested_univ``: a pd.Series per cell, a column per channel); all become one
  NaN-padded array (n_samples, n_timepoints, n_channels). The estimator's
  ``sequence_layout`` says how arrays are laid out: ``"ntc"`` reads a 3-D array as
  (n_samples, n_timepoints, n_channels) and a list item as (T_i, n_channels);
  ``"nct"`` reads them as (n_samples, n_channels, n_timepoints) and (n_channels, T_i),
  as sktime and aeon hand them out. A nested DataFrame carries its own layout;
* ``"image"``: a 4-D array (n_samples, channels, height, width), or a 2-D array of
  flattened images with the estimator's ``input_shape``.

Every conversion returns a C-contiguous float array (float32 input stays float32,
anything else becomes float64, so certificates in float64 concern the exact points
the user passed) and a ``restore`` function that maps an array of the same shape
(gradients, bounds) back to the layout the user passed.
"""

from __future__ import annotations

import math
import sys
import warnings
from collections.abc import Callable
from typing import Any, NamedTuple

import numpy as np
from scipy.sparse import issparse
from sklearn.exceptions import DataDimensionalityWarning
from sklearn.utils import check_array
from sklearn.utils._param_validation import InvalidParameterError
from sklearn.utils.validation import validate_data

Restore = Callable[[np.ndarray], Any]

_SEQUENCE_MODULES = {"rnn", "cnn1d"}
_IMAGE_MODULES = {"cnn"}

# sequence_layout -> how it reads a 3-D array, and one item of a list.
SEQUENCE_LAYOUTS = {
    "ntc": ("(n_samples, n_timepoints, n_channels)", "(T_i, n_channels)"),
    "nct": ("(n_samples, n_channels, n_timepoints)", "(n_channels, T_i)"),
}


def _identity(a: np.ndarray) -> np.ndarray:
    return a


def _is_sequence_list(X: Any) -> bool:
    if not isinstance(X, (list, tuple)) or not X:
        return False
    return all(np.ndim(x) == 2 for x in X)


def _is_nested_frame(X: Any) -> bool:
    """Whether X is a DataFrame of pd.Series cells (sktime's ``nested_univ``)."""
    # pandas is optional: a DataFrame can only exist if pandas is imported.
    pd = sys.modules.get("pandas")
    if pd is None or not isinstance(X, pd.DataFrame) or X.size == 0:
        return False
    # Looking at the first row keeps the test cheap for large tables; every cell is
    # checked when the frame is read.
    return any(isinstance(cell, pd.Series) for cell in X.iloc[0])


def input_ndim(X: Any) -> int:
    """Dimensions of X as samples: 3 for a list of 2-D arrays or a nested DataFrame."""
    if _is_sequence_list(X) or _is_nested_frame(X):
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
    ndim = input_ndim(X)
    if module in _SEQUENCE_MODULES:
        if ndim != 3:
            raise ValueError(
                f"module={module!r} expects sequences: a 3-D array, a list of 2-D arrays or "
                f"a nested DataFrame of pd.Series; got {ndim}-D input."
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
            f"module='mlp' expects 2-D input (n_samples, n_features); got {_describe(X)}. "
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


def _describe(X: Any) -> str:
    """What X is, for error messages."""
    if _is_nested_frame(X):
        return "sequences as a nested DataFrame (a pd.Series per cell)"
    if _is_sequence_list(X):
        return "sequences as a list of 2-D arrays"
    return f"{input_ndim(X)}-D input"


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


def _check_padding(x: np.ndarray) -> None:
    """Validate NaN padding of (n, T, C) sequences."""
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


def sequence_layout(estimator: Any) -> str:
    """The estimator's ``sequence_layout``, checked (set_params may have changed it)."""
    layout = estimator.sequence_layout
    if not isinstance(layout, str) or layout not in SEQUENCE_LAYOUTS:
        raise InvalidParameterError(
            f"The 'sequence_layout' parameter of {type(estimator).__name__} must be a str "
            f"among {sorted(SEQUENCE_LAYOUTS)}. Got {layout!r} instead."
        )
    return layout


def _flipped(layout: str) -> str:
    return "nct" if layout == "ntc" else "ntc"


def _how(layout: str | None, shape: int) -> str:
    """How sequences were read: ``shape`` 0 for a 3-D array, 1 for an item of a list."""
    if layout is None:
        return "as a nested DataFrame"
    return f"as {SEQUENCE_LAYOUTS[layout][shape]} under sequence_layout={layout!r}"


def _flip_hint(layout: str, shape: int) -> str:
    flipped = _flipped(layout)
    what = "X is laid out {}" if shape == 0 else "the sequences are {} arrays"
    layout_of = what.format(SEQUENCE_LAYOUTS[flipped][shape])
    return f"If {layout_of}, pass sequence_layout={flipped!r}."


class _Read(NamedTuple):
    """Sequences read into the module's layout, and what error messages need to know."""

    x: np.ndarray  # (n_samples, n_timepoints, n_channels), NaN-padded
    restore: Restore
    # Arrays and lists are read under sequence_layout (None for a nested DataFrame);
    # shape is 0 for a 3-D array and 1 for a list of 2-D arrays.
    layout: str | None = None
    shape: int = 0
    # The channel count the other layout would read, if it reads one count for all.
    other_channels: int | None = None
    names: np.ndarray | None = None  # channel names: a nested DataFrame's columns

    def how(self) -> str:
        return _how(self.layout, self.shape)

    def flip_hint(self) -> str:
        return _flip_hint(self.layout, self.shape)


def _read_array(X: Any, layout: str) -> _Read:
    if not hasattr(X, "shape") and not isinstance(X, (list, tuple)):
        raise ValueError(f"Expected sequences, got {type(X).__name__}.")
    axes, item = SEQUENCE_LAYOUTS[layout]
    if isinstance(X, (list, tuple)) and X:
        dims = sorted({np.ndim(s) for s in X})
        raise ValueError(
            f"Expected sequences as a 3-D array {axes} or a list of 2-D arrays {item} "
            f"(sequence_layout={layout!r}); got a list of {dims}-D items."
        )
    x = _as_float_array(X, "Input X")
    if x.ndim != 3:
        raise ValueError(
            f"Expected sequences as a 3-D array {axes} or a list of 2-D arrays {item} "
            f"(sequence_layout={layout!r}), or a nested DataFrame; got a {x.ndim}-D array."
        )
    if layout == "ntc":
        return _Read(x, _identity, layout, 0, x.shape[1])

    def restore(a: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(a.transpose(0, 2, 1))

    return _Read(x.transpose(0, 2, 1), restore, layout, 0, x.shape[2])


def _read_list(X: Any, layout: str) -> _Read:
    arrays = [_as_float_array(s, f"Sequence {i}") for i, s in enumerate(X)]
    if layout == "nct":
        arrays = [a.T for a in arrays]
    channels = {a.shape[1] for a in arrays}
    others = {a.shape[0] for a in arrays}
    other_channels = others.pop() if len(others) == 1 else None
    if len(channels) > 1:
        hint = (
            f" Their other axis has {other_channels} in every sequence. " + _flip_hint(layout, 1)
            if other_channels is not None
            else ""
        )
        raise ValueError(
            f"All sequences must have the same number of channels; read {_how(layout, 1)}, "
            f"they have {sorted(channels)}.{hint}"
        )
    empty = [i for i, a in enumerate(arrays) if a.shape[0] == 0]
    if empty:
        raise ValueError(f"Sequence {empty[0]} has zero length.")
    lengths = [len(a) for a in arrays]
    x = np.full((len(arrays), max(lengths), arrays[0].shape[1]), np.nan)
    for i, a in enumerate(arrays):
        x[i, : len(a)] = a

    # Each sequence comes back with the shape it was given, NaN where it was padding.
    def restore(a: np.ndarray) -> list[np.ndarray]:
        if layout == "ntc":
            return [a[i, :n] for i, n in enumerate(lengths)]
        return [np.ascontiguousarray(a[i, :n].T) for i, n in enumerate(lengths)]

    return _Read(x, restore, layout, 1, other_channels)


def _read_nested(X: Any) -> _Read:
    """sktime's nested_univ: a row per sequence, a column per channel, a pd.Series per cell."""
    pd = sys.modules["pandas"]
    cells = X.to_numpy(dtype=object)
    columns = list(X.columns)
    for (i, j), cell in np.ndenumerate(cells):
        if not isinstance(cell, pd.Series):
            raise ValueError(
                f"X is a nested DataFrame (a pd.Series per cell), but the cell of sample {i}, "
                f"column {columns[j]!r} is {type(cell).__name__}."
            )
    lengths = np.vectorize(len, otypes=[int])(cells)
    uneven = np.flatnonzero((lengths != lengths[:, :1]).any(axis=1))
    if uneven.size:
        i = int(uneven[0])
        raise ValueError(
            f"The series of sample {i} differ in length between channels "
            f"({sorted(set(lengths[i].tolist()))}): the channels of a sequence share its "
            "time steps."
        )
    steps = lengths[:, 0]
    if (steps == 0).any():
        raise ValueError(f"Sequence {int(np.flatnonzero(steps == 0)[0])} has zero length.")
    x = np.full((*cells.shape[:1], steps.max(), cells.shape[1]), np.nan)
    for (i, j), cell in np.ndenumerate(cells):
        x[i, : steps[i], j] = _as_float_array(
            cell.to_numpy(), f"The series of sample {i}, column {columns[j]!r},"
        )

    # The same frame, each cell the same series' index with the new values.
    def restore(a: np.ndarray) -> Any:
        out = np.empty(cells.shape, dtype=object)
        for (i, j), cell in np.ndenumerate(cells):
            out[i, j] = pd.Series(a[i, : steps[i], j], index=cell.index, name=cell.name)
        return pd.DataFrame(out, index=X.index, columns=X.columns)

    named = all(isinstance(c, str) for c in columns)
    return _Read(x, restore, names=np.asarray(columns, dtype=object) if named else None)


def check_sequences(estimator: Any, X: Any, reset: bool) -> tuple[np.ndarray, Restore]:
    """Validate sequences: a 3-D NaN-padded array, a list of 2-D arrays (laid out as the
    estimator's ``sequence_layout`` says) or a nested DataFrame."""
    layout = sequence_layout(estimator)
    if _is_nested_frame(X):
        read = _read_nested(X)
    elif _is_sequence_list(X):
        read = _read_list(X, layout)
    else:
        read = _read_array(X, layout)
    x = read.x
    if x.shape[0] == 0:
        raise ValueError(
            f"Found array with 0 sample(s) (shape={x.shape}) while a minimum of 1 is required."
        )
    if x.shape[1] == 0 or x.shape[2] == 0:
        raise ValueError(
            "Sequences must have at least one time step and one channel; read "
            f"{read.how()}, X has {x.shape[1]} time steps and {x.shape[2]} channels."
        )
    _check_padding(x)
    n_steps, n_channels = x.shape[1:]
    name = type(estimator).__name__
    if reset:
        estimator.n_features_in_ = n_channels
        if read.names is not None:
            estimator.feature_names_in_ = read.names
        elif hasattr(estimator, "feature_names_in_"):
            del estimator.feature_names_in_
        # The channel axis of a sequence is rarely the longer one; when it is, the data
        # are likely laid out the other way, which nothing else would reveal.
        if read.layout is not None and n_steps < n_channels:
            warnings.warn(
                f"X has fewer time steps ({n_steps}) than channels ({n_channels}) read "
                f"{read.how()}. " + read.flip_hint(),
                DataDimensionalityWarning,
                stacklevel=6,  # the caller of fit or partial_fit
            )
    else:
        if n_channels != estimator.n_features_in_:
            message = (
                f"X has {n_channels} channels, but {name} is expecting "
                f"{estimator.n_features_in_} channels as input; X was read {read.how()}."
            )
            if read.other_channels == estimator.n_features_in_:
                message += f" {read.flip_hint()}"
            raise ValueError(message)
        fitted = getattr(estimator, "feature_names_in_", None)
        if read.names is not None and fitted is not None and list(read.names) != list(fitted):
            raise ValueError(
                f"The channels (columns) of X, {list(read.names)}, differ from those seen "
                f"in fit, {list(fitted)}: pass the same channels, in the same order."
            )
    return np.ascontiguousarray(x), read.restore


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
        if input_ndim(X) > 2:
            raise ValueError(
                f"{type(estimator).__name__} was fitted on 2-D input (n_samples, n_features); "
                f"got {_describe(X)}."
            )
        return check_tabular(estimator, X, reset)
    if kind == "sequence":
        return check_sequences(estimator, X, reset)
    return check_images(estimator, X, reset, estimator.input_shape)
