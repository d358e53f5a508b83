"""Recording pre-activations and the linearized forward of piecewise-linear networks.

A network built from affine maps and ReLU / LeakyReLU activations is affine once
its activation pattern is frozen. This module runs a network on a batch, records the
pre-activation ``z_u(x)`` of every hidden unit (every input of a ReLU or LeakyReLU),
and pushes tangent directions ``v`` through the network with the pattern frozen, which
gives the directional derivatives ``g_u(x) . v`` of every unit at once, without one
backward pass per unit (DESIGN section 3).

Two engines produce the same :class:`Linearization`:

* a fast path for plain chains of ``nn.Linear`` and activations (``nn.Sequential``,
  including :class:`sklearn_roll.nn.MLP`), which propagates the Jacobian layer by
  layer as large matrix products and, for l2 norms, works in the row space of the
  first layer (``W1 = R^T Q^T``), so its cost does not grow with the input dimension;
* a general path for any module, which uses forward-mode automatic differentiation
  (:func:`torch.func.jvp` under :func:`torch.func.vmap`) while a
  :class:`~torch.overrides.TorchFunctionMode` records activations and refuses every
  operation the certificates cannot model.
"""

from __future__ import annotations

import contextlib
import contextvars
import copy
import dataclasses
import math
import weakref
from collections.abc import Callable, Iterator
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import jvp, vmap
from torch.overrides import TorchFunctionMode, resolve_name

__all__ = [
    "AxisTangents",
    "Linearization",
    "UnsupportedOperationError",
    "chain_vjp",
    "check_supported",
    "first_output",
    "float64_copy",
    "frozen_slopes",
    "linear_chain",
    "linearize",
    "record",
    "tangent_count",
    "unit_mask",
]


Reduce = Callable[[Tensor], Tensor]


@dataclasses.dataclass(frozen=True)
class AxisTangents:
    """Input coordinate axes as tangents, given by index rather than as one-hot tensors.

    A Linear chain pushes an axis through its first layer by selecting a column of the
    weight matrix instead of multiplying by a one-hot vector.

    Attributes
    ----------
    indices : Tensor of int64, shape (k, n)
        ``indices[j, i]`` is the flat input coordinate of example i's j-th tangent.
    """

    indices: Tensor

    def dense(self, x: Tensor) -> Tensor:
        """The tangents as one-hot tensors of shape (k, n, ...) like x."""
        k, n = self.indices.shape
        flat = torch.zeros(k, n, math.prod(x.shape[1:]), dtype=x.dtype, device=x.device)
        flat.scatter_(2, self.indices[:, :, None], 1.0)
        return flat.reshape(k, *x.shape)


Tangents = str | Tensor | AxisTangents


class UnsupportedOperationError(ValueError):
    """Raised when a module uses an operation the certificates cannot model."""


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


@dataclasses.dataclass
class Linearization:
    """Unit pre-activations and their directional derivatives at a batch of points.

    Each list holds one entry per recorded activation call (a layer, or a layer at
    one time step), with the units of that call flattened.

    Attributes
    ----------
    output : Tensor of shape (n, n_outputs)
        The network's output (logits) at the points.
    pre : list of Tensor of shape (n, u)
        Pre-activations ``z_u(x)``.
    counted : list of (Tensor of bool, shape (n, u)) or None
        Which units count (False at padded time steps); None means all of them.
    negative_slopes : list of float
        Slope of each call's activation below zero (0 for ReLU).
    pre_tangents : list of Tensor of shape (n, u, k), or None
        ``g_u(x) . v_j`` for the k tangent directions.
    output_tangents : Tensor of shape (n, n_outputs, k), or None
        Directional derivatives of the output.
    """

    output: Tensor
    pre: list[Tensor]
    counted: list[Tensor | None]
    negative_slopes: list[float]
    pre_tangents: list[Tensor] | None = None
    output_tangents: Tensor | None = None

    @property
    def n_units(self) -> int:
        """Number of units per example, padded ones included."""
        return sum(z.shape[1] for z in self.pre)


# --------------------------------------------------------------------------- ops

_MAX_POOL = (
    "max pooling is piecewise linear, but the certificates do not model its "
    "switching between inputs; use average pooling (nn.AvgPool2d) or a strided "
    "convolution instead"
)
_SMOOTH = "it is not piecewise linear; use nn.ReLU or nn.LeakyReLU instead"
_BRANCH = (
    "it makes a data-dependent choice that the certificates do not model; express "
    "the nonlinearity with nn.ReLU or nn.LeakyReLU instead"
)
_NORM = (
    "it divides by statistics of the input, which is not piecewise linear; remove "
    "it, or use BatchNorm in eval mode"
)
_SOFTMAX = (
    "return logits from the module instead: the estimator applies the softmax "
    "itself in predict_proba"
)
_BN_TRAIN = (
    "BatchNorm in training mode normalises by the statistics of the batch, which "
    "couples the examples and is not piecewise linear; keep the BatchNorm layers "
    "in eval mode (frozen) or remove them"
)
_CUT = "it cuts the input gradient, so the linearization would be wrong; remove it"
_PRODUCT = (
    "it multiplies two input-dependent tensors, which is not piecewise linear; "
    "one factor must not depend on the input"
)
_DIVISOR = "it divides by an input-dependent tensor, which is not piecewise linear"

_ACTIVATIONS = {"relu", "leaky_relu"}

_REFUSED: dict[str, str] = {}
for _name in (
    "max_pool1d max_pool2d max_pool3d max_pool1d_with_indices max_pool2d_with_indices "
    "max_pool3d_with_indices adaptive_max_pool1d adaptive_max_pool2d adaptive_max_pool3d "
    "adaptive_max_pool1d_with_indices adaptive_max_pool2d_with_indices "
    "adaptive_max_pool3d_with_indices fractional_max_pool2d fractional_max_pool3d "
    "max_unpool1d max_unpool2d max_unpool3d lp_pool1d lp_pool2d lp_pool3d"
).split():
    _REFUSED[_name] = _MAX_POOL
for _name in (
    "tanh sigmoid gelu softplus silu elu selu celu mish hardswish hardsigmoid "
    "logsigmoid softsign tanhshrink exp exp2 log log1p log2 log10 expm1 sqrt rsqrt "
    "pow square sin cos tan erf erfc reciprocal glu rrelu logit norm std var "
    "logsumexp prod cumprod prelu sinh cosh asinh atan"
).split():
    _REFUSED[_name] = _SMOOTH
for _name in (
    "abs absolute clamp clip clamp_min clamp_max max min maximum minimum fmax fmin "
    "amax amin aminmax sign sgn signbit floor ceil round trunc frac fix sort topk "
    "argmax argmin argsort gt lt ge le eq ne greater less greater_equal less_equal "
    "not_equal equal heaviside hardtanh relu6 threshold hardshrink softshrink median "
    "nanmedian mode kthvalue quantile nanquantile cummax cummin any all remainder "
    "fmod floor_divide nonzero unique bucketize searchsorted"
).split():
    _REFUSED[_name] = _BRANCH
for _name in "layer_norm group_norm instance_norm local_response_norm normalize rms_norm".split():
    _REFUSED[_name] = _NORM
for _name in "softmax log_softmax softmin".split():
    _REFUSED[_name] = _SOFTMAX
for _name in "detach data.__get__ item tolist numpy".split():
    _REFUSED[_name] = _CUT

# Operations that stay affine in an input-dependent argument (products are checked
# separately below, so that at most one factor depends on the input).
_AFFINE = set(
    (
        "linear conv1d conv2d conv3d conv_transpose1d conv_transpose2d conv_transpose3d "
        "avg_pool1d avg_pool2d avg_pool3d adaptive_avg_pool1d adaptive_avg_pool2d "
        "adaptive_avg_pool3d dropout dropout1d dropout2d dropout3d alpha_dropout "
        "feature_alpha_dropout batch_norm pad flatten unflatten view view_as reshape "
        "reshape_as permute transpose swapaxes swapdims movedim moveaxis t T.__get__ "
        "mT.__get__ contiguous unsqueeze squeeze expand expand_as broadcast_to repeat "
        "tile repeat_interleave __getitem__ __setitem__ narrow select index_select "
        "masked_select take gather split split_with_sizes chunk unbind tensor_split cat "
        "concat concatenate stack hstack vstack dstack flip fliplr flipud roll diagonal "
        "diag_embed tril triu add sub rsub neg negative positive sum mean nansum cumsum "
        "where masked_fill nan_to_num clone to float double type_as copy_ unfold fold "
        "pixel_shuffle pixel_unshuffle channel_shuffle atleast_1d atleast_2d atleast_3d "
        "mul matmul mm bmm mv einsum div rdiv"
    ).split()
)
_PRODUCTS = {
    "mul",
    "matmul",
    "mm",
    "bmm",
    "mv",
    "einsum",
    "linear",
    "conv1d",
    "conv2d",
    "conv3d",
    "conv_transpose1d",
    "conv_transpose2d",
    "conv_transpose3d",
}
# Outputs of these carry no continuous dependence on the input (shapes, NaN masks,
# freshly allocated tensors), so they are treated as constants.
_CONSTANT_OUTPUT = set(
    (
        "isnan isfinite isinf isneginf isposinf size dim numel nelement __len__ stride "
        "shape.__get__ dtype.__get__ device.__get__ ndim.__get__ layout.__get__ "
        "requires_grad.__get__ is_cuda.__get__ names.__get__ is_leaf.__get__ "
        "grad_fn.__get__ is_floating_point is_complex is_contiguous element_size "
        "get_device zeros_like ones_like empty_like full_like rand_like randn_like "
        "new_zeros new_ones new_full new_empty new_tensor"
    ).split()
)
_DUNDER = {
    "__add__": "add",
    "__radd__": "add",
    "__iadd__": "add",
    "__sub__": "sub",
    "__rsub__": "sub",
    "__isub__": "sub",
    "__mul__": "mul",
    "__rmul__": "mul",
    "__imul__": "mul",
    "__truediv__": "div",
    "__itruediv__": "div",
    "__div__": "div",
    "__idiv__": "div",
    "__rtruediv__": "rdiv",
    "__rdiv__": "rdiv",
    "__matmul__": "matmul",
    "__rmatmul__": "matmul",
    "__neg__": "neg",
    "__pos__": "positive",
    "__abs__": "abs",
    "__pow__": "pow",
    "__rpow__": "pow",
    "__ipow__": "pow",
    "__floordiv__": "floor_divide",
    "__rfloordiv__": "floor_divide",
    "__mod__": "remainder",
    "__rmod__": "remainder",
    "__gt__": "gt",
    "__lt__": "lt",
    "__ge__": "ge",
    "__le__": "le",
    "__eq__": "eq",
    "__ne__": "ne",
}
_INPLACE_DUNDER = {
    "__iadd__",
    "__isub__",
    "__imul__",
    "__itruediv__",
    "__idiv__",
    "__ipow__",
    "__setitem__",
}
_PREFIXES = (
    "torch.nn.functional.",
    "torch.Tensor.",
    "torch._C._nn.",
    "torch.linalg.",
    "torch.special.",
    "torch.",
)

_OP_CACHE: dict[Any, tuple[str, str, bool]] = {}


def _classify(func: Any) -> tuple[str, str, bool]:
    """Return (display name, canonical name, in-place) of a torch function."""
    try:
        return _OP_CACHE[func]
    except (KeyError, TypeError):
        pass
    full = resolve_name(func) or getattr(func, "__name__", repr(func))
    short = full
    for prefix in _PREFIXES:
        if short.startswith(prefix):
            short = short[len(prefix) :]
            break
    inplace = short in _INPLACE_DUNDER
    if short.startswith("__") and short.endswith("__"):
        base = _DUNDER.get(short, short)
    elif short.endswith("_") and not short.endswith("__"):
        base, inplace = short[:-1], True
    else:
        base = short
    result = (short, base, inplace)
    try:
        _OP_CACHE[func] = result
    except TypeError:
        pass
    return result


def _tensors(obj: Any) -> Iterator[Tensor]:
    if isinstance(obj, Tensor):
        yield obj
    elif isinstance(obj, (list, tuple)):
        for item in obj:
            yield from _tensors(item)
    elif isinstance(obj, dict):
        for item in obj.values():
            yield from _tensors(item)


class _Recorder(TorchFunctionMode):
    """Record activations and check every operation that touches the input.

    Dependence on the input is tracked by identity: the input is dependent, and so is
    every output of an operation with a dependent argument (shape queries, NaN masks
    and newly allocated tensors excepted). Operations on parameters alone (weight
    parametrizations, masks) pass unchecked.
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
        self._n = inputs.shape[0]
        self._mark(inputs)

    def __enter__(self) -> _Recorder:
        for name, sub in self.module.named_modules():
            self._hooks.append(sub.register_forward_pre_hook(self._enter_scope(name, sub)))
            self._hooks.append(sub.register_forward_hook(self._leave_scope))
        return super().__enter__()

    def __exit__(self, *exc: Any) -> None:
        for hook in self._hooks:
            hook.remove()
        self._hooks.clear()
        return super().__exit__(*exc)

    def _enter_scope(self, name: str, sub: nn.Module):
        def hook(module: nn.Module, args: Any) -> None:
            self._scope.append((name, sub))

        return hook

    def _leave_scope(self, module: nn.Module, args: Any, output: Any) -> None:
        if self._scope:
            self._scope.pop()

    def _mark(self, obj: Any) -> None:
        for tensor in _tensors(obj):
            self._dependent[id(tensor)] = weakref.ref(tensor)

    def _is_dependent(self, tensor: Tensor) -> bool:
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
        dependent = [t for t in _tensors((args, kwargs)) if self._is_dependent(t)]
        if not dependent:
            return func(*args, **kwargs)
        short, base, inplace = _classify(func)
        if base in _CONSTANT_OUTPUT:
            return func(*args, **kwargs)
        if base in _ACTIVATIONS:
            return self._activation(func, base, inplace, args, kwargs)
        self._check(func, short, base, args, kwargs, dependent)
        out = func(*args, **kwargs)
        self._mark(out)
        if inplace and args:
            self._mark(args[0])
        return out

    def _check(self, func, short, base, args, kwargs, dependent) -> None:
        if base in _REFUSED:
            self._refuse(short, _REFUSED[base])
        if base == "batch_norm":
            training = args[5] if len(args) > 5 else kwargs.get("training", False)
            if training:
                self._refuse("batch_norm (training mode)", _BN_TRAIN)
            return
        if base in _PRODUCTS and len(dependent) > 1:
            self._refuse(short, _PRODUCT)
        if base == "div" and len(args) > 1 and isinstance(args[1], Tensor):
            if self._is_dependent(args[1]):
                self._refuse(short, _DIVISOR)
        if base == "rdiv" and self._is_dependent(args[0]):
            self._refuse(short, _DIVISOR)
        if base not in _AFFINE:
            self._refuse(
                short,
                "it is not among the operations sklearn-roll knows to be affine or "
                "piecewise linear (affine layers, average pooling, residual sums, "
                "Dropout, eval-mode BatchNorm, ReLU and LeakyReLU; see sklearn_roll.nn)",
            )

    def _activation(self, func, base, inplace, args, kwargs):
        z = args[0] if args else kwargs["input"]
        if base == "relu":
            slope = 0.0
            inplace = inplace or bool(args[1] if len(args) > 1 else kwargs.get("inplace", False))
        else:
            slope = float(args[1] if len(args) > 1 else kwargs.get("negative_slope", 0.01))
            inplace = inplace or bool(args[2] if len(args) > 2 else kwargs.get("inplace", False))
        if z.dim() == 0 or z.shape[0] != self._n:
            self._refuse(
                base,
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


def float64_copy(module: nn.Module) -> nn.Module:
    """A float64 copy of ``module`` in eval mode, for exact certificates and predictions.

    The copy lives on the CPU, with the inputs that come from numpy, wherever the
    module was trained.

    Parameters
    ----------
    module : nn.Module
        The network, left unchanged.

    Returns
    -------
    nn.Module
    """
    return copy.deepcopy(module).to(device="cpu", dtype=torch.float64).eval()


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
    """
    if isinstance(out, (tuple, list)):
        out = out[0]
    if not isinstance(out, Tensor):
        raise TypeError(f"The module must return a tensor, got {type(out).__name__}.")
    return out.reshape(out.shape[0], -1)


def _flat(t: Tensor, n: int) -> Tensor:
    return t.reshape(n, -1)


# ------------------------------------------------------------------ linear chains


def linear_chain(module: nn.Module) -> list[tuple[nn.Linear, float | None]] | None:
    """The (Linear, slope) layers of a plain Linear/activation chain, or None.

    Such chains (``nn.Sequential`` of ``nn.Linear`` and ReLU / LeakyReLU, e.g.
    :class:`sklearn_roll.nn.MLP`) take the fast Jacobian path for 2-D input.

    Parameters
    ----------
    module : nn.Module
        Any module.

    Returns
    -------
    list of (nn.Linear, float or None), or None
        Each Linear layer with the slope below zero of the activation after it
        (0 for ReLU), None for the output layer; None if the module is not such a
        chain.
    """
    if not isinstance(module, nn.Sequential) or type(module).forward is not nn.Sequential.forward:
        return None
    if module._forward_hooks or module._forward_pre_hooks:
        return None
    chain: list[list[Any]] = []
    for layer in module:
        if layer._forward_hooks or layer._forward_pre_hooks:
            return None
        if type(layer) is nn.Linear:
            if chain and chain[-1][1] is None:
                return None
            chain.append([layer, None])
        elif type(layer) in (nn.ReLU, nn.LeakyReLU):
            if not chain or chain[-1][1] is not None:
                return None
            chain[-1][1] = 0.0 if type(layer) is nn.ReLU else float(layer.negative_slope)
        elif type(layer) is nn.Identity or (
            type(layer) is nn.Dropout and (not layer.training or layer.p == 0)
        ):
            continue
        else:
            return None
    if not chain or chain[-1][1] is not None:
        return None
    return [(layer, slope) for layer, slope in chain]


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


def _chain_linearize(
    chain: list[tuple[nn.Linear, float | None]],
    x: Tensor,
    tangents: Tangents | None,
    reduce: Reduce | None = None,
    patterns: list[Tensor] | None = None,
) -> Linearization:
    """Linearize a Linear/activation chain by explicit Jacobian propagation.

    Tangent images are kept in the layout (units, n, k) so that each layer is one
    large matrix product ``W @ T`` over all examples and tangents. With ``reduce``
    each layer's tangents are reduced as soon as they exist and then masked in
    place, so only one layer's tangents are alive at a time.
    """
    n = x.shape[0]
    h = x.reshape(n, -1)
    pre: list[Tensor] = []
    pre_tangents: list[Tensor] = []
    slopes: list[float] = []
    T: Tensor | None = None
    on: Tensor | None = None
    output = output_t = None
    for linear, slope in chain:
        z = F.linear(h, linear.weight, linear.bias)
        if tangents is not None:
            W = linear.weight
            if T is None:
                T = _first_tangents(W, h, tangents)
            elif on is not None:
                T = _live_product(W, T, on)
            else:
                T = (W @ T.reshape(T.shape[0], -1)).reshape(W.shape[0], n, -1)
        if slope is None:
            output, output_t = z, None if T is None else T.permute(1, 0, 2)
            break
        active = z > 0 if patterns is None else patterns[len(pre)]
        pre.append(z)
        slopes.append(slope)
        s = frozen_slopes(active, slope, z.dtype)
        if T is not None:
            view = T.permute(1, 0, 2)
            pre_tangents.append(view if reduce is None else reduce(view))
            # In place only on a tensor of its own: not on the first layer's expanded view.
            owned = T.is_contiguous() or view.is_contiguous()
            if reduce is not None and owned and not T.requires_grad:
                T.mul_(s.T[:, :, None])
            else:
                T = T * s.T[:, :, None]
        # A ReLU's inactive units pass zero tangents on, which the next product skips.
        on = active if slope == 0 else None
        h = F.leaky_relu(z, slope) if slope else F.relu(z)
    return Linearization(
        output=output,
        pre=pre,
        counted=[None] * len(pre),
        negative_slopes=slopes,
        pre_tangents=pre_tangents if tangents is not None else None,
        output_tangents=output_t,
    )


def _live_product(W: Tensor, T: Tensor, on: Tensor) -> Tensor:
    """``W @ T`` per example over its active units only, in the layout (out, n, k).

    ``T`` (units, n, k) is zero at the inactive units of each example (ReLU), so the
    product needs only the active ones: typically a third to a half of the units
    of a trained network, and as much of the work (certificates, without autograd). Inner products only lose zero
    terms, so :func:`sklearn_roll.regions.chain_rounding` still bounds the rounding.
    """
    units, n, k = T.shape
    width = int(on.sum(dim=1).max()) if n else 0
    # The gathers pay off for many tangents and no autograd graph (whose backward
    # through the column gather costs more than the product saves).
    graph = torch.is_grad_enabled() and (W.requires_grad or T.requires_grad)
    if graph or k < 64 or width > 0.75 * units:
        return (W @ T.reshape(units, -1)).reshape(W.shape[0], n, k)
    # Active units first in each row; the padding picks inactive units, whose tangents are zero.
    live = torch.argsort(on.to(torch.uint8), dim=1, descending=True, stable=True)[:, :width]
    tangents = T.permute(1, 0, 2).gather(1, live[:, :, None].expand(-1, -1, k))
    return torch.bmm(W[:, live].permute(1, 0, 2), tangents).permute(1, 0, 2)


def _first_tangents(W: Tensor, h: Tensor, tangents: Tangents) -> Tensor:
    n = h.shape[0]
    if isinstance(tangents, AxisTangents):
        return W[:, tangents.indices.T]
    if isinstance(tangents, Tensor):
        k = tangents.shape[0]
        if n > 1 and tangents.stride(1) == 0:
            # The same directions for every example: one product, shared.
            return (W @ tangents[:, 0].reshape(k, -1).T)[:, None, :].expand(-1, n, -1)
        return torch.einsum("hd,knd->hnk", W, tangents.reshape(k, n, -1))
    if tangents == "l2" and W.shape[1] > W.shape[0]:
        # Row norms of J = M W equal those of M W Q when the columns of Q span the
        # row space of W. Q is held constant: the gradient of ||M W Q|| with
        # respect to W is then still exact, since W Q Q^T = W.
        with torch.no_grad():
            Q = torch.linalg.qr(W.T).Q
        W = W @ Q
    return W[:, None, :].expand(-1, n, -1)


# ------------------------------------------------------------------ general path


def _record_call(
    module: nn.Module, x: Tensor, patterns: list[Tensor] | None = None
) -> tuple[Tensor, _Recorder]:
    recorder = _Recorder(module, x, patterns)
    with recorder:
        out = module(x)
    return first_output(out), recorder


def _general_linearize(
    module: nn.Module,
    x: Tensor,
    tangents: Tensor,
    reduce: Reduce | None = None,
    patterns: list[Tensor] | None = None,
) -> Linearization:
    n = x.shape[0]
    meta: dict[str, Any] = {}

    def f(inp: Tensor):
        out, rec = _record_call(module, inp, patterns)
        meta["slopes"] = rec.negative_slopes
        meta["masked"] = [i for i, m in enumerate(rec.masks) if m is not None]
        masks = tuple(rec.masks[i].to(out.dtype) for i in meta["masked"])
        return out, tuple(rec.pre), masks

    if tangents.shape[0] == 1:
        primal, tangent = jvp(f, (x,), (tangents[0],))
        primal = _map(lambda t: t, primal)
        tangent = _map(lambda t: t.unsqueeze(0), tangent)
    else:
        primal, tangent = vmap(lambda v: jvp(f, (x,), (v,)), randomness="same")(tangents)
        primal = _map(lambda t: t[0], primal)
    (out, pre, masks), (out_t, pre_t, _) = primal, tangent
    counted: list[Tensor | None] = [None] * len(pre)
    for i, m in zip(meta["masked"], masks):
        counted[i] = _flat(m, n) > 0.5
    k = tangents.shape[0]
    pre_t = [t.reshape(k, n, -1).permute(1, 2, 0) for t in pre_t]
    return Linearization(
        output=out,
        pre=[_flat(z, n) for z in pre],
        counted=counted,
        negative_slopes=list(meta["slopes"]),
        pre_tangents=pre_t if reduce is None else [reduce(t) for t in pre_t],
        output_tangents=out_t.reshape(k, n, -1).permute(1, 2, 0),
    )


def _map(fn, tree):
    if isinstance(tree, (tuple, list)):
        return type(tree)(_map(fn, item) for item in tree)
    return fn(tree)


# ------------------------------------------------------------------ public API


def record(module: nn.Module, x: Tensor) -> Linearization:
    """Run ``module`` on ``x`` and record every unit's pre-activation.

    Parameters
    ----------
    module : nn.Module
        A piecewise-linear network; its first output is taken as the logits.
    x : Tensor of shape (n, ...)
        A batch of inputs in the layout the module expects.

    Returns
    -------
    Linearization
        With ``pre_tangents`` and ``output_tangents`` left None.

    Raises
    ------
    UnsupportedOperationError
        If the module applies an operation to input-dependent values that is not
        affine, ReLU or LeakyReLU.

    Examples
    --------
    >>> import torch
    >>> from sklearn_roll.nn import MLP
    >>> from sklearn_roll.linearize import record
    >>> lin = record(MLP(4, 3, hidden_layer_sizes=(5, 6)), torch.randn(2, 4))
    >>> [z.shape for z in lin.pre]
    [torch.Size([2, 5]), torch.Size([2, 6])]
    """
    chain = linear_chain(module)
    if chain is not None and x.dim() == 2:
        return _chain_linearize(chain, x, None)
    out, rec = _record_call(module, x)
    n = x.shape[0]
    return Linearization(
        output=out,
        pre=[_flat(z, n) for z in rec.pre],
        counted=[None if m is None else _flat(m, n) for m in rec.masks],
        negative_slopes=rec.negative_slopes,
    )


def check_supported(module: nn.Module, x: Tensor) -> None:
    """Raise :class:`UnsupportedOperationError` if ``module`` cannot be certified.

    Runs the module once on ``x`` under the recording mode, which refuses max
    pooling, smooth activations, normalisation by input statistics, train-mode
    BatchNorm, products of input-dependent tensors and unknown operations, naming
    the layer.

    Parameters
    ----------
    module : nn.Module
        The network to check.
    x : Tensor of shape (n, ...)
        A few inputs in the layout the module expects.
    """
    if linear_chain(module) is not None and x.dim() == 2:
        return
    with torch.no_grad():
        _record_call(module, x)


def tangent_count(module: nn.Module, x: Tensor, tangents: Tangents) -> int:
    """How many tangent directions :func:`linearize` pushes through per example.

    Parameters
    ----------
    module : nn.Module
        The network.
    x : Tensor of shape (n, ...)
        Example inputs (only the shape is used).
    tangents : {"basis", "l2"}, Tensor of shape (k, n, ...) or AxisTangents
        As in :func:`linearize`.

    Returns
    -------
    int
    """
    if isinstance(tangents, AxisTangents):
        return tangents.indices.shape[0]
    if isinstance(tangents, Tensor):
        return tangents.shape[0]
    d = math.prod(x.shape[1:])
    chain = linear_chain(module)
    if tangents == "l2" and chain is not None and x.dim() == 2:
        return min(d, chain[0][0].weight.shape[0])
    return d


def basis_tangents(x: Tensor) -> Tensor:
    """The standard basis of the input space, one tangent batch per axis.

    Returns a (D, n, ...) tensor, stride-0 along the batch so it costs D^2 memory.
    """
    n = x.shape[0]
    d = math.prod(x.shape[1:])
    eye = torch.eye(d, dtype=x.dtype, device=x.device)
    return eye.reshape(d, 1, *x.shape[1:]).expand(d, n, *x.shape[1:])


def linearize(
    module: nn.Module,
    x: Tensor,
    tangents: Tangents = "basis",
    reduce: Reduce | None = None,
    *,
    patterns: list[Tensor] | None = None,
) -> Linearization:
    """Pre-activations and their derivatives along tangent directions.

    Parameters
    ----------
    module : nn.Module
        A piecewise-linear network.
    x : Tensor of shape (n, ...)
        The points.
    tangents : {"basis", "l2"}, Tensor of shape (k, n, ...) or AxisTangents
        ``"basis"``: the standard basis of the input space, so ``pre_tangents``
        holds the full unit gradients ``g_u(x)``. ``"l2"``: any basis that preserves
        l2 norms and inner products of unit gradients; for Linear chains this is the
        row space of the first layer, of dimension ``min(D, width)``, else the
        standard basis. A tensor: explicit directions, k per example.
        :class:`AxisTangents`: k input axes per example, by index.
    reduce : callable or None, default=None
        Applied to each block of unit tangents, shaped (n, u, k), as soon as it is
        computed (e.g. a norm over the last axis); ``pre_tangents`` then holds the
        results. Saves memory and time when only a reduction is needed.
    patterns : list of Tensor of bool, or None, default=None
        The activation pattern to freeze, one (n, u) tensor per recorded
        activation call (True: the unit is on), e.g. ``[z > 0 for z in
        record(float64_copy(module), x.double()).pre]``. None takes the pattern
        of the module's own forward pass on ``x``. Freezing a float64 pattern keeps
        a float32 Jacobian in the same linear region as the float64 certificate
        next to region boundaries, where float32 rounding may flip a unit. ``pre``
        and ``output`` still hold the module's own forward values.

    Returns
    -------
    Linearization

    Examples
    --------
    >>> import torch
    >>> from sklearn_roll.nn import MLP
    >>> from sklearn_roll.linearize import linearize
    >>> lin = linearize(MLP(4, 3, hidden_layer_sizes=(5,)), torch.randn(2, 4))
    >>> lin.pre_tangents[0].shape
    torch.Size([2, 5, 4])
    """
    chain = linear_chain(module)
    if chain is not None and x.dim() == 2:
        return _chain_linearize(chain, x, tangents, reduce, patterns)
    if isinstance(tangents, str):
        if tangents not in ("basis", "l2"):
            raise ValueError(f"tangents must be 'basis', 'l2' or a tensor, got {tangents!r}.")
        tangents = basis_tangents(x)
    elif isinstance(tangents, AxisTangents):
        tangents = tangents.dense(x)
    return _general_linearize(module, x, tangents, reduce, patterns)


def chain_vjp(module: nn.Module, patterns: list[Tensor], layer: int, cotangents: Tensor) -> Tensor:
    """Rows ``c^T dz/dx`` of a Linear chain with frozen activation patterns.

    Reverse mode, one row per cotangent: the cheap way to get a few unit gradients
    (or output-gradient differences) exactly, e.g. in float64 for the units whose
    float32 values are too uncertain.

    Parameters
    ----------
    module : nn.Module
        A Linear chain (see :func:`linear_chain`); the arithmetic is that of
        ``cotangents``, to whose dtype the weights are cast.
    patterns : list of Tensor of bool, shape (m, u_i)
        For each row, the activation pattern of its example, one tensor per hidden
        layer (at least the layers below ``layer``).
    layer : int
        Which pre-activations the cotangents weigh: hidden layer index, or
        ``len(hidden layers)`` for the output.
    cotangents : Tensor of shape (m, width of that layer)
        One cotangent per row.

    Returns
    -------
    Tensor of shape (m, n_features)

    Examples
    --------
    >>> import torch
    >>> from sklearn_roll.nn import MLP
    >>> from sklearn_roll.linearize import chain_vjp, record
    >>> net, x = MLP(4, 3, hidden_layer_sizes=(5,)), torch.randn(2, 4)
    >>> on = [z > 0 for z in record(net, x).pre]
    >>> chain_vjp(net, on, 1, torch.eye(3)[[0, 2]]).shape
    torch.Size([2, 4])
    """
    chain = linear_chain(module)
    if chain is None:
        raise ValueError(
            f"chain_vjp needs a chain of nn.Linear and ReLU / LeakyReLU layers, got "
            f"{type(module).__name__}."
        )
    v = cotangents
    for i in range(layer, -1, -1):
        linear, _ = chain[i]
        v = v @ linear.weight.to(v.dtype)
        if i:
            v = v * frozen_slopes(patterns[i - 1], chain[i - 1][1], v.dtype)
    return v
