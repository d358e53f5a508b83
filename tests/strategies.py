"""Hypothesis strategies the property tests share: random networks and hard inputs."""

import numpy as np
import torch
from hypothesis import strategies as st
from torch import nn

from modules import RandomResidual, activation
from sklearn_roll.linearize import float64_copy, linear_chain, linearize, record

SLOPES = st.one_of(st.sampled_from([0.0, 0.0, 0.01, 0.1, 0.5, 1.0]), st.floats(0.0, 1.0))


@st.composite
def networks(draw, max_exponent=3.0, slopes=SLOPES):
    """A random network in eval mode, with each layer's weights rescaled."""
    n_features = draw(st.integers(1, 8))
    n_outputs = draw(st.integers(1, 4))
    torch.manual_seed(draw(st.integers(0, 2**16)))
    # Mostly chains: only they compute in float32, so only they can disagree.
    if draw(st.sampled_from([True, True, True, False])):
        widths = [draw(st.integers(1, 8)) for _ in range(draw(st.integers(0, 3)))]
        layers, width = [], n_features
        for size in widths:
            layers += [nn.Linear(width, size), activation(draw(slopes))]
            width = size
        module = nn.Sequential(*layers, nn.Linear(width, n_outputs))
        assert linear_chain(module) is not None
    else:
        depth = draw(st.integers(1, 3))
        layer_slopes = draw(st.lists(slopes, min_size=depth, max_size=depth))
        skips = draw(st.lists(st.booleans(), min_size=depth - 1, max_size=depth - 1))
        module = RandomResidual(n_features, draw(st.integers(1, 8)), layer_slopes, skips, n_outputs)
    exponents = st.floats(-max_exponent, max_exponent)
    with torch.no_grad():
        for layer in module.modules():
            if isinstance(layer, nn.Linear):
                scale = 10.0 ** draw(exponents)
                layer.weight.mul_(scale)
                layer.bias.mul_(scale)
    return module.eval()


def unit_rows(module, x):
    """Layer index, pre-activation and gradient of every unit at each point, in float64."""
    with torch.no_grad():
        lin = linearize(module, torch.from_numpy(x), "basis")
    layer = np.concatenate([np.full(z.shape[1], i) for i, z in enumerate(lin.pre)])
    z = torch.cat(lin.pre, dim=1).detach().numpy()
    g = torch.cat(lin.pre_tangents, dim=1).detach().numpy()
    return layer, z, g


def _near_boundaries(module, x, rng, offsets):
    """Move each point so that a few units sit at ``offset`` times its scale from zero.

    Newton steps on the linearized equations z_u(x + step) = target (a step may cross
    into another region, so it is repeated there). With two offsets the units come
    from two layers, the lower one further from its hyperplane: the case where
    float32 rounding flips the lower unit, which changes the gradient of the upper
    one, whose ratio is the margin.
    """
    exact = float64_copy(module)
    if not record(exact, torch.from_numpy(x[:1])).pre:
        return x
    layer, _, g = unit_rows(exact, x)
    chosen = []
    for i in range(len(x)):
        live = np.flatnonzero(np.linalg.norm(g[i], axis=1) > 0)
        layers = np.unique(layer[live])
        if len(offsets) > 1 and len(layers) > 1:
            low, high = np.sort(rng.choice(layers, 2, replace=False))
            units = [rng.choice(live[layer[live] == low]), rng.choice(live[layer[live] == high])]
        else:
            units = rng.choice(live, size=min(len(offsets), len(live)), replace=False)
        chosen.append((units, rng.choice([-1.0, 1.0], len(units))))
    moved = x.copy()
    for _ in range(4):
        _, z, g = unit_rows(exact, moved)
        for i, (units, signs) in enumerate(chosen):
            rows = g[i, units]
            if len(units) and np.all(np.linalg.norm(rows, axis=1) > 0):
                scale = 1 + np.linalg.norm(moved[i])
                goal = signs * offsets[: len(units)] * np.linalg.norm(rows, axis=1) * scale
                moved[i] += np.linalg.lstsq(rows, goal - z[i, units], rcond=None)[0]
    return moved


@st.composite
def inputs(draw, module, min_offset):
    """A few points, random or next to one or two units' region boundaries."""
    n_features = next(module.parameters()).shape[1]
    rng = np.random.RandomState(draw(st.integers(0, 2**16)))
    n = draw(st.integers(1, 8))
    x = rng.randn(n, n_features) * 10.0 ** draw(st.floats(-1.0, 1.0))
    n_units = draw(st.sampled_from([0, 1, 2, 2, 2]))
    if n_units:
        # Offsets of 1e-9..1e-7 are where float32 rounding of z flips a unit's sign.
        exponent = st.one_of(st.floats(-9.0, -7.0), st.floats(min_offset, -2.0))
        exponents = draw(st.lists(exponent, min_size=n_units, max_size=n_units))
        x = _near_boundaries(module, x, rng, 10.0 ** np.sort(exponents)[::-1])
    return x
