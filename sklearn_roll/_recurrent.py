"""Unit gradients of the built-in Elman RNN that follow its time structure.

The general linearized forward (:func:`sklearn_roll.linearize.linearize`) pushes all
``T * C`` input axes of a sequence through all ``T`` steps. With the activation
pattern frozen, the input at step ``s`` reaches only the steps ``t >= s``, which
gives three cheaper computations for :class:`~sklearn_roll.nn.ElmanRNN`:

* :func:`gram_recurrence`: the squared l2 norm of every unit's gradient and the
  Gram matrix of the output's gradients, from an H x H recurrence of Gram matrices
  (``G_{t+1} = W D_t G_t D_t W^T + V V^T`` for one layer), whose cost does not
  depend on the channel count and grows linearly with ``T``;
* :func:`causal_linearize`: every unit's full gradient, with the tangents of the
  input at step ``s`` entering at step ``s`` rather than at step 0;
* :func:`directional_linearize`: the derivative of every unit along one direction
  per sequence, a single linearized forward.

All three follow the conventions of :func:`~sklearn_roll.linearize.record` and
:func:`~sklearn_roll.linearize.linearize` on the same module: units are listed in
blocks, layer 0 at steps ``0 .. T-1``, then layer 1 at steps ``0 .. T-1``, and so on,
each block of shape (n, H_l); units at padded steps (all-NaN trailing rows of ``x``)
are reported but marked as not counted; ``patterns`` freezes a given activation
pattern; pre-activations and outputs are the module's own forward values. All run in
the module's dtype; the Gram recurrence and the directional derivatives are
differentiable with respect to the parameters, with the slopes as constants.

Rounding. Certificates need every float64 value with a rigorous bound on its
rounding error (:mod:`sklearn_roll._rounding`). Bounds from the network with
absolute weights, as the general path takes them, grow like the powers of ``|W|``
over the steps, which exceed those of ``W`` geometrically: over a hundred steps
they exceed the values themselves. :func:`recurrent_allowance` propagates the
roundings through the linearized network itself instead. Each update of a layer's
state at a step (a *sub-update*) adds a local rounding error ``xi``, bounded from the
computed values it sums (standard model of floating-point arithmetic, u = 2^-53);
the error of a later value is ``sum P xi`` over the earlier sub-updates, with ``P``
the exact linear map from that sub-update's state to the value, so by
Cauchy-Schwarz it is at most ``sqrt(sum ||P||^2) * sqrt(sum ||xi||^2)``. For one
layer whose recurrence hardly expands (``rho^(2T)`` at most 4, ``rho`` a rigorous
bound on ``||D W||_2``, as for the orthogonal recurrence) the first factor follows
from norms, ``||P|| <= ||w_u|| rho^j``; otherwise it comes from a second Gram
recurrence, of an identity injected after every sub-update, which follows the
actual slopes and costs as much as the first. The roundings of the Gram
recurrences propagate the same way: a local error ``F`` of a Gram update moves a
later quadratic form ``p^T G p`` by at most ``||F||_2`` times its value in the
second recurrence, or its norm bound. The bounds hold whatever the weights,
becoming infinite (and the certificates 0) only where the network's own gradients
grow so fast that rounding could swamp them.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import Any, overload

import torch
from torch import Tensor, nn

from ._linearization import Linearization
from ._pruning import spectral_bound
from ._rounding import gamma64
from .nn.rnn import ElmanRNN

__all__ = [
    "RecurrentAllowance",
    "RecurrentGram",
    "TangentErrors",
    "causal_linearize",
    "directional_linearize",
    "gram_recurrence",
    "is_structured",
    "recurrent_allowance",
    "unit_counts",
]

Reduce = Callable[..., Any]

# float64 unit roundoff.
_U = 2.0**-53
# The bounds are themselves evaluated in float64, each a few thousand roundings deep
# at most, so their own relative error is below 1e-12; doubling them covers it.
_SAFETY = 2.0


@dataclasses.dataclass(frozen=True)
class RecurrentGram:
    """Pre-activations, squared unit-gradient norms and the output's Gram matrix.

    Lists hold one entry per block of units, in the order of
    :func:`~sklearn_roll.linearize.record`: index ``l * T + t`` is layer ``l`` at
    step ``t``, of shape (n, H_l).

    Attributes
    ----------
    output : Tensor of shape (n, K)
        The module's output (logits).
    pre : list of Tensor of shape (n, H_l)
        Pre-activations ``z_u(x)``, as ``record`` gives them.
    counted : list of Tensor of bool, shape (n, H_l)
        False at padded steps, as ``record`` gives them.
    negative_slopes : list of float
        Slope of the activation below zero (0 for ReLU), per block.
    grad_sq : list of Tensor of shape (n, H_l)
        ``||g_u||_2^2``, the squared l2 norm of each unit's gradient over the whole
        input, padded steps included (their units are reported, not counted).
    output_gram : Tensor of shape (n, K, K)
        ``J J^T`` for the output's input Jacobian ``J`` (n, K, T*C), so that
        ``||grad f_i - grad f_k||_2^2 = (e_i - e_k)^T G (e_i - e_k)``.
    grad_sq_error : list of Tensor of shape (n, H_l), or None
        With an allowance: bounds on ``|grad_sq - ||g_u||^2|`` against the exact
        value at the given point.
    output_gap_error : Tensor of shape (n, K, K), or None
        With an allowance: entry ``[i, a, b]`` bounds the rounding error of
        ``G_aa + G_bb - 2 G_ab`` formed from ``output_gram`` in float64, against
        the exact ``||grad f_a - grad f_b||_2^2``.
    """

    output: Tensor
    pre: list[Tensor]
    counted: list[Tensor]
    negative_slopes: list[float]
    grad_sq: list[Tensor]
    output_gram: Tensor
    grad_sq_error: list[Tensor] | None = None
    output_gap_error: Tensor | None = None


@dataclasses.dataclass(frozen=True)
class _Unrolled:
    """One forward pass of an ElmanRNN, with what the tangent recurrences need.

    ``inputs[l]`` (H_l, H_{l-1}) and ``recurrent[l]`` (H_l, H_l) are the layers'
    matrices (the Cayley map evaluated once), ``biases[l]`` their biases (or None),
    ``readout`` (K, H_{L-1}) and ``readout_bias`` the output layer's; ``sequence`` is
    the input with padding replaced by zeros and ``states[l]`` (n, T, H_l) the
    states of layer l after each step; ``slopes`` holds the frozen slope of every
    unit, block by block like ``pre``; ``valid`` (n, T) marks the steps that are not
    padding.
    """

    valid: Tensor
    inputs: list[Tensor]
    recurrent: list[Tensor]
    biases: list[Tensor | None]
    readout: Tensor
    readout_bias: Tensor | None
    sequence: Tensor
    states: list[Tensor]
    pre: list[Tensor]
    slopes: list[Tensor]
    negative_slope: float
    output: Tensor

    @property
    def counted(self) -> list[Tensor]:
        T = self.valid.shape[1]
        return [self.valid[:, i % T, None].expand_as(z) for i, z in enumerate(self.pre)]

    def linearization(self, pre_tangents: list[Any], output_tangents: Any) -> Linearization:
        return Linearization(
            output=self.output,
            pre=self.pre,
            counted=self.counted,
            negative_slopes=[self.negative_slope] * len(self.pre),
            pre_tangents=pre_tangents,
            output_tangents=output_tangents,
        )

    @property
    def sub_updates(self) -> tuple[int, int]:
        """(T, L): steps and layers; sub-update (t, l) is number ``t * L + l`` in order."""
        return self.valid.shape[1], len(self.recurrent)

    def in_order(self, per_block: list[Tensor]) -> Tensor:
        """Per-block values of shape (n,) as (n, T * L), in the order of the sub-updates."""
        T, L = self.sub_updates
        return torch.stack(per_block, dim=1).reshape(-1, L, T).mT.reshape(-1, T * L)

    def by_block(self, ordered: Tensor) -> list[Tensor]:
        """The inverse of :meth:`in_order`: a list, block by block, of (n,) tensors."""
        T, L = self.sub_updates
        return list(ordered.reshape(-1, T, L).mT.reshape(-1, L * T).unbind(dim=1))

    @property
    def gain(self) -> float:
        """A bound on the l2 operator norm of the slope diagonals: max(1, |slope|)."""
        return max(1.0, abs(self.negative_slope))


def is_structured(module: nn.Module) -> bool:
    """Whether the recurrences here serve ``module``.

    True for an :class:`~sklearn_roll.nn.ElmanRNN` with its own forward pass, a
    ReLU or LeakyReLU activation and no hooks, whose computation they restate;
    anything else takes the general path.

    Parameters
    ----------
    module : nn.Module
        Any module.

    Returns
    -------
    bool

    Examples
    --------
    >>> from sklearn_roll.nn import MLP, ElmanRNN
    >>> from sklearn_roll._recurrent import is_structured
    >>> is_structured(ElmanRNN(3, 2)), is_structured(MLP(3, 2))
    (True, False)
    """
    return (
        isinstance(module, ElmanRNN)
        and type(module).forward is ElmanRNN.forward
        and type(module.act) in (nn.ReLU, nn.LeakyReLU)
        and not any(sub._forward_hooks or sub._forward_pre_hooks for sub in module.modules())
    )


def unit_counts(module: ElmanRNN, steps: int) -> tuple[int, int]:
    """(hidden units, outputs) of ``module`` on sequences of ``steps`` steps.

    A step of every layer holds its units, whatever the input's length.

    Examples
    --------
    >>> from sklearn_roll.nn import ElmanRNN
    >>> from sklearn_roll._recurrent import unit_counts
    >>> unit_counts(ElmanRNN(3, 2, hidden_layer_sizes=(4, 5)), steps=10)
    (90, 2)
    """
    hidden = sum(layer.out_features for layer in module.inputs)
    return steps * hidden, module.out.out_features


def _negative_slope(module: ElmanRNN) -> float:
    act = module.act
    if type(act) is nn.ReLU:
        return 0.0
    if type(act) is nn.LeakyReLU:
        return float(act.negative_slope)
    raise TypeError(
        f"The recurrent linearization needs nn.ReLU or nn.LeakyReLU as the activation, got "
        f"{type(act).__name__}."
    )


def _check(module: nn.Module, x: Tensor, patterns: list[Tensor] | None) -> None:
    # A subclass may change the forward pass that the recurrences below restate.
    if not isinstance(module, ElmanRNN) or type(module).forward is not ElmanRNN.forward:
        raise TypeError(
            f"The recurrent linearization needs an sklearn_roll.nn.ElmanRNN with its own "
            f"forward, got {type(module).__name__}; use sklearn_roll.linearize.linearize."
        )
    channels = module.inputs[0].in_features
    if x.dim() != 3 or x.shape[2] != channels or x.shape[1] == 0:
        raise ValueError(f"x must have shape (n, T, {channels}) with T >= 1, got {tuple(x.shape)}.")
    if patterns is None:
        return
    n, T, _ = x.shape
    shapes = [(n, layer.out_features) for layer in module.inputs for _ in range(T)]
    given = [tuple(p.shape) for p in patterns]
    if given != shapes or any(p.dtype != torch.bool for p in patterns):
        raise ValueError(
            f"patterns must hold {len(shapes)} boolean tensors, one per layer and step, of "
            f"shapes {sorted(set(shapes))}; got {len(given)} of shapes {sorted(set(given))}."
        )


def _frozen(on: Tensor, negative_slope: float, like: Tensor) -> Tensor:
    """Slopes of a frozen pattern: 1 where a unit is on, else ``negative_slope``.

    Built from tensors of ``like``'s dtype: a pair of Python scalars would give a
    float32 result and round a slope such as 0.01 even in a float64 network.
    """
    one = torch.ones((), dtype=like.dtype, device=like.device)
    below = torch.tensor(negative_slope, dtype=like.dtype, device=like.device)
    return torch.where(on, one, below)


def _unroll(module: ElmanRNN, x: Tensor, patterns: list[Tensor] | None) -> _Unrolled:
    """Run the module's forward pass step by step, recording units and frozen slopes.

    The arithmetic is that of :meth:`ElmanRNN.forward` (same operations, same order),
    so the pre-activations, hence the pattern, are those of the module itself.
    """
    _check(module, x, patterns)
    negative_slope = _negative_slope(module)
    n, T, _ = x.shape
    valid = ~torch.isnan(x).all(dim=2)
    seq = torch.where(valid[:, :, None], x, 0.0)
    sequence = seq
    pre: list[Tensor] = []
    slopes: list[Tensor] = []
    recurrent_weights: list[Tensor] = []
    layer_states: list[Tensor] = []
    for inputs, recurrent in zip(module.inputs, module.recurrent):
        drive = inputs(seq)
        weight = recurrent.weight
        recurrent_weights.append(weight)
        h = drive.new_zeros(n, drive.shape[2])
        states = []
        for t in range(T):
            z = drive[:, t] + h @ weight.T
            on = z > 0 if patterns is None else patterns[len(pre)]
            pre.append(z)
            slopes.append(_frozen(on, negative_slope, z))
            h = torch.where(valid[:, t, None], module.act(z), h)
            states.append(h)
        seq = torch.stack(states, dim=1)
        layer_states.append(seq)
    return _Unrolled(
        valid=valid,
        inputs=[layer.weight for layer in module.inputs],
        recurrent=recurrent_weights,
        biases=[layer.bias for layer in module.inputs],
        readout=module.out.weight,
        readout_bias=module.out.bias,
        sequence=sequence,
        states=layer_states,
        pre=pre,
        slopes=slopes,
        negative_slope=negative_slope,
        output=module.out(h),
    )


# ----------------------------------------------------------------- Gram matrices


@dataclasses.dataclass(frozen=True)
class _GramPass:
    """What one Gram recurrence gives: per block the diagonal of the units' Gram
    matrix, the last layer's final state Gram, and (when tracked) per block a bound
    (n,) on the Frobenius norm of its sub-update's local rounding error."""

    diagonals: list[Tensor]
    final: Tensor
    local: list[Tensor] | None


def _frobenius(gram: list[list[Tensor]]) -> Tensor:
    """Per sequence, the Frobenius norm of the joint Gram matrix held in blocks."""
    return (
        torch.stack([torch.linalg.matrix_norm(block).square() for row in gram for block in row])
        .sum(dim=0)
        .sqrt()
    )


class _DrivenStep(torch.autograd.Function):
    """One step of a single layer's driven Gram recurrence, with a leaner backward.

    Forward: ``Z = W G W^T + B``, returning ``diag(Z)`` and ``D Z D``. Autograd of the
    same products takes four batched products and a sum over the batch for the
    backward pass; here ``G`` is a Gram matrix, hence symmetric, so the weight's
    gradient ``sum_i (S_i + S_i^T) W G_i`` (``S`` the gradient of ``Z``) is one
    matrix product over the stacked batch, and the backward takes three products.
    """

    @staticmethod
    def forward(gram: Tensor, weight: Tensor, base: Tensor, slopes: Tensor):  # type: ignore[override]
        weights = weight.expand(gram.shape[0], -1, -1)
        # bmm of the expanded matrix: a broadcast matmul is slower.
        rows = torch.bmm(weights, gram)
        z_gram = torch.baddbmm(base, rows, weights.mT)
        diagonal = z_gram.diagonal(dim1=1, dim2=2).clone()
        scale = slopes[:, :, None] * slopes[:, None, :]
        return diagonal, z_gram.mul_(scale), rows, scale

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple, output: tuple) -> None:
        _, weight, base, _ = inputs
        _, _, rows, scale = output
        ctx.save_for_backward(weight, rows, scale)
        ctx.base_batched = base.dim() == 3
        ctx.mark_non_differentiable(rows, scale)

    @staticmethod
    def backward(ctx: Any, grad_diagonal: Tensor, grad_new: Tensor, *_: Any):  # type: ignore[override]
        weight, rows, scale = ctx.saved_tensors
        grad = grad_new * scale
        grad.diagonal(dim1=1, dim2=2).add_(grad_diagonal)
        weights = weight.expand(grad.shape[0], -1, -1)
        grad_gram = torch.bmm(weights.mT, torch.bmm(grad, weights))
        size = weight.shape[0]
        both = (grad + grad.mT).reshape(-1, size)
        grad_weight = (rows.reshape(-1, size).T @ both).T
        grad_base = grad if ctx.base_batched else grad.sum(dim=0)
        return grad_gram, grad_weight, grad_base, None


def _gram_pass(run: _Unrolled, *, drive: bool, inject: bool, track: bool) -> _GramPass:
    """The joint Gram recurrence of the stacked states.

    ``drive``: the input enters layer 0 (the Gram matrices of the unit gradients).
    ``inject``: an identity is added to the joint Gram matrix after every
    sub-update (the recurrence that carries rounding errors). ``track``: bound each
    sub-update's rounding, keeping the diagonal blocks that a layer above reads
    exactly symmetric (the cross blocks are stored as transposes of each other).
    """
    V, W = run.inputs, run.recurrent
    sizes = [w.shape[0] for w in W]
    n, T = run.valid.shape
    # gram[i][k]: the Gram block of layer i's and layer k's current states; the
    # initial states are constant, so the blocks start at zero.
    gram = [[run.output.new_zeros(n, a, b) for b in sizes] for a in sizes]
    drive_gram = V[0] @ V[0].T if drive else None
    diagonals: list[Tensor] = [run.output.new_empty(0)] * len(run.pre)
    # Frobenius norms of the joint Gram matrix before and of z's Gram in each
    # sub-update, from which the local rounding bounds follow after the loop.
    before: list[Tensor] = [run.output.new_empty(0)] * len(run.pre)
    own: list[Tensor] = [run.output.new_empty(0)] * len(run.pre)
    after: list[Tensor] = [run.output.new_empty(0)] * len(run.pre)
    current = run.output.new_zeros(n)
    # Without autograd the diagonals go into storage allocated up front: small
    # tensors allocated between a step's large temporaries fragment the heap, which
    # then grows by about one temporary per step.
    storage = [run.output.new_empty(T, n, size) for size in sizes]
    padded = (~run.valid.all(dim=0)).tolist()
    # A single driven layer whose rounding is not tracked takes the lean step.
    lean = drive and len(W) == 1 and not (inject or track)
    for t in range(T):
        keep = run.valid[:, t, None, None] if padded[t] else None
        if lean:
            base = drive_gram if keep is None else torch.where(keep, drive_gram, 0.0)
            diagonal, own, *_ = _DrivenStep.apply(gram[0][0], W[0], base, run.slopes[t])
            diagonals[t] = diagonal
            gram[0][0] = own if keep is None else torch.where(keep, own, gram[0][0])
            continue
        for layer in range(len(W)):
            block = layer * T + t
            if layer == 0:
                # x_t has Gram I and no cross terms with the states of step t-1.
                # bmm of the expanded matrix: a broadcast matmul is slower.
                recurrent = W[0].expand(n, -1, -1)
                rows = [torch.bmm(recurrent, g) for g in gram[0]]
                if drive_gram is None:
                    z_gram = torch.bmm(rows[0], recurrent.mT)
                else:
                    # Fused products: under autograd every temporary fragments the heap.
                    base = drive_gram if keep is None else torch.where(keep, drive_gram, 0.0)
                    z_gram = torch.baddbmm(base, rows[0], recurrent.mT)
            else:
                inputs = V[layer].expand(n, -1, -1)
                rows = [
                    torch.baddbmm(W[layer] @ own_gram, inputs, below)
                    for below, own_gram in zip(gram[layer - 1], gram[layer])
                ]
                z_gram = torch.baddbmm(rows[layer] @ W[layer].T, rows[layer - 1], inputs.mT)
            diagonal = z_gram.diagonal(dim1=1, dim2=2)
            if diagonal.requires_grad:
                # A view would keep all of z_gram alive for the backward pass.
                diagonals[block] = diagonal.clone()
            else:
                diagonals[block] = storage[layer][t].copy_(diagonal)
            symmetric = track and layer < len(W) - 1
            _replace_state(gram, layer, rows, z_gram, run.slopes[block], keep, symmetric)
            if inject:
                step = run.valid[:, t, None].to(z_gram.dtype)
                for k in range(len(W)):
                    gram[k][k] = gram[k][k].clone() if k != layer else gram[k][k]
                    gram[k][k].diagonal(dim1=1, dim2=2).add_(step)
            if track:
                before[block] = current
                own[block] = torch.linalg.matrix_norm(z_gram)
                current = _frobenius(gram)
                after[block] = current
    local = _local_rounding(run, before, own, after, drive, inject) if track else None
    return _GramPass(diagonals, gram[-1][-1], local)


def _local_rounding(
    run: _Unrolled,
    before: list[Tensor],
    own: list[Tensor],
    after: list[Tensor],
    drive: bool,
    inject: bool,
) -> list[Tensor]:
    """Per block, a bound (n,) on the Frobenius norm of its sub-update's rounding error.

    From the Frobenius norms of the joint Gram matrix before the sub-update (the
    products sum at most m terms of it), of the new block before scaling, and after
    (the identity's addition). The slopes scale entries by at most ``run.gain``; the
    constants over-count.
    """
    T, _ = run.sub_updates
    a = run.gain
    bounds: list[Tensor] = []
    for layer, W in enumerate(run.recurrent):
        inner = torch.linalg.matrix_norm(W).square()
        m = W.shape[1]
        drive_norm = 0.0
        channels = 0
        if layer > 0:
            inner = inner + torch.linalg.matrix_norm(run.inputs[layer]).square()
            m += run.inputs[layer].shape[1]
        elif drive:
            channels = run.inputs[0].shape[1]
            drive_norm = torch.linalg.matrix_norm(run.inputs[0]).square()
        # The layer's T sub-updates at once, as (n, T).
        steps = slice(layer * T, (layer + 1) * T)
        x, z, y = (torch.stack(norms[steps], dim=1) for norms in (before, own, after))
        phi = gamma64(2 * (m + channels + 8)) * (
            a * a * (6 * inner * x + 2 * z + 6 * drive_norm) + 4 * a * inner.sqrt() * x
        )
        if inject:
            phi = phi + _U * y
        bounds.extend(torch.where(run.valid, phi, 0.0).unbind(dim=1))
    return bounds


def _replace_state(
    gram: list[list[Tensor]],
    layer: int,
    rows: list[Tensor],
    z_gram: Tensor,
    slopes: Tensor,
    keep: Tensor | None,
    symmetric: bool,
) -> None:
    """Replace the state of ``layer`` by ``D z`` in the joint Gram matrix (not where padded).

    ``rows[k]`` holds the cross Gram block of ``z`` with layer k's current state and
    ``z_gram`` that of ``z`` with itself; ``keep`` marks the sequences not padded at
    this step (None: all of them); ``symmetric`` makes the new diagonal block
    exactly symmetric, which rounding need not leave it.
    """
    d = slopes[:, :, None]
    for k, row in enumerate(rows):
        if k != layer:
            new = d * row
            gram[layer][k] = new if keep is None else torch.where(keep, new, gram[layer][k])
            gram[k][layer] = gram[layer][k].mT
    if z_gram.requires_grad:
        own = d * z_gram * d.mT
    else:
        # In place: z_gram is a fresh product, used no more (its diagonal was copied).
        own = z_gram.mul_(d).mul_(d.mT)
    if symmetric:
        own = 0.5 * (own + own.mT)
    gram[layer][layer] = own if keep is None else torch.where(keep, own, gram[layer][layer])


# ------------------------------------------------------------- rounding bounds


@dataclasses.dataclass(frozen=True)
class RecurrentAllowance:
    """Rigorous bounds on the float64 rounding of an Elman RNN's forward pass at x.

    Lists hold one entry per block of units (layer ``l`` at step ``t`` is index
    ``l * T + t``), of shape (n, H_l). All bounds are against the exact values of
    the network at the given points with the same activation pattern.

    Attributes
    ----------
    record : Linearization
        The forward pass the bounds concern: outputs, pre-activations, counted
        units (no tangents).
    pre : list of Tensor
        Bounds on ``|computed z_u - exact z_u|``; infinite where rounding could
        swamp the value.
    output : Tensor of shape (n, K)
        Bounds on the outputs' rounding.
    reach : list of Tensor
        ``sqrt(sum ||P||^2)`` over the sub-updates before each unit, with ``P`` the
        exact linear map from that sub-update's state to the unit's pre-activation:
        an error of l2 norm ``e`` added anywhere before moves the unit by at most
        ``reach * e``.
    output_reach : Tensor of shape (n, K)
        The same for the outputs, over all sub-updates.
    unrolled : object
        The forward pass itself, which the Gram recurrence and the sweeps reuse.
    """

    record: Linearization
    pre: list[Tensor]
    output: Tensor
    reach: list[Tensor]
    output_reach: Tensor
    unrolled: _Unrolled


def _bounded(values: Tensor) -> Tensor:
    """NaN (inf times 0, inf minus inf) as +inf: a bound that was lost stays infinite."""
    return torch.nan_to_num(values, nan=math.inf)


def recurrent_allowance(
    module: ElmanRNN, x: Tensor, *, patterns: list[Tensor] | None = None
) -> RecurrentAllowance:
    """Bounds on the float64 rounding of the forward pass and on how errors spread.

    Runs the forward pass, a Gram recurrence with an identity injected after every
    sub-update (its diagonals give ``reach``, see the module docstring), and bounds
    each sub-update's local rounding from the computed values it sums.

    Parameters
    ----------
    module : ElmanRNN
        The float64 network (its own forward, ReLU or LeakyReLU).
    x : Tensor of shape (n, T, C), float64
        Sequences, trailing all-NaN steps padding the shorter ones.
    patterns : list of Tensor of bool, or None, default=None
        The activation pattern, one (n, H_l) tensor per block; None takes the
        module's own.

    Returns
    -------
    RecurrentAllowance

    Examples
    --------
    >>> import torch
    >>> from sklearn_roll.nn import ElmanRNN
    >>> from sklearn_roll._recurrent import recurrent_allowance
    >>> rnn = ElmanRNN(3, 2, hidden_layer_sizes=(4,)).double()
    >>> allowance = recurrent_allowance(rnn, torch.randn(5, 6, 3).double())
    >>> bool((allowance.pre[-1] < 1e-12).all())
    True
    """
    with torch.no_grad():
        run = _unroll(module, x, patterns)
        reach, output_reach = _norm_reach(run) or _gram_reach(run)
        injected, local_pre = _forward_rounding(run)
        total = run.in_order(injected).cumsum(dim=1)
        before = run.by_block((total - run.in_order(injected)).sqrt())
        pre = [
            _bounded(_SAFETY * (r * e[:, None] + eta))
            for r, e, eta in zip(reach, before, local_pre)
        ]
        readout = run.readout
        width = readout.shape[1]
        state = run.states[-1][:, -1]
        magnitude = state.abs() @ readout.abs().T
        if run.readout_bias is not None:
            magnitude = magnitude + run.readout_bias.abs()
        output = _bounded(
            _SAFETY
            * (output_reach * total[:, -1:].sqrt() + gamma64(2 * (width + 1) + 4) * magnitude)
        )
    return RecurrentAllowance(run.linearization(None, None), pre, output, reach, output_reach, run)


# A recurrence whose steps may grow errors by more than this over the whole sequence
# takes the Gram pass, whose bounds follow the actual slopes instead of a norm bound.
_GROWTH = 4.0


def _norm_reach(run: _Unrolled) -> tuple[list[Tensor], Tensor] | None:
    """``reach`` and ``output_reach`` from norms, for one layer that hardly expands.

    With ``rho >= ||D W||_2`` for every slope diagonal D, a state error reaches a
    pre-activation ``j`` steps later through ``w_u^T (D W)^(j-1)``, of norm at most
    ``||w_u|| rho^(j-1)``, so ``reach_t^2 <= ||w_u||^2 sum_{j<t} rho^(2j)``, and the
    outputs' likewise with the readout's rows over all T steps. None (take the Gram
    pass) for stacked layers, whose sub-updates expand the joint state, and where
    ``rho^(2T)`` exceeds ``_GROWTH``.
    """
    if len(run.recurrent) != 1:
        return None
    W = run.recurrent[0]
    T, _ = run.sub_updates
    rho = run.gain * _near_orthogonal_bound(W)
    if not rho ** (2 * T) <= _GROWTH:  # also for NaN
        return None
    n, H = run.valid.shape[0], W.shape[0]
    powers = (rho * rho) ** torch.arange(T, dtype=W.dtype)
    sums = torch.cat([powers.new_zeros(1), powers.cumsum(dim=0)])
    # sums[t] = sum_{j<t} rho^(2j) and the row norms, each a few hundred roundings deep.
    grow = 1 + gamma64(2 * (T + H + W.shape[1]) + 8)
    rows = W.square().sum(dim=1)
    reach = [(grow * rows * sums[t]).sqrt().expand(n, H) for t in range(T)]
    readout_rows = run.readout.square().sum(dim=1)
    output_reach = (grow * readout_rows * sums[T]).sqrt().expand(n, -1)
    return reach, output_reach


def _near_orthogonal_bound(W: Tensor) -> float:
    """An upper bound on ``||W||_2``, tight for matrices close to orthogonal.

    ``||W||_2^2 = ||W^T W||_2 <= 1 + ||W^T W - I||_F``, with the rounding of the
    computed ``W^T W`` bounded by ``gamma_m |W|^T |W|``; the smaller of this and
    :func:`~sklearn_roll._pruning.spectral_bound`.
    """
    W = W.detach()
    m = W.shape[0]
    gram = W.T @ W
    off = gram - torch.eye(W.shape[1], dtype=W.dtype)
    rounding = gamma64(m + 2) * torch.linalg.matrix_norm(W.abs().T @ W.abs())
    excess = (torch.linalg.matrix_norm(off) + rounding) * (1 + gamma64(W.numel() + 8))
    near = math.sqrt((1 + float(excess)) * (1 + gamma64(4)))
    return min(near, spectral_bound(W))


def _gram_reach(run: _Unrolled) -> tuple[list[Tensor], Tensor]:
    """``reach`` and ``output_reach`` from the Gram recurrence of injected identities."""
    spread = _gram_pass(run, drive=False, inject=True, track=True)
    # The rounding of the error recurrence itself: with Phi the largest local
    # error up to a sub-update, the exact Gram matrix is at most the computed one
    # divided by 1 - Phi (in the order of positive semidefinite matrices).
    local = run.in_order(spread.local)
    worst = local.cummax(dim=1).values
    shrink = run.by_block(torch.where(worst < 1, 1 - worst, 0.0))
    reach = [
        _bounded(((q.clamp(min=0) + phi[:, None]) / s[:, None]).sqrt())
        for q, phi, s in zip(spread.diagonals, spread.local, shrink)
    ]
    readout = run.readout
    last = spread.final
    width = last.shape[1]
    rows = readout.square().sum(dim=1)
    diagonal = torch.einsum("kh,nhj,kj->nk", readout, last, readout)
    gram_rounding = gamma64(2 * (2 * width + 4)) * rows * torch.linalg.matrix_norm(last)[:, None]
    final_shrink = torch.where(worst[:, -1] < 1, 1 - worst[:, -1], 0.0)[:, None]
    output_reach = _bounded(((diagonal.clamp(min=0) + gram_rounding) / final_shrink).sqrt())
    return reach, output_reach


def _forward_rounding(run: _Unrolled) -> tuple[list[Tensor], list[Tensor]]:
    """Local rounding of the forward pass, per block: ``||xi||^2`` (n,) and ``|eta|`` (n, H).

    ``eta`` bounds the rounding of ``z = V h_below + b + W h_prev`` from the
    magnitudes of the computed terms; ``xi`` the error that the sub-update adds to
    the state, ``D (eta + slope rounding)``.
    """
    T, _ = run.sub_updates
    injected: list[Tensor] = []
    local: list[Tensor] = []
    below = run.sequence
    a = run.gain
    for layer, (V, W, b) in enumerate(zip(run.inputs, run.recurrent, run.biases)):
        states = run.states[layer]
        previous = torch.cat([torch.zeros_like(states[:, :1]), states[:, :-1]], dim=1)
        magnitude = below.abs() @ V.abs().T + previous.abs() @ W.abs().T
        if b is not None:
            magnitude = magnitude + b.abs()
        # The layer's T steps at once: (n, T, H).
        eta = gamma64(2 * (V.shape[1] + W.shape[1] + 1) + 4) * magnitude
        steps = slice(layer * T, (layer + 1) * T)
        step = eta
        if run.negative_slope not in (0.0, 1.0):
            # Multiplying by a slope other than 0 or 1 rounds once: u |z| before D.
            off = torch.stack(run.slopes[steps], dim=1) != 1
            step = eta + _U * torch.stack(run.pre[steps], dim=1).abs() * off
        xi = a * a * step.square().sum(dim=2)
        injected.extend(torch.where(run.valid, xi, 0.0).unbind(dim=1))
        local.extend(eta.unbind(dim=1))
        below = states
    return injected, local


def gram_recurrence(
    module: ElmanRNN,
    x: Tensor,
    *,
    patterns: list[Tensor] | None = None,
    allowance: RecurrentAllowance | None = None,
) -> RecurrentGram:
    """Squared l2 norms of all unit gradients of an Elman RNN, by a Gram recurrence.

    With the pattern frozen and ``D_t`` the slopes at step t, one layer's
    pre-activations ``z_t = V x_t + W h_{t-1} + b`` have the input Jacobian
    ``A_{t,s} = W D_{t-1} A_{t-1,s}`` for ``s < t`` and ``A_{t,t} = V``, so their
    Gram matrix over the whole input, ``Z_t = sum_s A_{t,s} A_{t,s}^T``, obeys
    ``Z_t = W D_{t-1} Z_{t-1} D_{t-1} W^T + V V^T``, and ``||g_u||_2^2`` is its
    diagonal. Stacked layers carry the joint Gram matrix of all layers' states,
    updated one layer at a time within a step (see the notes). The cost is
    O(T (sum_l H_l)^3) per sequence, independent of the channel count, with
    O((sum_l H_l)^2) state per sequence.

    Parameters
    ----------
    module : ElmanRNN
        The network (its own forward, ReLU or LeakyReLU, any depth, plain or
        orthogonal recurrence); the arithmetic is in its dtype.
    x : Tensor of shape (n, T, C)
        Sequences, trailing all-NaN steps padding the shorter ones, as for
        :meth:`ElmanRNN.forward`.
    patterns : list of Tensor of bool, shape (n, H_l), or None, default=None
        The activation pattern to freeze (True: on), one tensor per block in the
        order of ``record``; None takes the module's own pattern on ``x``.
    allowance : RecurrentAllowance or None, default=None
        :func:`recurrent_allowance` of the same float64 module, points and pattern:
        the forward pass is reused and ``grad_sq_error`` and ``output_gap_error``
        are filled in (no autograd then).

    Returns
    -------
    RecurrentGram

    Notes
    -----
    Within a step, layer ``l``'s new state ``h^l_t = D z^l_t`` (or ``h^l_{t-1}`` at
    a padded step) is a linear function of ``h^{l-1}_t``, already updated, and of
    its own ``h^l_{t-1}``; every other layer's state is the one at step ``t`` (below
    ``l``) or ``t-1`` (above). Replacing one block of the joint state by such a
    combination updates one block row and column of the joint Gram matrix. The
    input ``x_t`` enters only layer 0, and its cross terms with every state of step
    ``t-1`` vanish, since those do not depend on ``x_t``.

    Examples
    --------
    >>> import torch
    >>> from sklearn_roll.nn import ElmanRNN
    >>> from sklearn_roll._recurrent import gram_recurrence
    >>> gram = gram_recurrence(ElmanRNN(3, 2, hidden_layer_sizes=(4,)), torch.randn(5, 6, 3))
    >>> len(gram.grad_sq), gram.grad_sq[0].shape, gram.output_gram.shape
    (6, torch.Size([5, 4]), torch.Size([5, 2, 2]))
    """
    if allowance is None:
        run = _unroll(module, x, patterns)
        passed = _gram_pass(run, drive=True, inject=False, track=False)
        errors = None
    else:
        run = allowance.unrolled
        with torch.no_grad():
            passed = _gram_pass(run, drive=True, inject=False, track=True)
            errors = _gram_errors(run, passed, allowance)
    readout = run.readout
    return RecurrentGram(
        output=run.output,
        pre=run.pre,
        counted=run.counted,
        negative_slopes=[run.negative_slope] * len(run.pre),
        grad_sq=passed.diagonals,
        output_gram=readout @ passed.final @ readout.T,
        grad_sq_error=None if errors is None else errors[0],
        output_gap_error=None if errors is None else errors[1],
    )


def _gram_errors(
    run: _Unrolled, passed: _GramPass, allowance: RecurrentAllowance
) -> tuple[list[Tensor], Tensor]:
    """Rounding bounds of a tracked Gram pass: per unit, and per pair of outputs.

    A unit's computed diagonal errs by the local error of its own sub-update plus
    at most ``Phi * reach^2``, ``Phi`` the largest local error before it.
    """
    local = run.in_order(passed.local)
    worst = local.cummax(dim=1).values
    earlier = run.by_block(torch.cat([torch.zeros_like(worst[:, :1]), worst[:, :-1]], dim=1))
    grad_sq_error = [
        _bounded(_SAFETY * (phi[:, None] * r.square() + own[:, None]))
        for phi, r, own in zip(earlier, allowance.reach, passed.local)
    ]
    readout = run.readout
    width = readout.shape[1]
    # |R| |G| |R|^T bounds every term the output Gram and the pair forms sum.
    spread = readout.abs() @ passed.final.abs() @ readout.abs().T
    diagonal = spread.diagonal(dim1=1, dim2=2)
    pairs = diagonal[:, :, None] + diagonal[:, None, :] + 2 * spread
    reach = allowance.output_reach.square()
    # For a positive semidefinite Q, (e_a - e_b)^T Q (e_a - e_b) <= 2 (Q_aa + Q_bb).
    spreads = 2 * (reach[:, :, None] + reach[:, None, :])
    gap_error = _SAFETY * (
        worst[:, -1, None, None] * spreads + gamma64(2 * (2 * width + 8)) * pairs
    )
    return grad_sq_error, _bounded(gap_error)


# ------------------------------------------------------------- full gradients


@dataclasses.dataclass(frozen=True)
class TangentErrors:
    """Entrywise bounds on the float64 rounding of a block of tangents.

    ``|computed[i, u, j] - exact[i, u, j]| <= reach[i, u] * sweep[i, j] + local[i, u]
    * state[i, j]`` for unit (or output) u and tangent j: the errors carried in
    from earlier sub-updates, and the block's own rounding.

    Attributes
    ----------
    reach, local : Tensor of shape (n, u)
    sweep, state : Tensor of shape (n, k)

    Examples
    --------
    >>> import torch
    >>> from sklearn_roll._recurrent import TangentErrors
    >>> errors = TangentErrors(torch.ones(1, 2), torch.zeros(1, 2), torch.ones(1, 3), torch.ones(1, 3))
    >>> errors.entries().shape, errors.norms(1).tolist()
    (torch.Size([1, 2, 3]), [[3.0, 3.0]])
    """

    reach: Tensor
    local: Tensor
    sweep: Tensor
    state: Tensor

    def _columns(self, columns: Tensor | None) -> tuple[Tensor, Tensor]:
        if columns is None:
            return self.sweep, self.state
        return self.sweep[:, columns], self.state[:, columns]

    def entries(self, columns: Tensor | None = None) -> Tensor:
        """The entrywise bounds (n, u, k), or only at the given tangents."""
        sweep, state = self._columns(columns)
        return (
            self.reach[:, :, None] * sweep[:, None, :] + self.local[:, :, None] * state[:, None, :]
        )

    def norms(self, q: float, columns: Tensor | None = None) -> Tensor:
        """Bounds (n, u) on the q-norm of each row's errors (over the given tangents)."""
        sweep, state = self._columns(columns)

        def size(v: Tensor) -> Tensor:
            return torch.linalg.vector_norm(v, ord=q, dim=1)[:, None]

        return self.reach * size(sweep) + self.local * size(state)


def _inner_norms(weights: list[Tensor]) -> tuple[Tensor, Tensor]:
    """Row norms and Frobenius norm of the horizontal concatenation of matrices."""
    rows = torch.stack([w.square().sum(dim=1) for w in weights]).sum(dim=0)
    return rows.sqrt(), rows.sum().sqrt()


@overload
def causal_linearize(
    module: ElmanRNN,
    x: Tensor,
    reduce: Reduce | None = None,
    *,
    patterns: list[Tensor] | None = None,
    allowance: None = None,
) -> Linearization: ...


@overload
def causal_linearize(
    module: ElmanRNN,
    x: Tensor,
    reduce: Reduce,
    *,
    patterns: list[Tensor] | None = None,
    allowance: RecurrentAllowance,
) -> tuple[Linearization, TangentErrors]: ...


def causal_linearize(
    module: ElmanRNN,
    x: Tensor,
    reduce: Reduce | None = None,
    *,
    patterns: list[Tensor] | None = None,
    allowance: RecurrentAllowance | None = None,
) -> Linearization | tuple[Linearization, TangentErrors]:
    """Every unit's full input gradient of an Elman RNN, following causality.

    Gives what ``linearize(module, x, "basis", reduce, patterns=patterns)`` gives,
    but the tangents of the input at step ``s`` (its C axes) start at step ``s``:
    at step ``t`` only the ``(t + 1) C`` axes of steps ``0 .. t`` are carried, each
    layer one matrix product over all sequences and tangents. That is half the
    arithmetic of pushing all ``T C`` axes through all steps, with
    O(T C sum_l H_l) tangent state per sequence. The results carry no autograd
    graph (the tangents live in buffers updated in place); the gradients of l2
    norms with respect to the parameters come from :func:`gram_recurrence`.

    Parameters
    ----------
    module : ElmanRNN
        The network; the arithmetic is in its dtype.
    x : Tensor of shape (n, T, C)
        Sequences, trailing all-NaN steps padding the shorter ones.
    reduce : callable or None, default=None
        Applied to each block of unit gradients, shaped (n, H_l, T*C), as soon as
        it is computed (step by step: every layer at step 0, then at step 1, ...);
        ``pre_tangents`` then holds the results in block order. The block is a
        buffer that the next step overwrites: ``reduce`` must not return it or a
        view of it. Only one block is alive at a time besides the tangent state.
    patterns : list of Tensor of bool, shape (n, H_l), or None, default=None
        The activation pattern to freeze, one tensor per block; None takes the
        module's own.
    allowance : RecurrentAllowance or None, default=None
        :func:`recurrent_allowance` of the same float64 module, points and pattern.
        Then ``reduce`` (required) is called as ``reduce(index, block, errors)``,
        with the block's position in ``pre`` and its :class:`TangentErrors`.

    Returns
    -------
    Linearization
        ``pre_tangents[l * T + t]`` is (n, H_l, T*C) (or ``reduce`` of it): entry
        ``[i, j, s * C + c]`` is the derivative of unit j of layer l at step t with
        respect to ``x[i, s, c]``, zero for ``s > t`` and at padded coordinates.
        ``output_tangents`` is the output's Jacobian (n, K, T*C), never reduced.
    output_errors : TangentErrors
        With an allowance only: the bounds of ``output_tangents``.

    Examples
    --------
    >>> import torch
    >>> from sklearn_roll.nn import ElmanRNN
    >>> from sklearn_roll._recurrent import causal_linearize
    >>> lin = causal_linearize(ElmanRNN(3, 2, hidden_layer_sizes=(4,)), torch.randn(5, 6, 3))
    >>> lin.pre_tangents[0].shape, lin.output_tangents.shape
    (torch.Size([5, 4, 18]), torch.Size([5, 2, 18]))
    """
    if allowance is not None and reduce is None:
        raise ValueError("causal_linearize with an allowance needs reduce(index, block, errors).")
    with torch.no_grad():
        run = _unroll(module, x, patterns) if allowance is None else allowance.unrolled
        n, T, C = x.shape
        L = len(run.recurrent)
        blocks: list[Any] = [None] * len(run.pre)
        # Per layer, the tangents of its state and of its pre-activations, in the
        # layout (n, units, T*C) of the blocks, so that a block is handed to
        # ``reduce`` as it lies (norms of strided views are several times slower).
        # The axes of steps 0 .. t are a prefix, into which the products write in
        # place: fresh temporaries of a growing size would cost a page fault per
        # page, more than the products themselves.
        states = [run.output.new_zeros(n, w.shape[0], T * C) for w in run.recurrent]
        spare = [torch.zeros_like(s) for s in states]
        sweep = _Sweep(run, C, allowance) if allowance is not None else None
        # Masks only at steps where some sequence is padded: a pass over the state less.
        full = run.valid.all(dim=0).tolist()
        for t in range(T):
            keep = run.valid[:, t, None, None]
            old, new = t * C, (t + 1) * C
            for layer, (V, W) in enumerate(zip(run.inputs, run.recurrent)):
                z = spare[layer]
                if layer == 0:
                    torch.matmul(W, states[0][:, :, :old], out=z[:, :, :old])
                    # x_t enters here, through its own C new axes (zero at a padded step).
                    z[:, :, old:new] = torch.where(keep, V, 0.0)
                else:
                    torch.matmul(V, states[layer - 1][:, :, :new], out=z[:, :, :new])
                    z[:, :, :old].baddbmm_(W.expand(n, -1, -1), states[layer][:, :, :old])
                block = layer * T + t
                if sweep is not None:
                    blocks[block] = reduce(block, z, sweep.errors(block, layer))
                else:
                    blocks[block] = z.clone() if reduce is None else reduce(z)
                # The new state, D z (the old one at a padded step), replaces z in its
                # buffer, and the old state's buffer takes the next step's z.
                live = z[:, :, :new].mul_(run.slopes[block][:, :, None])
                if not full[t]:
                    torch.where(keep, live, states[layer][:, :, :new], out=live)
                states[layer], spare[layer] = z, states[layer]
                if sweep is not None:
                    sweep.advance(layer, t, states[layer][:, :, :new])
        lin = run.linearization(blocks, run.readout @ states[-1])
        return lin if sweep is None else (lin, sweep.output_errors(L))


class _Sweep:
    """The rounding bounds of a causal sweep, carried along it (see the module docstring).

    Per tangent: ``sweep`` the l2 norm of the errors injected so far, ``columns[l]``
    the squared norms of layer l's state tangents.
    """

    def __init__(self, run: _Unrolled, channels: int, allowance: RecurrentAllowance) -> None:
        n, T = run.valid.shape
        self.run = run
        self.channels = channels
        self.allowance = allowance
        self.injected = run.output.new_zeros(n, T * channels)
        self.columns = [run.output.new_zeros(n, T * channels) for _ in run.recurrent]
        # Layer 0 reads its own state only (the input axes enter exactly, as copies);
        # layer l > 0 reads layer l - 1's state and its own.
        self.norms = [
            _inner_norms([run.recurrent[0]]),
            *(_inner_norms([V, W]) for V, W in zip(run.inputs[1:], run.recurrent[1:])),
        ]
        sizes = [w.shape[0] for w in run.recurrent]
        self.gammas = [gamma64(2 * (sizes[0] + 4))] + [
            gamma64(2 * (sizes[k - 1] + sizes[k] + 5)) for k in range(1, len(sizes))
        ]
        # Multiplying the entering columns of V by a slope other than 0 or 1 rounds.
        self.entering = torch.linalg.vector_norm(run.inputs[0], dim=0)
        self.state = self.columns[0]

    def errors(self, block: int, layer: int) -> TangentErrors:
        """The bounds of a block, before its sub-update adds its own rounding.

        Keeps the norms of the state tangents the block was computed from, which
        :meth:`advance` needs.
        """
        if layer == 0:
            state = self.columns[0]
        else:
            state = self.columns[layer - 1] + self.columns[layer]
        self.state = state.sqrt()
        rows, _ = self.norms[layer]
        return TangentErrors(
            reach=_SAFETY * self.allowance.reach[block],
            local=_SAFETY * self.gammas[layer] * rows.expand_as(self.allowance.reach[block]),
            sweep=self.injected.sqrt(),
            state=self.state,
        )

    def advance(self, layer: int, t: int, state: Tensor) -> None:
        """Add the sub-update's rounding and take the new state's column norms."""
        run, C = self.run, self.channels
        _, frobenius = self.norms[layer]
        new = (t + 1) * C
        size = 2 * frobenius * self.state[:, :new]
        if layer == 0:
            size[:, t * C : new] = size[:, t * C : new] + self.entering
        xi = (run.gain * self.gammas[layer] * size).square()
        self.injected[:, :new] += torch.where(run.valid[:, t, None], xi, 0.0)
        self.columns[layer][:, :new] = torch.linalg.vector_norm(state, dim=1).square()

    def output_errors(self, layers: int) -> TangentErrors:
        """The bounds of the output's Jacobian ``R h`` after the last step."""
        readout = self.run.readout
        rows = torch.linalg.vector_norm(readout, dim=1)
        g = gamma64(2 * (readout.shape[1] + 4))
        return TangentErrors(
            reach=_SAFETY * self.allowance.output_reach,
            local=_SAFETY * g * rows.expand_as(self.allowance.output_reach),
            sweep=self.injected.sqrt(),
            state=self.columns[layers - 1].sqrt(),
        )


@overload
def directional_linearize(
    module: ElmanRNN,
    x: Tensor,
    direction: Tensor,
    reduce: None = None,
    *,
    patterns: list[Tensor] | None = None,
    allowance: None = None,
) -> Linearization: ...


@overload
def directional_linearize(
    module: ElmanRNN,
    x: Tensor,
    direction: Tensor,
    reduce: Reduce,
    *,
    patterns: list[Tensor] | None = None,
    allowance: RecurrentAllowance,
) -> tuple[Linearization, TangentErrors]: ...


def directional_linearize(
    module: ElmanRNN,
    x: Tensor,
    direction: Tensor,
    reduce: Reduce | None = None,
    *,
    patterns: list[Tensor] | None = None,
    allowance: RecurrentAllowance | None = None,
) -> Linearization | tuple[Linearization, TangentErrors]:
    """Every unit's derivative along one input direction per sequence.

    Gives what ``linearize(module, x, direction[None], patterns=patterns)`` gives,
    by one linearized forward pass.

    Parameters
    ----------
    module : ElmanRNN
        The network; the arithmetic is in its dtype.
    x : Tensor of shape (n, T, C)
        Sequences, trailing all-NaN steps padding the shorter ones.
    direction : Tensor of shape (n, T, C)
        One direction per sequence; its entries at padded steps are ignored (they
        may be NaN).
    reduce : callable or None, default=None
        With an allowance (only then), called as ``reduce(index, block, errors)`` on
        every block of derivatives (n, H_l, 1), with its position in ``pre`` and its
        :class:`TangentErrors`; the results take the blocks' places.
    patterns : list of Tensor of bool, shape (n, H_l), or None, default=None
        The activation pattern to freeze, one tensor per block; None takes the
        module's own.
    allowance : RecurrentAllowance or None, default=None
        :func:`recurrent_allowance` of the same float64 module, points and pattern
        (no autograd then).

    Returns
    -------
    Linearization
        ``pre_tangents[l * T + t]`` of shape (n, H_l, 1) holds ``g_u . direction``
        (or ``reduce`` of it); ``output_tangents`` (n, K, 1) the output's
        derivative.
    output_errors : TangentErrors
        With an allowance only: the bounds of ``output_tangents``.

    Examples
    --------
    >>> import torch
    >>> from sklearn_roll.nn import ElmanRNN
    >>> from sklearn_roll._recurrent import directional_linearize
    >>> rnn, x = ElmanRNN(3, 2, hidden_layer_sizes=(4,)), torch.randn(5, 6, 3)
    >>> directional_linearize(rnn, x, torch.randn(5, 6, 3)).pre_tangents[0].shape
    torch.Size([5, 4, 1])
    """
    if direction.shape != x.shape:
        raise ValueError(
            f"direction must have the shape of x, {tuple(x.shape)}, got {tuple(direction.shape)}."
        )
    if (allowance is None) != (reduce is None):
        raise ValueError(
            "directional_linearize takes reduce(index, block, errors) with an allowance."
        )
    if allowance is None:
        return _directional(_unroll(module, x, patterns), direction, None)
    with torch.no_grad():
        return _directional(allowance.unrolled, direction, (reduce, allowance))


def _directional(
    run: _Unrolled, direction: Tensor, bounds: tuple[Reduce, RecurrentAllowance] | None
) -> Linearization | tuple[Linearization, TangentErrors]:
    n, T = run.valid.shape
    blocks: list[Any] = [None] * len(run.pre)
    seq = torch.where(run.valid[:, :, None], direction, 0.0)
    # The error injected so far (its l2 norm squared), in the order of this pass:
    # layer by layer, a superset of the sub-updates that reach each unit.
    injected = run.output.new_zeros(n)
    for layer, (V, W) in enumerate(zip(run.inputs, run.recurrent)):
        drive = seq @ V.T
        h = drive.new_zeros(n, W.shape[0])
        if bounds is not None:
            rows, frobenius = _inner_norms([V, W])
            g = gamma64(2 * (V.shape[1] + W.shape[1] + 5))
            entering = seq.square().sum(dim=2)
        states = []
        for t in range(T):
            z = drive[:, t] + h @ W.T
            block = layer * T + t
            if bounds is None:
                blocks[block] = z[:, :, None]
            else:
                reduce, allowance = bounds
                size = (entering[:, t] + h.square().sum(dim=1)).sqrt()
                errors = TangentErrors(
                    reach=_SAFETY * allowance.reach[block],
                    local=_SAFETY * g * rows.expand_as(z),
                    sweep=injected.sqrt()[:, None],
                    state=size[:, None],
                )
                blocks[block] = reduce(block, z[:, :, None], errors)
                xi = (run.gain * g * 2 * frobenius * size).square()
                injected = injected + torch.where(run.valid[:, t], xi, 0.0)
            h = torch.where(run.valid[:, t, None], run.slopes[layer * T + t] * z, h)
            states.append(h)
        seq = torch.stack(states, dim=1)
    lin = run.linearization(blocks, (h @ run.readout.T)[:, :, None])
    if bounds is None:
        return lin
    _, allowance = bounds
    readout = run.readout
    g = gamma64(2 * (readout.shape[1] + 4))
    rows = torch.linalg.vector_norm(readout, dim=1)
    return lin, TangentErrors(
        reach=_SAFETY * allowance.output_reach,
        local=_SAFETY * g * rows.expand_as(allowance.output_reach),
        sweep=injected.sqrt()[:, None],
        state=torch.linalg.vector_norm(h, dim=1)[:, None],
    )
