"""Parameter descriptions shared by several docstrings, filled in by :func:`fill_doc`."""

from __future__ import annotations

import re
import textwrap
from collections.abc import Callable
from typing import TypeVar

__all__ = ["fill_doc"]

F = TypeVar("F", bound=Callable)

_PARAMETERS = {
    "estimator": """
        estimator : ROLLClassifier, ROLLRegressor, Pipeline or TransformedTargetRegressor
            A fitted estimator, or a fitted pipeline ending in one whose other steps
            are affine, or a fitted ``TransformedTargetRegressor`` with an affine
            transformer around either (see *Pipelines* in :mod:`sklearn_roll.regions`).""",
    "classifier": """
        estimator : ROLLClassifier or Pipeline
            A fitted classifier, or a fitted pipeline ending in one whose other steps
            are affine (see *Pipelines* in :mod:`sklearn_roll.regions`).""",
    "X": """
        X : array-like
            Samples of the kind the estimator (or pipeline) was fitted on; sequences
            laid out as its ``sequence_layout`` says, or as a nested DataFrame.""",
    "p": """
        p : {1, 2, np.inf}, default=2
            Order of the ball.""",
    "precision": """
        precision : {"float32", "float64"}, default="float32"
            ``"float64"`` computes everything in float64. ``"float32"`` computes the
            Jacobian of Linear chains in float32 with rigorous rounding bounds (see
            :mod:`sklearn_roll.regions`): the result never exceeds the float64 one and
            lies within a factor ``(1 - FLOAT32_RTOL) / (1 + FLOAT32_RTOL)`` below it.""",
    "batch_size": """
        batch_size : int or None, default=None
            Samples per batch; None keeps the tangent tensors near 64 MiB. A batch
            size whose tangents would exceed the memory cap (an eighth of physical
            memory, at most 2 GiB) is refused with a ``ValueError``.""",
    "progress": """
        progress : bool, default=False
            Show a tqdm progress bar over the batches.""",
    "features": """
        features : str, int, array-like of them, or None, default=None
            The raw input columns that may move, by name (input with column names)
            or index; every other input is held fixed at its value in X, and the
            result concerns the subspace of these columns, in their raw units. None
            lets every input move. See *Tables* in :mod:`sklearn_roll.regions`.""",
    "target": """
        target : label, array-like of labels, int or None, default=None
            Classifier: the class whose logit is explained, one label for all
            samples or one per sample; None takes the predicted class. Regressor:
            the index of the output (None for a single output).""",
}

_PARAMETERS["window_parameters"] = """
        estimator : ROLLClassifier or ROLLRegressor
            Fitted on 2 features.
        xlim, ylim : tuple of float
            The window.
        resolution : int, default=300
            Grid points per axis.
        ax : matplotlib Axes or None, default=None
            Where to draw; None creates a new figure."""

_PARAMETERS["search_parameters"] = """
        search : GridSearchCV or RandomizedSearchCV
            A fitted search that scored ``score`` and ``margin`` (see
            :func:`sklearn_roll.metrics.margin_scorer`).
        score : str, default="accuracy"
            Name of the score in ``scoring``.
        margin : str, default="margin"
            Name of the margin scorer in ``scoring``."""

# Parameter lists of whole families of functions.
_PARAMETERS["margin_parameters"] = "\n".join(
    _PARAMETERS[name]
    for name in ("estimator", "X", "p", "features", "precision", "batch_size", "progress")
)
_PARAMETERS["radius_parameters"] = "\n".join(
    _PARAMETERS[name]
    for name in ("classifier", "X", "p", "features", "precision", "batch_size", "progress")
)

# The setup of most examples: a small classifier fitted on iris in a fraction of a second.
_PARAMETERS["fitted_iris"] = """
    >>> from sklearn.datasets import load_iris
    >>> from sklearn_roll import ROLLClassifier
    >>> X, y = load_iris(return_X_y=True)
    >>> clf = ROLLClassifier(hidden_layer_sizes=(16,), max_epochs=5, random_state=0).fit(X, y)"""

# The setup of the plotting examples: a small classifier on two half moons.
_PARAMETERS["fitted_moons"] = """
    >>> from sklearn.datasets import make_moons
    >>> from sklearn_roll import ROLLClassifier
    >>> X, y = make_moons(60, noise=0.1, random_state=0)
    >>> clf = ROLLClassifier(hidden_layer_sizes=(8,), max_epochs=5, random_state=0).fit(X, y)"""

# The setup of the search examples: plain training and ROLL on iris, scored by both.
_PARAMETERS["fitted_search"] = """
    >>> from sklearn.datasets import load_iris
    >>> from sklearn.model_selection import GridSearchCV
    >>> from sklearn_roll import ROLLClassifier
    >>> from sklearn_roll.metrics import margin_scorer
    >>> from sklearn_roll.model_selection import best_margin_within
    >>> X, y = load_iris(return_X_y=True)
    >>> search = GridSearchCV(
    ...     ROLLClassifier(hidden_layer_sizes=(16,), max_epochs=5, random_state=0),
    ...     {"lam": [0.0, 1.0]},
    ...     cv=2,
    ...     scoring={"accuracy": "accuracy", "margin": margin_scorer()},
    ...     refit=best_margin_within(),
    ... ).fit(X, y)"""

_PLACEHOLDER = re.compile(r"^( *)%\((\w+)\)s$", re.M)


def fill_doc(func: F) -> F:
    """Replace each line ``%(name)s`` of ``func``'s docstring by the shared description.

    The description is indented like the placeholder, so one text serves functions
    and methods alike.

    Examples
    --------
    >>> from sklearn_roll._docs import fill_doc
    >>> @fill_doc
    ... def f(X):
    ...     '''Parameters
    ...     ----------
    ...     %(X)s
    ...     '''
    >>> print(f.__doc__.splitlines()[2].strip())
    X : array-like
    """

    def replace(match: re.Match) -> str:
        text = textwrap.dedent(_PARAMETERS[match.group(2)]).strip("\n")
        return textwrap.indent(text, match.group(1))

    func.__doc__ = _PLACEHOLDER.sub(replace, func.__doc__ or "")
    return func
