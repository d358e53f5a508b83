"""The ROLL regulariser of Lee, Alvarez-Melis and Jaakkola (ICLR 2019), exact and approximate.

Per example x and counted hidden unit u the relaxed per-unit loss is::

    t_u(x) = ||g_u(x)||_2^2 + C * max(0, 1 - |z_u(x)|)

and the penalty is the mean over examples (weighted by ``sample_weight`` if given) of
the mean of t_u over the top gamma percent of units (gamma = 100: all units). The unit gradients come from the
linearized forward of :mod:`sklearn_roll.linearize`, differentiable with respect to
the parameters; for the built-in :class:`~sklearn_roll.nn.ElmanRNN` the squared
norms come from its Gram recurrence instead, whose cost grows linearly with the
sequence length and does not depend on the channel count.

For gamma = 100 the gradient term is ``||J||_F^2`` summed over units, which
``approx=k`` estimates without bias from k probes: k input axes sampled uniformly
("axes", the paper's Eq. 10) or k Rademacher projections ("projections",
Hutchinson's estimator, one forward-mode pass each). For a chain of ``nn.Linear``
layers with one or two hidden layers (the default :class:`~sklearn_roll.nn.MLP`) it has
a closed form, which the exact penalty uses: the first layer's unit gradients are the
rows of ``W1`` whatever x, and the second layer's, ``W2 diag(a) W1`` with ``a`` the
first activation's slopes at x, have squared norms summing to
``a^T ((W2^T W2) * (W1 W1^T)) a``, one quadratic form per example instead of a
Jacobian.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from ._recurrent import gram_recurrence, is_structured
from .linearize import AxisTangents, linear_chain, linearize

__all__ = ["APPROX_METHODS", "roll_penalty"]

APPROX_METHODS = ("axes", "projections")
"""The probes ``approx_method`` may name: sampled input axes, or Rademacher projections."""


def _probes(x: Tensor, k: int, method: str) -> tuple[Tensor | AxisTangents, Tensor]:
    """k random tangents per example and the factor that makes the estimate unbiased.

    Returns tangents (k per example) and a per-example scale of shape (n,). Padded
    coordinates (NaN in x) are never probed while valid ones remain; their
    gradients are zero anyway.
    """
    n = x.shape[0]
    flat_valid = ~torch.isnan(x.reshape(n, -1))
    n_valid = flat_valid.sum(dim=1).to(x.dtype)
    d = flat_valid.shape[1]
    if method == "projections":
        signs = torch.randint(0, 2, (k, n, d), dtype=x.dtype) * 2 - 1
        tangents = signs * flat_valid
        scale = torch.full((n,), 1.0 / k, dtype=x.dtype)
    elif method == "axes":
        # Uniform sampling without replacement among the valid coordinates.
        scores = torch.rand(n, d).masked_fill(~flat_valid, math.inf)
        picks = scores.topk(min(k, d), dim=1, largest=False).indices
        return AxisTangents(picks.T.contiguous()), n_valid / torch.clamp(n_valid, max=k)
    else:
        raise ValueError(f"approx_method must be one of {APPROX_METHODS}, got {method!r}.")
    return tangents.reshape(k, *x.shape), scale


def roll_penalty(
    module: nn.Module,
    x: Tensor,
    *,
    C: float,
    gamma: float = 100.0,
    approx: int | None = None,
    approx_method: str = "projections",
    sample_weight: Tensor | None = None,
) -> Tensor:
    """The ROLL regulariser of a batch, differentiable with respect to the parameters.

    Parameters
    ----------
    module : nn.Module
        A piecewise-linear network.
    x : Tensor of shape (n, ...)
        The batch, in the module's input layout (NaN marks sequence padding).
    C : float
        Weight of the hinge term ``max(0, 1 - |z_u|)``.
    gamma : float in (0, 100], default=100
        Percent of units, by largest ``t_u``, averaged per example.
    approx : int or None, default=None
        None: exact unit gradients. An int k: estimate the gradient term from k
        probes (gamma must be 100).
    approx_method : {"axes", "projections"}, default="projections"
        How probes are drawn when ``approx`` is set.
    sample_weight : Tensor of shape (n,) or None, default=None
        Per-example weights: the result is ``mean(sample_weight * per_example)``, which
        with weights of mean 1 weighs an example of weight k as k copies of it.

    Returns
    -------
    Tensor
        A scalar: the (weighted) mean over examples of the aggregated per-unit loss.

    Examples
    --------
    >>> import torch
    >>> from sklearn_roll.nn import MLP
    >>> from sklearn_roll.loss import roll_penalty
    >>> net = MLP(4, 2, hidden_layer_sizes=(8,))
    >>> roll_penalty(net, torch.randn(5, 4), C=1.0).shape
    torch.Size([])

    Notes
    -----
    The network is linearized in its current mode: in training mode Dropout is
    active, and BatchNorm normalises by the mean and variance of the batch, which
    the penalty takes as constants (detached, as if they were running statistics).
    Each example's network is then piecewise linear, its units those of the
    training forward pass, and no gradient of the penalty flows through the batch
    statistics; the running statistics are not updated by the penalty. Certificates
    run in eval mode, where BatchNorm is affine, so this choice does not affect them.
    """
    return _penalty_and_output(
        module,
        x,
        C=C,
        gamma=gamma,
        approx=approx,
        approx_method=approx_method,
        sample_weight=sample_weight,
    )[0]


def _penalty_and_output(
    module: nn.Module,
    x: Tensor,
    *,
    C: float,
    gamma: float = 100.0,
    approx: int | None = None,
    approx_method: str = "projections",
    sample_weight: Tensor | None = None,
) -> tuple[Tensor, Tensor | None]:
    """:func:`roll_penalty`, and the module's output on x where its forward pass computed it.

    The output (None for the closed form of shallow chains, which stops at the
    hidden units) carries the same graph as the module's own forward pass, so a task
    loss may read it instead of running the network again.
    """
    if approx is not None and gamma != 100:
        raise ValueError("approx requires gamma=100: the estimate covers the sum over all units.")
    n = x.shape[0]
    if approx is None and gamma == 100:
        shallow = _shallow_chain_penalty(module, x, C, sample_weight)
        if shallow is not None:
            return shallow, None
    scale = None
    if approx is None and x.dim() == 3 and is_structured(module):
        gram = gram_recurrence(module, x)
        pre, counted, grad_sq, output = gram.pre, gram.counted, gram.grad_sq, gram.output
    else:
        if approx is None:
            lin = linearize(module, x, "l2")
        else:
            tangents, scale = _probes(x, int(approx), approx_method)
            lin = linearize(module, x, tangents)
        pre, counted, output = lin.pre, lin.counted, lin.output
        grad_sq = [(g**2).sum(dim=2) for g in lin.pre_tangents]
    if not grad_sq:
        return x.new_zeros(()), output
    # One tensor of all units: a recurrent network has a block per step, and per-block
    # reductions would cost as many small operations (and their backward) per step.
    z = torch.cat(pre, dim=1)
    valid = torch.cat(
        [torch.ones_like(b, dtype=torch.bool) if c is None else c for b, c in zip(pre, counted)],
        dim=1,
    )
    t_grad = torch.cat(grad_sq, dim=1)
    hinge = torch.relu(1 - z.abs())
    counts = valid.sum(dim=1).to(z.dtype)
    if approx is not None or gamma == 100:
        weight = valid.to(z.dtype)
        grad_total = (t_grad * weight).sum(dim=1)
        if scale is not None:
            grad_total = grad_total * scale
        hinge_total = (hinge * weight).sum(dim=1)
        per_example = (grad_total + C * hinge_total) / counts.clamp(min=1)
        return _mean(per_example, sample_weight), output
    t = (t_grad + C * hinge).masked_fill(~valid, -math.inf)
    top = t.sort(dim=1, descending=True).values
    # Uncounted units sort last and k never reaches them; zero them so cumsum stays finite.
    top = torch.where(torch.isfinite(top), top, 0.0)
    k = torch.ceil(counts * gamma / 100).clamp(min=1).long()
    sums = top.cumsum(dim=1).gather(1, (k - 1)[:, None])[:, 0]
    return (_mean(sums / k, sample_weight) if n else x.new_zeros(())), output


def _shallow_chain_penalty(
    module: nn.Module, x: Tensor, C: float, sample_weight: Tensor | None
) -> Tensor | None:
    """The exact gamma = 100 penalty of a Linear chain with one or two hidden layers.

    None for any other module, which takes the linearized forward.
    """
    chain = linear_chain(module) if x.dim() == 2 else None
    if chain is None or len(chain) not in (2, 3):
        return None
    first, slope = chain[0]
    z = first(x)
    grad_total = first.weight.pow(2).sum().expand(len(x))
    hinge_total = torch.relu(1 - z.abs()).sum(dim=1)
    units = z.shape[1]
    if len(chain) == 3:
        second = chain[1][0]
        # The activation's slopes at x, frozen: the pattern has no gradient.
        active = torch.where(z > 0, z.new_tensor(1.0), z.new_tensor(slope))
        z2 = second(z * active)
        gram = (second.weight.T @ second.weight) * (first.weight @ first.weight.T)
        grad_total = grad_total + ((active @ gram) * active).sum(dim=1)
        hinge_total = hinge_total + torch.relu(1 - z2.abs()).sum(dim=1)
        units += z2.shape[1]
    return _mean((grad_total + C * hinge_total) / units, sample_weight)


def _mean(per_example: Tensor, sample_weight: Tensor | None) -> Tensor:
    if sample_weight is None:
        return per_example.mean()
    return (per_example * sample_weight.to(per_example.dtype)).mean()
