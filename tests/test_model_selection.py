"""Margin scorers, the refit rule that keeps accuracy, and the trade-off table."""

import sys

import numpy as np
import pandas as pd
import pytest
from sklearn.base import clone
from sklearn.datasets import load_iris
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import GridSearchCV, StratifiedKFold, cross_validate
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from sklearn_roll import ROLLClassifier, ROLLRegressor, certified_margin
from sklearn_roll.metrics import (
    _quantile,
    certified_accuracy_scorer,
    margin_scorer,
    radius_scorer,
)
from sklearn_roll.model_selection import _frontier, best_margin_within, tradeoff_table
from sklearn_roll.regions import certified_radius

pytestmark = pytest.mark.usefixtures("one_thread")

SMALL = dict(hidden_layer_sizes=(16,), max_epochs=5, lr=1e-2, random_state=0)
GRID = {"rollclassifier__lam": [0.0, 0.5, 4.0], "rollclassifier__C": [1.0, 4.0]}
SCORING = {"accuracy": "accuracy", "margin": margin_scorer()}
CV = StratifiedKFold(3, shuffle=True, random_state=0)


@pytest.fixture(scope="module")
def raw_iris():
    return load_iris(return_X_y=True)


@pytest.fixture(scope="module")
def search(raw_iris):
    X, y = raw_iris
    pipe = make_pipeline(StandardScaler(), ROLLClassifier(**SMALL))
    refit = best_margin_within(tolerance=0.01)
    return GridSearchCV(pipe, GRID, scoring=SCORING, refit=refit, cv=CV).fit(X, y)


def test_refit_picks_the_largest_margin_within_tolerance(search):
    results = search.cv_results_
    n = len(results["params"])
    accuracy = np.mean([results[f"split{k}_test_accuracy"] for k in range(3)], axis=0)
    margin = np.mean([results[f"split{k}_test_margin"] for k in range(3)], axis=0)
    eligible = [i for i in range(n) if accuracy[i] >= accuracy.max() - 0.01 - 1e-12]
    expected = max(eligible, key=lambda i: (margin[i], accuracy[i], -i))
    assert search.best_index_ == expected
    assert search.best_params_ == results["params"][expected]
    # The grid exercises the rule: the largest margin overall costs too much accuracy.
    assert np.argmax(margin) not in eligible


def test_margin_scores_are_median_raw_unit_margins_of_the_held_out_fold(search, raw_iris):
    X, y = raw_iris
    results = search.cv_results_
    train, test = next(CV.split(X, y))
    for i in (1, 5):
        model = clone(search.estimator).set_params(**results["params"][i]).fit(X[train], y[train])
        expected = np.median(certified_margin(model, X[test]))
        assert results["split0_test_margin"][i] == pytest.approx(expected, rel=1e-12)


def test_the_rule_on_known_results():
    results = {
        "mean_test_accuracy": [0.97, 0.965, 0.95, np.nan],
        "mean_test_margin": [1.0, 3.0, 9.0, 99.0],
    }
    assert best_margin_within(0.01)(results) == 1
    assert best_margin_within(0.03)(results) == 2
    assert best_margin_within(0.0)(results) == 0
    # Exactly one point below the best still counts.
    assert (
        best_margin_within(0.01)({"mean_test_accuracy": [0.98, 0.97], "mean_test_margin": [1, 2]})
        == 1
    )
    # Equal margins: the higher score wins.
    tied = {"mean_test_score": [0.9, 0.95], "mean_test_m": [2.0, 2.0]}
    assert best_margin_within(0.1, score="score", margin="m")(tied) == 1
    with pytest.raises(ValueError, match=r"no 'mean_test_margin'.*\['accuracy'\]"):
        best_margin_within()({"mean_test_accuracy": [1.0]})
    with pytest.raises(ValueError, match="no 'mean_test_acc'"):
        best_margin_within(score="acc")(results)
    with pytest.raises(ValueError, match="tolerance"):
        best_margin_within(-0.1)
    assert repr(best_margin_within()) == (
        "best_margin_within(tolerance=0.01, score='accuracy', margin='margin', reference='best')"
    )


def test_the_papers_rule_measures_from_plain_training():
    results = {
        "params": [{"lam": 0.0}, {"lam": 1.0}, {"lam": 2.0}, {"lam": 4.0}],
        "mean_test_accuracy": [0.95, 0.97, 0.945, 0.935],
        "mean_test_margin": [1.0, 2.0, 5.0, 9.0],
    }
    # From the best (0.97), 0.945 is out of reach; from plain training (0.95) it is not.
    assert best_margin_within(0.01)(results) == 1
    assert best_margin_within(0.01, reference="plain")(results) == 2
    assert best_margin_within(0.02, reference="plain")(results) == 3
    with pytest.raises(ValueError, match="needs a candidate with lam=0"):
        best_margin_within(reference="plain")({**results, "params": [{"lam": 1.0}] * 4})
    with pytest.raises(ValueError, match="reference must be one of"):
        best_margin_within(reference="vanilla")


def test_a_scorer_that_failed_everywhere_is_named():
    results = {"mean_test_accuracy": [0.9, 0.8], "mean_test_margin": [np.nan, np.nan]}
    with pytest.raises(ValueError, match=r"NaN mean test 'margin' score.*error_score='raise'"):
        best_margin_within()(results)


def test_a_search_without_the_margin_scorer_fails_clearly(raw_iris):
    X, y = raw_iris
    search = GridSearchCV(
        ROLLClassifier(**SMALL),
        {"lam": [0.0, 1.0]},
        scoring="accuracy",
        refit=best_margin_within(),
        cv=2,
    )
    with pytest.raises(ValueError, match="no 'mean_test_accuracy'"):
        search.fit(X, y)


def test_tradeoff_table(search, capsys, monkeypatch):
    table = tradeoff_table(search)
    assert isinstance(table, pd.DataFrame)
    assert list(table.columns) == [
        "rollclassifier__C",
        "rollclassifier__lam",
        "mean_test_accuracy",
        "mean_test_margin",
        "ratio_to_lam0",
        "frontier",
        "chosen",
    ]
    results = search.cv_results_
    np.testing.assert_array_equal(table["mean_test_margin"], results["mean_test_margin"])
    assert table["chosen"].tolist() == [i == search.best_index_ for i in range(len(table))]
    plain = [i for i, p in enumerate(results["params"]) if p["rollclassifier__lam"] == 0]
    base = max(plain, key=lambda i: (results["mean_test_accuracy"][i], -i))
    np.testing.assert_allclose(
        table["ratio_to_lam0"], results["mean_test_margin"] / results["mean_test_margin"][base]
    )
    assert capsys.readouterr().out == ""
    tradeoff_table(search, print_table=True)
    assert "ratio_to_lam0" in capsys.readouterr().out
    monkeypatch.setitem(sys.modules, "pandas", None)
    text = tradeoff_table(search)
    assert isinstance(text, str)
    lines = text.splitlines()
    assert len(lines) == 1 + len(table) and "mean_test_margin" in lines[0]
    assert lines[1 + search.best_index_].rstrip().endswith("True")
    with pytest.raises(ValueError, match="not fitted"):
        tradeoff_table(GridSearchCV(ROLLClassifier(), {"lam": [0.0]}))


def test_the_frontier_keeps_the_candidates_no_other_beats_on_both():
    scores = np.array([0.9, 0.9, 0.8, 0.95, 0.7, np.nan, 0.6])
    margins = np.array([1.0, 2.0, 3.0, 0.5, 3.0, 9.0, np.nan])
    # 0 loses to 1 (same score, larger margin); 4 to 2 (same margin, higher score).
    assert _frontier(scores, margins).tolist() == [False, True, True, True, False, False, False]
    # Exact ties are not beaten: both stay.
    assert _frontier(np.array([0.9, 0.9]), np.array([1.0, 1.0])).tolist() == [True, True]


def test_plot_tradeoff_draws_every_candidate_the_frontier_and_the_choice(search):
    matplotlib = pytest.importorskip("matplotlib")
    matplotlib.use("Agg")
    from sklearn_roll.plotting import plot_tradeoff

    ax = plot_tradeoff(search)
    results = search.cv_results_
    scores, margins = results["mean_test_accuracy"], results["mean_test_margin"]
    plain = np.array([p["rollclassifier__lam"] == 0 for p in results["params"]])
    points = {c.get_label(): c.get_offsets() for c in ax.collections}
    np.testing.assert_array_equal(points["ROLL"], np.c_[margins, scores][~plain])
    np.testing.assert_array_equal(points["plain"], np.c_[margins, scores][plain])
    best = search.best_index_
    np.testing.assert_array_equal(points["chosen"], [[margins[best], scores[best]]])
    front = np.flatnonzero(tradeoff_table(search)["frontier"])
    front = front[np.argsort(margins[front])]
    (line,) = ax.get_lines()
    np.testing.assert_array_equal(line.get_xdata(), margins[front])
    np.testing.assert_array_equal(line.get_ydata(), scores[front])
    assert len(ax.texts) == len(scores) and ax.texts[0].get_text() == "C=1, lam=0"
    assert ax.get_xscale() == "log"
    with pytest.raises(ValueError, match="call fit before plot_tradeoff"):
        plot_tradeoff(GridSearchCV(ROLLClassifier(), {"lam": [0.0]}))
    matplotlib.pyplot.close("all")


def test_scorers_equal_quantiles_of_the_certificates(raw_iris):
    X, y = raw_iris
    X = StandardScaler().fit_transform(X)
    clf = ROLLClassifier(**SMALL).fit(X, y)
    margin = certified_margin(clf, X, 1)
    assert margin_scorer(p=1, quantile=0.25)(clf, X) == pytest.approx(np.quantile(margin, 0.25))
    radius = certified_radius(clf, X, np.inf, precision="float64")
    scorer = radius_scorer(p=np.inf, quantile=0.9, precision="float64")
    assert scorer(clf, X, y) == pytest.approx(np.quantile(radius, 0.9))
    r = np.median(radius)
    expected = np.mean((clf.predict(X) == y) & (radius >= r))
    assert certified_accuracy_scorer(r, p=np.inf, precision="float64")(clf, X, y) == expected
    assert 0 < expected < 1
    scores = cross_validate(
        clf, X, y, cv=2, scoring={"margin": margin_scorer(), "radius": radius_scorer()}
    )
    assert np.all(scores["test_radius"] <= scores["test_margin"])
    assert repr(margin_scorer()) == "margin_scorer(p=2, quantile=0.5, precision='float32')"
    assert (
        repr(radius_scorer(p=np.inf))
        == "radius_scorer(p=np.inf, quantile=0.5, precision='float32')"
    )


def test_quantile_keeps_infinite_margins():
    values = np.array([3.0, 1.0, 2.0, 7.5])
    for q in (0, 0.1, 0.5, 0.9, 1):
        assert _quantile(values, q) == pytest.approx(np.quantile(values, q))
    assert _quantile(np.array([1.0, np.inf]), 0.5) == np.inf
    assert _quantile(np.array([1.0, 2.0, np.inf]), 0.25) == 1.5
    assert _quantile(np.array([np.inf, np.inf]), 0.5) == np.inf


def test_scorers_refuse_what_they_cannot_score(raw_iris):
    X, y = raw_iris
    logistic = LogisticRegression(max_iter=500).fit(X, y)
    for scorer in (margin_scorer(), radius_scorer(), certified_accuracy_scorer(0.1)):
        with pytest.raises(TypeError, match="LogisticRegression is not a sklearn-roll estimator"):
            scorer(logistic, X, y)
    pipe = make_pipeline(StandardScaler(), logistic).fit(X, y)
    with pytest.raises(TypeError, match="last step 'logisticregression'"):
        margin_scorer()(pipe, X, y)
    reg = ROLLRegressor(**SMALL).fit(X, y.astype(float))
    assert margin_scorer()(reg, X) > 0
    with pytest.raises(TypeError, match="needs a classifier"):
        radius_scorer()(reg, X)
    with pytest.raises(ValueError, match="true labels"):
        certified_accuracy_scorer(0.1)(ROLLClassifier(**SMALL).fit(X, y), X)
    for bad in (dict(p=3), dict(quantile=1.5), dict(precision="float16")):
        with pytest.raises(ValueError):
            margin_scorer(**bad)
    with pytest.raises(ValueError, match="radius"):
        certified_accuracy_scorer(-1.0)
