"""Running a module while recording its units and checking every operation it applies.

A :class:`~torch.overrides.TorchFunctionMode` sees every torch call, ``F.relu`` as
well as ``nn.ReLU`` (forward hooks would miss the former). It tracks which tensors
depend on the input, records the input of every ReLU / LeakyReLU as a layer of units,
optionally replaces each activation by multiplication with the slopes of a given
pattern, and refuses, naming the layer, any operation whose rule in
:mod:`sklearn_roll._ops` says the certificates cannot model it.
"""

from __future__ import annotations

import contextlib
import contextvars
import weakref
from collections.abc import Iterator
from typing import Any

import torch
from torch import Tensor, nn
from torch.overrides import TorchFunctionMode

from ._ops import lookup, tensors

__all__ = [
    "MagnitudeRecorder",
    "Recorder",
    "UnsupportedOperationError",
    "first_output",
    "frozen_slopes",
    "run",
    "unit_mask",
]


class UnsupportedOperationError(ValueError):
    """Raised when a module uses an operation the certificates cannot model.

    The message names the operation, the layer that applied it, and what to use
    instead.

    Examples
    --------
    >>> import torch
    >>> from torch import nn
    >>> from sklearn_roll.linearize import UnsupportedOperationError, check_supported
    >>> try:
    ...     check_supported(nn.Sequential(nn.Linear(2, 2), nn.Tanh()), torch.zeros(1, 2))
    ... except UnsupportedOperationError as error:
    ...     print(str(error)[:44])
    Unsupported operation 'tanh' in layer '1' (T
    """


# The BatchNorm layers (their lazy variants are subclasses).
_BATCH_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm)

_UNIT_MASK: contextvars.ContextVar[Tensor | None] = contextvars.ContextVar(
    "sklearn_roll_unit_mask", default=None
)


@contextlib.contextmanager
def unit_mask(mask: Tensor) -> Iterator[None]:
    """Count only some units of the activations applied inside the block.

    Sequence modules use it so that hidden units at padded time steps never enter a
    margin, a gradient or the loss. Outside a recording it does nothing.

    Parameters
    ----------
    mask : Tensor of bool
        Broadcastable to the pre-activation passed to each activation in the block;
        True marks the units that count.

    Examples
    --------
    >>> import torch
    >>> from sklearn_roll.nn import unit_mask
    >>> pre = torch.randn(3, 4)
    >>> valid = torch.tensor([True, True, False])
    >>> with unit_mask(valid[:, None]):
    ...     h = torch.relu(pre)
    """
    token = _UNIT_MASK.set(mask)
    try:
        yield
    finally:
        _UNIT_MASK.reset(token)


def frozen_slopes(on: Tensor, negative_slope: float, dtype: torch.dtype) -> Tensor:
    """Activation slopes of a pattern: 1 where a unit is on, else the slope below zero.

    The slope is converted to ``dtype`` exactly once: with two Python scalars
    ``torch.where`` returns the default dtype, which would round 0.01 to float32 even
    when the network computes in float64.

    Parameters
    ----------
    on : Tensor of bool
        The pattern (True: the unit is on).
    negative_slope : float
        Slope below zero (0 for ReLU).
    dtype : torch.dtype
        The dtype of the result.

    Returns
    -------
    Tensor of ``dtype``, shaped like ``on``

    Examples
    --------
    >>> import torch
    >>> from sklearn_roll.linearize import frozen_slopes
    >>> frozen_slopes(torch.tensor([True, False]), 0.01, torch.float64).tolist()
    [1.0, 0.01]
    """
    slope = torch.tensor(negative_slope, dtype=dtype, device=on.device)
    return torch.where(on, torch.ones((), dtype=dtype, device=on.device), slope)


def first_output(out: Any) -> Tensor:
    """The logits among a module's outputs, as a (n, n_outputs) tensor.

    Modules may return extra outputs in a tuple; the first one is the prediction.

    Parameters
    ----------
    out : Tensor or tuple of Tensor
        What the module returned.

    Returns
    -------
    Tensor

    Examples
    --------
    >>> import torch
    >>> from sklearn_roll.linearize import first_output
    >>> first_output((torch.zeros(2, 3), "extra")).shape
    torch.Size([2, 3])
    """
    if isinstance(out, (tuple, list)):
        out = out[0]
    if not isinstance(out, Tensor):
        raise TypeError(f"The module must return a tensor, got {type(out).__name__}.")
    return out.reshape(out.shape[0], -1)


class Recorder(TorchFunctionMode):
    """Record activations and check every operation that touches the input.

    Dependence on the input is tracked by identity: the input is dependent, and so is
    every output of an operation with a dependent argument (constant-kind operations
    excepted). Operations on parameters alone (weight parametrizations, masks) pass
    unchecked.

    Attributes
    ----------
    pre : list of Tensor
        The input of every activation call, in call order.
    masks : list of (Tensor of bool) or None
        Which of its units count (:func:`unit_mask`), None for all.
    negative_slopes : list of float
        Each call's slope below zero (0 for ReLU).
    """

    def __init__(
        self, module: nn.Module, inputs: Tensor, patterns: list[Tensor] | None = None
    ) -> None:
        super().__init__()
        self.module = module
        self.patterns = patterns
        self.pre: list[Tensor] = []
        self.masks: list[Tensor | None] = []
        self.negative_slopes: list[float] = []
        self._dependent: dict[int, weakref.ref] = {}
        self._scope: list[tuple[str, nn.Module]] = []
        self._hooks: list[Any] = []
        self._held: list[tuple[nn.Module, Tensor | None, float | None]] = []
        self._n = inputs.shape[0]
        self._mark(inputs)

    def __enter__(self) -> Recorder:
        for name, sub in self.module.named_modules():
            self._hooks.append(sub.register_forward_pre_hook(self._enter_scope(name, sub)))
            self._hooks.append(sub.register_forward_hook(self._leave_scope))
            if isinstance(sub, _BATCH_NORMS) and sub.training:
                # Train-mode BatchNorm counts its batches in place, which a recording
                # must not do (and forward-mode transforms refuse): the linearization
                # holds the batch statistics constant and updates nothing. Without a
                # count its momentum must be a number, which the frozen call ignores.
                self._held.append((sub, sub.num_batches_tracked, sub.momentum))
                sub.num_batches_tracked = None
                sub.momentum = 0.0
        return super().__enter__()

    def __exit__(self, *exc: Any) -> None:
        for hook in self._hooks:
            hook.remove()
        self._hooks.clear()
        for sub, count, momentum in self._held:
            sub.num_batches_tracked, sub.momentum = count, momentum
        self._held.clear()
        return super().__exit__(*exc)

    def _enter_scope(self, name: str, sub: nn.Module):
        def hook(module: nn.Module, args: Any) -> None:
            self._scope.append((name, sub))

        return hook

    def _leave_scope(self, module: nn.Module, args: Any, output: Any) -> None:
        if self._scope:
            self._scope.pop()

    def _mark(self, obj: Any) -> None:
        for tensor in tensors(obj):
            self._dependent[id(tensor)] = weakref.ref(tensor)

    def is_dependent(self, tensor: Tensor) -> bool:
        """Whether ``tensor`` depends on the recorded input."""
        ref = self._dependent.get(id(tensor))
        return ref is not None and ref() is tensor

    def _where(self) -> str:
        for name, sub in reversed(self._scope):
            if name:
                return f" in layer '{name}' ({type(sub).__name__})"
        return f" in {type(self.module).__name__}.forward"

    def _refuse(self, op: str, reason: str) -> None:
        raise UnsupportedOperationError(f"Unsupported operation '{op}'{self._where()}: {reason}.")

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        dependent = [t for t in tensors((args, kwargs)) if self.is_dependent(t)]
        if not dependent:
            return func(*args, **kwargs)
        name, rule, inplace = lookup(func)
        if rule.kind == "constant":
            return func(*args, **kwargs)
        if rule.kind == "activation":
            return self._activation(func, name, rule.slope, inplace, args, kwargs)
        reason = rule.refusal(args, kwargs, dependent, self.is_dependent)
        if reason:
            self._refuse(name, reason)
        args, kwargs = rule.prepared(args, kwargs)
        out = self._apply(func, name, rule, inplace, args, kwargs, dependent)
        self._mark(out)
        if inplace and args:
            self._mark(args[0])
        return out

    def _apply(self, func, name, rule, inplace, args, kwargs, dependent):
        """Run an affine call on input-dependent values (override point)."""
        return func(*args, **kwargs)

    @staticmethod
    def _activation_arguments(position, inplace, args, kwargs) -> tuple[Tensor, float, bool]:
        """The input, the slope below zero and the in-place flag of an activation call."""
        z = args[0] if args else kwargs["input"]
        slope = 0.0
        if position is not None:
            given = args[position] if len(args) > position else kwargs.get("negative_slope", 0.01)
            slope = float(given)
        where = 1 if position is None else position + 1
        inplace = inplace or bool(
            args[where] if len(args) > where else kwargs.get("inplace", False)
        )
        return z, slope, inplace

    def _activation(self, func, name, position, inplace, args, kwargs):
        z, slope, inplace = self._activation_arguments(position, inplace, args, kwargs)
        if z.dim() == 0 or z.shape[0] != self._n:
            self._refuse(
                name,
                "its input does not have the batch dimension first, so its units "
                "cannot be attributed to examples",
            )
        mask = _UNIT_MASK.get()
        index = len(self.pre)
        self.pre.append(z.clone() if inplace else z)
        self.masks.append(None if mask is None else mask.expand(z.shape))
        self.negative_slopes.append(slope)
        if self.patterns is None:
            out = func(*args, **kwargs)
        else:
            s = frozen_slopes(self.patterns[index].reshape(z.shape), slope, z.dtype)
            out = z.mul_(s) if inplace else z * s
        self._mark(out)
        return out


class MagnitudeRecorder(Recorder):
    """Run a module on magnitudes, counting the roundings that reach every value.

    The input is the absolute value of a point; each operation runs as its rule in
    :mod:`sklearn_roll._ops` says (constants made absolute, subtractions turned into
    additions), and each activation multiplies by the absolute value of its frozen
    slope. The results bound, term by term, what the module's float64 forward pass
    sums at that point; ``counts`` holds, per recorded activation call, how many
    roundings reach its input (the longest chain of inner products and sums).

    Attributes
    ----------
    counts : list of int
        Roundings that reach each activation call's input.
    """

    def __init__(self, module: nn.Module, inputs: Tensor, patterns: list[Tensor]) -> None:
        super().__init__(module, inputs, patterns)
        self.counts: list[int] = []
        self._roundings: dict[int, int] = {id(inputs): 0}

    def rounds(self, tensor: Tensor) -> int:
        """The roundings that reach an input-dependent tensor."""
        return self._roundings.get(id(tensor), 0)

    def _count(self, obj: Any, count: int) -> None:
        for tensor in tensors(obj):
            self._roundings[id(tensor)] = count

    def _apply(self, func, name, rule, inplace, args, kwargs, dependent):
        out = rule.on_magnitudes(func, name, args, kwargs, self.is_dependent)
        count = max(self.rounds(t) for t in dependent) + rule.roundings(args, kwargs, out)
        self._count(out, count)
        if inplace and args:
            self._count(args[0], count)
        return out

    def _activation(self, func, name, position, inplace, args, kwargs):
        z, slope, _ = self._activation_arguments(position, inplace, args, kwargs)
        count = self.rounds(z)
        index = len(self.pre)
        mask = _UNIT_MASK.get()
        self.pre.append(z)
        self.masks.append(None if mask is None else mask.expand(z.shape))
        self.negative_slopes.append(slope)
        self.counts.append(count)
        on = self.patterns[index].reshape(z.shape)
        out = z * frozen_slopes(on, abs(slope), z.dtype)
        self._mark(out)
        # Multiplying by 1 or 0 is exact; by another slope, one rounding.
        self._count(out, count + (0 if slope in (0.0, 1.0) else 1))
        return out


def run(
    module: nn.Module, x: Tensor, patterns: list[Tensor] | None = None
) -> tuple[Tensor, Recorder]:
    """Run ``module`` on ``x`` under a :class:`Recorder`; return the logits and the record.

    Parameters
    ----------
    module : nn.Module
        The network.
    x : Tensor of shape (n, ...)
        The input.
    patterns : list of Tensor of bool, or None, default=None
        Freeze each activation call to these slopes instead of applying it.

    Returns
    -------
    logits : Tensor of shape (n, n_outputs)
    recorder : Recorder
    """
    recorder = Recorder(module, x, patterns)
    with recorder:
        out = module(x)
    return first_output(out), recorder
