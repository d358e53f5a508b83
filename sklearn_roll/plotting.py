"""Plots of certificates with matplotlib (an optional dependency: ``pip install sklearn-roll[plot]``)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from ._docs import fill_doc

__all__ = [
    "plot_certified_balls",
    "plot_decision_surface",
    "plot_gradients",
    "plot_linear_regions",
    "plot_margin_distribution",
    "plot_stability_bounds",
    "plot_tradeoff",
]


def _pyplot():
    try:
        import matplotlib.pyplot as plt
    except ImportError as exc:  # pragma: no cover - exercised only without matplotlib
        raise ImportError(
            "sklearn_roll.plotting needs matplotlib: pip install 'sklearn-roll[plot]'"
        ) from exc
    return plt


def _axes(ax: Any, figsize: tuple[float, float]) -> Any:
    """``ax``, or the axes of a new figure; fails clearly without matplotlib either way."""
    plt = _pyplot()
    if ax is None:
        _, ax = plt.subplots(figsize=figsize)
    return ax


def _window(ax: Any, xlim: tuple[float, float], ylim: tuple[float, float]) -> None:
    """Show exactly the window, with equal scales so that l2 balls look round."""
    ax.set_xlim(*xlim)
    ax.set_ylim(*ylim)
    ax.set_aspect("equal")


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
    ax = _axes(ax, (5, 3.5))
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


def _grid(xlim: tuple[float, float], ylim: tuple[float, float], resolution: int) -> tuple:
    xs = np.linspace(*xlim, resolution)
    ys = np.linspace(*ylim, resolution)
    gx, gy = np.meshgrid(xs, ys)
    return gx, gy, np.c_[gx.ravel(), gy.ravel()]


@fill_doc
def plot_linear_regions(
    estimator: Any,
    xlim: tuple[float, float],
    ylim: tuple[float, float],
    *,
    resolution: int = 300,
    ax: Any = None,
    cmap: str = "tab20",
) -> Any:
    """Draw the linear regions of a network on 2-D input, one colour per activation pattern.

    Parameters
    ----------
    %(window_parameters)s
    cmap : str, default="tab20"
        Colour map cycled over the regions.

    Returns
    -------
    matplotlib Axes

    Examples
    --------
    %(fitted_moons)s
    >>> from sklearn_roll.plotting import plot_linear_regions
    >>> ax = plot_linear_regions(clf, (-1.5, 2.5), (-1, 1.5), resolution=50)
    """
    from .regions import activation_patterns

    ax = _axes(ax, (4, 4))
    gx, gy, points = _grid(xlim, ylim, resolution)
    patterns = activation_patterns(estimator, points)
    _, region = np.unique(patterns, axis=0, return_inverse=True)
    # Shuffle region ids so that neighbouring regions get unrelated colours.
    colours = np.random.RandomState(0).permutation(region.max() + 1)[region.ravel()] % 20
    ax.pcolormesh(gx, gy, colours.reshape(gx.shape), cmap=cmap, shading="auto", alpha=0.35)
    _window(ax, xlim, ylim)
    return ax


@fill_doc
def plot_decision_surface(
    estimator: Any,
    xlim: tuple[float, float],
    ylim: tuple[float, float],
    *,
    resolution: int = 300,
    ax: Any = None,
    cmap: str = "RdBu",
) -> Any:
    """Heat map of the predicted probability of the second class (or of the output).

    Parameters
    ----------
    %(window_parameters)s
    cmap : str, default="RdBu"
        Colour map.

    Returns
    -------
    matplotlib Axes

    Examples
    --------
    %(fitted_moons)s
    >>> from sklearn_roll.plotting import plot_decision_surface
    >>> ax = plot_decision_surface(clf, (-1.5, 2.5), (-1, 1.5), resolution=50)
    """
    ax = _axes(ax, (4, 4))
    gx, gy, points = _grid(xlim, ylim, resolution)
    if hasattr(estimator, "predict_proba"):
        values = estimator.predict_proba(points)[:, -1]
    else:
        values = estimator.predict(points).reshape(len(points), -1)[:, 0]
    ax.contourf(gx, gy, values.reshape(gx.shape), levels=20, cmap=cmap, alpha=0.6)
    _window(ax, xlim, ylim)
    return ax


@fill_doc
def plot_certified_balls(
    estimator: Any, X: np.ndarray, *, ax: Any = None, color: str = "k", **kwargs: Any
) -> Any:
    """Circles of the certified l2 margin around 2-D points, with the points.

    Parameters
    ----------
    estimator : ROLLClassifier or ROLLRegressor
        Fitted on 2 features.
    X : ndarray of shape (n_samples, 2)
        Centres.
    ax : matplotlib Axes or None, default=None
        Where to draw; None creates a new figure.
    color : str, default="k"
        Colour of the circles.
    **kwargs
        Passed to :func:`sklearn_roll.regions.certified_margin` (e.g. precision).

    Returns
    -------
    matplotlib Axes

    Examples
    --------
    %(fitted_moons)s
    >>> from sklearn_roll.plotting import plot_certified_balls
    >>> ax = plot_certified_balls(clf, X[:10])
    """
    from matplotlib.patches import Circle

    from .regions import certified_margin

    ax = _axes(ax, (4, 4))
    radii = certified_margin(estimator, X, 2, **kwargs)
    for centre, radius in zip(X, radii):
        if np.isfinite(radius):
            ax.add_patch(Circle(centre, radius, fill=False, color=color, lw=0.8))
    ax.scatter(X[:, 0], X[:, 1], s=6, color=color, zorder=3)
    return ax


@fill_doc
def plot_gradients(
    estimator: Any, X: np.ndarray, *, target: Any = None, ax: Any = None, scale: float | None = None
) -> Any:
    """Arrows of the input gradient (the explanation) at 2-D points.

    Parameters
    ----------
    estimator : ROLLClassifier or ROLLRegressor
        Fitted on 2 features.
    X : ndarray of shape (n_samples, 2)
        Where to draw arrows.
    target : label or None, default=None
        Passed to :func:`sklearn_roll.regions.explain`.
    ax : matplotlib Axes or None, default=None
        Where to draw; None creates a new figure.
    scale : float or None, default=None
        matplotlib's quiver scale; None autoscales.

    Returns
    -------
    matplotlib Axes

    Examples
    --------
    %(fitted_moons)s
    >>> from sklearn_roll.plotting import plot_gradients
    >>> ax = plot_gradients(clf, X[:10])
    """
    from .regions import explain

    ax = _axes(ax, (4, 4))
    grads = explain(estimator, X, target)
    ax.quiver(X[:, 0], X[:, 1], grads[:, 0], grads[:, 1], angles="xy", scale=scale, width=0.004)
    return ax


@fill_doc
def plot_stability_bounds(
    sequence: np.ndarray,
    lower: np.ndarray,
    upper: np.ndarray,
    *,
    channels: list[int] | None = None,
    ax: Any = None,
    clip: float | None = None,
) -> Any:
    """A sequence's channels over time with their per-value stability bounds.

    For each channel, the band ``[x + lower, x + upper]`` shows how far each value
    can move alone with the input gradient provably unchanged (the paper's Figure 3).

    Parameters
    ----------
    sequence : ndarray of shape (T, n_channels)
        The input values.
    lower, upper : ndarray of shape (T, n_channels)
        From :func:`sklearn_roll.regions.stability_bounds`.
    channels : list of int or None, default=None
        Channels to draw; None draws all.
    ax : matplotlib Axes or None, default=None
        Where to draw; None creates a new figure.
    clip : float or None, default=None
        Clip infinite or larger bounds to this value for drawing.

    Returns
    -------
    matplotlib Axes

    Examples
    --------
    >>> import numpy as np
    >>> from sklearn_roll.plotting import plot_stability_bounds
    >>> x = np.sin(np.linspace(0, 3, 20))[:, None]
    >>> ax = plot_stability_bounds(x, -0.1 * np.ones_like(x), 0.2 * np.ones_like(x))
    """
    ax = _axes(ax, (7, 3.5))
    channels = list(range(sequence.shape[1])) if channels is None else channels
    steps = np.arange(len(sequence))
    limit = np.inf if clip is None else clip
    for c in channels:
        line = ax.plot(steps, sequence[:, c], lw=1)[0]
        lo = np.maximum(lower[:, c], -limit)
        hi = np.minimum(upper[:, c], limit)
        ax.fill_between(
            steps, sequence[:, c] + lo, sequence[:, c] + hi, color=line.get_color(), alpha=0.25
        )
    ax.set_xlabel("time step")
    ax.set_ylabel("value")
    return ax


@fill_doc
def plot_tradeoff(
    search: Any,
    score: str = "accuracy",
    margin: str = "margin",
    *,
    ax: Any = None,
    annotate: bool = True,
) -> Any:
    """A fitted search's mean score against its mean certified margin, per candidate.

    Plain candidates (``lam == 0``) are hollow, ROLL ones filled; a line joins the
    candidates on the frontier (those of :func:`sklearn_roll.model_selection.tradeoff_table`
    whose ``frontier`` is true) and a ring marks the one the search chose. The margin
    axis is logarithmic.

    Parameters
    ----------
    %(search_parameters)s
    ax : matplotlib Axes or None, default=None
        Where to draw; None creates a new figure.
    annotate : bool, default=True
        Write each candidate's searched parameters beside its point.

    Returns
    -------
    matplotlib Axes

    Examples
    --------
    %(fitted_search)s
    >>> from sklearn_roll.plotting import plot_tradeoff
    >>> ax = plot_tradeoff(search)
    """
    from .model_selection import _format_value, _frontier, _plain, _tradeoff

    params, scores, margins, chosen = _tradeoff(search, score, margin, "plot_tradeoff")
    ax = _axes(ax, (5.5, 4))
    plain = _plain(params)
    ax.scatter(margins[~plain], scores[~plain], color="C0", label="ROLL")
    if plain.any():
        ax.scatter(margins[plain], scores[plain], facecolors="none", edgecolors="C0", label="plain")
    front = np.flatnonzero(_frontier(scores, margins))
    front = front[np.argsort(margins[front])]
    ax.plot(margins[front], scores[front], color="0.6", lw=1, zorder=0, label="frontier")
    if chosen is not None:
        ax.scatter(
            margins[chosen],
            scores[chosen],
            s=160,
            facecolors="none",
            edgecolors="C3",
            label="chosen",
        )
    if annotate:
        for i, candidate in enumerate(params):
            # Pipeline parameters keep only their last component, to stay short.
            text = ", ".join(
                f"{k.rsplit('__', 1)[-1]}={_format_value(v)}" for k, v in candidate.items()
            )
            ax.annotate(
                text,
                (margins[i], scores[i]),
                xytext=(4, 4),
                textcoords="offset points",
                fontsize="x-small",
            )
    ax.set_xscale("log")
    ax.margins(0.12)  # room for the labels of the outermost points
    ax.set_xlabel(f"mean test {margin}")
    ax.set_ylabel(f"mean test {score}")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize="small")
    return ax
