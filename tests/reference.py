"""Independent reference computations for the tests: per-unit autograd in float64.

Every function works on a float64 copy of the module it is given.
"""

from __future__ import annotations

import copy

import numpy as np
import torch
from torch import nn

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
