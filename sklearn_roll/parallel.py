"""Certificates for data that does not fit in memory, block by block with dask.

dask is optional: ``pip install "dask[distributed]"`` (or ``pip install
"sklearn-roll[dask]"``). The same dask installation runs a ``GridSearchCV`` on a
cluster through joblib (see the README, *Searching on a cluster*).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from ._adapter import network_of
from ._docs import fill_doc
from ._margins import dual_order
from .regions import certified_margin

__all__ = ["certified_margin_dask"]


def _dask() -> tuple[Any, Any]:
    try:
        import dask
        import dask.array as da
    except ImportError as exc:
        raise ImportError(
            'certified_margin_dask needs dask: pip install "dask[distributed]".'
        ) from exc
    return dask, da


def _margin_block(
    block: np.ndarray, estimator: Any, p: float, kwargs: dict, block_info: dict
) -> np.ndarray:
    """Margins of one block, whose errors name the block and its rows in X."""
    try:
        return certified_margin(estimator, block, p, **kwargs)
    except (ValueError, TypeError) as exc:
        # Raised on a worker, far from the array: say where in X the bad rows are.
        index = block_info[0]["chunk-location"][0]
        start, stop = block_info[0]["array-location"][0]
        error = ValueError if isinstance(exc, ValueError) else TypeError
        raise error(f"Block {index} (rows {start} to {stop - 1}) of X: {exc}") from exc


@fill_doc
def certified_margin_dask(estimator: Any, X: Any, p: float = 2, **kwargs: Any) -> Any:
    """Certified l_p margins of a dask array, computed lazily block by block.

    Each block of rows goes through :func:`sklearn_roll.certified_margin` on its own,
    so only one block per worker is in memory; the other axes are merged into one
    chunk first. Nothing runs until the result is computed.

    Parameters
    ----------
    estimator : ROLLClassifier, ROLLRegressor, Pipeline or TransformedTargetRegressor
        A fitted estimator, or a fitted pipeline ending in one whose other steps are
        affine (margins then in raw feature units), or a target wrapper around either.
    X : dask.array.Array of shape (n_samples, ...)
        Samples, in the layout the estimator was fitted on (numeric arrays; not
        DataFrames, so feature names are not checked).
    p : {1, 2, np.inf}, default=2
        Order of the ball.
    **kwargs
        Passed to :func:`sklearn_roll.certified_margin` (``features``,
        ``precision``, ``batch_size``).

    Returns
    -------
    margins : dask.array.Array of shape (n_samples,), float64
        Chunked like the rows of X.

    Raises
    ------
    ImportError
        If dask is not installed.
    ValueError
        If X has the wrong number of features (2-D X). A block that the in-memory
        function refuses (NaN or infinite values, or another number of features
        than X's declared shape says) fails when the result is computed, with a
        ``ValueError`` or ``TypeError`` that names the block, its rows in X and
        the reason.

    Examples
    --------
    >>> import dask.array as da
    >>> from sklearn_roll.parallel import certified_margin_dask
    %(fitted_iris)s
    >>> margins = certified_margin_dask(clf, da.from_array(X, chunks=50))
    >>> margins.compute().shape
    (150,)
    """
    dask, da = _dask()
    if not isinstance(X, da.Array):
        raise TypeError(
            f"X must be a dask array, got {type(X).__name__}; for in-memory data call "
            "sklearn_roll.certified_margin."
        )
    if X.ndim < 2:
        raise ValueError(f"X must have a samples axis and a feature axis, got {X.ndim}-D.")
    dual_order(p)
    network_of(estimator)
    expected = getattr(estimator, "n_features_in_", None)
    known = X.ndim == 2 and not math.isnan(X.shape[1])
    if known and expected is not None and X.shape[1] != expected:
        # Every block would fail: refuse before anything runs.
        raise ValueError(
            f"X has {X.shape[1]} features, but {type(estimator).__name__} is expecting "
            f"{expected} features as input."
        )
    others = tuple(range(1, X.ndim))
    X = X.rechunk(dict.fromkeys(others, -1))
    # One task holds the estimator, so it is sent to each worker once, not with every block.
    shared = dask.delayed(estimator, pure=True)
    return X.map_blocks(
        _margin_block,
        shared,
        p,
        kwargs,
        drop_axis=others,
        dtype=np.float64,
        meta=np.empty((0,), dtype=np.float64),
    )
