"""Regression targets in any units: the standardised target, and TransformedTargetRegressor."""

import numpy as np
import pytest
from sklearn.compose import TransformedTargetRegressor
from sklearn.datasets import load_diabetes
from sklearn.linear_model import LinearRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import MinMaxScaler, StandardScaler

from sklearn_roll import ROLLRegressor, certified_margin, explain
from sklearn_roll.regions import directional_margin, stability_bounds

pytestmark = pytest.mark.usefixtures("one_thread")

SMALL = dict(hidden_layer_sizes=(32,), max_epochs=20, random_state=0, n_threads=1)


@pytest.fixture(scope="module")
def diabetes():
    X, y = load_diabetes(return_X_y=True)
    X = StandardScaler().fit_transform(X)
    return X[:300], y[:300], X[300:], y[300:]


def _r2(reg, X, y):
    return reg.score(X, y)


def test_an_offset_or_a_scale_of_the_target_changes_nothing(diabetes):
    X, y, X_test, y_test = diabetes
    centred = y - y.mean()
    reference = ROLLRegressor(**SMALL).fit(X, centred)
    score = _r2(reference, X_test, y_test - y.mean())
    for shifted, test in ((centred + 1e5, y_test - y.mean() + 1e5), (centred * 1e5, None)):
        reg = ROLLRegressor(**SMALL).fit(X, shifted)
        expected = test if test is not None else (y_test - y.mean()) * 1e5
        assert abs(_r2(reg, X_test, expected) - score) < 1e-3
    # Without standardisation the large target swamps the penalty: the fit is another.
    raw = ROLLRegressor(standardize_target=False, **SMALL).fit(X, centred + 1e5)
    assert abs(_r2(raw, X_test, y_test - y.mean() + 1e5) - score) > 0.05


def _finite_difference_gradient(predict, X, margins, output=None):
    """Central differences of predict along each axis, inside each sample's region."""
    steps = 0.25 * np.minimum(margins, 1.0)
    grads = np.empty(X.shape)
    for j in range(X.shape[1]):
        shift = np.zeros_like(X)
        shift[:, j] = steps
        up, down = predict(X + shift), predict(X - shift)
        if output is not None:
            up, down = up[:, output], down[:, output]
        grads[:, j] = (up - down) / (2 * steps)
    return grads


def test_explain_is_the_gradient_of_predict_in_raw_units(diabetes):
    X, y, *_ = diabetes
    target = np.c_[y, 1e-3 * y + 7.0]
    reg = ROLLRegressor(**SMALL).fit(X, target)
    np.testing.assert_allclose(reg.y_scale_, target.std(axis=0), rtol=1e-12)
    # In the l_inf ball of the margin, the pattern and so the gradient are constant.
    margins = certified_margin(reg, X[:10], p=np.inf, precision="float64")
    for output in (0, 1):
        expected = _finite_difference_gradient(reg.predict, X[:10], margins, output)
        np.testing.assert_allclose(
            explain(reg, X[:10], target=output, precision="float64"),
            expected,
            rtol=1e-6,
            atol=1e-9 * np.abs(expected).max(),
        )


def test_without_standardisation_the_network_predicts_raw_units(diabetes):
    X, y, *_ = diabetes
    reg = ROLLRegressor(standardize_target=False, **SMALL).fit(X, y / 100)
    np.testing.assert_array_equal(reg.y_mean_, [0.0])
    np.testing.assert_array_equal(reg.y_scale_, [1.0])


@pytest.fixture(scope="module", params=["estimator", "pipeline"])
def wrapped(request, diabetes):
    X, y, *_ = diabetes
    inner = ROLLRegressor(standardize_target=False, **SMALL)
    if request.param == "pipeline":
        inner = make_pipeline(MinMaxScaler(), inner)
    return TransformedTargetRegressor(regressor=inner, transformer=StandardScaler()).fit(X, y)


def test_a_transformed_target_regressor_is_certified_and_explained(wrapped, diabetes):
    X = diabetes[0][:10]
    inner = wrapped.regressor_
    # Margins and bounds concern the network's regions, which the target does not move.
    np.testing.assert_array_equal(certified_margin(wrapped, X), certified_margin(inner, X))
    np.testing.assert_array_equal(stability_bounds(wrapped, X)[1], stability_bounds(inner, X)[1])
    np.testing.assert_array_equal(
        directional_margin(wrapped, X, np.ones(X.shape[1])),
        directional_margin(inner, X, np.ones(X.shape[1])),
    )
    # Gradients are those of its predictions, in raw target units.
    margins = certified_margin(wrapped, X, p=np.inf, precision="float64")
    expected = _finite_difference_gradient(wrapped.predict, X, margins)
    got = explain(wrapped, X, precision="float64")
    np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-9 * np.abs(expected).max())
    np.testing.assert_allclose(
        got, explain(inner, X, precision="float64") * wrapped.transformer_.scale_, rtol=1e-12
    )


def test_a_target_transformer_that_is_not_affine_is_refused(diabetes):
    X, y, *_ = diabetes
    logged = TransformedTargetRegressor(
        regressor=ROLLRegressor(**SMALL), func=np.log, inverse_func=np.exp
    ).fit(X, y)
    for call in (certified_margin, explain):
        with pytest.raises(ValueError, match=r"target transformer \(FunctionTransformer\) is not"):
            call(logged, X[:3])
    identity = TransformedTargetRegressor(regressor=ROLLRegressor(**SMALL)).fit(X, y)
    np.testing.assert_array_equal(explain(identity, X[:3]), explain(identity.regressor_, X[:3]))
    linear = TransformedTargetRegressor(regressor=LinearRegression()).fit(X, y)
    with pytest.raises(TypeError, match="LinearRegression, not a sklearn-roll estimator"):
        certified_margin(linear, X[:3])
