"""The 1-D convolutional networks for time series: exactness, soundness, padding."""

import copy

import numpy as np
import pytest
import torch

from reference import INSIDE, margins, unit_jacobian
from sklearn_roll import ROLLClassifier, certified_margin
from sklearn_roll.loss import roll_penalty
from sklearn_roll.nn import ConvNet1d
from sklearn_roll.regions import activation_patterns, certified_radius, stability_bounds

pytestmark = pytest.mark.usefixtures("one_thread")


def _sequences(rng, n=40, channels=2, lengths=(5, 11)):
    X = [rng.randn(rng.randint(*lengths), channels) for _ in range(n)]
    y = np.array([int(x[:, 0].mean() > 0) for x in X])
    return X, y


def _padded(X, steps=None):
    steps = steps or max(len(x) for x in X)
    out = np.full((len(X), steps, X[0].shape[1]), np.nan)
    for i, x in enumerate(X):
        out[i, : len(x)] = x
    return out


@pytest.fixture(scope="module", params=[False, True], ids=["fcn", "resnet"])
def model(request):
    rng = np.random.RandomState(0)
    X, y = _sequences(rng)
    kernels = (3, 2) if request.param else (4, 3, 2)
    clf = ROLLClassifier(
        "cnn1d",
        hidden_layer_sizes=(3, 4, 3),
        module__kernel_sizes=kernels,
        module__residual=request.param,
        lam=0.5,
        max_epochs=3,
        random_state=0,
    )
    return clf.fit(X, y), X


def _reference(module, x):
    """Pre-activations and input gradients by per-unit autograd in float64.

    Every activation call of the module covers (channels, T) units; those at padded
    steps do not count, so their pre-activations are set to infinity, which no
    margin takes as its minimum.
    """
    module = copy.deepcopy(module).double().eval()
    z, grads = unit_jacobian(module, torch.from_numpy(x))
    valid = ~np.isnan(x).all(axis=2)
    channels = [layer.conv.out_channels for block in module.blocks for layer in block.layers]
    counted = np.concatenate(
        [np.repeat(valid[:, None, :], c, axis=1).reshape(len(x), -1) for c in channels], axis=1
    )
    assert z.shape == counted.shape
    # Padded input coordinates are NaN; nothing depends on them.
    return np.where(counted, z.numpy(), np.inf), np.nan_to_num(grads.numpy())


@pytest.mark.parametrize("p, q", [(1, np.inf), (2, 2), (np.inf, 1)])
def test_cnn1d_margin_equals_per_unit_autograd(model, p, q):
    clf, X = model
    z, grads = _reference(clf.module_, _padded(X[:5]))
    exact = margins(z, grads, q)
    np.testing.assert_allclose(
        certified_margin(clf, X[:5], p, precision="float64"), exact, rtol=1e-9
    )
    # The default float32 certificate never exceeds the float64 value.
    assert (
        certified_margin(clf, X[:5], p) <= certified_margin(clf, X[:5], p, precision="float64")
    ).all()


def test_cnn1d_ball_sampling_keeps_the_pattern(model, rng):
    clf, X = model
    radius = certified_radius(clf, X[:6], 2, precision="float64")
    for i, x in enumerate(X[:6]):
        base = activation_patterns(clf, [x], precision="float64")[0]
        u = rng.randn(200, *x.shape)
        u /= np.linalg.norm(u.reshape(200, -1), axis=1)[:, None, None]
        points = list(x + u * radius[i] * INSIDE)
        inside = activation_patterns(clf, points, precision="float64")
        assert (inside == base).all()
        assert (clf.predict(points) == clf.predict([x])[0]).all()


@pytest.mark.parametrize("p", [2, np.inf])
def test_cnn1d_padding_changes_nothing(model, p):
    clf, X = model
    short, long = _padded(X), _padded(X, max(len(x) for x in X) + 5)
    alone = np.concatenate([clf.certified_margin(x[None], p) for x in X[:6]])
    # Convolutions may sum in another order at another length: equal to rounding.
    np.testing.assert_allclose(clf.predict_proba(short), clf.predict_proba(long), rtol=1e-12)
    np.testing.assert_allclose(
        clf.certified_margin(short, p), clf.certified_margin(long, p), rtol=1e-10
    )
    np.testing.assert_allclose(clf.certified_margin(long[:6], p), alone, rtol=1e-10)
    lower, upper = stability_bounds(clf, X[:4])
    assert [u.shape for u in upper] == [x.shape for x in X[:4]]
    assert all((lo <= 0).all() and (up >= 0).all() for lo, up in zip(lower, upper))


def test_training_ignores_padding_in_the_batch_statistics():
    torch.manual_seed(0)
    net = ConvNet1d(2, 3, hidden_layer_sizes=(4, 4, 4)).train()
    x = torch.randn(5, 9, 2)
    x[1, 4:] = float("nan")
    longer = torch.cat([x, torch.full((5, 6, 2), float("nan"))], dim=1)
    a, b = copy.deepcopy(net), copy.deepcopy(net)
    torch.testing.assert_close(a(x), b(longer), rtol=0, atol=0)
    for left, right in zip(a.modules(), b.modules()):
        if isinstance(left, torch.nn.BatchNorm1d):
            torch.testing.assert_close(left.running_var, right.running_var, rtol=0, atol=0)


def test_training_penalty_ignores_padding():
    """With lam > 0 the penalty holds BatchNorm's batch statistics (of valid steps) constant."""
    torch.manual_seed(0)
    net = ConvNet1d(2, 3, hidden_layer_sizes=(3, 3), kernel_sizes=(3, 2)).double().train()
    x = torch.randn(4, 7, 2, dtype=torch.float64)
    x[2, 3:] = float("nan")
    longer = torch.cat([x, torch.full((4, 4, 2), float("nan"), dtype=torch.float64)], dim=1)
    a, b = roll_penalty(net, x, C=1.0), roll_penalty(net, longer, C=1.0)
    weight = net.blocks[1].layers[0].conv.weight
    torch.testing.assert_close(a, b, rtol=1e-12, atol=0)
    (grad_a,) = torch.autograd.grad(a, weight)
    (grad_b,) = torch.autograd.grad(b, weight)
    torch.testing.assert_close(grad_a, grad_b, rtol=1e-12, atol=1e-15)


def test_cnn1d_refuses_bad_sequences():
    rng = np.random.RandomState(0)
    X, y = _sequences(rng, n=8)
    clf = ROLLClassifier("cnn1d", hidden_layer_sizes=(2, 2, 2), max_epochs=1, random_state=0)
    with pytest.raises(ValueError, match="module='cnn1d' expects sequences"):
        clf.fit(np.zeros((8, 3)), y)
    bad = np.concatenate([X[0][:2], np.full((1, 2), np.nan), X[0][2:]])
    with pytest.raises(ValueError, match="followed by valid steps"):
        clf.fit([bad, *X[1:]], y)
    with pytest.raises(ValueError, match="zero length"):
        clf.fit([X[0][:0], *X[1:]], y)
    with pytest.raises(ValueError, match="same number of channels"):
        clf.fit([X[0][:, :1], *X[1:]], y)
    clf.fit(X, y)
    with pytest.raises(ValueError, match="channels"):
        clf.certified_margin([x[:, :1] for x in X])


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"hidden_layer_sizes": (4, 4), "kernel_sizes": (8, 5, 3)}, "one kernel per block"),
        ({"hidden_layer_sizes": ()}, "must not be empty"),
        ({"kernel_sizes": (8, 0, 3)}, "positive integers"),
        ({"hidden_layer_sizes": (4, 2.5, 4)}, "positive integers"),
    ],
)
def test_conv_net_1d_refuses_bad_sizes(kwargs, message):
    with pytest.raises(ValueError, match=message):
        ConvNet1d(2, 3, **kwargs)


def test_conv_net_1d_refuses_bad_input():
    net = ConvNet1d(2, 3, hidden_layer_sizes=(2, 2, 2))
    with pytest.raises(ValueError, match=r"expects sequences \(n, T, 2\)"):
        net(torch.zeros(4, 6))
    with pytest.raises(ValueError, match=r"expects sequences \(n, T, 2\)"):
        net(torch.zeros(4, 6, 3))
    x = torch.zeros(4, 6, 2)
    x[1] = float("nan")
    with pytest.raises(ValueError, match="no valid"):
        net(x)
