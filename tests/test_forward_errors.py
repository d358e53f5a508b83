"""The layered float64 rounding bounds of Linear chains against exact rational arithmetic."""

from fractions import Fraction

import numpy as np
import pytest
import torch
from torch import nn

from reference import exact_linearization
from sklearn_roll._chain import linear_chain
from sklearn_roll._forward_errors import chain_forward_errors
from sklearn_roll._rounding import float64_errors
from sklearn_roll.linearize import record


def _chain(widths, slope, seed, scale=1.0):
    torch.manual_seed(seed)
    layers = []
    for a, b in zip(widths, widths[1:]):
        layers += [nn.Linear(a, b), nn.LeakyReLU(slope) if slope else nn.ReLU()]
    net = nn.Sequential(*layers[:-1]).double()
    with torch.no_grad():
        for p in net.parameters():
            p.mul_(scale)
    return net.eval()


def _inputs(rng, n, d):
    """Entries over many binades, so that the first layer's products round."""
    return rng.randn(n, d) * 10.0 ** rng.uniform(-6, 3, size=(n, d))


def _check(net, x):
    """Every bound covers |computed - exact| where the exact pattern is the float64 one;
    returns the bounds and the generic ones."""
    xt = torch.from_numpy(x)
    rec = record(net, xt)
    pre, out = chain_forward_errors(linear_chain(net), xt, rec.pre, rec.output)
    checked = 0
    for i in range(len(x)):
        exact_pre, exact_out = exact_linearization(net, x[i], [])
        computed = torch.cat([z[i] for z in rec.pre]).tolist() + rec.output[i].tolist()
        bounds = torch.cat([e[i] for e in pre]).tolist() + out[i].tolist()
        exact = [v for v, _ in exact_pre] + [v for v, _ in exact_out]
        if any((c > 0) != (e > 0) for c, e in zip(computed[: len(exact_pre)], exact)):
            continue  # a flipped unit: the exact network is at another pattern
        checked += 1
        for c, e, b in zip(computed, exact, bounds):
            assert abs(Fraction(c) - e) <= Fraction(b), (c, float(e), b)
    assert checked >= len(x) // 2
    generic = float64_errors(net, xt, torch.ones_like(xt)[None], [z > 0 for z in rec.pre])
    return pre, generic.pre


@pytest.mark.parametrize("slope", [0.0, 0.01, 0.1])
@pytest.mark.parametrize("seed", range(2))
def test_bounds_cover_the_exact_error_of_deep_chains(slope, seed):
    net = _chain((24, 16, 16, 16, 3), slope, seed)
    pre, generic = _check(net, _inputs(np.random.RandomState(seed), 6, 24))
    # The reason for the layered bound: far below gamma_r times the absolute network.
    ratio = (pre[-1] / generic[-1]).median().item()
    assert ratio < 0.5, ratio


def test_a_cancelling_bias_and_a_rounded_first_layer_are_covered():
    """z = x1 + x2 - 1 with x2 = 2^-60: float64 computes 1 + 2^-60 = 1, so z = 0 exactly
    where the true value is 2^-60; the bound must reach that error."""
    net = nn.Sequential(nn.Linear(2, 1), nn.ReLU(), nn.Linear(1, 1)).double()
    with torch.no_grad():
        net[0].weight.fill_(1.0)
        net[0].bias.fill_(-1.0)
        net[2].weight.fill_(1.0)
        net[2].bias.fill_(0.0)
    x = torch.tensor([[1.0, 2.0**-60]], dtype=torch.float64)
    rec = record(net, x)
    assert rec.pre[0].item() == 0.0
    pre, _ = chain_forward_errors(linear_chain(net), x, rec.pre, rec.output)
    assert 2.0**-60 <= pre[0].item() < 1e-14


def test_weights_beyond_the_exponent_range_give_infinite_bounds_not_nan():
    net = _chain((4, 3, 2), 0.0, 0, scale=1e300)
    x = torch.ones(2, 4, dtype=torch.float64)
    rec = record(net, x)
    pre, out = chain_forward_errors(linear_chain(net), x, rec.pre, rec.output)
    assert not any(torch.isnan(e).any() for e in [*pre, out])
    assert torch.isinf(pre[0]).all()
