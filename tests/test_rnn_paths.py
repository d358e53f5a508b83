"""The built-in RNN's structured paths and the general path against per-unit autograd.

For the same weights, ``ElmanRNN`` takes the structured paths (Gram recurrence,
causal and directional sweeps) and ``GeneralRNN``, a subclass with a forward of its
own, the general linearized forward. Both must give every certificate and the ROLL
loss of per-unit float64 autograd, on padded batches of 1- and 2-layer networks.
"""

import copy

import numpy as np
import pytest
import torch

from reference import output_gradients, unit_jacobian
from sklearn_roll._evaluation import Evaluator
from sklearn_roll.loss import roll_penalty
from sklearn_roll.nn import ElmanRNN
from sklearn_roll.nn.rnn import CayleyLinear
from sklearn_roll.regions import module_margin

pytestmark = pytest.mark.usefixtures("one_thread")

# The certificates differ from the reference by their rounding allowance only, a
# relative 1e-11 or so at these sizes (up to 3e-11 here).
RTOL = 1e-10
CHANNELS, STEPS, LENGTHS = 3, 6, (6, 4, 1, 5, 2)
CASES = {
    "1-layer-leaky-cayley": ((5,), "leaky_relu", True),
    "2-layer-leaky-plain": ((4, 3), "leaky_relu", False),
    "2-layer-relu-cayley": ((4, 3), "relu", True),
}


class GeneralRNN(ElmanRNN):
    """ElmanRNN with a forward pass of its own: the general path serves it."""

    def forward(self, x):
        return ElmanRNN.forward(self, x)


@pytest.fixture(scope="module", params=list(CASES), ids=list(CASES))
def case(request):
    sizes, activation, orthogonal = CASES[request.param]
    torch.manual_seed(0)
    kwargs = dict(
        hidden_layer_sizes=sizes,
        activation=activation,
        negative_slope=0.1,
        orthogonal_recurrence=orthogonal,
    )
    structured = ElmanRNN(CHANNELS, 4, **kwargs)
    for layer in structured.recurrent:
        if isinstance(layer, CayleyLinear):
            torch.nn.init.normal_(layer.skew, std=0.5)
    structured = structured.double().eval()
    general = GeneralRNN(CHANNELS, 4, **kwargs).double().eval()
    general.load_state_dict(structured.state_dict())
    rng = np.random.RandomState(1)
    x = rng.randn(len(LENGTHS), STEPS, CHANNELS)
    for i, length in enumerate(LENGTHS):
        x[i, length:] = np.nan
    return structured, general, x, _reference(structured, x)


def _reference(module, x):
    """Per-unit autograd: z (n, U), gradients (n, U, D), counted (n, U), outputs and
    their gradients."""
    xt = torch.from_numpy(x)
    z, grads = unit_jacobian(copy.deepcopy(module), xt)
    valid = ~np.isnan(x).all(axis=2)
    layers = len(module.inputs)
    counted = np.concatenate(
        [
            np.repeat(valid[:, t, None], module.inputs[layer].out_features, axis=1)
            for layer in range(layers)
            for t in range(STEPS)
        ],
        axis=1,
    )
    out, out_grads = output_gradients(module, x)
    return z.numpy(), np.nan_to_num(grads.numpy()), counted, out, np.nan_to_num(out_grads)


def _ratio(num, den):
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(den > 0, num / den, np.inf)


def _expected_margin(reference, q, decision):
    z, grads, counted, out, out_grads = reference
    ratios = _ratio(np.abs(z), np.linalg.norm(grads, ord=q, axis=2))
    value = np.where(counted, ratios, np.inf).min(axis=1)
    if decision:
        rows = np.arange(len(out))
        y = out.argmax(axis=1)
        gap = out[rows, y][:, None] - out
        norm = np.linalg.norm(out_grads[rows, y][:, None] - out_grads, ord=q, axis=2)
        ties = _ratio(gap, norm)
        ties[rows, y] = np.inf
        value = np.minimum(value, ties.min(axis=1))
    return value


def _crossings(z, rate, counted):
    """Distance along a direction at which each unit switches (inf: never), min over units."""
    towards = z * rate < 0
    distance = np.where(towards & counted, _ratio(np.abs(z), np.abs(rate)), np.inf)
    return distance.min(axis=1)


@pytest.mark.parametrize("decision", [False, True], ids=["margin", "radius"])
@pytest.mark.parametrize("p", [1, 2, np.inf])
def test_margins_and_radii_of_both_paths_equal_autograd(case, p, decision):
    structured, general, x, reference = case
    q = {1: np.inf, 2: 2, np.inf: 1}[p]
    expected = _expected_margin(reference, q, decision)
    for module in (structured, general):
        got = module_margin(module, x, p, precision="float64", decision=decision)
        np.testing.assert_allclose(got, expected, rtol=RTOL)
        assert (got <= expected).all()


def test_directional_margins_of_both_paths_equal_autograd(case):
    structured, general, x, reference = case
    z, grads, counted, *_ = reference
    rng = np.random.RandomState(2)
    d = np.where(np.isnan(x), 0.0, rng.randn(*x.shape))
    d /= np.linalg.norm(d.reshape(len(d), -1), axis=1)[:, None, None]
    expected = _crossings(z, np.einsum("nud,nd->nu", grads, d.reshape(len(d), -1)), counted)
    for module in (structured, general):
        got = Evaluator(module, x, "float64").directional(d, None)
        np.testing.assert_allclose(got, expected, rtol=RTOL)


def test_stability_bounds_of_both_paths_equal_autograd(case):
    structured, general, x, reference = case
    z, grads, counted, *_ = reference
    n, d = len(x), STEPS * CHANNELS
    upper = np.stack([_crossings(z, grads[:, :, k], counted) for k in range(d)], axis=1)
    lower = -np.stack([_crossings(z, -grads[:, :, k], counted) for k in range(d)], axis=1)
    valid = ~np.isnan(x).reshape(n, d)
    for module in (structured, general):
        lo, up = Evaluator(module, x, "float64").axis_bounds(None)
        lo, up = lo.reshape(n, d), up.reshape(n, d)
        np.testing.assert_allclose(up[valid], upper[valid], rtol=RTOL)
        np.testing.assert_allclose(lo[valid], lower[valid], rtol=RTOL)


@pytest.mark.parametrize("gamma", [100.0, 30.0])
def test_loss_of_both_paths_equals_autograd(case, gamma):
    structured, general, x, reference = case
    z, grads, counted, *_ = reference
    t = (grads**2).sum(axis=2) + 0.7 * np.maximum(0, 1 - np.abs(z))
    per_example = []
    for row, keep in zip(t, counted):
        values = np.sort(row[keep])[::-1]
        per_example.append(values[: int(np.ceil(len(values) * gamma / 100))].mean())
    expected = np.mean(per_example)
    xt = torch.from_numpy(x)
    losses = [roll_penalty(m, xt, C=0.7, gamma=gamma) for m in (structured, general)]
    for loss in losses:
        assert loss.item() == pytest.approx(expected, rel=1e-12)
    # The output layer takes no part in the penalty.
    params = [p for name, p in structured.named_parameters() if not name.startswith("out.")]
    same = [p for name, p in general.named_parameters() if not name.startswith("out.")]
    for a, b in zip(torch.autograd.grad(losses[0], params), torch.autograd.grad(losses[1], same)):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12 * b.abs().max().item())
