"""gradient_distortion: zero inside linear regions, sound search, seeding, domains, pipelines."""

import numpy as np
import pandas as pd
import pytest
from sklearn.compose import ColumnTransformer, TransformedTargetRegressor
from sklearn.datasets import load_iris
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import OneHotEncoder, StandardScaler

import sklearn_roll._distortion as distortion_module
from sklearn_roll import ROLLClassifier, ROLLRegressor, certified_margin
from sklearn_roll._distortion import distortions
from sklearn_roll.metrics import gradient_distortion
from sklearn_roll.regions import explain

# Small searches keep every test fast; the defaults are tested for types only.
SMALL = {"n_uniform": 16, "population": 6, "generations": 3}


@pytest.fixture
def evaluated_points(monkeypatch):
    """Every point whose gradient gradient_distortion evaluates, in order of calls."""
    seen = []
    real = distortion_module.input_gradients

    def spy(module, exact, points, *args):
        seen.append(np.array(points, dtype=np.float64))
        return real(module, exact, points, *args)

    monkeypatch.setattr(distortion_module, "input_gradients", spy)
    return seen


@pytest.fixture(scope="module")
def clf(iris):
    X, y = iris
    return ROLLClassifier(hidden_layer_sizes=(12,), max_epochs=5, random_state=0).fit(X, y)


def test_a_ball_inside_the_linear_region_has_no_distortion(clf, iris):
    X = iris[0][:20]
    margins = certified_margin(clf, X, p=np.inf, precision="float64")
    X = X[margins > 0]
    assert len(X) > 0
    result = gradient_distortion(clf, X, 0.9 * margins[margins > 0].min(), random_state=0, **SMALL)
    np.testing.assert_array_equal(result.expected, 0.0)
    np.testing.assert_array_equal(result.maximum, 0.0)


def test_a_ball_across_boundaries_has_a_positive_maximum_above_the_expectation(clf, iris):
    X = iris[0][:20]
    result = gradient_distortion(clf, X, 1.0, random_state=0, **SMALL)
    assert result.expected.shape == result.maximum.shape == (20,)
    assert result.expected.dtype == result.maximum.dtype == np.float64
    assert (result.maximum > 0).any()
    assert (result.maximum >= result.expected).all()
    assert (result.expected >= 0).all()


def test_more_generations_never_lower_the_maximum(clf, iris):
    X = iris[0][:10]
    short = gradient_distortion(clf, X, 1.0, random_state=0, **{**SMALL, "generations": 0})
    long = gradient_distortion(clf, X, 1.0, random_state=0, **SMALL)
    # The same uniform draws seed both searches, which only ever keep their best.
    np.testing.assert_array_equal(short.expected, long.expected)
    assert (long.maximum >= short.maximum).all()


def test_fewer_draws_than_the_population_still_seed_the_search(clf, iris):
    X = iris[0][:10]
    few = {"n_uniform": 2, "population": 6, "generations": 3}
    result = gradient_distortion(clf, X, 1.0, random_state=0, **few)
    assert (result.maximum >= result.expected).all()
    assert (result.maximum > 0).any()


def test_the_same_seed_gives_the_same_result_and_another_seed_another(clf, iris):
    X = iris[0][:10]
    first = gradient_distortion(clf, X, 1.0, random_state=0, **SMALL)
    again = gradient_distortion(clf, X, 1.0, random_state=np.random.RandomState(0), **SMALL)
    other = gradient_distortion(clf, X, 1.0, random_state=1, **SMALL)
    np.testing.assert_array_equal(first.expected, again.expected)
    np.testing.assert_array_equal(first.maximum, again.maximum)
    assert not np.array_equal(first.expected, other.expected)


def test_every_evaluated_point_lies_in_the_ball_and_the_domain(clf, iris, evaluated_points):
    x = iris[0][:1]
    eps = 0.5
    # A domain as narrow as 2e-3 along the first feature, wide along the others.
    width = np.array([1e-3, 10.0, 10.0, 10.0])
    lower, upper = x[0] - width, x[0] + np.array([0.0, 10.0, 10.0, 10.0])
    gradient_distortion(clf, x, eps, domain=(lower, upper), random_state=0, **SMALL)
    points = np.concatenate(evaluated_points)
    assert len(points) == 1 + SMALL["n_uniform"] + SMALL["population"] * SMALL["generations"]
    assert (points >= np.maximum(x - eps, lower)).all()
    assert (points <= np.minimum(x + eps, upper)).all()
    # The upper bound at x itself pins the first feature to [x - 1e-3, x].
    assert (points[:, 0] <= x[0, 0]).all() and (points[:, 0] >= x[0, 0] - 1e-3).all()


def test_a_pipeline_in_raw_units_equals_the_hand_folded_computation():
    X, y = load_iris(return_X_y=True)
    pipe = make_pipeline(
        StandardScaler(), ROLLClassifier(hidden_layer_sizes=(12,), max_epochs=5, random_state=0)
    ).fit(X, y)
    scaler, inner = pipe[0], pipe[-1]
    X = X[::15]
    eps = 0.3
    result = gradient_distortion(pipe, X, eps, domain=(0, 10), random_state=0, **SMALL)

    labels = inner.predict(scaler.transform(X))

    def gradients(points, owners):
        # The chain rule through x -> (x - mean) / scale, by hand.
        raw = explain(inner, scaler.transform(points), target=labels[owners], precision="float64")
        return raw / scaler.scale_

    lower, upper = np.maximum(X - eps, 0), np.minimum(X + eps, 10)
    expected, maximum = distortions(
        gradients, X, lower, upper, **SMALL, rng=np.random.RandomState(0)
    )
    np.testing.assert_allclose(result.expected, expected, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(result.maximum, maximum, rtol=1e-9, atol=1e-12)
    assert (maximum > 0).any()


def test_a_transformed_target_scales_the_distortion(iris):
    X, y = iris[0], iris[0][:, 0] * 30.0 + 5.0
    ttr = TransformedTargetRegressor(
        ROLLRegressor(hidden_layer_sizes=(8,), max_epochs=3, random_state=0),
        transformer=StandardScaler(),
    ).fit(X[:, 1:], y)
    X = X[:8, 1:]
    outer = gradient_distortion(ttr, X, 1.0, random_state=0, **SMALL)
    inner = gradient_distortion(ttr.regressor_, X, 1.0, random_state=0, **SMALL)
    scale = ttr.transformer_.scale_[0]
    np.testing.assert_allclose(outer.expected, inner.expected * scale, rtol=1e-9)
    np.testing.assert_allclose(outer.maximum, inner.maximum * scale, rtol=1e-9)


def test_an_explicit_target_is_explained_over_the_whole_ball(clf, iris):
    X = iris[0][:6]
    predicted = clf.predict(X)
    default = gradient_distortion(clf, X, 1.0, random_state=0, **SMALL)
    named = gradient_distortion(clf, X, 1.0, target=predicted, random_state=0, **SMALL)
    np.testing.assert_array_equal(default.expected, named.expected)
    np.testing.assert_array_equal(default.maximum, named.maximum)


def test_features_naming_every_column_change_nothing(clf, iris):
    X = iris[0][:8]
    every = gradient_distortion(clf, X, 1.0, features=[0, 1, 2, 3], random_state=0, **SMALL)
    default = gradient_distortion(clf, X, 1.0, random_state=0, **SMALL)
    np.testing.assert_array_equal(every.expected, default.expected)
    np.testing.assert_array_equal(every.maximum, default.maximum)


def test_features_hold_the_other_columns_fixed(clf, iris, evaluated_points):
    X = iris[0][:3]
    domain = ([-9.0, -9.0], [9.0, 9.0])
    result = gradient_distortion(
        clf, X, 1.0, features=[2, 3], domain=domain, random_state=0, **SMALL
    )
    points = np.concatenate(evaluated_points)
    assert np.isin(points[:, 0], X[:, 0]).all() and np.isin(points[:, 1], X[:, 1]).all()
    assert (result.maximum >= result.expected).all()


def test_features_count_the_moving_columns_gradient_only(clf, iris):
    X = iris[0][:6]
    eps = 1.0
    result = gradient_distortion(clf, X, eps, features=[2, 3], random_state=0, **SMALL)
    labels = clf.predict(X)

    def gradients(points, owners):
        grads = explain(clf, points, target=labels[owners], precision="float64")
        grads[:, :2] = 0.0
        return grads

    lower, upper = X.copy(), X.copy()
    lower[:, 2:] -= eps
    upper[:, 2:] += eps
    expected, maximum = distortions(
        gradients, X, lower, upper, **SMALL, rng=np.random.RandomState(0)
    )
    np.testing.assert_allclose(result.expected, expected, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(result.maximum, maximum, rtol=1e-12, atol=1e-12)
    assert (maximum > 0).any()


def test_features_through_a_one_hot_pipeline():
    X, y = load_iris(return_X_y=True, as_frame=True)
    X = X.assign(kind=np.where(np.arange(len(X)) % 2, "a", "b"))
    numeric = list(X.columns[:4])
    pipe = make_pipeline(
        ColumnTransformer([("num", StandardScaler(), numeric), ("cat", OneHotEncoder(), ["kind"])]),
        ROLLClassifier(hidden_layer_sizes=(8,), max_epochs=3, random_state=0),
    ).fit(X, y)
    result = gradient_distortion(pipe, X[:4], 0.5, features=numeric, random_state=0, **SMALL)
    assert isinstance(X, pd.DataFrame) and result.maximum.shape == (4,)
    assert (result.maximum >= result.expected).all()
    with pytest.raises(ValueError, match="kind"):
        gradient_distortion(pipe, X[:4], 0.5, features=["kind"])


@pytest.mark.parametrize("flat", [False, True])
def test_images_with_a_pixel_domain(digits, flat):
    X, y = digits
    X = np.clip((X[:120] - X.min()) / (X.max() - X.min()), 0, 1).reshape(-1, 1, 8, 8)
    kwargs = {"input_shape": (1, 8, 8)} if flat else {}
    data = X.reshape(len(X), -1) if flat else X
    cnn = ROLLClassifier(
        "cnn", hidden_layer_sizes=(4,), max_epochs=1, random_state=0, **kwargs
    ).fit(data, y[:120])
    lower = np.zeros(64) if flat else np.zeros((1, 8, 8))
    result = gradient_distortion(cnn, data[:3], 0.05, domain=(lower, 1), random_state=0, **SMALL)
    assert result.expected.shape == (3,)
    assert (result.maximum >= result.expected).all()


def test_progress_bar(clf, iris, capsys):
    gradient_distortion(clf, iris[0][:2], 0.5, progress=True, random_state=0, **SMALL)
    assert "gradient distortion" in capsys.readouterr().err


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"eps": 0.0}, "eps must be a positive finite number"),
        ({"eps": -1.0}, "eps must be a positive finite number"),
        ({"eps": np.nan}, "eps must be a positive finite number"),
        ({"eps": np.inf}, "eps must be a positive finite number"),
        ({"eps": True}, "eps must be a positive finite number"),
        ({"eps": "0.1"}, "eps must be a positive finite number"),
        ({"domain": (1.0, 0.0)}, "domain is empty or degenerate"),
        ({"domain": (-5.0, -5.0)}, "domain is empty or degenerate"),
        ({"domain": ([-9, -9, 2, -9], [9, 9, 2, 9])}, "lower >= upper at 1 feature"),
        ({"domain": (0.0, 9.0)}, "lie outside the domain"),
        ({"domain": (-9.0, 0.0)}, "lie outside the domain"),
        ({"domain": ([-9, -9], 9)}, "one value per feature, of shape \\(4,\\)"),
        ({"domain": (-9.0, 9.0, 1.0)}, "domain must be a pair"),
        ({"domain": 1.0}, "domain must be a pair"),
        ({"domain": ("low", 9.0)}, "lower bound must be numeric"),
        ({"domain": (-9.0, np.nan)}, "upper bound contains NaN"),
        ({"n_uniform": 0}, "n_uniform must be an integer >= 1"),
        ({"population": 1}, "population must be an integer >= 2"),
        ({"generations": -1}, "generations must be an integer >= 0"),
        ({"generations": 2.5}, "generations must be an integer >= 0"),
        ({"precision": "float16"}, "precision"),
        ({"target": "no such class"}, "not among classes_"),
        ({"batch_size": 0}, "batch_size must be a positive integer"),
        ({"features": [7]}, "features has the column index 7"),
        ({"features": [1], "domain": ([0, 0], 9)}, "one value per feature, of shape \\(1,\\)"),
    ],
)
def test_bad_input_is_refused_with_a_message_naming_it(clf, iris, kwargs, message):
    arguments = {"eps": 0.1, "random_state": 0, **SMALL, **kwargs}
    with pytest.raises(ValueError, match=message):
        gradient_distortion(clf, iris[0][:4], **arguments)


def test_wrong_shapes_are_refused(clf, iris):
    with pytest.raises(ValueError, match="features"):
        gradient_distortion(clf, iris[0][:4, :3], 0.1)


def test_a_regressor_with_several_outputs_needs_a_target(iris):
    X = iris[0]
    reg = ROLLRegressor(hidden_layer_sizes=(8,), max_epochs=2, random_state=0)
    reg.fit(X, np.stack([X[:, 0], X[:, 1]], axis=1))
    with pytest.raises(ValueError, match="pass target=<output index>"):
        gradient_distortion(reg, X[:3], 0.1)
    assert gradient_distortion(reg, X[:3], 0.1, target=1, **SMALL).maximum.shape == (3,)


def test_sequences_are_refused():
    rng = np.random.RandomState(0)
    X = [rng.randn(rng.randint(3, 6), 2) for _ in range(12)]
    y = np.arange(12) % 2
    rnn = ROLLClassifier("rnn", hidden_layer_sizes=(4,), max_epochs=1, random_state=0).fit(X, y)
    with pytest.raises(ValueError, match="not sequences"):
        gradient_distortion(rnn, X[:2], 0.1)
