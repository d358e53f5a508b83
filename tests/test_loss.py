"""The ROLL penalty against an independent computation; unbiasedness of its approximations."""

import copy

import numpy as np
import pytest
import torch
from torch import nn

from reference import unit_gradients
from sklearn_roll.linearize import linearize
from sklearn_roll.loss import roll_penalty
from sklearn_roll.nn import MLP, ElmanRNN, ResNet


def _reference_penalty(module, x, C, gamma):
    z, g = unit_gradients(copy.deepcopy(module), x)
    t = (g**2).sum(axis=2) + C * np.maximum(0, 1 - np.abs(z))
    k = np.ceil(t.shape[1] * gamma / 100).astype(int)
    return np.mean([np.sort(row)[::-1][:k].mean() for row in t])


@pytest.mark.parametrize(
    "make, shape",
    [
        (lambda: MLP(20, 3, (12, 8)), (6, 20)),
        (lambda: MLP(5, 3, (12, 8), activation="leaky_relu", negative_slope=0.2), (6, 5)),
        (lambda: ResNet((1, 6, 6), 3, (3, 4)), (3, 1, 6, 6)),
    ],
    ids=["mlp-compressed", "mlp-leaky", "resnet"],
)
@pytest.mark.parametrize("gamma", [100.0, 30.0])
def test_exact_penalty_matches_per_unit_autograd(make, shape, gamma, rng):
    torch.manual_seed(0)
    module = make().double()
    x = rng.randn(*shape)
    got = roll_penalty(module, torch.tensor(x), C=0.7, gamma=gamma).item()
    assert got == pytest.approx(_reference_penalty(module, x, 0.7, gamma), rel=1e-9)


def test_penalty_counts_only_valid_units_of_sequences(rng):
    torch.manual_seed(0)
    rnn = ElmanRNN(2, 3, hidden_layer_sizes=(4,)).double()
    x = rng.randn(2, 5, 2)
    x[0, 3:] = np.nan
    lin = linearize(rnn, torch.tensor(x))
    z = torch.cat(lin.pre, 1).detach().numpy()
    g = torch.cat(lin.pre_tangents, 1).detach().numpy()
    counted = torch.cat(lin.counted, 1).numpy()
    t = (g**2).sum(axis=2) + 0.5 * np.maximum(0, 1 - np.abs(z))
    expected = np.mean([row[c].mean() for row, c in zip(t, counted)])
    assert counted[0].sum() == 3 * 4 and counted[1].sum() == 5 * 4
    assert roll_penalty(rnn, torch.tensor(x), C=0.5).item() == pytest.approx(expected, rel=1e-12)


def test_compressed_basis_gives_exact_parameter_gradients(rng):
    torch.manual_seed(0)
    module = MLP(30, 2, (6, 5)).double()
    x = torch.tensor(rng.randn(4, 30))

    def grads(tangents):
        module.zero_grad()
        lin = linearize(module, x, tangents)
        sum((t**2).sum() for t in lin.pre_tangents).backward()
        return [
            torch.zeros_like(p) if p.grad is None else p.grad.clone() for p in module.parameters()
        ]

    basis, compressed = grads("basis"), grads("l2")
    assert basis[0].abs().sum() > 0
    for a, b in zip(basis, compressed):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("method", ["axes", "projections"])
@pytest.mark.parametrize(
    "make, shape",
    [(lambda: MLP(40, 3, (16, 16)), (3, 40)), (lambda: ElmanRNN(3, 2, (5,)), (3, 6, 3))],
    ids=["mlp", "rnn-padded"],
)
def test_approximation_is_unbiased(make, shape, method, rng):
    torch.manual_seed(0)
    module = make().double()
    x = rng.randn(*shape)
    if len(shape) == 3:
        x[0, 4:] = np.nan
    x = torch.tensor(x)
    exact = roll_penalty(module, x, C=1.0).item()
    with torch.no_grad():
        draws = np.array(
            [
                roll_penalty(module, x, C=1.0, approx=4, approx_method=method).item()
                for _ in range(600)
            ]
        )
    se = draws.std(ddof=1) / np.sqrt(len(draws))
    assert draws.std() > 0
    assert abs(draws.mean() - exact) < 4 * se, (draws.mean(), exact, se)


def test_axes_with_k_at_least_d_is_exact(rng):
    torch.manual_seed(0)
    module = MLP(6, 2, (5,)).double()
    x = torch.tensor(rng.randn(4, 6))
    exact = roll_penalty(module, x, C=1.0).item()
    assert roll_penalty(module, x, C=1.0, approx=6, approx_method="axes").item() == pytest.approx(
        exact, rel=1e-12
    )
    assert roll_penalty(module, x, C=1.0, approx=9, approx_method="axes").item() == pytest.approx(
        exact, rel=1e-12
    )


def test_bad_arguments():
    module = MLP(3, 2, (4,))
    with pytest.raises(ValueError, match="gamma=100"):
        roll_penalty(module, torch.randn(2, 3), C=1.0, gamma=50, approx=2)
    with pytest.raises(ValueError, match="approx_method"):
        roll_penalty(module, torch.randn(2, 3), C=1.0, approx=2, approx_method="sobol")


def test_penalty_without_hidden_units_is_zero():
    module = nn.Sequential(nn.Linear(3, 2))
    assert roll_penalty(module, torch.randn(4, 3), C=1.0).item() == 0.0


@pytest.mark.parametrize("hidden", [(7,), (7, 5)])
@pytest.mark.parametrize("activation", ["relu", "leaky_relu"])
def test_the_closed_form_of_shallow_chains_equals_the_linearized_penalty(hidden, activation):
    """Value and parameter gradients, against the general path (a hook turns it on)."""
    torch.manual_seed(0)
    net = MLP(4, 3, hidden, activation=activation, negative_slope=0.1).double()
    general = copy.deepcopy(net)
    general.register_forward_hook(lambda module, args, out: None)
    x = torch.randn(9, 4, dtype=torch.float64)
    weight = torch.rand(9, dtype=torch.float64)
    values = [roll_penalty(m, x, C=0.7, sample_weight=weight) for m in (net, general)]
    torch.testing.assert_close(values[0], values[1], rtol=1e-13, atol=0)
    grads = [
        torch.autograd.grad(v, list(m.parameters()), allow_unused=True, materialize_grads=True)
        for v, m in zip(values, (net, general))
    ]
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-15)
