"""Sample and class weights, and the target standardisation that respects them.

Training minimises the weighted mean over examples of the task loss plus ``lam`` times
the per-example ROLL penalty, so a sample of integer weight k counts as k copies of it.
The weights of one call are divided by their mean, which keeps the loss on the scale
of unweighted training: only their ratios matter, and with one batch of all the data
the weighted mean equals the mean over the repeated rows exactly (in exact arithmetic).
"""

from __future__ import annotations

import numbers
from typing import Any

import numpy as np
from sklearn.utils import check_array

__all__ = ["check_sample_weight", "per_sample_class_weight", "standardization", "normalized"]


def check_sample_weight(sample_weight: Any, n_samples: int) -> np.ndarray | None:
    """``sample_weight`` as a float64 array of ``n_samples`` weights >= 0, or None.

    Parameters
    ----------
    sample_weight : array-like of shape (n_samples,), float or None
        The weights; a number weighs every sample alike.
    n_samples : int
        Number of samples.

    Returns
    -------
    ndarray of shape (n_samples,) or None

    Examples
    --------
    >>> from sklearn_roll._weights import check_sample_weight
    >>> check_sample_weight([1, 2], 2)
    array([1., 2.])
    """
    if sample_weight is None:
        return None
    if isinstance(sample_weight, numbers.Real) and not isinstance(sample_weight, bool):
        sample_weight = np.full(n_samples, float(sample_weight))
    weight = check_array(
        sample_weight, ensure_2d=False, dtype=np.float64, input_name="sample_weight"
    )
    if weight.ndim != 1:
        raise ValueError(
            f"sample_weight must be 1-D with one weight per sample, got shape {weight.shape}."
        )
    if len(weight) != n_samples:
        raise ValueError(f"sample_weight has {len(weight)} weights, but X has {n_samples} samples.")
    if (weight < 0).any():
        i = int(np.argmin(weight))
        raise ValueError(f"sample_weight must be >= 0; sample {i} has the weight {weight[i]!r}.")
    if not weight.any():
        raise ValueError("sample_weight is zero for every sample: no sample would count.")
    return weight


def per_sample_class_weight(
    class_weight: Any,
    classes: np.ndarray,
    y: np.ndarray,
    sample_weight: np.ndarray | None,
) -> np.ndarray | None:
    """Each sample's weight times its class's weight, or None without either.

    Parameters
    ----------
    class_weight : dict, "balanced" or None
        Weight per class label (classes it omits weigh 1), or "balanced":
        ``total weight / (n_classes * weight of the class)`` over the classes in y, as
        scikit-learn computes it, with each sample counted by its sample weight.
    classes : ndarray of shape (n_classes,)
        The sorted class labels.
    y : ndarray of int
        Encoded targets (indices into ``classes``).
    sample_weight : ndarray of shape (n_samples,) or None
        Validated sample weights.

    Returns
    -------
    ndarray of shape (n_samples,) or None

    Examples
    --------
    >>> import numpy as np
    >>> from sklearn_roll._weights import per_sample_class_weight
    >>> per_sample_class_weight("balanced", np.array(["a", "b"]), np.array([0, 0, 0, 1]), None)
    array([0.66666667, 0.66666667, 0.66666667, 2.        ])
    """
    if class_weight is None:
        return sample_weight
    base = np.ones(len(y)) if sample_weight is None else sample_weight
    if isinstance(class_weight, str):
        totals = np.bincount(y, weights=base, minlength=len(classes))
        present = totals > 0
        per_class = np.ones(len(classes))
        per_class[present] = totals.sum() / (present.sum() * totals[present])
    else:
        lookup = {label: i for i, label in enumerate(classes.tolist())}
        unknown = [label for label in class_weight if label not in lookup]
        if unknown:
            raise ValueError(
                f"class_weight names labels that are not classes: {unknown[:5]}; the "
                f"classes are {classes.tolist()[:20]}."
            )
        per_class = np.ones(len(classes))
        for label, value in class_weight.items():
            if (
                not isinstance(value, numbers.Real)
                or isinstance(value, bool)
                or not np.isfinite(value)
                or value < 0
            ):
                raise ValueError(
                    f"class_weight[{label!r}] must be a finite number >= 0, got {value!r}."
                )
            per_class[lookup[label]] = float(value)
    weight = base * per_class[y]
    if not weight.any():
        raise ValueError(
            "The sample and class weights are zero for every sample: no sample would count."
        )
    return weight


def normalized(weight: np.ndarray | None) -> np.ndarray | None:
    """Weights divided by their mean, as float32 (what the loss reads), or None."""
    return None if weight is None else (weight / weight.mean()).astype(np.float32)


def standardization(
    y: np.ndarray, sample_weight: np.ndarray | None
) -> tuple[np.ndarray, np.ndarray]:
    """Weighted mean and standard deviation of each column of y (1 where that is 0).

    Parameters
    ----------
    y : ndarray of shape (n_samples, n_outputs)
        Targets, float64.
    sample_weight : ndarray of shape (n_samples,) or None
        Validated sample weights.

    Returns
    -------
    mean, scale : ndarrays of shape (n_outputs,)

    Examples
    --------
    >>> import numpy as np
    >>> from sklearn_roll._weights import standardization
    >>> standardization(np.array([[1.0], [3.0]]), None)
    (array([2.]), array([1.]))
    """
    mean = np.average(y, axis=0, weights=sample_weight)
    variance = np.average((y - mean) ** 2, axis=0, weights=sample_weight)
    scale = np.sqrt(variance)
    # A constant target has nothing to scale, as in StandardScaler; nor has a spread
    # lost in the rounding of its mean.
    scale[(scale == 0) | (scale <= 10 * np.finfo(np.float64).eps * np.abs(mean))] = 1.0
    return mean, scale
