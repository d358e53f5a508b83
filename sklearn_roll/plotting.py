"""Plots of certificates with matplotlib (an optional dependency: ``pip install sklearn-roll[plot]``)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

__all__ = ["plot_margin_distribution"]


def _pyplot():
    try:
        import matplotlib.pyplot as plt
    except ImportError as exc:  # pragma: no cover - exercised only without matplotlib
        raise ImportError(
            "sklearn_roll.plotting needs matplotlib: pip install 'sklearn-roll[plot]'"
        ) from exc
    return plt


def plot_margin_distribution(
    margins: Mapping[str, np.ndarray], *, ax: Any = None, xlabel: str = "certified l2 margin"
) -> Any:
    """Empirical CDFs of certified margins, one line per model, on a log scale.

    Parameters
    ----------
    margins : mapping of str to array of shape (n_samples,)
        Margins per model name, e.g. ``{"vanilla": m0, "ROLL": m1}``.
    ax : matplotlib Axes or None, default=None
        Where to draw; None creates a new figure.
    xlabel : str, default="certified l2 margin"
        Label of the x axis.

    Returns
    -------
    matplotlib Axes

    Examples
    --------
    >>> import numpy as np
    >>> from sklearn_roll.plotting import plot_margin_distribution
    >>> ax = plot_margin_distribution({"a": np.array([1e-3, 2e-3]), "b": np.array([1e-2, 3e-2])})
    """
    plt = _pyplot()
    if ax is None:
        _, ax = plt.subplots(figsize=(5, 3.5))
    for name, values in margins.items():
        values = np.sort(np.asarray(values, dtype=float))
        finite = values[np.isfinite(values) & (values > 0)]
        ax.step(
            finite,
            np.arange(1, len(finite) + 1) / len(values),
            where="post",
            label=f"{name} (median {np.median(values):.2g})",
        )
    ax.set_xscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel("fraction of samples")
    ax.grid(True, alpha=0.3)
    ax.legend()
    return ax
