"""Certificates against independent computations and by sampling inside the balls."""

import numpy as np
import pytest
import torch
from torch import nn

from modules import Residual
from reference import INSIDE, ball_points, margins, output_gradients, pattern, unit_gradients
from sklearn_roll import ROLLClassifier, ROLLRegressor, certified_margin
from sklearn_roll._evaluation import Evaluator
from sklearn_roll.nn import MLP
from sklearn_roll.regions import (
    FLOAT32_RTOL,
    activation_patterns,
    certified_radius,
    count_linear_regions,
    directional_margin,
    explain,
    stability_bounds,
)

P_AND_Q = [(1, np.inf), (2, 2), (np.inf, 1)]


@pytest.fixture(scope="module", params=["mlp", "user"])
def model(request, wine):
    X, y = wine
    module = "mlp" if request.param == "mlp" else Residual
    clf = ROLLClassifier(
        module,
        hidden_layer_sizes=(24, 24),
        lam=0.5,
        max_epochs=15,
        random_state=0,
        **({} if module == "mlp" else {"module__width": 24}),
    )
    return clf.fit(X, y), X[:12]


def _module64(clf):
    import copy

    return copy.deepcopy(clf.module_).double().eval()


def _predict64(module, points):
    """Predicted class of the real-valued network (float64), free of float32 rounding."""
    with torch.no_grad():
        return module(torch.tensor(points, dtype=torch.float64)).argmax(dim=1).numpy()


@pytest.mark.parametrize("p, q", P_AND_Q)
def test_margin_equals_per_unit_autograd(model, p, q):
    clf, X = model
    z, g = unit_gradients(_module64(clf), X)
    expected = margins(z, g, q)
    got = certified_margin(clf, X, p, precision="float64")
    np.testing.assert_allclose(got, expected, rtol=1e-9)
    got32 = clf.certified_margin(X, p)
    assert np.all(got32 <= expected)
    assert np.all(got32 >= expected * (1 - 10 * FLOAT32_RTOL))


@pytest.mark.parametrize("p, q", P_AND_Q)
def test_points_inside_the_ball_keep_the_pattern(model, p, q, rng):
    clf, X = model
    module = _module64(clf)
    z, g = unit_gradients(module, X)
    radius = certified_margin(clf, X, p, precision="float64")
    for i in range(len(X)):
        assert np.isfinite(radius[i]) and radius[i] > 0
        points = ball_points(X[i], radius[i], p, z[i], g[i], rng)
        inside = pattern(module, points)
        assert (inside == pattern(module, X[i : i + 1])).all(), f"sample {i}, p={p}"


def test_step_past_the_l2_margin_changes_the_pattern(model):
    clf, X = model
    module = _module64(clf)
    z, g = unit_gradients(module, X)
    norms = np.linalg.norm(g, axis=2)
    radius = certified_margin(clf, X, 2, precision="float64")
    for i in range(len(X)):
        u = np.argmin(np.where(norms[i] > 0, np.abs(z[i]) / norms[i], np.inf))
        step = -np.sign(z[i, u]) * g[i, u] / norms[i, u]
        at = pattern(module, np.stack([X[i], X[i] + 1.01 * radius[i] * step]))
        assert (at[0] != at[1]).any(), f"sample {i}"


def test_margin_is_zero_on_a_boundary_and_inf_without_units():
    class Lin(nn.Module):
        def __init__(self, n_features, n_outputs):
            super().__init__()
            self.lin = nn.Linear(n_features, n_outputs)

        def forward(self, x):
            return self.lin(x)

    X = np.random.RandomState(0).randn(30, 3)
    y = (X[:, 0] > 0).astype(int)
    linear = ROLLClassifier(Lin, lam=0.0, max_epochs=2, random_state=0).fit(X, y)
    assert np.all(np.isinf(certified_margin(linear, X[:3])))
    clf = ROLLClassifier(hidden_layer_sizes=(5,), lam=0.0, max_epochs=2, random_state=0).fit(X, y)
    w, b = clf.module_[0].weight.detach().double(), clf.module_[0].bias.detach().double()
    # A point on the first unit's hyperplane: w . x + b = 0.
    x = -(b[0] / (w[0] @ w[0])) * w[0]
    assert certified_margin(clf, x.numpy()[None], precision="float64")[0] == pytest.approx(
        0, abs=1e-12
    )


def test_directional_margin_is_exact_and_sound(model, rng):
    clf, X = model
    module = _module64(clf)
    z, g = unit_gradients(module, X)
    d = rng.randn(*X.shape)
    d /= np.linalg.norm(d, axis=1, keepdims=True)
    t = directional_margin(clf, X, d)
    gd = np.einsum("nud,nd->nu", g, d)
    expected = np.where(z * gd < 0, np.abs(z) / np.abs(gd), np.inf).min(axis=1)
    np.testing.assert_allclose(t, expected, rtol=1e-9)
    for i in range(len(X)):
        seg = X[i] + np.linspace(0, INSIDE, 50)[:, None] * t[i] * d[i]
        assert (pattern(module, seg) == pattern(module, X[i : i + 1])).all()
        beyond = pattern(module, np.stack([X[i], X[i] + 1.01 * t[i] * d[i]]))
        assert (beyond[0] != beyond[1]).any()
    # A single direction broadcasts; scaling does not matter.
    one = directional_margin(clf, X, 3 * d[0])
    np.testing.assert_allclose(one, directional_margin(clf, X, np.tile(d[0], (len(X), 1))))
    with pytest.raises(ValueError, match="non-zero"):
        directional_margin(clf, X, np.zeros(X.shape[1]))


def test_stability_bounds_match_axis_directional_margins(model):
    clf, X = model
    module = _module64(clf)
    lower, upper = stability_bounds(clf, X)
    assert lower.shape == X.shape and np.all(lower <= 0) and np.all(upper >= 0)
    eye = np.eye(X.shape[1])
    for k in (0, 5, 12):
        np.testing.assert_allclose(upper[:, k], directional_margin(clf, X, eye[k]), rtol=1e-12)
        np.testing.assert_allclose(-lower[:, k], directional_margin(clf, X, -eye[k]), rtol=1e-12)
    for i in range(3):
        for k in range(X.shape[1]):
            for bound in (lower[i, k], upper[i, k]):
                if np.isfinite(bound):
                    moved = X[i].copy()
                    moved[k] += bound * INSIDE
                    assert (pattern(module, moved[None]) == pattern(module, X[i : i + 1])).all()


@pytest.mark.parametrize("p, q", P_AND_Q)
def test_decision_radius_is_sound_and_tight_at_ties(model, p, q, rng):
    clf, X = model
    module = _module64(clf)
    out, og = output_gradients(module, X)
    margin = certified_margin(clf, X, p, precision="float64")
    radius = certified_radius(clf, X, p, precision="float64")
    assert np.all(radius <= margin)
    labels = _predict64(module, X)
    ties_checked = 0
    for i in range(len(X)):
        yhat = out[i].argmax()
        others = [k for k in range(out.shape[1]) if k != yhat]
        diff = og[i, yhat] - og[i, others]
        dist = (out[i, yhat] - out[i, others]) / np.linalg.norm(diff, ord=q, axis=1)
        np.testing.assert_allclose(radius[i], min(margin[i], dist.min()), rtol=1e-9)
        z, g = unit_gradients(module, X[i : i + 1])
        points = ball_points(X[i], radius[i], p, z[0], g[0], rng)
        assert (_predict64(module, points) == labels[i]).all()
        j = int(np.argmin(dist))
        # Every sample whose radius a tie sets is checked: a step just past the tie,
        # still inside the region (where the logits are affine), flips the prediction.
        if dist[j] < margin[i] * (1 - 1e-9):
            if p == 2:
                step = -diff[j] / np.linalg.norm(diff[j])
            elif p == np.inf:
                step = -np.sign(diff[j])
            else:
                k = np.argmax(np.abs(diff[j]))
                step = -np.sign(diff[j, k]) * np.eye(X.shape[1])[k]
            flipped = X[i] + min(dist[j] * (1 + 1e-6), (dist[j] + margin[i]) / 2) * step
            assert _predict64(module, flipped[None])[0] != labels[i]
            ties_checked += 1
    assert ties_checked + np.sum(radius == margin) == len(X)


def test_explain_equals_autograd_for_every_target_form(fitted_wine, wine):
    X, y = wine
    X = X[:10]
    clf = fitted_wine
    out, og = output_gradients(_module64(clf), X)
    pred = out.argmax(axis=1)
    np.testing.assert_allclose(
        explain(clf, X, precision="float64"), og[np.arange(10), pred], rtol=1e-9
    )
    np.testing.assert_allclose(clf.explain(X, target=2), og[:, 2], rtol=1e-5, atol=1e-7)
    per_row = clf.classes_[np.arange(10) % 3]
    np.testing.assert_allclose(
        clf.explain(X, target=per_row), og[np.arange(10), np.arange(10) % 3], rtol=1e-5, atol=1e-7
    )
    with pytest.raises(ValueError, match="not among classes_"):
        clf.explain(X, target=7)
    with pytest.raises(ValueError, match="one label per sample"):
        clf.explain(X, target=[0, 1])


def test_string_labels_and_regressor_targets(wine):
    X, y = wine
    names = np.array(["barolo", "grignolino", "barbera"])[y]
    clf = ROLLClassifier(hidden_layer_sizes=(8,), max_epochs=3, random_state=0).fit(X, names)
    assert set(clf.predict(X[:5])) <= set(names)
    g = clf.explain(X[:4], target="barbera")
    assert g.shape == (4, X.shape[1])
    reg = ROLLRegressor(hidden_layer_sizes=(8,), max_epochs=3, random_state=0).fit(
        X, np.c_[y, -y] / 2.0
    )
    assert reg.explain(X[:3], target=1).shape == (3, X.shape[1])
    with pytest.raises(ValueError, match="pass target"):
        reg.explain(X[:3])
    with pytest.raises(TypeError, match="needs a classifier"):
        certified_radius(reg, X[:3])


def test_count_linear_regions_bounds(fitted_wine, wine):
    X, _ = wine
    n_patterns, n_jacobians = count_linear_regions(fitted_wine, X)
    assert 1 <= n_jacobians <= n_patterns <= len(X)
    patterns = activation_patterns(fitted_wine, X)
    assert n_patterns == len(np.unique(patterns, axis=0))
    # Duplicates and points inside the same regions add no region.
    margin = certified_margin(fitted_wine, X, precision="float64")
    jitter = np.random.RandomState(1).randn(*X.shape)
    jitter *= (0.5 * margin / np.linalg.norm(jitter, axis=1))[:, None]
    assert count_linear_regions(fitted_wine, np.vstack([X, X + jitter])) == (
        n_patterns,
        n_jacobians,
    )


def test_bad_p_and_precision(fitted_wine, wine):
    X, _ = wine
    for p in (0, 3, "2", True, -1):
        with pytest.raises(ValueError, match="p must be 1, 2 or np.inf"):
            fitted_wine.certified_margin(X[:2], p=p)
    with pytest.raises(ValueError, match="precision"):
        fitted_wine.certified_margin(X[:2], precision="float16")


def test_batching_does_not_change_results(fitted_wine, wine):
    X, _ = wine
    exact = fitted_wine.certified_margin(X, p=1, precision="float64")
    batched = fitted_wine.certified_margin(X, p=1, precision="float64", batch_size=7)
    np.testing.assert_allclose(batched, exact, rtol=1e-12)
    # Float32 products of other shapes may round differently (which kernel the CPU
    # runs for them): every batching keeps the float32 contract.
    for batch_size in (None, 7, 1):
        m32 = fitted_wine.certified_margin(X, p=1, batch_size=batch_size)
        assert np.all(m32 <= exact) and np.all(m32 >= exact * (1 - 2 * FLOAT32_RTOL))


def test_certificates_need_a_fitted_roll_estimator(wine):
    from sklearn.exceptions import NotFittedError
    from sklearn.linear_model import LogisticRegression

    X, y = wine
    with pytest.raises(NotFittedError):
        certified_margin(ROLLClassifier(), X)
    with pytest.raises(TypeError, match="not a sklearn-roll estimator"):
        certified_margin(LogisticRegression().fit(X, y), X)
    assert torch.get_num_threads() >= 1


@pytest.mark.parametrize("precision", ["float32", "float64"])
@pytest.mark.parametrize("p, q", P_AND_Q)
def test_margins_in_a_feature_subspace_equal_per_unit_autograd(model, p, q, precision):
    """With the other coordinates held fixed, the margin is min |z_u| / ||(g_u)_F||_q."""
    clf, X = model
    features = np.array([0, 3, 7])
    z, g = unit_gradients(_module64(clf), X)
    expected = margins(z, g[:, :, features], q)
    module = clf.module_.eval()
    evaluator = Evaluator(module, X, precision, features=features)
    got = evaluator.margins(p, None, decision=False)
    rtol = 1e-9 if precision == "float64" else 10 * FLOAT32_RTOL
    assert np.all(got <= expected * (1 + 1e-12))
    np.testing.assert_allclose(got, expected, rtol=rtol)
    lower, upper = Evaluator(module, X, "float64", features=features).axis_bounds(None)
    full_lower, full_upper = stability_bounds(clf, X)
    fixed = np.setdiff1d(np.arange(X.shape[1]), features)
    assert np.isnan(lower[:, fixed]).all() and np.isnan(upper[:, fixed]).all()
    np.testing.assert_allclose(lower[:, features], full_lower[:, features], rtol=1e-12)
    np.testing.assert_allclose(upper[:, features], full_upper[:, features], rtol=1e-12)


def test_a_feature_no_unit_reads_has_an_unbounded_margin_in_float32_too():
    """The float64 recomputation of float32 norms is restricted to the features too."""
    torch.manual_seed(0)
    net = MLP(4, 3, hidden_layer_sizes=(8, 8)).eval()
    with torch.no_grad():
        net[0].weight[:, 1] = 0.0
    x = np.random.RandomState(0).randn(5, 4)
    for precision in ("float32", "float64"):
        got = Evaluator(net, x, precision, features=np.array([1])).margins(2, None, False)
        assert np.isinf(got).all(), precision
