"""Float64 certificates of LeakyReLU networks: the slope below zero is not a float32 number.

Frozen slopes once went through float32 (``torch.where`` with two Python scalars), so a
float64 certificate used 0.009999999776482582 where the network computes with 0.01.
"""

from fractions import Fraction

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from modules import Residual
from reference import exact_linearization
from sklearn_roll import ROLLClassifier
from sklearn_roll._evaluation import Evaluator
from sklearn_roll.linearize import record
from sklearn_roll.nn import ElmanRNN
from sklearn_roll.regions import certified_radius, module_margin
from strategies import inputs, networks

# float32(0.01) and the gap between it and the float64 slope: the exact gradient of a
# unit that weighs an off unit with -float32(0.01) against its on twin.
SLOPE32 = float(np.float32(0.01))
RESIDUAL = 0.01 - SLOPE32
# The prediction of the engineered network flips this far along -x1.
TIE = 0.02


@pytest.fixture(scope="module")
def cancelling_net():
    """A 2-2-1-2 LeakyReLU net whose top unit's gradient is 0.01 - float32(0.01).

    Layer 1: z1 = x1 + 1 (on), z2 = x1 - 1 (off) for x1 in (-1, 1). Layer 2:
    z3 = -float32(0.01) h1 + h2 + c, so dz3/dx1 = 0.01 - float32(0.01) ~ 2.2e-10 and
    z3 > 0 on the whole region. Output: logit 0 is z3, logit 1 a constant placed so
    that the tie sits ``TIE`` away from x = 0 along -x1. Every weight is a float32
    number and every float64 rounding in the forward pass is below 1e-17, so the tie
    is at ``TIE`` to a relative 1e-5 on any machine. With a float32 slope the
    gradient of z3 and of the logit gap computes as exactly 0, and the radius is
    the distance 1 to the layer-1 boundaries.
    """
    clf = ROLLClassifier(
        hidden_layer_sizes=(2, 1),
        activation="leaky_relu",
        negative_slope=0.01,
        max_epochs=0,
        random_state=0,
    ).fit(np.array([[0.0, 0.0], [1.0, 1.0]]), np.array([0, 1]))
    offset = float(np.nextafter(np.float32(2 * SLOPE32), np.float32(1)))
    z3 = offset - SLOPE32 - 0.01  # z3 at x = 0, in exact arithmetic
    weights = [
        ([[1.0, 0.0], [1.0, 0.0]], [1.0, -1.0]),
        ([[-SLOPE32, 1.0]], [offset]),
        ([[1.0], [0.0]], [0.0, z3 - TIE * RESIDUAL]),
    ]
    linears = [layer for layer in clf.module_ if isinstance(layer, torch.nn.Linear)]
    with torch.no_grad():
        for linear, (weight, bias) in zip(linears, weights):
            linear.weight.copy_(torch.tensor(weight))
            linear.bias.copy_(torch.tensor(bias, dtype=torch.float64))
    assert z3 > 0 and z3 / RESIDUAL > 1, "unit 3 must stay on across the region"
    return clf


def test_the_prediction_flips_where_the_engineered_tie_is(cancelling_net):
    x = np.array([[0.0, 0.0], [-TIE * 0.999, 0.0], [-TIE * 1.001, 0.0]])
    assert cancelling_net.predict(x).tolist() == [0, 0, 1]


@pytest.mark.parametrize("precision", ["float32", "float64"])
@pytest.mark.parametrize("p", [1, 2, np.inf])
def test_radius_does_not_skip_a_unit_with_a_tiny_true_gradient(cancelling_net, p, precision):
    radius = certified_radius(cancelling_net, np.zeros((1, 2)), p, precision=precision)[0]
    assert radius <= TIE * (1 + 1e-4)
    assert radius >= TIE * (1 - 1e-3)


# ---------------------------------------------------------------- exact arithmetic
#
# The certificates concern the network in real arithmetic at the given float64 point.
# tests/reference.py evaluates small networks exactly, in rationals, so every
# certificate can be checked to never exceed the exact value, whatever float64
# rounding does on the way.


def _qnorm_above(values, q):
    """||v||_q of rationals, or its square for q=2 (to stay rational)."""
    if q == 2:
        return sum(v * v for v in values)
    if q == np.inf:
        return max((abs(v) for v in values), default=Fraction(0))
    return sum(abs(v) for v in values)


def _within(cert, distance_numerator, norm, q):
    """cert <= |numerator| / ||g||_q, exactly (norm is the squared norm for q=2)."""
    c = Fraction(cert)
    if q == 2:
        return c * c * norm <= distance_numerator * distance_numerator
    return c * norm <= abs(distance_numerator)


def _crossing(z, rate):
    """Exact distance along a direction at which a unit changes state (None: never)."""
    if z == 0:
        return Fraction(0) if rate > 0 else None
    return abs(z) / abs(rate) if z * rate < 0 else None


def assert_never_above_exact(module, x, rng):
    """Margins, radii, directional margins and stability bounds against exact values.

    ``x`` holds one sample per row, in the module's layout (NaN steps pad sequences).
    """
    n, d = len(x), int(np.prod(x.shape[1:]))
    directions = np.where(np.isnan(x), 0.0, rng.randn(*x.shape))
    directions /= np.linalg.norm(directions.reshape(n, -1), axis=1).reshape(-1, *[1] * (x.ndim - 1))
    exact_evaluator = Evaluator(module, x, "float64")
    along = exact_evaluator.directional(directions, None)
    lower, upper = (b.reshape(n, d) for b in exact_evaluator.axis_bounds(None))
    directions = directions.reshape(n, d)
    certificates = {
        (p, precision, decision): module_margin(
            module, x, p, precision=precision, decision=decision
        )
        for p in (1, 2, np.inf)
        for precision in ("float32", "float64")
        for decision in (False, True)
    }
    for i in range(n):
        pre, out = exact_linearization(module, x[i], [*np.eye(d), directions[i]])
        for (p, precision, decision), values in certificates.items():
            q = {1: np.inf, 2: 2, np.inf: 1}[p]
            cert = values[i]
            rows = [(z, rates[:d]) for z, rates in pre]
            if decision and len(out) > 1:
                y = max(range(len(out)), key=lambda k: out[k][0])
                for k, (value, rates) in enumerate(out):
                    if k != y:
                        gap = out[y][0] - value
                        rows.append((gap, [a - b for a, b in zip(out[y][1][:d], rates[:d])]))
                        assert gap > 0 or cert == 0, (p, precision, cert, float(gap))
            for z, g in rows:
                norm = _qnorm_above(g, q)
                if norm > 0:
                    assert _within(cert, z, norm, q), (p, precision, decision, cert, float(z))
            if cert == np.inf:
                assert all(_qnorm_above(g, q) == 0 for _, g in rows)
        crossings = [t for z, rates in pre if (t := _crossing(z, rates[d])) is not None]
        if crossings:
            assert Fraction(along[i]) <= min(crossings), (along[i], float(min(crossings)))
        for k in range(d):
            up = [t for z, rates in pre if (t := _crossing(z, rates[k])) is not None]
            down = [t for z, rates in pre if (t := _crossing(z, -rates[k])) is not None]
            if up:
                assert Fraction(upper[i, k]) <= min(up)
            if down:
                assert Fraction(-lower[i, k]) <= min(down)


def test_float64_rounding_cannot_inflate_a_margin():
    """z2 = fl(fl(0.1 + 0.2) - 0.3) = 5.55e-17, twice the exact 0.1 + 0.2 - 0.3.

    Every layer has one input, so each value is one rounding, the same on any machine
    (with or without fused multiply-adds, since every weight is 1). Without an
    allowance for the rounding the margin of z2 would be claimed twice too large.
    """
    module = torch.nn.Sequential(
        torch.nn.Linear(1, 1),
        torch.nn.ReLU(),
        torch.nn.Linear(1, 1),
        torch.nn.ReLU(),
        torch.nn.Linear(1, 2),
    ).double()
    with torch.no_grad():
        for linear, bias in ((module[0], [0.2]), (module[2], [-0.3]), (module[4], [0.0, 0.0])):
            linear.weight.fill_(1.0)
            linear.bias.copy_(torch.tensor(bias, dtype=torch.float64))
        module[4].weight[1] = -1.0
    x = np.array([[0.1]])
    computed = float(module[:3](torch.from_numpy(x)).detach()[0, 0])
    exact = Fraction(0.1) + Fraction(0.2) - Fraction(0.3)
    assert computed == 2 * float(exact) > 0, "the rounding must double z2"
    assert_never_above_exact(module.eval(), x, np.random.RandomState(0))


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("kind", ["chain", "residual"])
def test_certificates_never_exceed_exact_values(kind, seed):
    torch.manual_seed(seed)
    rng = np.random.RandomState(seed)
    if kind == "chain":
        module = torch.nn.Sequential(
            torch.nn.Linear(4, 6),
            torch.nn.LeakyReLU(0.1),
            torch.nn.Linear(6, 5),
            torch.nn.ReLU(),
            torch.nn.Linear(5, 3),
        )
    else:
        module = Residual(4, 3, width=6)
    module = module.eval()
    x = rng.randn(5, 4)
    assert_never_above_exact(module, x, rng)


@pytest.mark.slow
@settings(
    max_examples=settings.default.max_examples // 2,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(data=st.data())
def test_no_certificate_exceeds_its_exact_value(data):
    """Random chains and residual modules, points next to their region boundaries."""
    module = data.draw(networks(max_exponent=2.0))
    x = data.draw(inputs(module, min_offset=-16.0))
    assert_never_above_exact(module, x, np.random.RandomState(data.draw(st.integers(0, 99))))


# ------------------------------------------------------------------ recurrent networks


class GeneralRNN(ElmanRNN):
    """The built-in RNN with a forward pass of its own: certificates take the general path."""

    def forward(self, x):
        return ElmanRNN.forward(self, x)


def _ragged(rng, n, steps, channels):
    """Sequences of random lengths 1 .. steps, padded with trailing NaN steps."""
    x = rng.randn(n, steps, channels)
    for i, length in enumerate(rng.randint(1, steps + 1, size=n)):
        x[i, length:] = np.nan
    return x


@pytest.mark.parametrize("path", ["structured", "general"])
@pytest.mark.parametrize(
    "sizes, activation, orthogonal",
    [((3,), "relu", False), ((3,), "leaky_relu", True), ((3, 2), "leaky_relu", False)],
    ids=["1-relu-plain", "1-leaky-cayley", "2-leaky-plain"],
)
@pytest.mark.parametrize("seed", range(2))
def test_rnn_certificates_never_exceed_exact_values(path, sizes, activation, orthogonal, seed):
    torch.manual_seed(seed)
    rng = np.random.RandomState(seed)
    module = (ElmanRNN if path == "structured" else GeneralRNN)(
        2,
        3,
        hidden_layer_sizes=sizes,
        activation=activation,
        negative_slope=0.1,
        orthogonal_recurrence=orthogonal,
    ).eval()
    assert Evaluator(module, _ragged(rng, 1, 2, 2), "float64").structured == (path == "structured")
    assert_never_above_exact(module, _ragged(rng, 4, 4, 2), rng)


@pytest.mark.parametrize("path", ["structured", "general"])
def test_float64_rounding_cannot_inflate_an_rnn_margin(path):
    """The MLP case above as a 2-layer RNN of one unit each: z of layer 1 is
    fl(fl(0.1 + 0.2) - 0.3) = 5.55e-17, twice its exact value."""
    module = (ElmanRNN if path == "structured" else GeneralRNN)(
        1, 2, hidden_layer_sizes=(1, 1), activation="relu"
    ).double()
    with torch.no_grad():
        for layer, bias in zip(module.inputs, (0.2, -0.3)):
            layer.weight.fill_(1.0)
            layer.bias.fill_(bias)
        for layer in module.recurrent:
            layer.weight.fill_(0.5)
        module.out.weight.copy_(torch.tensor([[1.0], [-1.0]], dtype=torch.float64))
        module.out.bias.zero_()
    x = np.array([[[0.1]]])
    computed = float(record(module, torch.from_numpy(x)).pre[1].detach()[0, 0])
    assert computed == 2 * float(Fraction(0.1) + Fraction(0.2) - Fraction(0.3)) > 0
    assert_never_above_exact(module.eval(), x, np.random.RandomState(0))
