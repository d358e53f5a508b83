"""Early stopping as scikit-learn's MLP has it, from skorch's callbacks.

``early_stopping=True`` holds out ``validation_fraction`` of the data (stratified for
classifiers, seeded from ``random_state``) with skorch's ``ValidSplit``, and stops with
skorch's ``EarlyStopping`` once the validation loss has not fallen by ``tol`` for
``n_iter_no_change`` epochs, restoring the best epoch's weights from a copy kept in
memory (no checkpoint files, which would collide between parallel fits).

The validation loss (``valid_loss`` in the history) is the objective training
minimises: the weighted task loss plus ``lam`` times the ROLL penalty, on the
validation split; ``valid_task_loss`` and ``train_task_loss`` record the task loss
alone.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import numpy as np
from skorch.callbacks import EarlyStopping
from skorch.dataset import ValidSplit

__all__ = ["callback", "check_monitors", "check_split", "split", "summary"]

NAME = "early_stopping"


def split(validation_fraction: float, stratified: bool, random_state: Any) -> ValidSplit:
    """The validation split: ``validation_fraction`` of the samples, stratified or not."""
    return ValidSplit(validation_fraction, stratified=stratified, random_state=random_state)


def callback(n_iter_no_change: int, tol: float) -> EarlyStopping:
    """Stop after ``n_iter_no_change`` epochs without a fall of ``tol`` in the validation loss."""
    return EarlyStopping(
        monitor="valid_loss",
        patience=n_iter_no_change,
        threshold=tol,
        threshold_mode="abs",
        load_best=True,
    )


def check_split(validation_fraction: float, y: np.ndarray, classes: np.ndarray | None) -> None:
    """Refuse a validation split too small for its purpose, before any training.

    Parameters
    ----------
    validation_fraction : float in (0, 1)
        The share of the samples held out.
    y : ndarray
        Encoded targets (class indices for a classifier).
    classes : ndarray or None
        Class labels of a classifier, whose split is stratified; None for a regressor.
    """
    n = len(y)
    n_valid = math.ceil(validation_fraction * n)
    n_train = n - n_valid
    advice = "raise validation_fraction, pass more data, or set early_stopping=False."
    if classes is None:
        if n_valid < 2 or n_train < 1:
            raise ValueError(
                f"early_stopping: validation_fraction={validation_fraction} of {n} samples "
                f"leaves {n_train} for training and {n_valid} for validation; early stopping "
                f"needs at least 1 and 2: {advice}"
            )
        return
    counts = np.bincount(y, minlength=len(classes))
    present = np.flatnonzero(counts)
    rare = present[counts[present] < 2]
    if len(rare):
        raise ValueError(
            f"early_stopping: the class {classes.tolist()[rare[0]]!r} has a single sample, but the "
            "stratified validation split needs at least 2 of each class (one on each side)."
        )
    for side, size in (("validation", n_valid), ("training", n_train)):
        if size < len(present):
            raise ValueError(
                f"early_stopping: validation_fraction={validation_fraction} of {n} samples "
                f"gives a {side} split of {size}, fewer than the {len(present)} classes; the "
                f"stratified split needs a sample of each class on each side: {advice}"
            )


def check_monitors(callbacks: Iterable[tuple[str, Any]], has_split: bool) -> None:
    """Refuse callbacks that watch validation scores when there is no validation split."""
    if has_split:
        return
    for name, cb in callbacks:
        monitor = getattr(cb, "monitor", None)
        if isinstance(monitor, str) and monitor.startswith("valid_"):
            raise ValueError(
                f"The callback {name!r} ({type(cb).__name__}) monitors {monitor!r}, which "
                "needs a validation split, but train_split=None: set early_stopping=True "
                "(with validation_fraction) for the estimator's own early stopping, or pass "
                "train_split=skorch.dataset.ValidSplit(...)."
            )


def summary(history: Any, callbacks: dict[str, Any], score: str) -> dict[str, Any]:
    """The fitted attributes scikit-learn's MLP has, read from skorch's history.

    Parameters
    ----------
    history : skorch.History
        The whole history (epochs of earlier ``partial_fit`` calls included).
    callbacks : dict
        The net's initialized callbacks by name.
    score : str
        The history key of the validation score (``"valid_acc"``, ``"valid_r2"``).

    Returns
    -------
    dict
        ``n_iter_``, ``best_epoch_``, ``loss_curve_`` and ``validation_scores_``.
    """
    epochs = list(history)
    stopper = callbacks.get(NAME)
    best = getattr(stopper, "best_epoch_", 0) if stopper is not None else 0
    scores = [float(epoch[score]) for epoch in epochs if score in epoch]
    return {
        "n_iter_": len(epochs),
        # EarlyStopping restored the weights of its best epoch, if it saw one improve.
        "best_epoch_": int(best) if best else len(epochs),
        "loss_curve_": [float(epoch["train_loss"]) for epoch in epochs if "train_loss" in epoch],
        "validation_scores_": scores or None,
    }
