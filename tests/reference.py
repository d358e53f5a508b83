"""Independent reference computations for the tests: per-unit autograd in float64.

Every function works on a float64 copy of the module it is given.
"""

from __future__ import annotations

import copy
from fractions import Fraction

import numpy as np
import torch
from torch import nn

from sklearn_roll.nn import ElmanRNN

ACTIVATION_TYPES = (nn.ReLU, nn.LeakyReLU)

# Points "inside" a certified ball sit at this fraction of its radius.
INSIDE = 1 - 1e-7


def preactivations(module: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Run the module and capture the input of every nn.ReLU / nn.LeakyReLU call."""
    captured: list[torch.Tensor] = []
    hooks = [
        sub.register_forward_pre_hook(lambda m, args: captured.append(args[0]))
        for sub in module.modules()
        if isinstance(sub, ACTIVATION_TYPES)
    ]
    try:
        out = module(x)
    finally:
        for h in hooks:
            h.remove()
    return out, [z.reshape(z.shape[0], -1) for z in captured]


def unit_jacobian(
    module: nn.Module, x: torch.Tensor, units=None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Pre-activations (n, U) and input gradients (n, U, D), one backward per unit.

    In the module's own precision; with ``units``, only those (column indices).
    """
    xt = x.detach().clone().requires_grad_(True)
    _, pre = preactivations(module, xt)
    z = torch.cat(pre, dim=1) if pre else xt.new_zeros(len(xt), 0)
    chosen = range(z.shape[1]) if units is None else units
    grads = torch.zeros(len(xt), len(chosen), x[0].numel(), dtype=x.dtype)
    for i, u in enumerate(chosen):
        (g,) = torch.autograd.grad(z[:, u].sum(), xt, retain_graph=True)
        grads[:, i] = g.reshape(len(xt), -1)
    return z.detach()[:, list(chosen)], grads


def unit_gradients(module: nn.Module, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Pre-activations (n, U) and their input gradients (n, U, D) in float64, by autograd."""
    module = copy.deepcopy(module).double().eval()
    z, grads = unit_jacobian(module, torch.tensor(x, dtype=torch.float64))
    return z.numpy(), grads.numpy()


def output_gradients(module: nn.Module, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Outputs (n, K) and their input gradients (n, K, D) by autograd in float64."""
    module = copy.deepcopy(module).double().eval()
    xt = torch.tensor(x, dtype=torch.float64, requires_grad=True)
    out = module(xt)
    n, k = out.shape
    grads = np.zeros((n, k, int(np.prod(x.shape[1:]))))
    for j in range(k):
        (g,) = torch.autograd.grad(out[:, j].sum(), xt, retain_graph=True)
        grads[:, j] = g.reshape(n, -1).numpy()
    return out.detach().numpy(), grads


def margins(z: np.ndarray, grads: np.ndarray, q: float) -> np.ndarray:
    """min_u |z_u| / ||g_u||_q over units with g_u != 0, by plain numpy."""
    norms = np.linalg.norm(grads, ord=q, axis=2)
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.where(norms > 0, np.abs(z) / norms, np.inf)
    return ratio.min(axis=1) if ratio.shape[1] else np.full(len(z), np.inf)


def pattern(module: nn.Module, x: np.ndarray) -> np.ndarray:
    """Activation pattern (z > 0) of each row, computed in float64."""
    module = copy.deepcopy(module).double().eval()
    with torch.no_grad():
        _, pre = preactivations(module, torch.tensor(x, dtype=torch.float64))
    return torch.cat(pre, dim=1).numpy() > 0


def ball_points(x, r, p, z, g, rng):
    """Points inside the l_p ball of radius r: random ones and every unit's worst case."""
    d = x.shape[0]
    sign = np.sign(z)[:, None]
    nonzero = np.linalg.norm(g, axis=1) > 0
    points = []
    if p == 2:
        u = rng.randn(300, d)
        u /= np.linalg.norm(u, axis=1, keepdims=True)
        points.append(u * r * rng.uniform(0, 1, (300, 1)) ** (1 / d))
        points.append(u * r)
        worst = -sign * g / np.linalg.norm(g, axis=1, keepdims=True).clip(1e-300)
        points.append(worst[nonzero] * r)
    elif p == 1:
        eye = np.eye(d)
        points += [eye * r, -eye * r]
        w = rng.exponential(size=(300, d)) * rng.choice([-1, 1], size=(300, d))
        points.append(w / np.abs(w).sum(axis=1, keepdims=True) * r)
    else:
        points.append(rng.choice([-1.0, 1.0], size=(300, d)) * r)
        points.append((-sign * np.sign(g))[nonzero] * r)
    return x + np.concatenate(points) * INSIDE


class _Frozen(nn.Module):
    """Multiplication by fixed slopes: an activation with its pattern frozen."""

    def __init__(self, slopes):
        super().__init__()
        self.slopes = slopes

    def forward(self, z):
        return z * self.slopes


def absolute_network(module: nn.Module, x: np.ndarray) -> nn.Module:
    """The float64 network with absolute weights and each activation frozen to |slope|.

    The pattern is the float64 one at the rows of x (one row at a time: the result
    serves that row only when x has one row).
    """
    module = copy.deepcopy(module).double().eval()
    _, pre = preactivations(module, torch.tensor(x, dtype=torch.float64))
    absolute = copy.deepcopy(module)
    with torch.no_grad():
        for param in absolute.parameters():
            param.abs_()
    calls = iter(pre)
    for parent in list(absolute.modules()):
        for name, child in parent.named_children():
            if isinstance(child, ACTIVATION_TYPES):
                slope = abs(getattr(child, "negative_slope", 0.0))
                on = next(calls) > 0
                setattr(parent, name, _Frozen(torch.where(on, 1.0, torch.tensor(slope).double())))
    return absolute


def magnitude_rows(module: nn.Module, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For one point, magnitudes of the units and outputs, and their Jacobian row sums.

    The absolute network at |x| bounds the terms each pre-activation (then each
    output) sums; its derivative along the all-ones direction is the row sum of the
    absolute Jacobian. Works for modules whose activations are modules applied once
    each, in order.
    """
    absolute = absolute_network(module, x)
    captured = []
    hooks = [
        sub.register_forward_pre_hook(lambda m, args: captured.append(args[0]))
        for sub in absolute.modules()
        if isinstance(sub, _Frozen)
    ]
    xt = torch.tensor(np.abs(x), dtype=torch.float64, requires_grad=True)
    try:
        out = absolute(xt)
    finally:
        for hook in hooks:
            hook.remove()
    values = torch.cat([*(z.reshape(len(x), -1) for z in captured), out], dim=1)
    sums = [
        torch.autograd.grad(values[0, u], xt, retain_graph=True)[0].sum().item()
        for u in range(values.shape[1])
    ]
    return values.detach().numpy()[0], np.array(sums)


def _dual_linear(weight, bias, inputs):
    """An exact affine layer on (value, derivatives) pairs of Fractions."""
    out = []
    for i, row in enumerate(weight):
        value = sum((w * v for w, (v, _) in zip(row, inputs)), Fraction(0)) + bias[i]
        rates = [
            sum((w * r[k] for w, (_, r) in zip(row, inputs)), Fraction(0))
            for k in range(len(inputs[0][1]))
        ]
        out.append((value, rates))
    return out


def _dual_activation(slope, inputs, pre):
    pre.append(inputs)
    s = Fraction(slope)
    return [(v, r) if v > 0 else (s * v, [s * x for x in r]) for v, r in inputs]


def _fractions(tensor):
    return [[Fraction(float(v)) for v in row] for row in tensor.detach().double().tolist()]


def _layer(linear):
    bias = linear.bias.detach().double().tolist() if linear.bias is not None else None
    return _fractions(linear.weight), [Fraction(b) for b in bias or [0.0] * linear.out_features]


def exact_linearization(module: nn.Module, x, tangents):
    """Pre-activations, outputs and their derivatives in exact rational arithmetic.

    The network's weights are taken as the exact values of their float64 copies, the
    point ``x`` (one sample) and the ``tangents`` (a list of flat arrays, one entry
    per coordinate of ``x``) as exact rationals, and every activation follows the
    exact sign of its input. For ``nn.Sequential`` chains of Linear / ReLU /
    LeakyReLU, the modules of ``tests/modules.py`` and ``ElmanRNN`` (x of shape
    (T, C), trailing all-NaN steps as padding; the recurrent matrix of an orthogonal
    recurrence is its Cayley map as the float64 copy computes it).

    Returns
    -------
    pre : list of (Fraction, list of Fraction)
        Every counted unit's value and derivatives, in recording order.
    out : list of (Fraction, list of Fraction)
        The outputs.
    """
    if isinstance(module, ElmanRNN):
        return _exact_rnn(copy.deepcopy(module).double(), np.asarray(x), tangents)
    h = [
        (Fraction(float(v)), [Fraction(float(t[i])) for t in tangents])
        for i, v in enumerate(np.asarray(x).ravel())
    ]
    pre: list = []

    def slope(act):
        return getattr(act, "negative_slope", 0.0)

    if isinstance(module, nn.Sequential):
        for layer in module:
            if isinstance(layer, nn.Linear):
                h = _dual_linear(*_layer(layer), h)
            else:
                h = _dual_activation(slope(layer), h, pre)
        return [u for block in pre for u in block], h
    h = _dual_activation(slope(module.act), _dual_linear(*_layer(module.inp), h), pre)
    if hasattr(module, "hidden"):
        for linear, act, skip in zip(module.hidden, module.acts, module.skips):
            a = _dual_activation(slope(act), _dual_linear(*_layer(linear), h), pre)
            h = [_dual_add(u, v) for u, v in zip(a, h)] if skip else a
    else:
        a = _dual_activation(slope(module.act2), _dual_linear(*_layer(module.block), h), pre)
        h = [_dual_add(u, v) for u, v in zip(h, a)]
    return [u for block in pre for u in block], _dual_linear(*_layer(module.out), h)


def _dual_add(u, v):
    return u[0] + v[0], [a + b for a, b in zip(u[1], v[1])]


def _exact_rnn(module, x, tangents):
    """exact_linearization of an ElmanRNN: its valid steps only, as padding changes nothing."""
    steps, channels = x.shape
    length = int((~np.isnan(x).all(axis=1)).sum())
    seq = [
        [
            (Fraction(float(x[t, c])), [Fraction(float(v[t * channels + c])) for v in tangents])
            for c in range(channels)
        ]
        for t in range(length)
    ]
    slope = getattr(module.act, "negative_slope", 0.0)
    pre: list = []
    h = None
    for inputs, recurrent in zip(module.inputs, module.recurrent):
        V, b = _layer(inputs)
        W = _fractions(recurrent.weight)
        zero = [Fraction(0)] * len(W)
        h = [(Fraction(0), [Fraction(0)] * len(tangents)) for _ in W]
        states = []
        for t in range(length):
            z = [
                _dual_add(u, v)
                for u, v in zip(_dual_linear(V, b, seq[t]), _dual_linear(W, zero, h))
            ]
            h = _dual_activation(slope, z, pre)
            states.append(h)
        seq = states
    return [u for block in pre for u in block], _dual_linear(*_layer(module.out), h)
