"""Recurrent networks on variable-length sequences: exactness, soundness, padding."""

import numpy as np
import pytest
import torch

from reference import margins
from sklearn_roll import ROLLClassifier, certified_margin
from sklearn_roll.nn import ElmanRNN
from sklearn_roll.regions import certified_radius, directional_margin, stability_bounds


def _sequences(rng, n=40, channels=3, lengths=(3, 9)):
    X = [rng.randn(rng.randint(*lengths), channels) for _ in range(n)]
    y = np.array([int(x[:, 0].sum() > 0) for x in X])
    return X, y


def _padded(X, t_max=None):
    t_max = t_max or max(len(x) for x in X)
    out = np.full((len(X), t_max, X[0].shape[1]), np.nan)
    for i, x in enumerate(X):
        out[i, : len(x)] = x
    return out


@pytest.fixture(scope="module")
def rnn_model():
    rng = np.random.RandomState(0)
    X, y = _sequences(rng)
    clf = ROLLClassifier(
        "rnn",
        hidden_layer_sizes=(6, 5),
        activation="leaky_relu",
        negative_slope=0.1,
        module__orthogonal_recurrence=True,
        lam=0.5,
        max_epochs=5,
        random_state=0,
    )
    return clf.fit(X, y), X


def _reference(module, x_padded):
    """Per-unit autograd over valid units only: (z, grads) with padded units dropped."""
    module = module.double().eval()
    xt = torch.tensor(x_padded, requires_grad=True)
    captured = []
    hook = module.act.register_forward_pre_hook(lambda m, a: captured.append(a[0]))
    module(xt)
    hook.remove()
    n, t_max, _ = x_padded.shape
    valid = ~np.isnan(x_padded).all(axis=2)
    per_layer = len(captured) // t_max
    zs, gs = [], []
    for i in range(n):
        z_i, g_i = [], []
        for c, z in enumerate(captured):
            if not valid[i, c % t_max]:
                continue
            for u in range(z.shape[1]):
                (g,) = torch.autograd.grad(z[i, u], xt, retain_graph=True)
                z_i.append(z[i, u].item())
                g_i.append(np.nan_to_num(g[i].numpy()).ravel())
        zs.append(np.array(z_i))
        gs.append(np.array(g_i))
    assert per_layer == 2
    return zs, gs


@pytest.mark.parametrize("p, q", [(1, np.inf), (2, 2), (np.inf, 1)])
def test_rnn_margin_equals_per_unit_autograd_on_valid_units(rnn_model, p, q):
    clf, X = rnn_model
    X = X[:6]
    import copy

    zs, gs = _reference(copy.deepcopy(clf.module_), _padded(X))
    expected = [margins(z[None], g[None], q)[0] for z, g in zip(zs, gs)]
    np.testing.assert_allclose(
        certified_margin(clf, X, p, precision="float64"), expected, rtol=1e-9
    )


def test_rnn_ball_sampling_keeps_the_counted_pattern(rnn_model, rng):
    clf, X = rnn_model
    module = clf.module_
    from sklearn_roll.regions import activation_patterns

    radius = certified_margin(clf, X[:8], 2, precision="float64")
    for i, x in enumerate(X[:8]):
        base = activation_patterns(clf, [x], precision="float64")
        u = rng.randn(200, *x.shape)
        u /= np.linalg.norm(u.reshape(200, -1), axis=1)[:, None, None]
        points = [x + d * radius[i] * (1 - 1e-7) for d in u]
        inside = activation_patterns(clf, points, precision="float64")
        assert (inside == base).all()
    assert module is clf.module_


def test_padding_changes_nothing(rnn_model):
    clf, X = rnn_model
    short, long = _padded(X), _padded(X, t_max=max(len(x) for x in X) + 4)
    np.testing.assert_array_equal(clf.predict_proba(short), clf.predict_proba(long))
    np.testing.assert_array_equal(clf.predict_proba(X), clf.predict_proba(short))
    # The built-in RNN's rounding allowance is per sequence, so padding changes no
    # certificate beyond float64 rounding.
    for p in (1, 2, np.inf):
        np.testing.assert_allclose(
            clf.certified_margin(short, p), clf.certified_margin(long, p), rtol=1e-12
        )
    np.testing.assert_allclose(
        certified_radius(clf, short), certified_radius(clf, long), rtol=1e-12
    )
    lower, upper = stability_bounds(clf, short)
    longer, farther = stability_bounds(clf, long)
    np.testing.assert_allclose(lower, longer[:, : short.shape[1]], rtol=1e-12)
    np.testing.assert_allclose(upper, farther[:, : short.shape[1]], rtol=1e-12)
    g_short, g_long = clf.explain(short), clf.explain(long)
    np.testing.assert_allclose(g_short, g_long[:, : short.shape[1]], rtol=1e-6, atol=1e-9)
    assert np.isnan(g_long[:, short.shape[1] :]).all()
    assert np.array_equal(np.isnan(g_short), np.isnan(short))


def test_explain_and_bounds_follow_the_input_layout(rnn_model):
    clf, X = rnn_model
    grads = clf.explain(X[:5])
    assert isinstance(grads, list) and [g.shape for g in grads] == [x.shape for x in X[:5]]
    assert not any(np.isnan(g).any() for g in grads)
    lower, upper = stability_bounds(clf, X[:5])
    assert [u.shape for u in upper] == [x.shape for x in X[:5]]
    # Each bound is the directional margin along that time step and channel.
    x = X[0]
    e = np.zeros_like(x)
    e[1, 2] = 1.0
    t = directional_margin(clf, [x], [e])[0]
    assert upper[0][1, 2] == pytest.approx(t, rel=1e-12)
    padded_lower, _ = stability_bounds(clf, _padded(X[:5]))
    assert np.array_equal(np.isnan(padded_lower), np.isnan(_padded(X[:5])))


@pytest.mark.parametrize(
    "make, message",
    [
        (
            lambda x: np.concatenate([x[:2], np.full((1, 3), np.nan), x[2:]]),
            "followed by valid steps",
        ),
        (lambda x: np.where(np.eye(len(x), 3) > 0, np.nan, x), "in some channels"),
        (lambda x: np.full((0, 3), 1.0), "zero length"),
        (lambda x: np.full_like(x, np.nan), "zero length|no valid time steps"),
        (lambda x: np.where(np.eye(len(x), 3) > 0, np.inf, x), "infinity"),
    ],
    ids=["nan-in-middle", "partial-step", "empty", "all-padding", "inf"],
)
def test_bad_sequences_are_refused(rnn_model, make, message):
    clf, X = rnn_model
    bad = [make(X[0])] + list(X[1:3])
    with pytest.raises(ValueError, match=message):
        clf.predict(bad)
    if len(bad[0]):
        with pytest.raises(ValueError, match=message):
            clf.certified_margin(_padded(bad))


def test_ragged_channels_and_wrong_layouts_are_refused(rnn_model):
    clf, X = rnn_model
    with pytest.raises(ValueError, match="same number of channels"):
        clf.predict([X[0], X[1][:, :2]])
    with pytest.raises(ValueError, match="channels"):
        clf.predict([x[:, :2] for x in X[:3]])
    with pytest.raises(ValueError, match="expects sequences"):
        ROLLClassifier("rnn").fit(np.zeros((4, 3)), [0, 1, 0, 1])


def test_elman_rnn_without_estimator_reads_the_last_valid_step():
    torch.manual_seed(0)
    rnn = ElmanRNN(2, 3, hidden_layer_sizes=(4,))
    x = torch.randn(1, 5, 2)
    padded = torch.cat([x, torch.full((1, 3, 2), float("nan"))], dim=1)
    assert torch.equal(rnn(x), rnn(padded))


@pytest.mark.slow
def test_japanese_vowels_smoke():
    pytest.importorskip("sktime", reason="sktime ships the Japanese Vowels data")
    from sklearn_roll.datasets import load_japanese_vowels

    X, y = load_japanese_vowels("train")
    X_test, y_test = load_japanese_vowels("test")
    assert len(X) == 270 and len(X_test) == 370
    assert {x.shape[1] for x in X} == {12} and 7 <= min(map(len, X)) and max(map(len, X)) <= 29
    train = np.random.RandomState(0).permutation(len(X))[:150]
    clf = ROLLClassifier(
        "rnn",
        activation="leaky_relu",
        hidden_layer_sizes=(16,),
        lam=0.0,
        max_epochs=5,
        lr=1e-2,
        batch_size=32,
        random_state=0,
    ).fit([X[i] for i in train], y[train])
    assert clf.score(X_test, y_test) > 2 / 9
    assert np.all(clf.certified_margin(X_test[:10]) > 0)


def test_orthogonal_rnn_estimator_pickles(rnn_model):
    import pickle

    clf, X = rnn_model
    other = pickle.loads(pickle.dumps(clf))
    np.testing.assert_array_equal(other.predict_proba(X), clf.predict_proba(X))
    np.testing.assert_array_equal(other.certified_margin(X), clf.certified_margin(X))
