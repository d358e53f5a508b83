"""Sample and class weights: integer weights act as repeated rows, routed like scikit-learn's."""

import numpy as np
import pytest
import sklearn
import torch
from sklearn.base import clone
from sklearn.datasets import make_classification
from sklearn.metrics import balanced_accuracy_score
from sklearn.model_selection import GridSearchCV, train_test_split
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from sklearn_roll import ROLLClassifier, ROLLRegressor
from sklearn_roll.loss import roll_penalty
from sklearn_roll.nn import MLP

pytestmark = pytest.mark.usefixtures("one_thread")

SMALL = dict(hidden_layer_sizes=(16,), max_epochs=5, random_state=0, n_threads=1)
# One batch of all the data, in a fixed order: weighted and repeated rows then give the
# same objective, up to the order of float32 sums.
ONE_BATCH = dict(SMALL, batch_size=-1, iterator_train__shuffle=False)


@pytest.fixture(scope="module")
def small_wine(wine):
    X, y = wine
    rows = np.arange(0, len(X), 3)
    return X[rows], y[rows]


def _repeated(X, y, weight):
    rows = np.repeat(np.arange(len(X)), weight)
    return X[rows], y[rows]


@pytest.mark.parametrize("lam", [0.0, 1.0])
def test_integer_weights_equal_repeated_rows_in_one_batch(small_wine, lam):
    X, y = small_wine
    weight = np.random.RandomState(0).randint(0, 4, len(X))
    weighted = ROLLClassifier(lam=lam, **ONE_BATCH).fit(X, y, sample_weight=weight)
    repeated = ROLLClassifier(lam=lam, **ONE_BATCH).fit(*_repeated(X, y, weight))
    # The objective at the same (initial) weights, then after five Adam steps.
    np.testing.assert_allclose(weighted.loss_curve_, repeated.loss_curve_, rtol=1e-5)
    np.testing.assert_allclose(
        weighted.history[:, "train_task_loss"], repeated.history[:, "train_task_loss"], rtol=1e-5
    )
    np.testing.assert_allclose(weighted.predict_proba(X), repeated.predict_proba(X), atol=1e-5)


def test_integer_weights_come_close_to_repeated_rows_under_minibatch_sgd(small_wine):
    X, y = small_wine
    weight = np.random.RandomState(1).randint(1, 4, len(X))
    params = {**SMALL, "lr": 1e-2, "batch_size": 16}
    del params["max_epochs"]
    repeated = ROLLClassifier(max_epochs=20, **params).fit(*_repeated(X, y, weight))
    # The same number of optimizer steps: the repeated rows make longer epochs.
    epochs = int(round(20 * weight.mean()))
    weighted = ROLLClassifier(max_epochs=epochs, **params).fit(X, y, sample_weight=weight)
    # Batches differ, so only the fitted function is comparable, not the weights.
    assert abs(weighted.score(X, y) - repeated.score(X, y)) <= 0.05
    gap = np.abs(weighted.predict_proba(X) - repeated.predict_proba(X)).mean()
    assert gap < 0.05, gap


def test_the_regressor_standardises_with_the_weights(small_wine):
    X, y = small_wine
    target = X[:, 0] * 3.0 + 10.0
    weight = np.random.RandomState(2).randint(0, 4, len(X))
    weighted = ROLLRegressor(**ONE_BATCH).fit(X, target, sample_weight=weight)
    repeated = ROLLRegressor(**ONE_BATCH).fit(*_repeated(X, target, weight))
    np.testing.assert_allclose(weighted.y_mean_, repeated.y_mean_, rtol=1e-12)
    np.testing.assert_allclose(weighted.y_scale_, repeated.y_scale_, rtol=1e-12)
    np.testing.assert_allclose(weighted.loss_curve_, repeated.loss_curve_, rtol=1e-5)
    np.testing.assert_allclose(weighted.predict(X), repeated.predict(X), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("gamma", [100.0, 40.0])
def test_the_weighted_penalty_is_the_mean_over_repeated_rows(gamma):
    net = MLP(5, 3, hidden_layer_sizes=(7, 6)).double()
    x = torch.randn(6, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    weight = torch.tensor([2.0, 0.0, 1.0, 3.0, 1.0, 1.0], dtype=torch.float64)
    rows = torch.repeat_interleave(torch.arange(6), weight.long())
    weighted = roll_penalty(net, x, C=1.0, gamma=gamma, sample_weight=weight / weight.mean())
    repeated = roll_penalty(net, x[rows], C=1.0, gamma=gamma)
    torch.testing.assert_close(weighted, repeated, rtol=1e-12, atol=0)


def test_class_weights_are_sample_weights_by_class(small_wine):
    X, y = small_wine
    by_class = ROLLClassifier(class_weight={0: 1.0, 1: 3.0, 2: 0.5}, **SMALL).fit(X, y)
    by_sample = ROLLClassifier(**SMALL).fit(X, y, sample_weight=np.choose(y, [1.0, 3.0, 0.5]))
    np.testing.assert_array_equal(by_class.predict_proba(X), by_sample.predict_proba(X))
    both = ROLLClassifier(class_weight={1: 3.0}, **SMALL).fit(
        X, y, sample_weight=np.full(len(y), 2)
    )
    np.testing.assert_allclose(
        both.predict_proba(X),
        ROLLClassifier(class_weight={1: 3.0}, **SMALL).fit(X, y).predict_proba(X),
        rtol=1e-6,
    )


def test_balanced_class_weights_raise_balanced_accuracy():
    X, y = make_classification(
        n_samples=600,
        n_features=8,
        n_informative=4,
        weights=[0.92, 0.08],
        class_sep=0.6,
        flip_y=0.0,
        random_state=0,
    )
    X_train, X_test, y_train, y_test = train_test_split(
        X, y, test_size=0.5, stratify=y, random_state=0
    )
    params = dict(hidden_layer_sizes=(32,), max_epochs=30, random_state=0, n_threads=1)
    scores = {}
    for class_weight in (None, "balanced"):
        clf = ROLLClassifier(class_weight=class_weight, **params).fit(X_train, y_train)
        scores[class_weight] = balanced_accuracy_score(y_test, clf.predict(X_test))
    assert scores["balanced"] > scores[None] + 0.05, scores


def test_weights_route_through_pipelines_and_searches(small_wine):
    X, y = small_wine
    weight = np.random.RandomState(3).randint(1, 4, len(X))
    scaled = StandardScaler().fit_transform(X)
    direct = ROLLClassifier(**SMALL).fit(scaled, y, sample_weight=weight)
    # Without metadata routing: the step's name as prefix, as for any pipeline.
    pipe = make_pipeline(StandardScaler(), ROLLClassifier(**SMALL))
    pipe.fit(X, y, rollclassifier__sample_weight=weight)
    np.testing.assert_array_equal(pipe.predict_proba(X), direct.predict_proba(scaled))
    # With it: requested like scikit-learn's estimators request it.
    with sklearn.config_context(enable_metadata_routing=True):
        routed = make_pipeline(
            StandardScaler().set_fit_request(sample_weight=False),
            ROLLClassifier(**SMALL)
            .set_fit_request(sample_weight=True)
            .set_score_request(sample_weight=True),
        )
        routed.fit(X, y, sample_weight=weight)
        np.testing.assert_array_equal(routed.predict_proba(X), direct.predict_proba(scaled))
        search = GridSearchCV(routed, {"rollclassifier__lam": [0.0, 1.0]}, cv=2)
        search.fit(X, y, sample_weight=weight)
        assert np.isfinite(search.cv_results_["mean_test_score"]).all()
    # A search over the bare estimator slices the weights by fold.
    search = GridSearchCV(ROLLClassifier(**SMALL), {"lam": [0.0, 1.0]}, cv=2)
    search.fit(scaled, y, sample_weight=weight)
    assert np.isfinite(search.cv_results_["mean_test_score"]).all()


def test_partial_fit_takes_weights_and_keeps_the_classes(small_wine):
    X, y = small_wine
    clf = ROLLClassifier(class_weight={2: 2.0}, **SMALL)
    clf.partial_fit(X[y < 2], y[y < 2], classes=[0, 1, 2], sample_weight=np.ones((y < 2).sum()))
    clf.partial_fit(X, y, sample_weight=np.arange(len(y)) % 3)
    assert clf.n_iter_ == 2 * SMALL["max_epochs"] == len(clf.loss_curve_)


BAD_WEIGHTS = [
    ("negative", lambda n: np.where(np.arange(n) == 4, -1.0, 1.0), r"must be >= 0; sample 4"),
    ("NaN", lambda n: np.where(np.arange(n) == 2, np.nan, 1.0), "sample_weight contains NaN"),
    ("infinite", lambda n: np.where(np.arange(n) == 2, np.inf, 1.0), "sample_weight contains inf"),
    ("too short", lambda n: np.ones(n - 1), r"has \d+ weights, but X has \d+ samples"),
    ("2-D", lambda n: np.ones((n, 2)), "must be 1-D"),
    ("all zero", lambda n: np.zeros(n), "zero for every sample"),
    ("strings", lambda n: np.array(["a"] * n), "could not convert string to float"),
]


@pytest.mark.parametrize("case, make, message", BAD_WEIGHTS, ids=[c[0] for c in BAD_WEIGHTS])
@pytest.mark.parametrize("Estimator", [ROLLClassifier, ROLLRegressor])
def test_bad_sample_weights_are_named(small_wine, Estimator, case, make, message):
    X, y = small_wine
    est = Estimator(**SMALL)
    for fit in (est.fit, clone(est).partial_fit):
        with pytest.raises(ValueError, match=message):
            fit(X, y, sample_weight=make(len(X)))
    assert not hasattr(est, "module_")


@pytest.mark.parametrize(
    "class_weight, message",
    [
        ({0: 1.0, 7: 2.0}, r"class_weight names labels that are not classes: \[7\]"),
        ({0: -1.0}, r"class_weight\[0\] must be a finite number >= 0"),
        ({0: np.nan}, r"class_weight\[0\] must be a finite number >= 0"),
        ({0: 0.0, 1: 0.0, 2: 0.0}, "zero for every sample"),
        ("balance", "The 'class_weight' parameter of ROLLClassifier must be"),
    ],
)
def test_bad_class_weights_are_named(small_wine, class_weight, message):
    X, y = small_wine
    with pytest.raises(ValueError, match=message):
        ROLLClassifier(class_weight=class_weight, **SMALL).fit(X, y)


def test_balanced_class_weights_need_all_the_data(small_wine):
    X, y = small_wine
    with pytest.raises(ValueError, match="not available with partial_fit.*compute_class_weight"):
        ROLLClassifier(class_weight="balanced", **SMALL).partial_fit(X, y)
