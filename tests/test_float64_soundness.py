"""Float64 certificates of LeakyReLU networks: the slope below zero is not a float32 number.

Frozen slopes once went through float32 (``torch.where`` with two Python scalars), so a
float64 certificate used 0.009999999776482582 where the network computes with 0.01.
"""

import numpy as np
import pytest
import torch

from sklearn_roll import ROLLClassifier
from sklearn_roll.regions import certified_radius

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
            linear.bias.copy_(torch.tensor(bias))
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
