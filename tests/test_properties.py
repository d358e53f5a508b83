"""Property-based tests of the certificates on random networks and adversarial inputs.

Random architectures (Linear/ReLU/LeakyReLU chains, which take the fast float32 path,
and user modules with residual links, which take the general path), random and
rescaled weights, and inputs placed next to region boundaries (one or two units'
pre-activations made tiny, the way float32 rounding flips a unit). Two properties:

(a) a float32 margin or robust radius never exceeds the float64 one, and lies within
    the documented factor ``(1 - FLOAT32_RTOL) / (1 + FLOAT32_RTOL)`` below it;
(b) in float64, points inside the certified l2 / l1 / linf balls (random ones,
    every unit's worst-case direction, l1 vertices, linf corners) keep the activation
    pattern, and inside the robust radius the prediction.
"""

import copy

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings, target
from hypothesis import strategies as st
from torch import nn

from modules import RandomResidual
from reference import magnitude_rows, margins, output_gradients, unit_gradients
from sklearn_roll._rounding import gamma64
from sklearn_roll.linearize import float64_copy, linearize, record
from sklearn_roll.regions import FLOAT32_RTOL, module_margin
from strategies import inputs, networks

pytestmark = pytest.mark.usefixtures("one_thread")

P_VALUES = (1, 2, np.inf)
# Inside the ball: far enough from its surface that float64 rounding of the
# pattern at the sampled points cannot blur the comparison.
SAFELY_INSIDE = 1 - 1e-6
# Balls this small relative to |x| are below what float64 can place points in
# (x + step rounds the step by 1e-16 |x|) or evaluate the pattern at.
RESOLVABLE = 1e-8
TOLERANCE = (1 - FLOAT32_RTOL) / (1 + FLOAT32_RTOL) * (1 - 1e-9)


@pytest.mark.slow
@settings(
    max_examples=3 * settings.default.max_examples,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(data=st.data())
def test_float32_never_exceeds_float64(data):
    module = data.draw(networks())
    x = data.draw(inputs(module, min_offset=-15.0))
    n_outputs = module(torch.zeros(1, x.shape[1])).shape[1]
    results = [
        (
            p,
            decision,
            *[
                module_margin(module, x, p, precision=precision, decision=decision)
                for precision in ("float32", "float64")
            ],
        )
        for p in P_VALUES
        for decision in ((False, True) if n_outputs > 1 else (False,))
    ]
    ratios = [
        m32[(m64 > 0) & np.isfinite(m64)] / m64[(m64 > 0) & np.isfinite(m64)]
        for *_, m32, m64 in results
    ]
    ratios = np.concatenate(ratios)
    if len(ratios):
        # Steer the search towards over-claims, and towards the largest shortfall.
        target(float(ratios.max()), label="largest float32 / float64 (must stay <= 1)")
        target(float(1 - ratios.min()), label="largest relative shortfall below float64")
    for p, decision, m32, m64 in results:
        assert not np.isnan(m32).any() and not np.isnan(m64).any()
        assert np.array_equal(np.isinf(m32), np.isinf(m64)), (p, decision, m32, m64)
        assert np.all(m32 <= m64), (p, decision, m32, m64)
        finite = np.isfinite(m64) & (m64 > 0)
        assert np.all(m32[finite] >= TOLERANCE * m64[finite]), (p, decision, m32, m64)
        assert np.all(m32[m64 == 0] == 0)


# LeakyReLU slopes that float32 cannot hold: float64 certificates must use them exactly.
LEAKY_SLOPES = st.one_of(
    st.sampled_from([0.01, 0.1, 0.3]),
    st.floats(0.001, 0.9).filter(lambda s: float(np.float32(s)) != s),
)


def _reference_certificates(module, x, q):
    """Margins and robust radii from per-unit autograd in float64 (tests/reference.py).

    Also, per sample, the relative allowance the float64 certificates may take off
    them for rounding: a few times gamma_R (R bounds the roundings of any value) times
    the largest ratio of a unit's (or logit gap's) magnitude to its value, and of its
    absolute Jacobian's row sum to its gradient norm.
    """
    z, g = unit_gradients(module, x)
    margin = margins(z, g, q)
    out, grads = output_gradients(module, x)
    radius = margin.copy()
    linears = [m for m in module.modules() if isinstance(m, nn.Linear)]
    roundings = sum(m.in_features + 3 for m in linears)
    gamma = 4 * gamma64(2 * roundings + 4)
    slack = np.zeros(len(x))
    with np.errstate(divide="ignore", invalid="ignore"):
        for i in range(len(x)):
            size, rows = magnitude_rows(module, x[i : i + 1])
            units = z.shape[1]
            norms = np.linalg.norm(g[i], ord=q, axis=1)
            ratios = [size[:units] / np.abs(z[i]) + rows[:units] / norms]
            y = out[i].argmax()
            for k in range(out.shape[1]):
                norm = np.linalg.norm(grads[i, y] - grads[i, k], ord=q)
                if k != y and norm > 0:
                    radius[i] = min(radius[i], (out[i, y] - out[i, k]) / norm)
                    gap = out[i, y] - out[i, k]
                    ratios.append([(size[units + y] + size[units + k]) / gap])
                    ratios.append([(rows[units + y] + rows[units + k]) / norm])
            finite = np.concatenate(ratios)
            slack[i] = gamma * np.nanmax(np.where(np.isfinite(finite), finite, 0), initial=0)
    return margin, radius, slack


@settings(max_examples=settings.default.max_examples, deadline=None)
@given(data=st.data())
def test_float64_certificates_of_leaky_networks_equal_per_unit_autograd(data):
    """At most their documented rounding allowance below per-unit autograd, never above."""
    module = data.draw(networks(max_exponent=1.0, slopes=LEAKY_SLOPES))
    rng = np.random.RandomState(data.draw(st.integers(0, 2**16)))
    x = rng.randn(data.draw(st.integers(1, 6)), next(module.parameters()).shape[1])
    for p, q in ((1, np.inf), (2, 2), (np.inf, 1)):
        margin, radius, slack = _reference_certificates(module, x, q)
        for decision, expected in ((False, margin), (True, radius)):
            got = module_margin(module, x, p, precision="float64", decision=decision)
            what = f"{'radius' if decision else 'margin'}, p={p}"
            finite = np.isfinite(expected)
            assert np.array_equal(np.isfinite(got), finite), what
            assert np.all(got[finite] <= expected[finite] * (1 + 1e-13)), what
            low = expected[finite] * (1 - 1e-13 - slack[finite])
            assert np.all(got[finite] >= low), (what, got, expected, slack)


def _ball_steps(p, d, z, g, rng):
    """Unit-radius steps inside an l_p ball: random ones, and each unit's worst case."""
    live = np.linalg.norm(g, axis=1) > 0
    toward = -np.sign(z)[live, None] * g[live]
    if p == 2:
        u = rng.randn(60, d)
        u /= np.linalg.norm(u, axis=1, keepdims=True)
        worst = toward / np.linalg.norm(toward, axis=1, keepdims=True)
        return np.concatenate([u, u * rng.uniform(0, 1, (60, 1)), worst])
    if p == 1:
        vertices = np.concatenate([np.eye(d), -np.eye(d)])
        w = rng.exponential(size=(60, d)) * rng.choice([-1, 1], size=(60, d))
        return np.concatenate([vertices, w / np.abs(w).sum(axis=1, keepdims=True)])
    corners = rng.choice([-1.0, 1.0], size=(60, d))
    return np.concatenate([corners, np.sign(toward), rng.uniform(-1, 1, (60, d))])


def _pattern(module, points):
    with torch.no_grad():
        lin = record(module, torch.from_numpy(points))
    if not lin.pre:
        return np.zeros((len(points), 0), dtype=bool), lin.output.numpy()
    return torch.cat(lin.pre, dim=1).numpy() > 0, lin.output.numpy()


@pytest.mark.slow
@settings(
    max_examples=settings.default.max_examples,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(data=st.data())
def test_float64_balls_keep_the_pattern_and_the_prediction(data):
    module = data.draw(networks())
    x = data.draw(inputs(module, min_offset=-7.0))
    exact = float64_copy(module)
    rng = np.random.RandomState(data.draw(st.integers(0, 2**16)))
    with torch.no_grad():
        lin = linearize(exact, torch.from_numpy(x), "basis")
    n_features = x.shape[1]
    if lin.pre:
        z = torch.cat(lin.pre, dim=1).detach().numpy()
        g = torch.cat(lin.pre_tangents, dim=1).detach().numpy()
    else:
        z, g = np.zeros((len(x), 0)), np.zeros((len(x), 0, n_features))
    out_grad = lin.output_tangents.detach().numpy()
    base, logits = _pattern(exact, x)
    predicted = logits.argmax(axis=1)
    for p in P_VALUES:
        margin = module_margin(module, x, p, precision="float64")
        radius = module_margin(module, x, p, precision="float64", decision=True)
        owner, points, owner_tie, tie_points = [], [], [], []
        scale = RESOLVABLE * (1 + np.linalg.norm(x, axis=1))
        for i in np.flatnonzero((margin > scale) & (margin < np.inf)):
            steps = _ball_steps(p, n_features, z[i], g[i], rng)
            owner += [i] * len(steps)
            points.append(x[i] + steps * margin[i] * SAFELY_INSIDE)
            if out_grad.shape[1] > 1 and scale[i] < radius[i] < np.inf:
                # The worst case for each class: straight towards the tie.
                ties = out_grad[i, predicted[i]] - out_grad[i]
                ties = ties[np.linalg.norm(ties, axis=1) > 0]
                if p == 2:
                    ties = -ties / np.linalg.norm(ties, axis=1, keepdims=True)
                elif p == np.inf:
                    ties = -np.sign(ties)
                else:
                    ties = np.zeros((0, n_features))
                steps = np.concatenate([steps, ties])
                owner_tie += [i] * len(steps)
                tie_points.append(x[i] + steps * radius[i] * SAFELY_INSIDE)
        if points:
            inside, _ = _pattern(exact, np.concatenate(points))
            assert (inside == base[owner]).all(), (p, margin)
        if tie_points:
            _, moved = _pattern(exact, np.concatenate(tie_points))
            assert (moved.argmax(axis=1) == predicted[owner_tie]).all(), (p, radius)


def test_float32_cancellation_is_caught_by_the_rounding_bound():
    """A unit whose gradient cancels in float32, in exact arithmetic.

    Layer 1: a = x1 + x2 + 1, b = 2^-26 (x1 + x2) + 1, c = x1 + x2 + 1. Layer 2:
    u = h_a + h_b and c' = h_c. Layer 3: v = u - c' - 1 = 2^-26 (x1 + x2), whose
    gradient (2^-26, 2^-26) is lost in float32 on any machine: the chain stores u's
    row as float32(1 + 2^-26) = 1 whatever the kernel's order of summation (two
    non-zero terms, every product by 0 or 1), and v's row is then 1 - 1 = 0. At
    x = (2^-10, 0) every float64 value is exact and v sets the margin (2^-10 / sqrt 2
    for l2), which plain float32 norms would miss (the next unit is ~0.7 away);
    the rounding bound sends v to float64. v = 2^-36 is far enough above float64's
    rounding of its inputs (~1e-15) for the certified margin to stay within 1e-3 of
    the exact one.
    """
    module = nn.Sequential(
        nn.Linear(2, 3),
        nn.ReLU(),
        nn.Linear(3, 2),
        nn.ReLU(),
        nn.Linear(2, 1),
        nn.ReLU(),
        nn.Linear(1, 2),
    )
    tiny = 2.0**-26
    with torch.no_grad():
        module[0].weight.copy_(torch.tensor([[1.0, 1.0], [tiny, tiny], [1.0, 1.0]]))
        module[0].bias.fill_(1.0)
        module[2].weight.copy_(torch.tensor([[1.0, 1.0, 0.0], [0.0, 0.0, 1.0]]))
        module[2].bias.zero_()
        module[4].weight.copy_(torch.tensor([[1.0, -1.0]]))
        module[4].bias.fill_(-1.0)
        module[6].weight.copy_(torch.tensor([[1.0], [-1.0]]))
        module[6].bias.zero_()
    module.eval()
    x = np.array([[2.0**-10, 0.0]])
    with torch.no_grad():
        pre64 = record(float64_copy(module), torch.from_numpy(x)).pre
        float32_rows = linearize(module, torch.from_numpy(x).float(), "basis").pre_tangents[2]
    assert pre64[2][0, 0] == 2.0**-36 and all((z > 0).all() for z in pre64)
    assert float32_rows[0, 0].abs().max() == 0, "the float32 Jacobian must lose v's gradient"
    expected = {1: 2.0**-10, 2: 2.0**-10 / np.sqrt(2), np.inf: 2.0**-11}
    for p in P_VALUES:
        m64 = module_margin(module, x, p, precision="float64")
        m32 = module_margin(module, x, p, precision="float32")
        assert (1 - 1e-3) * expected[p] <= m64[0] <= expected[p]
        assert TOLERANCE * m64[0] <= m32[0] <= m64[0]


def test_float32_flip_of_a_lower_unit_does_not_leak_into_the_margin():
    """A first-layer unit that float32 rounding switches off, in exact arithmetic.

    u1 = x1 - 1 at x1 = 1 + 2^-30: 2^-30 in float64, but x1 rounds to 1 in float32,
    so u1 is exactly 0 there (off), whatever the matrix kernel (every product is by
    0 or 1). The margin is set by v = 4 h1 + h2 - 1, about 1e-12 from its boundary,
    whose gradient (4, 1) depends on u1's state: with the float32 pattern it would be
    (0, 1), over-claiming the margin by sqrt(17).
    """
    module = nn.Sequential(nn.Linear(2, 2), nn.ReLU(), nn.Linear(2, 1), nn.ReLU(), nn.Linear(1, 2))
    with torch.no_grad():
        module[0].weight.copy_(torch.eye(2))
        module[0].bias.copy_(torch.tensor([-1.0, 0.0]))
        module[2].weight.copy_(torch.tensor([[4.0, 1.0]]))
        module[2].bias.fill_(-1.0)
        module[4].weight.copy_(torch.tensor([[1.0], [-1.0]]))
        module[4].bias.zero_()
    module.eval()
    x = np.array([[1 + 2.0**-30, 1 - 4 * 2.0**-30 + 1e-12 * np.sqrt(17)]])
    x64 = torch.from_numpy(x)
    with torch.no_grad():
        pre64 = record(float64_copy(module), x64).pre
    assert pre64[0][0, 0] == 2.0**-30 and record(module, x64.float()).pre[0][0, 0] == 0
    m64 = module_margin(module, x, 2, precision="float64")
    # Within its float64 rounding allowance (relative 1e-2 here, z being 4e-12).
    np.testing.assert_allclose(m64, 1e-12, rtol=1e-2)
    with torch.no_grad():
        unfrozen = linearize(module, x64.float(), "basis")
    norms = [np.linalg.norm(g[0].detach().double().numpy(), axis=1) for g in unfrozen.pre_tangents]
    claims = [np.abs(z[0].numpy()) / n for z, n in zip(pre64, norms)]
    assert np.concatenate(claims).min() > 2 * m64[0]
    for p in P_VALUES:
        m64 = module_margin(module, x, p, precision="float64")
        m32 = module_margin(module, x, p, precision="float32")
        assert TOLERANCE * m64[0] <= m32[0] <= m64[0]


@pytest.mark.parametrize("chain", [True, False], ids=["chain", "general"])
def test_frozen_patterns_reproduce_the_float64_region(chain):
    """linearize(..., patterns=) follows the given pattern, not the float32 signs at x."""
    torch.manual_seed(0)
    layers = [nn.Linear(3, 5), nn.LeakyReLU(0.2), nn.Linear(5, 4), nn.ReLU(), nn.Linear(4, 2)]
    module = nn.Sequential(*layers).eval()
    if not chain:
        module = RandomResidual(3, 5, [0.2, 0.0], [True], 2).eval()
    x = torch.randn(6, 3, dtype=torch.float64)
    flipped = [~(z > 0) for z in record(float64_copy(module), x).pre]
    with torch.no_grad():
        frozen = linearize(module, x.float(), "basis", patterns=flipped)
        reference = linearize(_with_pattern(module, flipped), x.float(), "basis")
    for got, expected in zip(frozen.pre_tangents, reference.pre_tangents):
        torch.testing.assert_close(got, expected)
    torch.testing.assert_close(frozen.output_tangents, reference.output_tangents)


def _with_pattern(module, patterns):
    """The module with each activation replaced by multiplication with fixed slopes."""

    class Fixed(nn.Module):
        def __init__(self, on, slope):
            super().__init__()
            self.scale = torch.where(on, 1.0, slope).float()

        def forward(self, z):
            return z * self.scale

    fixed = copy.deepcopy(module)
    index = 0
    for parent in fixed.modules():
        for name, child in parent.named_children():
            if isinstance(child, (nn.ReLU, nn.LeakyReLU)):
                slope = getattr(child, "negative_slope", 0.0)
                setattr(parent, name, Fixed(patterns[index], slope))
                index += 1
    assert index == len(patterns)
    return fixed
