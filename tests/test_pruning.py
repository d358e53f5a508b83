"""Pruned margins of Linear chains: the same certificates as every unit's row.

:class:`sklearn_roll._pruning.ChainPruner` computes exact rows only for the units whose
bounded ratio could set the minimum. Everything here runs in float64, so no result
depends on float32 kernels or thread counts.
"""

import math

import numpy as np
import pytest
import torch
from torch import nn

from reference import margins, output_gradients, unit_gradients
from sklearn_roll import ROLLClassifier
from sklearn_roll._evaluation import Evaluator
from sklearn_roll._pruning import ChainPruner, spectral_bound
from sklearn_roll.nn import MLP

P_AND_Q = [(1, np.inf), (2, 2), (np.inf, 1)]
# Rows from reverse mode and from the forward Jacobian round differently.
RTOL = 1e-12


def _net(seed, sizes=(30, 30, 30), d=20, k=4, slope=None):
    torch.manual_seed(seed)
    kwargs = {} if slope is None else {"activation": "leaky_relu", "negative_slope": slope}
    return MLP(d, k, hidden_layer_sizes=sizes, **kwargs).double().eval()


def _pruned_and_dense(net, x, p, decision, features=None):
    evaluator = Evaluator(net, x, "float64", features=features)
    pruned = evaluator.margins(p, None, decision)
    survivors = evaluator.survivors
    dense = evaluator.margins(p, None, decision, prune=False)
    return pruned, dense, survivors


def _reference(net, x, q, decision):
    """min_u |z_u| / ||g_u||_q by one autograd backward per unit (and per logit gap)."""
    z, g = unit_gradients(net, x)
    value = margins(z, g, q)
    if decision:
        out, og = output_gradients(net, x)
        y = out.argmax(axis=1)
        rows = np.arange(len(x))
        gap = out[rows, y][:, None] - out
        grad = og[rows, y][:, None, :] - og
        gap[rows, y] = np.inf
        value = np.minimum(value, margins(gap, grad, q))
    return value


def _near_boundaries(net, x, layer):
    """``x`` moved so that one unit of ``layer`` per sample is about 1e-9 from zero."""
    linears = [m for m in net if isinstance(m, nn.Linear)]
    x = torch.from_numpy(x)
    unit = None
    # Newton steps onto the unit's boundary: exact within a linear region, and a
    # few more where a step crosses into another.
    for _ in range(6):
        xt = x.clone().requires_grad_(True)
        h = xt
        for i in range(layer + 1):
            z = linears[i](h)
            h = net[2 * i + 1](z)
        if unit is None:
            unit = z.abs().argmin(dim=1)
        picked = z[torch.arange(len(x)), unit]
        (g,) = torch.autograd.grad(picked.sum(), xt)
        with torch.no_grad():
            x = x - (picked - 1e-9)[:, None] * g / (g * g).sum(dim=1, keepdim=True)
    return x.numpy()


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("shape", [(7, 7), (40, 15), (15, 40), (1, 30), (30, 1)])
def test_spectral_bound_is_an_upper_bound(seed, shape):
    gen = torch.Generator().manual_seed(seed)
    for scale in (1.0, 1e-150, 1e150):
        w = torch.randn(shape, generator=gen, dtype=torch.float64) * scale
        exact = float(torch.linalg.matrix_norm(w, ord=2))
        bound = spectral_bound(w)
        assert exact <= bound <= 1.05 * exact


def test_spectral_bound_of_rank_one_and_degenerate_matrices():
    u = torch.arange(1.0, 6.0, dtype=torch.float64)
    v = torch.tensor([3.0, 4.0], dtype=torch.float64)
    # ||u v^T||_2 = ||u|| ||v|| = sqrt(55) * 5, exactly.
    assert spectral_bound(u[:, None] * v[None]) >= math.sqrt(55) * 5
    # Zero but for the allowance for underflow.
    assert 0 <= spectral_bound(torch.zeros(3, 4, dtype=torch.float64)) < 1e-150
    assert spectral_bound(torch.empty(0, 4, dtype=torch.float64)) == 0
    assert spectral_bound(torch.tensor([[math.inf, 1.0]], dtype=torch.float64)) == math.inf


@pytest.mark.parametrize("p, q", P_AND_Q)
@pytest.mark.parametrize("decision", [False, True])
@pytest.mark.parametrize("slope", [None, 0.1])
def test_pruned_margins_equal_dense_and_never_exceed_autograd(p, q, decision, slope):
    net = _net(3, slope=slope)
    x = np.random.RandomState(0).randn(40, 20)
    pruned, dense, survivors = _pruned_and_dense(net, x, p, decision)
    np.testing.assert_allclose(pruned, dense, rtol=RTOL)
    reference = _reference(net, x, q, decision)
    assert np.all(pruned <= reference)
    # Below by the rounding allowances only.
    np.testing.assert_allclose(pruned, reference, rtol=1e-8)
    units = 90 + (3 if decision else 0)
    assert survivors.max() <= units and survivors.mean() < units / 3


@pytest.mark.parametrize("p, q", P_AND_Q)
@pytest.mark.parametrize("layer", [0, 1, 2])
def test_inputs_next_to_boundaries(p, q, layer):
    net = _net(4)
    x = _near_boundaries(net, np.random.RandomState(1).randn(24, 20), layer)
    z, _ = unit_gradients(net, x)
    assert np.all(np.abs(z).min(axis=1) < 1e-8)
    for decision in (False, True):
        pruned, dense, _ = _pruned_and_dense(net, x, p, decision)
        np.testing.assert_allclose(pruned, dense, rtol=RTOL)
        assert np.all(pruned <= _reference(net, x, q, decision))
        assert np.all(pruned < 1e-7)


def test_margins_of_a_roll_trained_network():
    rng = np.random.RandomState(0)
    X = rng.randn(200, 12)
    y = (X[:, 0] + X[:, 1] ** 2 > 1).astype(int) + (X[:, 2] > 0.5)
    clf = ROLLClassifier(hidden_layer_sizes=(32, 32), lam=1.0, max_epochs=10, random_state=0)
    clf.fit(X.astype(np.float32), y)
    net = clf.module_.double().eval()
    x = X[:50]
    for p, q in P_AND_Q:
        for decision in (False, True):
            pruned, dense, _ = _pruned_and_dense(net, x, p, decision)
            np.testing.assert_allclose(pruned, dense, rtol=RTOL)
            assert np.all(pruned <= _reference(net, x, q, decision))


@pytest.mark.parametrize("p, q", P_AND_Q)
def test_margins_in_a_feature_subspace(p, q):
    net = _net(5)
    x = np.random.RandomState(2).randn(30, 20)
    features = np.array([0, 3, 4, 11, 19])
    for decision in (False, True):
        pruned, dense, _ = _pruned_and_dense(net, x, p, decision, features)
        np.testing.assert_allclose(pruned, dense, rtol=RTOL)
        z, g = unit_gradients(net, x)
        assert np.all(pruned <= margins(z, g[:, :, features], q))


def test_samples_that_would_not_pay_take_the_dense_path(monkeypatch):
    class Costly(ChainPruner):
        """Every surviving row costs more than the dense Jacobian."""

        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.dense_products = 0.0

    net = _net(6)
    x = np.random.RandomState(3).randn(20, 20)
    dense = Evaluator(net, x, "float64").margins(2, None, True, prune=False)
    monkeypatch.setattr("sklearn_roll._evaluation.ChainPruner", Costly)
    evaluator = Evaluator(net, x, "float64")
    fallback = evaluator.margins(2, 7, True)
    np.testing.assert_allclose(fallback, dense, rtol=RTOL)
    # Every unit and gap of a dense sample counts as computed; the others were
    # settled by the first round's rows.
    went_dense = evaluator.survivors == 90 + 3
    assert went_dense.any()
    assert np.all(evaluator.survivors[~went_dense] <= 8)


def test_a_network_without_hidden_layers():
    torch.manual_seed(7)
    net = nn.Sequential(nn.Linear(6, 3)).double()
    x = np.random.RandomState(4).randn(10, 6)
    for p, q in P_AND_Q:
        pruned, dense, _ = _pruned_and_dense(net, x, p, True)
        np.testing.assert_allclose(pruned, dense, rtol=RTOL)
        assert np.all(pruned <= _reference(net, x, q, True))


def test_a_network_without_biases():
    # The radius's rows start from a rounded difference of two logits' weights; without
    # biases the allowance counts no spare rounding per layer.
    torch.manual_seed(8)
    net = nn.Sequential(
        nn.Linear(20, 30, bias=False),
        nn.ReLU(),
        nn.Linear(30, 30, bias=False),
        nn.LeakyReLU(0.1),
        nn.Linear(30, 4, bias=False),
    ).double()
    x = np.random.RandomState(5).randn(40, 20)
    for p, q in P_AND_Q:
        for decision in (False, True):
            pruned, dense, _ = _pruned_and_dense(net, x, p, decision)
            np.testing.assert_allclose(pruned, dense, rtol=RTOL)
            assert np.all(pruned <= _reference(net, x, q, decision))
