"""Choosing lam and C: the largest certified margin that keeps the score.

The paper picks, among its grid of ROLL settings, the model with the largest median
margin whose accuracy is the same as, or at most one point below, the best.
:func:`best_margin_within` is that rule as a ``refit`` callable for
``GridSearchCV`` / ``RandomizedSearchCV``, and :func:`tradeoff_table` shows the
trade-off a fitted search explored::

    search = GridSearchCV(
        make_pipeline(StandardScaler(), ROLLClassifier(random_state=0)),
        {"rollclassifier__lam": [0.0, 0.5, 2.0], "rollclassifier__C": [0.25, 1.0]},
        scoring={"accuracy": "accuracy", "margin": margin_scorer()},
        refit=best_margin_within(tolerance=0.01),
    ).fit(X, y)
    tradeoff_table(search, print_table=True)
"""

from __future__ import annotations

import numbers
from collections.abc import Callable
from typing import Any

import numpy as np

from ._docs import fill_doc

__all__ = ["best_margin_within", "tradeoff_table"]

# Mean scores over folds are sums of fractions; a candidate exactly ``tolerance`` below
# the best must not be lost to rounding.
_SLACK = 1e-12


def _column(cv_results: dict, name: str, role: str) -> np.ndarray:
    key = f"mean_test_{name}"
    if key not in cv_results:
        available = sorted(k[len("mean_test_") :] for k in cv_results if k.startswith("mean_test_"))
        raise ValueError(
            f"cv_results_ has no {key!r}: the search must score the {role} under the name "
            f"{name!r} (scoring={{{name!r}: ...}}), or pass {role}=<one of {available}>."
        )
    return np.asarray(cv_results[key], dtype=np.float64)


_REFERENCES = ("best", "plain")


class _BestMarginWithin:
    """Refit rule: the largest mean margin among candidates within ``tolerance`` of a score."""

    def __init__(self, tolerance: float, score: str, margin: str, reference: str) -> None:
        if (
            not isinstance(tolerance, numbers.Real)
            or isinstance(tolerance, bool)
            or not tolerance >= 0
        ):
            raise ValueError(f"tolerance must be a non-negative number, got {tolerance!r}.")
        if reference not in _REFERENCES:
            raise ValueError(f"reference must be one of {_REFERENCES}, got {reference!r}.")
        self.tolerance = tolerance
        self.score = score
        self.margin = margin
        self.reference = reference

    def _reference_score(self, cv_results: dict, scores: np.ndarray, valid: np.ndarray) -> float:
        if self.reference == "best":
            return scores[valid].max()
        params = list(cv_results.get("params", []))
        plain = _plain_candidate(params, scores)
        if plain is None or not valid[plain]:
            raise ValueError(
                "reference='plain' needs a candidate with lam=0 (plain training) whose "
                f"{self.score!r} and {self.margin!r} are not NaN; add lam=0 to the grid."
            )
        return scores[plain]

    def __call__(self, cv_results: dict) -> int:
        scores = _column(cv_results, self.score, "score")
        margins = _column(cv_results, self.margin, "margin")
        valid = ~np.isnan(scores) & ~np.isnan(margins)
        if not valid.any():
            failed = [
                repr(name)
                for name, column in ((self.score, scores), (self.margin, margins))
                if np.isnan(column).all()
            ]
            which = " and ".join(failed) if failed else f"{self.score!r} or {self.margin!r}"
            raise ValueError(
                f"Every candidate has a NaN mean test {which} score: the scorer (or every "
                "fit) failed on every candidate, and GridSearchCV, with its "
                "default error_score=np.nan, reports why only in a warning ('Scoring "
                "failed' or 'fits failed'). Run the search with error_score='raise' to see "
                "the error."
            )
        best = self._reference_score(cv_results, scores, valid)
        eligible = valid & (scores >= best - self.tolerance - _SLACK)
        # Largest margin first, then the higher score, then the first candidate.
        order = np.lexsort((-scores, -margins))
        return int(next(i for i in order if eligible[i]))

    def __repr__(self) -> str:
        return (
            f"best_margin_within(tolerance={self.tolerance!r}, score={self.score!r}, "
            f"margin={self.margin!r}, reference={self.reference!r})"
        )


def best_margin_within(
    tolerance: float = 0.01,
    score: str = "accuracy",
    margin: str = "margin",
    *,
    reference: str = "best",
) -> Callable[[dict], int]:
    """Refit rule: largest mean margin among candidates that keep the score.

    Among the candidates whose mean test ``score`` is at least the reference score
    minus ``tolerance``, choose the one with the largest mean test ``margin`` (ties:
    the higher score, then the first candidate). The reference is the best mean test
    score, or with ``reference="plain"`` that of plain training (the candidate with
    ``lam == 0``), which with accuracy and ``tolerance=0.01`` is the paper's rule:
    the same accuracy as the plain network, or one point lower. Candidates whose
    score or margin is NaN (failed fits) are skipped.

    Parameters
    ----------
    tolerance : float >= 0, default=0.01
        How far below the best mean score a candidate may be.
    score : str, default="accuracy"
        Name of the score in the search's ``scoring`` dict (``"score"`` for a search
        with a single scorer).
    margin : str, default="margin"
        Name of the margin scorer in ``scoring`` (see
        :func:`sklearn_roll.metrics.margin_scorer`).
    reference : {"best", "plain"}, default="best"
        Whose score the tolerance is measured from: the best candidate's, or the
        plain network's (``lam == 0``, read from ``cv_results["params"]``).

    Returns
    -------
    refit : callable
        ``refit(cv_results) -> int``, the index of the chosen candidate; pass it as
        ``refit=`` to ``GridSearchCV`` or ``RandomizedSearchCV``. It raises a
        ``ValueError`` if ``cv_results`` lacks ``mean_test_<score>`` or
        ``mean_test_<margin>``.

    Examples
    --------
    >>> from sklearn_roll.model_selection import best_margin_within
    >>> rule = best_margin_within(tolerance=0.01)
    >>> rule({"mean_test_accuracy": [0.97, 0.965, 0.95], "mean_test_margin": [1.0, 3.0, 9.0]})
    1
    """
    return _BestMarginWithin(tolerance, score, margin, reference)


def _tradeoff(search: Any, score: str, margin: str, caller: str) -> tuple:
    """A fitted search's candidates, mean scores, mean margins and chosen index."""
    if not hasattr(search, "cv_results_"):
        raise ValueError(f"{type(search).__name__} is not fitted: call fit before {caller}.")
    results = search.cv_results_
    scores = _column(results, score, "score")
    margins = _column(results, margin, "margin")
    return list(results["params"]), scores, margins, getattr(search, "best_index_", None)


def _frontier(scores: np.ndarray, margins: np.ndarray) -> np.ndarray:
    """Whether each candidate is beaten by no other on both score and margin.

    A candidate is beaten when another scores at least as high and certifies at
    least as much, strictly more in one; a NaN score or margin is never on the
    frontier.
    """
    scores, margins = np.asarray(scores, dtype=float), np.asarray(margins, dtype=float)
    valid = np.isfinite(scores) & ~np.isnan(margins)
    s, m = scores[:, None], margins[:, None]
    beaten = (scores[None] >= s) & (margins[None] >= m) & ((scores[None] > s) | (margins[None] > m))
    beaten &= valid[None]
    return valid & ~beaten.any(axis=1)


def _plain(params: list[dict]) -> np.ndarray:
    """Whether each candidate trains plainly (``lam == 0``)."""
    lam = _lam_key(params)
    return np.array([lam is not None and c.get(lam) == 0 for c in params], dtype=bool)


def _plain_candidate(params: list[dict], scores: np.ndarray) -> int | None:
    """The candidate with ``lam == 0`` (if several, the best scoring), or None."""
    plain = np.flatnonzero(_plain(params)).tolist()
    if not plain:
        return None
    return max(plain, key=lambda i: (np.nan_to_num(scores[i], nan=-np.inf), -i))


def _lam_key(params: list[dict]) -> str | None:
    names = {name for candidate in params for name in candidate}
    keys = sorted(name for name in names if name == "lam" or name.endswith("__lam"))
    return keys[0] if len(keys) == 1 else None


def _format_value(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def _as_text(columns: dict[str, list]) -> str:
    cells = {name: [_format_value(v) for v in values] for name, values in columns.items()}
    widths = {name: max([len(name)] + [len(c) for c in cells[name]]) for name in columns}
    n = len(next(iter(columns.values()))) if columns else 0
    lines = ["  ".join(name.rjust(widths[name]) for name in columns)]
    for i in range(n):
        lines.append("  ".join(cells[name][i].rjust(widths[name]) for name in columns))
    return "\n".join(lines)


@fill_doc
def tradeoff_table(
    search: Any, score: str = "accuracy", margin: str = "margin", *, print_table: bool = False
) -> Any:
    """The score / certified-margin trade-off explored by a fitted search.

    One row per candidate, in the order of ``cv_results_``: its parameters, mean test
    score, mean test margin, the margin's ratio to the plain network's (the
    candidate with ``lam == 0``; if several, the one with the best mean score), and
    which candidate the search chose (``best_index_``).

    Parameters
    ----------
    %(search_parameters)s
    print_table : bool, default=False
        Also print the table.

    Returns
    -------
    table : pandas.DataFrame or str
        A DataFrame when pandas is installed, else the same table as text. Columns:
        one per searched parameter, ``mean_test_<score>``, ``mean_test_<margin>``,
        ``ratio_to_lam0`` (only when a ``lam == 0`` candidate exists), ``frontier``
        (no other candidate has both a higher or equal score and a higher or equal
        margin, one of them strictly) and ``chosen``.

    Examples
    --------
    %(fitted_search)s
    >>> from sklearn_roll.model_selection import tradeoff_table
    >>> list(tradeoff_table(search).columns)
    ['lam', 'mean_test_accuracy', 'mean_test_margin', 'ratio_to_lam0', 'frontier', 'chosen']
    """
    params, scores, margins, chosen = _tradeoff(search, score, margin, "tradeoff_table")
    names = sorted({name for candidate in params for name in candidate})
    columns: dict[str, list] = {
        name: [candidate.get(name) for candidate in params] for name in names
    }
    columns[f"mean_test_{score}"] = scores.tolist()
    columns[f"mean_test_{margin}"] = margins.tolist()
    base = _plain_candidate(params, scores)
    if base is not None:
        with np.errstate(divide="ignore", invalid="ignore"):
            columns["ratio_to_lam0"] = (margins / margins[base]).tolist()
    columns["frontier"] = _frontier(scores, margins).tolist()
    columns["chosen"] = [i == chosen for i in range(len(params))]
    try:
        import pandas as pd
    except ImportError:
        table: Any = _as_text(columns)
        text = table
    else:
        table = pd.DataFrame(columns)
        text = table.to_string()
    if print_table:
        print(text)
    return table
