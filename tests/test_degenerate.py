"""Degenerate networks: margins are +inf or finite as the math says, never NaN.

All units dead, all units active (a linear model), zero weights, weights rescaled far
beyond float32's range (and below it), and beyond float64's, in both precisions. A
layer-wise rescaling W_i -> c W_i, b_i -> c^i b_i multiplies every pre-activation of
layer i and its gradient by c^i, so it leaves every margin unchanged: the margins of
the rescaled network must equal those of the original.
"""

import copy

import numpy as np
import pytest
import torch

from reference import margins, output_gradients, unit_gradients
from sklearn_roll import ROLLClassifier
from sklearn_roll.regions import FLOAT32_RTOL, certified_radius

pytestmark = pytest.mark.usefixtures("one_thread")

P_AND_Q = [(1, np.inf), (2, 2), (np.inf, 1)]
PRECISIONS = ("float32", "float64")
TOLERANCE = (1 - FLOAT32_RTOL) / (1 + FLOAT32_RTOL) * (1 - 1e-9)


@pytest.fixture(scope="module")
def data():
    rng = np.random.RandomState(0)
    X = rng.randn(12, 5)
    return X, (X[:, 0] > 0).astype(int) + (X[:, 1] > 0)


def _network(data, edit):
    """A 5-6-6-3 ReLU network with its parameters set by ``edit(layers)``."""
    X, y = data
    clf = ROLLClassifier(hidden_layer_sizes=(6, 6), max_epochs=0, random_state=0).fit(X, y)
    layers = [m for m in clf.module_ if isinstance(m, torch.nn.Linear)]
    with torch.no_grad():
        edit(layers)
    return clf


def _reference(clf, X, q):
    z, g = unit_gradients(copy.deepcopy(clf.module_), X)
    return margins(z, g, q)


def _check_margins(clf, X, expected_by_q):
    for p, q in P_AND_Q:
        expected = expected_by_q(q)
        m64 = clf.certified_margin(X, p, precision="float64")
        m32 = clf.certified_margin(X, p, precision="float32")
        for m in (m64, m32):
            assert not np.isnan(m).any()
            assert np.array_equal(np.isinf(m), np.isinf(expected))
        finite = np.isfinite(expected)
        np.testing.assert_allclose(m64[finite], expected[finite], rtol=1e-9)
        assert np.all(m32[finite] <= m64[finite])
        assert np.all(m32[finite] >= TOLERANCE * m64[finite])
        for precision in PRECISIONS:
            radius = certified_radius(clf, X, p, precision=precision)
            assert not np.isnan(radius).any() and np.all(radius <= m64)


def _check_explanations(clf, X):
    _, grads = output_gradients(copy.deepcopy(clf.module_), X)
    predicted = clf.predict(X)
    expected = grads[np.arange(len(X)), np.searchsorted(clf.classes_, predicted)]
    np.testing.assert_allclose(clf.explain(X, precision="float64"), expected, rtol=1e-9)
    np.testing.assert_allclose(
        clf.explain(X), expected, rtol=1e-5, atol=1e-6 * np.abs(expected).max()
    )


def test_all_units_dead(data):
    X, _ = data

    def dead(layers):
        for layer in layers[:-1]:
            layer.bias.fill_(-1e3)

    clf = _network(data, dead)
    assert not (clf.module_[0](torch.tensor(X, dtype=torch.float32)) > 0).any()
    # Only the first layer's units can switch on; every margin is finite.
    _check_margins(clf, X, lambda q: _reference(clf, X, q))
    assert np.all(np.isfinite(clf.certified_margin(X)))
    # Constant logits: no decision boundary in the region, the radius is the margin.
    np.testing.assert_array_equal(
        certified_radius(clf, X, precision="float64"), clf.certified_margin(X, precision="float64")
    )
    np.testing.assert_array_equal(clf.explain(X), np.zeros_like(X))


def test_all_units_active_is_a_linear_model(data):
    X, _ = data

    def active(layers):
        for layer in layers:
            layer.weight.abs_()
            layer.bias.fill_(50.0)

    clf = _network(data, active)
    assert clf.certified_margin(X, precision="float64").min() > 1
    _check_margins(clf, X, lambda q: _reference(clf, X, q))
    _check_explanations(clf, X)


def test_zero_weights(data):
    X, _ = data

    def zero(layers):
        for layer in layers:
            layer.weight.zero_()
        layers[-1].bias.copy_(torch.tensor([0.0, 1.0, 2.0]))

    clf = _network(data, zero)
    _check_margins(clf, X, lambda q: np.full(len(X), np.inf))
    for precision in PRECISIONS:
        assert np.all(np.isinf(certified_radius(clf, X, precision=precision)))
    np.testing.assert_array_equal(clf.explain(X), np.zeros_like(X))
    assert (clf.predict(X) == clf.classes_[2]).all()


def test_tied_logits_have_radius_zero(data):
    X, _ = data

    def tie(layers):
        layers[-1].weight.zero_()
        layers[-1].bias.fill_(1.0)

    clf = _network(data, tie)
    for precision in PRECISIONS:
        assert np.all(certified_radius(clf, X, precision=precision) == 0)


def test_weights_times_1e20(data):
    """Logits near 1e60: beyond float32, so its Jacobian overflows; float64 is exact."""
    X, _ = data

    def huge(layers):
        for layer in layers:
            layer.weight.mul_(1e20)

    clf = _network(data, huge)
    with torch.no_grad():
        assert not torch.isfinite(clf.module_(torch.tensor(X, dtype=torch.float32))).all()
    _check_margins(clf, X, lambda q: _reference(clf, X, q))
    _check_explanations(clf, X)


@pytest.mark.parametrize("scale", [1e15, 1e-15], ids=["huge", "tiny"])
def test_rescaled_beyond_float32_keeps_every_margin(data, scale):
    """c = 1e15: logits reach 1e45, beyond float32; c = 1e-15: 1e-45, below its range."""
    X, _ = data

    def base_edit(layers):
        layers[-1].bias.zero_()

    def rescale(layers):
        base_edit(layers)
        for i, layer in enumerate(layers, start=1):
            layer.weight.mul_(scale)
            if i < len(layers):
                layer.bias.mul_(scale**i)

    base, clf = _network(data, base_edit), _network(data, rescale)
    assert all(torch.isfinite(param).all() for param in clf.module_.parameters())
    _check_margins(clf, X, lambda q: _reference(clf, X, q))
    # Invariant up to the float32 rounding of the rescaled parameters.
    for p in (1, 2, np.inf):
        np.testing.assert_allclose(
            clf.certified_margin(X, p, precision="float64"),
            base.certified_margin(X, p, precision="float64"),
            rtol=1e-5,
        )
    np.testing.assert_array_equal(clf.predict(X), base.predict(X))
    _check_explanations(clf, X)
    # The explanations scale with c^3, as the math says.
    np.testing.assert_allclose(
        clf.explain(X, precision="float64"),
        scale**3 * base.explain(X, precision="float64"),
        rtol=1e-5,
    )


def test_beyond_float64_is_refused(data):
    X, _ = data

    def overflow(layers):
        for layer in layers:
            layer.weight.mul_(1e30)

    clf = _network(data, overflow)
    # float32 weights of 1e30: three layers give 1e90 per unit, 1e270 with the
    # input, and the sums overflow float64 only in the widest cases; scale the
    # input so they do.
    big = X * 1e250
    for call in (
        lambda: clf.predict(big),
        lambda: clf.predict_proba(big),
        lambda: clf.certified_margin(big),
        lambda: clf.certified_margin(big, precision="float64"),
        lambda: certified_radius(clf, big),
    ):
        with pytest.raises(ValueError, match="not finite in float64"):
            call()
    with pytest.raises(ValueError, match="not finite in float64"):
        clf.explain(big)


def test_nan_parameters_are_refused(data):
    X, _ = data

    def diverged(layers):
        layers[1].weight[0, 0] = float("nan")

    clf = _network(data, diverged)
    for call in (
        lambda: clf.predict(X),
        lambda: clf.certified_margin(X),
        lambda: clf.explain(X),
        lambda: certified_radius(clf, X, precision="float64"),
    ):
        with pytest.raises(ValueError, match="parameters contain NaN or infinity"):
            call()
