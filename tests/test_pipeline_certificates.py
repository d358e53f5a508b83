"""Certificates of pipelines: affine steps folded into the network, results in raw units."""

import copy

import numpy as np
import pandas as pd
import pytest
from sklearn.base import BaseEstimator, TransformerMixin
from sklearn.datasets import load_digits, load_wine
from sklearn.decomposition import PCA, IncrementalPCA, TruncatedSVD
from sklearn.exceptions import NotFittedError
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import (
    FunctionTransformer,
    MaxAbsScaler,
    MinMaxScaler,
    PolynomialFeatures,
    QuantileTransformer,
    RobustScaler,
    StandardScaler,
)

from modules import Residual
from reference import ball_points, margins, output_gradients, pattern, unit_gradients
from sklearn_roll import ROLLClassifier, certified_margin, explain
from sklearn_roll._affine import affine_map
from sklearn_roll.regions import (
    FLOAT32_RTOL,
    activation_patterns,
    certified_radius,
    count_linear_regions,
    directional_margin,
    stability_bounds,
)

pytestmark = pytest.mark.usefixtures("one_thread")

P_AND_Q = [(1, np.inf), (2, 2), (np.inf, 1)]
SMALL = dict(hidden_layer_sizes=(16,), lam=0.5, max_epochs=5, random_state=0)


@pytest.fixture(scope="module")
def raw_wine():
    return load_wine(return_X_y=True)


def _affine_of(transform, n_features):
    """(A, c) of an affine transform, read off its values at 0 and the unit vectors."""
    c = transform(np.zeros((1, n_features)))[0]
    A = (transform(np.eye(n_features)) - c).T
    return A, c


PREPROCESSORS = {
    "standard": lambda: StandardScaler(),
    "minmax": lambda: MinMaxScaler(feature_range=(-1, 2)),
    "pca_whiten": lambda: PCA(n_components=8, whiten=True),
    "standard_user_module": lambda: StandardScaler(),
    "pca_user_module": lambda: PCA(n_components=6, whiten=True),
}


@pytest.fixture(scope="module", params=list(PREPROCESSORS))
def pipe(request, raw_wine):
    X, y = raw_wine
    module = Residual if request.param.endswith("user_module") else "mlp"
    est = ROLLClassifier(module, **SMALL)
    return make_pipeline(PREPROCESSORS[request.param](), est).fit(X, y)


def _network64(pipe):
    return copy.deepcopy(pipe[-1].module_).double().eval()


def _raw_unit_gradients(pipe, X):
    """z_u and raw-unit gradients A^T g_u, by per-unit autograd after the pipeline's transform."""
    A, _ = _affine_of(pipe[:-1].transform, X.shape[1])
    z, g = unit_gradients(_network64(pipe), pipe[:-1].transform(X))
    return z, g @ A


@pytest.mark.parametrize("p, q", P_AND_Q)
def test_margin_equals_hand_computation_in_raw_units(pipe, raw_wine, p, q):
    X = raw_wine[0][::15]
    z, g = _raw_unit_gradients(pipe, X)
    expected = margins(z, g, q)
    got = certified_margin(pipe, X, p, precision="float64")
    np.testing.assert_allclose(got, expected, rtol=1e-9)
    got32 = certified_margin(pipe, X, p)
    assert np.all(got32 <= expected)
    assert np.all(got32 >= expected * (1 - 10 * FLOAT32_RTOL))
    # In raw units, not in the units the network reads.
    inner = certified_margin(pipe[-1], pipe[:-1].transform(X), p, precision="float64")
    assert not np.allclose(got, inner, rtol=1e-3)


@pytest.mark.parametrize("p, q", P_AND_Q)
def test_points_inside_the_raw_ball_keep_the_pattern(pipe, raw_wine, p, q, rng):
    X = raw_wine[0][::30]
    network = _network64(pipe)
    z, g = _raw_unit_gradients(pipe, X)
    radius = certified_margin(pipe, X, p, precision="float64")

    def pattern_of(points):
        return pattern(network, pipe[:-1].transform(points))

    for i in range(len(X)):
        assert np.isfinite(radius[i]) and radius[i] > 0
        inside = pattern_of(ball_points(X[i], radius[i], p, z[i], g[i], rng))
        assert (inside == pattern_of(X[i : i + 1])).all(), f"sample {i}, p={p}"
        if p == 2:
            norms = np.linalg.norm(g[i], axis=1)
            u = np.argmin(np.where(norms > 0, np.abs(z[i]) / norms, np.inf))
            step = -np.sign(z[i, u]) * g[i, u] / norms[u]
            beyond = pattern_of(np.stack([X[i], X[i] + 1.01 * radius[i] * step]))
            assert (beyond[0] != beyond[1]).any(), f"sample {i}"


def test_every_certificate_takes_the_pipeline(pipe, raw_wine):
    X = raw_wine[0][:8]
    network = _network64(pipe)
    A, _ = _affine_of(pipe[:-1].transform, X.shape[1])
    inner = pipe[:-1].transform(X)
    out, og = output_gradients(network, inner)
    picked = og[np.arange(len(X)), out.argmax(axis=1)] @ A
    np.testing.assert_allclose(explain(pipe, X, precision="float64"), picked, rtol=1e-9)
    np.testing.assert_array_equal(
        activation_patterns(pipe, X, precision="float64"), pattern(network, inner)
    )
    direction = np.linspace(-1, 1, X.shape[1])
    t = directional_margin(pipe, X, direction)
    z, g = _raw_unit_gradients(pipe, X)
    gd = g @ (direction / np.linalg.norm(direction))
    expected = np.where(z * gd < 0, np.abs(z) / np.abs(gd), np.inf).min(axis=1)
    np.testing.assert_allclose(t, expected, rtol=1e-9)
    lower, upper = stability_bounds(pipe, X)
    np.testing.assert_allclose(upper[:, 3], directional_margin(pipe, X, np.eye(X.shape[1])[3]))
    assert np.all(lower <= 0)
    radius = certified_radius(pipe, X, precision="float64")
    assert np.all(radius <= certified_margin(pipe, X, precision="float64"))
    n_patterns, n_jacobians = count_linear_regions(pipe, X)
    assert n_patterns == len(np.unique(pattern(network, inner), axis=0)) >= n_jacobians >= 1


def test_flattened_images_behind_a_scaler():
    X, y = load_digits(return_X_y=True)
    X, y = X[:200], y[:200]
    cnn = ROLLClassifier(
        "cnn", input_shape=(1, 8, 8), hidden_layer_sizes=(2,), max_epochs=1, random_state=0
    )
    pipe = make_pipeline(MinMaxScaler(), cnn).fit(X, y)
    A, _ = _affine_of(pipe[:-1].transform, 64)
    images = pipe[:-1].transform(X[:2]).reshape(-1, 1, 8, 8)
    z, g = unit_gradients(_network64(pipe), images)
    np.testing.assert_allclose(
        certified_margin(pipe, X[:2], precision="float64"), margins(z, g @ A, 2), rtol=1e-9
    )
    assert explain(pipe, X[:2]).shape == (2, 64)


STEPS = {
    "standard": StandardScaler(),
    "standard_no_mean": StandardScaler(with_mean=False),
    "standard_no_std": StandardScaler(with_std=False),
    "robust": RobustScaler(),
    "minmax": MinMaxScaler(feature_range=(-2, 3)),
    "maxabs": MaxAbsScaler(),
    "pca": PCA(n_components=5),
    "pca_whiten": PCA(whiten=True),
    "incremental_pca": IncrementalPCA(n_components=4, whiten=True),
    "svd": TruncatedSVD(n_components=6),
    "nested": make_pipeline(StandardScaler(), "passthrough", PCA(n_components=7, whiten=True)),
}


@pytest.mark.parametrize("name", list(STEPS))
def test_affine_map_reproduces_transform(name, raw_wine):
    X = raw_wine[0]
    step = STEPS[name].fit(X)
    amap = affine_map(step, name)
    np.testing.assert_allclose(amap(X[:20]), step.transform(X[:20]), rtol=1e-10, atol=1e-10)
    assert affine_map("passthrough", "p") is None and affine_map(None, "p") is None


class Centre(TransformerMixin, BaseEstimator):
    """A transformer outside scikit-learn that declares its affine map."""

    def fit(self, X, y=None):
        self.mean_ = X.mean(axis=0)
        return self

    def transform(self, X):
        return (X - self.mean_) / 10.0

    def roll_affine_map(self):
        return np.full(len(self.mean_), 0.1), -self.mean_ / 10.0


def test_declared_maps_and_passthrough_steps(raw_wine):
    X, y = raw_wine
    X = X[:, :5]
    centre = Centre().fit(X)
    pipe = Pipeline([("centre", centre), ("skip", "passthrough"), ("clf", ROLLClassifier(**SMALL))])
    pipe.fit(X, y)
    z, g = _raw_unit_gradients(pipe, X[:6])
    np.testing.assert_allclose(
        certified_margin(pipe, X[:6], 2, precision="float64"), margins(z, g, 2), rtol=1e-9
    )
    # Only identity steps: the estimator's own certificate.
    bare = Pipeline([("skip", None), ("clf", pipe[-1])])
    np.testing.assert_array_equal(
        certified_margin(bare, centre.transform(X[:6])),
        certified_margin(pipe[-1], centre.transform(X[:6])),
    )

    class Broken(Centre):
        def roll_affine_map(self):
            return np.ones((3, 5)), np.zeros(4)

    pipe.steps[0] = ("broken", Broken().fit(X))
    with pytest.raises(ValueError, match=r"Step 'broken' \(Broken\): roll_affine_map"):
        certified_margin(pipe, X[:2])


def test_feature_names_and_counts_are_checked_as_the_pipeline_does(raw_wine):
    X, y = raw_wine
    frame = pd.DataFrame(X, columns=[f"f{i}" for i in range(X.shape[1])])
    pipe = make_pipeline(StandardScaler(), ROLLClassifier(**SMALL)).fit(frame, y)
    np.testing.assert_allclose(
        certified_margin(pipe, frame.iloc[:5]), certified_margin(pipe, X[:5]), rtol=0
    )
    with pytest.raises(ValueError, match="feature names"):
        certified_margin(pipe, frame.iloc[:5].rename(columns={"f0": "other"}))
    with pytest.raises(ValueError, match="13 features"):
        certified_margin(pipe, X[:5, :4])


@pytest.fixture(scope="module")
def roll(raw_wine):
    X, y = raw_wine
    return ROLLClassifier(**SMALL).fit(StandardScaler().fit_transform(X), y)


@pytest.mark.parametrize(
    "step",
    [
        QuantileTransformer(n_quantiles=50),
        PolynomialFeatures(),
        FunctionTransformer(np.log1p),
        MinMaxScaler(clip=True),
    ],
    ids=lambda step: type(step).__name__,
)
def test_a_non_affine_step_is_named(step, roll, raw_wine):
    X = raw_wine[0]
    name = type(step).__name__.lower()
    pipe = Pipeline([(name, step.fit(X)), ("clf", roll)])
    with pytest.raises(ValueError, match=rf"Step '{name}' \({type(step).__name__}\)"):
        certified_margin(pipe, X[:3])
    nested = Pipeline([("prep", make_pipeline(StandardScaler(), step).fit(X)), ("clf", roll)])
    with pytest.raises(ValueError, match=rf"Step 'prep__{name}'"):
        explain(nested, X[:3])


def test_the_last_step_must_be_a_fitted_roll_estimator(roll, raw_wine):
    X, y = raw_wine
    scaler = StandardScaler().fit(X)
    logistic = Pipeline([("scale", scaler), ("logreg", LogisticRegression().fit(X, y))])
    for function in (certified_margin, explain, activation_patterns):
        with pytest.raises(TypeError, match=r"last step 'logreg' .* is LogisticRegression"):
            function(logistic, X[:3])
    with pytest.raises(NotFittedError):
        certified_margin(make_pipeline(StandardScaler(), ROLLClassifier()), X[:3])
