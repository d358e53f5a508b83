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
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import torch
from torch import Tensor, nn

from .linearize import Linearization
from .nn.rnn import ElmanRNN

__all__ = [
    "RecurrentGram",
    "causal_linearize",
    "directional_linearize",
    "gram_recurrence",
]

Reduce = Callable[[Tensor], Tensor]


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
        With ``absolute=True``: ``||a_u||_2^2`` for the gradient ``a_u`` of the
        network whose matrices and slopes are replaced by their absolute values;
        ``a_u >= |g_u|`` entrywise, so this bounds ``||g_u||_2^2`` from above.
    output_gram : Tensor of shape (n, K, K)
        ``J J^T`` for the output's input Jacobian ``J`` (n, K, T*C), so that
        ``||grad f_i - grad f_k||_2^2 = (e_i - e_k)^T G (e_i - e_k)``. With
        ``absolute=True``: ``A A^T`` for the Jacobian ``A >= |J|`` of the
        absolute-valued network, an entrywise upper bound on ``|J| |J|^T`` and
        hence on ``|J J^T|``.
    """

    output: Tensor
    pre: list[Tensor]
    counted: list[Tensor]
    negative_slopes: list[float]
    grad_sq: list[Tensor]
    output_gram: Tensor


@dataclasses.dataclass(frozen=True)
class _Unrolled:
    """One forward pass of an ElmanRNN, with what the tangent recurrences need.

    ``inputs[l]`` (H_l, H_{l-1}) and ``recurrent[l]`` (H_l, H_l) are the layers'
    matrices (the Cayley map evaluated once), ``readout`` (K, H_{L-1}) the output
    layer's; ``slopes`` holds the frozen slope of every unit, block by block like
    ``pre``; ``valid`` (n, T) marks the steps that are not padding.
    """

    valid: Tensor
    inputs: list[Tensor]
    recurrent: list[Tensor]
    readout: Tensor
    pre: list[Tensor]
    slopes: list[Tensor]
    negative_slope: float
    output: Tensor

    @property
    def counted(self) -> list[Tensor]:
        T = self.valid.shape[1]
        return [self.valid[:, i % T, None].expand_as(z) for i, z in enumerate(self.pre)]

    def linearization(self, pre_tangents: list[Tensor], output_tangents: Tensor) -> Linearization:
        return Linearization(
            output=self.output,
            pre=self.pre,
            counted=self.counted,
            negative_slopes=[self.negative_slope] * len(self.pre),
            pre_tangents=pre_tangents,
            output_tangents=output_tangents,
        )


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
    pre: list[Tensor] = []
    slopes: list[Tensor] = []
    recurrent_weights: list[Tensor] = []
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
    return _Unrolled(
        valid=valid,
        inputs=[layer.weight for layer in module.inputs],
        recurrent=recurrent_weights,
        readout=module.out.weight,
        pre=pre,
        slopes=slopes,
        negative_slope=negative_slope,
        output=module.out(h),
    )


# ----------------------------------------------------------------- Gram matrices


def gram_recurrence(
    module: ElmanRNN,
    x: Tensor,
    *,
    patterns: list[Tensor] | None = None,
    absolute: bool = False,
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
    absolute : bool, default=False
        Run the recurrence with the entrywise absolute values of the matrices and
        slopes: ``grad_sq`` and ``output_gram`` then bound the Gram matrices of the
        absolute-valued Jacobians from above, entrywise (pre-activations and output
        are still the module's own).

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
    run = _unroll(module, x, patterns)
    magnitude: Callable[[Tensor], Tensor] = torch.abs if absolute else _identity
    V = [magnitude(w) for w in run.inputs]
    W = [magnitude(w) for w in run.recurrent]
    sizes = [w.shape[0] for w in W]
    n, T = run.valid.shape
    # gram[i][k]: the Gram block of layer i's and layer k's current states; the
    # initial states are constant, so the blocks start at zero.
    gram = [[run.output.new_zeros(n, a, b) for b in sizes] for a in sizes]
    drive_gram = V[0] @ V[0].T
    grad_sq: list[Tensor] = [run.output.new_empty(0)] * len(run.pre)
    # Without autograd the diagonals go into storage allocated up front: small
    # tensors allocated between a step's large temporaries fragment the heap, which
    # then grows by about one temporary per step.
    storage = [run.output.new_empty(T, n, size) for size in sizes]
    for t in range(T):
        keep = run.valid[:, t, None, None]
        for layer in range(len(W)):
            block = layer * T + t
            if layer == 0:
                # x_t has Gram I and no cross terms with the states of step t-1.
                rows = [W[0] @ g for g in gram[0]]
                # Fused products: under autograd every temporary fragments the heap.
                drive = torch.where(keep, drive_gram, 0.0)
                z_gram = torch.baddbmm(drive, rows[0], W[0].T.expand(n, -1, -1))
            else:
                inputs = V[layer].expand(n, -1, -1)
                rows = [
                    torch.baddbmm(W[layer] @ own, inputs, below)
                    for below, own in zip(gram[layer - 1], gram[layer])
                ]
                z_gram = torch.baddbmm(rows[layer] @ W[layer].T, rows[layer - 1], inputs.mT)
            diagonal = z_gram.diagonal(dim1=1, dim2=2)
            if diagonal.requires_grad:
                # A view would keep all of z_gram alive for the backward pass.
                grad_sq[block] = diagonal.clone()
            else:
                grad_sq[block] = storage[layer][t].copy_(diagonal)
            _replace_state(gram, layer, rows, z_gram, magnitude(run.slopes[block]), keep)
    readout = magnitude(run.readout)
    return RecurrentGram(
        output=run.output,
        pre=run.pre,
        counted=run.counted,
        negative_slopes=[run.negative_slope] * len(run.pre),
        grad_sq=grad_sq,
        output_gram=readout @ gram[-1][-1] @ readout.T,
    )


def _identity(t: Tensor) -> Tensor:
    return t


def _replace_state(
    gram: list[list[Tensor]],
    layer: int,
    rows: list[Tensor],
    z_gram: Tensor,
    slopes: Tensor,
    keep: Tensor,
) -> None:
    """Replace the state of ``layer`` by ``D z`` in the joint Gram matrix (not where padded).

    ``rows[k]`` holds the cross Gram block of ``z`` with layer k's current state and
    ``z_gram`` that of ``z`` with itself.
    """
    d = slopes[:, :, None]
    for k, row in enumerate(rows):
        if k != layer:
            gram[layer][k] = torch.where(keep, d * row, gram[layer][k])
            gram[k][layer] = gram[layer][k].mT
    gram[layer][layer] = torch.where(keep, d * z_gram * d.mT, gram[layer][layer])


# ------------------------------------------------------------- full gradients


def causal_linearize(
    module: ElmanRNN,
    x: Tensor,
    reduce: Reduce | None = None,
    *,
    patterns: list[Tensor] | None = None,
) -> Linearization:
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

    Returns
    -------
    Linearization
        ``pre_tangents[l * T + t]`` is (n, H_l, T*C) (or ``reduce`` of it): entry
        ``[i, j, s * C + c]`` is the derivative of unit j of layer l at step t with
        respect to ``x[i, s, c]``, zero for ``s > t`` and at padded coordinates.
        ``output_tangents`` is the output's Jacobian (n, K, T*C), never reduced.

    Examples
    --------
    >>> import torch
    >>> from sklearn_roll.nn import ElmanRNN
    >>> from sklearn_roll._recurrent import causal_linearize
    >>> lin = causal_linearize(ElmanRNN(3, 2, hidden_layer_sizes=(4,)), torch.randn(5, 6, 3))
    >>> lin.pre_tangents[0].shape, lin.output_tangents.shape
    (torch.Size([5, 4, 18]), torch.Size([5, 2, 18]))
    """
    with torch.no_grad():
        run = _unroll(module, x, patterns)
        n, T, C = x.shape
        blocks: list[Tensor] = [run.output.new_empty(0)] * len(run.pre)
        # Per layer, the tangents of its state and of its pre-activations, in the
        # layout (n, units, T*C) of the blocks, so that a block is handed to
        # ``reduce`` as it lies (norms of strided views are several times slower).
        # The axes of steps 0 .. t are a prefix, into which the products write in
        # place: fresh temporaries of a growing size would cost a page fault per
        # page, more than the products themselves.
        states = [run.output.new_zeros(n, w.shape[0], T * C) for w in run.recurrent]
        spare = [torch.zeros_like(s) for s in states]
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
                blocks[layer * T + t] = z.clone() if reduce is None else reduce(z)
                # The new state, D z (the old one at a padded step), replaces z in its
                # buffer, and the old state's buffer takes the next step's z.
                live = z[:, :, :new].mul_(run.slopes[layer * T + t][:, :, None])
                if not full[t]:
                    torch.where(keep, live, states[layer][:, :, :new], out=live)
                states[layer], spare[layer] = z, states[layer]
        return run.linearization(blocks, run.readout @ states[-1])


def directional_linearize(
    module: ElmanRNN,
    x: Tensor,
    direction: Tensor,
    *,
    patterns: list[Tensor] | None = None,
) -> Linearization:
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
    patterns : list of Tensor of bool, shape (n, H_l), or None, default=None
        The activation pattern to freeze, one tensor per block; None takes the
        module's own.

    Returns
    -------
    Linearization
        ``pre_tangents[l * T + t]`` of shape (n, H_l, 1) holds ``g_u . direction``;
        ``output_tangents`` (n, K, 1) the output's derivative.

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
    run = _unroll(module, x, patterns)
    n, T, _ = x.shape
    blocks: list[Tensor] = [run.output.new_empty(0)] * len(run.pre)
    seq = torch.where(run.valid[:, :, None], direction, 0.0)
    for layer, (V, W) in enumerate(zip(run.inputs, run.recurrent)):
        drive = seq @ V.T
        h = drive.new_zeros(n, W.shape[0])
        states = []
        for t in range(T):
            z = drive[:, t] + h @ W.T
            blocks[layer * T + t] = z[:, :, None]
            h = torch.where(run.valid[:, t, None], run.slopes[layer * T + t] * z, h)
            states.append(h)
        seq = torch.stack(states, dim=1)
    return run.linearization(blocks, (h @ run.readout.T)[:, :, None])
