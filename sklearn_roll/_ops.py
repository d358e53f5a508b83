"""The op policy of the linearizer: one rule per torch operation on input-dependent values.

Every operation the recorder sees with an input-dependent argument is looked up here
by its canonical name (``torch.nn.functional.conv2d``, ``Tensor.__add__`` and
``Tensor.add_`` all resolve to one entry) and treated according to its rule's kind:

* ``"affine"``: affine in its input-dependent arguments (layers, pooling by averages,
  sums, reshaping and indexing);
* ``"product"``: bilinear (``mul``, ``matmul``, ``linear``, ``conv*``, ...), so affine
  as long as at most one factor depends on the input;
* ``"divide"``: affine as long as the divisor does not depend on the input;
* ``"batch_norm"``: affine in eval mode; in training mode the batch mean and
  variance are taken as constants, so that each example's network is affine again
  (the rule computes them, detaches them and applies the eval-mode map with them),
  and refused without running statistics, which would make the certificates
  (in eval mode) depend on the batch;
* ``"activation"``: ReLU and LeakyReLU, recorded as units;
* ``"constant"``: its output carries no continuous dependence on the input (shape
  queries, NaN masks, freshly allocated tensors);
* ``"refused"``: not piecewise linear, or piecewise linear in a way the certificates do
  not model; ``reason`` says why and what to use instead.

Any operation that is not in the table is refused too, with a message listing what is
supported. Adding an operation means adding one entry.

Each rule also says how the operation acts on *magnitudes*, which the rigorous rounding
bounds of the float64 certificates need (:mod:`sklearn_roll._rounding`): run on the
absolute values of its input, with every constant replaced by its absolute value and
subtractions by additions, an affine operation gives an upper bound on the absolute
values of all the terms it sums; ``rounding`` counts the roundings it adds to each
output (the length of its inner products, plus one for a bias or a division).
"""

from __future__ import annotations

import dataclasses
import math
import numbers
import re
from collections.abc import Callable, Iterable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.overrides import resolve_name

KINDS = ("affine", "product", "divide", "batch_norm", "activation", "constant", "refused")

_MAX_POOL = (
    "max pooling is piecewise linear, but the certificates do not model its "
    "switching between inputs; use average pooling (nn.AvgPool2d) or a strided "
    "convolution instead"
)
_SMOOTH = "it is not piecewise linear; use nn.ReLU or nn.LeakyReLU instead"
_PRELU = (
    "it is piecewise linear, but its slope below zero is a learned parameter, which "
    "the ROLL loss and the certificates do not model; use nn.LeakyReLU with a fixed "
    "negative_slope instead"
)
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
_CUT = "it cuts the input gradient, so the linearization would be wrong; remove it"
PRODUCT_REASON = (
    "it multiplies two input-dependent tensors, which is not piecewise linear; "
    "one factor must not depend on the input"
)
DIVISOR_REASON = "it divides by an input-dependent tensor, which is not piecewise linear"
BN_BATCH_REASON = (
    "BatchNorm without running statistics (track_running_stats=False) normalises by "
    "the statistics of the batch in eval mode too, which couples the examples; keep "
    "the running statistics"
)
UNKNOWN_REASON = (
    "it is not among the operations sklearn-roll knows to be affine or piecewise "
    "linear (affine layers, average pooling, residual sums, Dropout, eval-mode "
    "BatchNorm, ReLU and LeakyReLU; see sklearn_roll.nn)"
)


@dataclasses.dataclass(frozen=True)
class OpRule:
    """How the linearizer treats one operation.

    Attributes
    ----------
    kind : str
        One of :data:`KINDS` (see the module docstring).
    reason : str
        For ``kind="refused"``, why, and what to use instead.
    divisor : int
        For ``kind="divide"``, the position of the divisor among the arguments.
    slope : int or None
        For ``kind="activation"``, the position of the ``negative_slope`` argument
        (None for ReLU, whose slope below zero is 0); ``inplace`` follows it.
    rounding : callable or None
        ``rounding(args, kwargs, out) -> int``: the roundings the operation adds to
        each output element (0 when None: reshaping, indexing, copying).
    magnitude : {"same", "arith", "add", "pass", "batch_norm"}
        How the operation acts on magnitudes: "same" runs it with constant floating
        tensors and floats (and the arguments at ``values``) made absolute; "arith"
        makes every constant number absolute; "add" turns a subtraction into an
        addition of absolute values; "pass" returns its input (negation); and
        "batch_norm" adds the absolute running mean instead of subtracting it.
    values : tuple of int or str
        Positions and keyword names of constant values (fill values, padding
        values) whose absolute values the magnitude takes, ints included.
    rewrite : callable or None
        ``rewrite(args, kwargs) -> (args, kwargs)``: the call the linearizer makes
        instead (train-mode BatchNorm with frozen batch statistics); None for the
        call as it is.
    """

    kind: str
    reason: str = ""
    divisor: int = 1
    slope: int | None = None
    rounding: Callable[[tuple, dict, Any], int] | None = None
    magnitude: str = "same"
    values: tuple = ()
    rewrite: Callable[[tuple, dict], tuple[tuple, dict]] | None = None

    def roundings(self, args: tuple, kwargs: dict, out: Any) -> int:
        """The roundings this call adds to each output element."""
        return 0 if self.rounding is None else int(self.rounding(args, kwargs, out))

    def prepared(self, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
        """The arguments of the call the linearizer makes (see ``rewrite``)."""
        return (args, kwargs) if self.rewrite is None else self.rewrite(args, kwargs)

    def on_magnitudes(self, func: Any, name: str, args: tuple, kwargs: dict, is_dependent):
        """Run the call on magnitudes (the dependent arguments already are).

        Parameters
        ----------
        func : callable
            The torch function.
        name : str
            Its display name (tells ``rsub`` from ``sub``).
        args, kwargs
            The call's arguments.
        is_dependent : callable
            ``is_dependent(tensor) -> bool``.
        """
        every = self.magnitude != "same"

        def constant(value: Any, forced: bool = False) -> Any:
            if isinstance(value, Tensor):
                floating = value.is_floating_point() or value.is_complex()
                return value.abs() if floating and not is_dependent(value) else value
            if isinstance(value, bool) or not isinstance(value, numbers.Number):
                return value
            return abs(value) if forced or every or isinstance(value, float) else value

        args = tuple(constant(a, i in self.values) for i, a in enumerate(args))
        kwargs = {k: constant(v, k in self.values) for k, v in kwargs.items()}
        if self.magnitude == "pass":
            return args[0]
        if self.magnitude == "add":
            return _added(name, args, kwargs)
        if self.magnitude == "batch_norm":
            return _batch_norm_magnitude(args, kwargs)
        return func(*args, **kwargs)

    def refusal(self, args: tuple, kwargs: dict, dependent: list[Tensor], is_dependent) -> str:
        """Why this call cannot be linearized, or "" if it can.

        Parameters
        ----------
        args, kwargs
            The call's arguments.
        dependent : list of Tensor
            Its input-dependent tensor arguments.
        is_dependent : callable
            ``is_dependent(tensor) -> bool``.
        """
        if self.kind == "refused":
            return self.reason
        if self.kind == "product" and len(dependent) > 1:
            return PRODUCT_REASON
        if self.kind == "divide":
            divisor = args[self.divisor] if len(args) > self.divisor else None
            if isinstance(divisor, Tensor) and is_dependent(divisor):
                return DIVISOR_REASON
        if self.kind == "batch_norm":
            bound = _batch_norm_arguments(args, kwargs)
            if bound.get("training", False) and bound.get("running_mean") is None:
                return BN_BATCH_REASON
        return ""


def _rules(names: str, value: Any) -> dict[str, Any]:
    return dict.fromkeys(names.split(), value)


def _added(name: str, args: tuple, kwargs: dict) -> Tensor:
    """``a + |alpha| b`` for the subtractions ``a - alpha b`` and ``b - alpha a`` (rsub)."""
    alpha = kwargs.get("alpha", args[2] if len(args) > 2 else 1)
    first = args[0] if args else kwargs.get("input")
    second = args[1] if len(args) > 1 else kwargs.get("other")
    if name.startswith("rsub"):
        # torch.rsub(input, other, alpha) is other - alpha * input.
        return torch.add(second, first, alpha=alpha)
    if name == "__rsub__":
        return torch.add(second, first)
    if name in ("sub_", "__isub__"):
        return first.add_(second, alpha=alpha)
    return torch.add(first, second, alpha=alpha)


_BATCH_NORM = (
    "input",
    "running_mean",
    "running_var",
    "weight",
    "bias",
    "training",
    "momentum",
    "eps",
)


def _batch_norm_arguments(args: tuple, kwargs: dict) -> dict[str, Any]:
    """The arguments of ``F.batch_norm`` by name."""
    return {**dict(zip(_BATCH_NORM, args)), **kwargs}


def _frozen_batch_statistics(args: tuple, kwargs: dict) -> tuple[tuple, dict]:
    """Train-mode BatchNorm as the affine map of the batch's detached statistics.

    The mean and the biased variance over every dimension but the channels, as
    ``F.batch_norm`` normalises by in training mode, held constant: the
    linearization of each example is then that of an affine layer. The running
    statistics are left alone (the module's own forward pass updates them).
    """
    bound = _batch_norm_arguments(args, kwargs)
    if not bound.get("training", False):
        return args, kwargs
    x = bound["input"]
    dims = [0, *range(2, x.dim())]
    bound["running_mean"] = x.mean(dim=dims).detach()
    bound["running_var"] = x.var(dim=dims, unbiased=False).detach()
    bound["training"] = False
    return (), bound


def _batch_norm_magnitude(args: tuple, kwargs: dict) -> Tensor:
    """``(|x| + |mean|) |w| / sqrt(var + eps) + |b|``: eval-mode BatchNorm on magnitudes."""
    bound = _batch_norm_arguments(args, kwargs)
    mean = bound.get("running_mean")
    bound["running_mean"] = None if mean is None else -mean.abs()
    bound["training"] = False
    return F.batch_norm(**bound)


def _arg(args: tuple, kwargs: dict, position: int, name: str) -> Any:
    return args[position] if len(args) > position else kwargs.get(name)


def _one(args: tuple, kwargs: dict, out: Any) -> int:
    return 1


def _linear(args: tuple, kwargs: dict, out: Any) -> int:
    weight, bias = _arg(args, kwargs, 1, "weight"), _arg(args, kwargs, 2, "bias")
    return weight.shape[-1] + (bias is not None)


def _conv(args: tuple, kwargs: dict, out: Any) -> int:
    weight, bias = _arg(args, kwargs, 1, "weight"), _arg(args, kwargs, 2, "bias")
    return math.prod(weight.shape[1:]) + (bias is not None)


def _conv_transpose(args: tuple, kwargs: dict, out: Any) -> int:
    # Each output sums at most every input channel times every kernel tap.
    weight, bias = _arg(args, kwargs, 1, "weight"), _arg(args, kwargs, 2, "bias")
    return weight.shape[0] * math.prod(weight.shape[2:]) + (bias is not None)


def _contraction(args: tuple, kwargs: dict, out: Any) -> int:
    first = _arg(args, kwargs, 0, "input")
    return first.shape[-1] if first.dim() else 1


def _einsum(args: tuple, kwargs: dict, out: Any) -> int:
    equation, operands = args[0], args[1:]
    if len(operands) == 1 and isinstance(operands[0], (list, tuple)):
        operands = operands[0]
    inputs, _, output = equation.replace(" ", "").partition("->")
    sizes: dict[str, int] = {}
    for spec, operand in zip(inputs.split(","), operands):
        letters = re.findall(r"[A-Za-z]", spec.replace("...", ""))
        core = (
            operand.shape[len(operand.shape) - len(letters) :] if "..." in spec else operand.shape
        )
        sizes.update(zip(letters, core))
    contracted = [size for letter, size in sizes.items() if letter not in output]
    # Without "->", every letter that appears twice is contracted.
    if not output and "->" not in equation:
        counts = {letter: inputs.count(letter) for letter in sizes}
        contracted = [sizes[letter] for letter, c in counts.items() if c > 1]
    return math.prod(contracted) + max(len(operands) - 2, 0)


def _reduced(args: tuple, kwargs: dict, out: Any) -> int:
    first = _arg(args, kwargs, 0, "input")
    return max(1, first.numel() // max(1, out.numel()))


def _averaged(args: tuple, kwargs: dict, out: Any) -> int:
    return _reduced(args, kwargs, out) + 1


def _cumulative(args: tuple, kwargs: dict, out: Any) -> int:
    first = _arg(args, kwargs, 0, "input")
    return first.shape[_arg(args, kwargs, 1, "dim")] if first.dim() else 1


def _pooled(dims: int) -> Callable[[tuple, dict, Any], int]:
    """Roundings of average pooling over ``dims`` spatial dimensions: its taps, a division."""

    def roundings(args: tuple, kwargs: dict, out: Any) -> int:
        kernel = _arg(args, kwargs, 1, "kernel_size")
        taps = math.prod(kernel) if isinstance(kernel, (tuple, list)) else int(kernel) ** dims
        return taps + 1

    return roundings


def _adaptive(dims: int) -> Callable[[tuple, dict, Any], int]:
    """Roundings of adaptive average pooling: its largest window, a division."""

    def roundings(args: tuple, kwargs: dict, out: Any) -> int:
        first = _arg(args, kwargs, 0, "input")
        sizes = zip(first.shape[-dims:], out.shape[-dims:])
        return math.prod(math.ceil(i / max(o, 1)) + 1 for i, o in sizes) + 1

    return roundings


def _folded(args: tuple, kwargs: dict, out: Any) -> int:
    kernel = _arg(args, kwargs, 2, "kernel_size")
    return math.prod(kernel) if isinstance(kernel, (tuple, list)) else int(kernel) ** 2


# Eval-mode BatchNorm: a subtraction, a square root, a division, a product, a sum.
def _batch_norm_roundings(args: tuple, kwargs: dict, out: Any) -> int:
    return 6


OPS: dict[str, OpRule] = {
    "relu": OpRule("activation"),
    "leaky_relu": OpRule("activation", slope=1),
    **_rules(
        "max_pool1d max_pool2d max_pool3d max_pool1d_with_indices max_pool2d_with_indices "
        "max_pool3d_with_indices adaptive_max_pool1d adaptive_max_pool2d adaptive_max_pool3d "
        "adaptive_max_pool1d_with_indices adaptive_max_pool2d_with_indices "
        "adaptive_max_pool3d_with_indices fractional_max_pool2d fractional_max_pool3d "
        "max_unpool1d max_unpool2d max_unpool3d lp_pool1d lp_pool2d lp_pool3d",
        OpRule("refused", _MAX_POOL),
    ),
    **_rules(
        "tanh sigmoid gelu softplus silu elu selu celu mish hardswish hardsigmoid "
        "logsigmoid softsign tanhshrink exp exp2 log log1p log2 log10 expm1 sqrt rsqrt "
        "pow square sin cos tan erf erfc reciprocal glu rrelu logit norm std var "
        "logsumexp prod cumprod sinh cosh asinh atan",
        OpRule("refused", _SMOOTH),
    ),
    **_rules("prelu", OpRule("refused", _PRELU)),
    **_rules(
        "abs absolute clamp clip clamp_min clamp_max max min maximum minimum fmax fmin "
        "amax amin aminmax sign sgn signbit floor ceil round trunc frac fix sort topk "
        "argmax argmin argsort gt lt ge le eq ne greater less greater_equal less_equal "
        "not_equal equal heaviside hardtanh relu6 threshold hardshrink softshrink median "
        "nanmedian mode kthvalue quantile nanquantile cummax cummin any all remainder "
        "fmod floor_divide nonzero unique bucketize searchsorted",
        OpRule("refused", _BRANCH),
    ),
    **_rules(
        "layer_norm group_norm instance_norm local_response_norm normalize rms_norm",
        OpRule("refused", _NORM),
    ),
    **_rules("softmax log_softmax softmin", OpRule("refused", _SOFTMAX)),
    **_rules("detach data.__get__ item tolist numpy", OpRule("refused", _CUT)),
    "linear": OpRule("product", rounding=_linear, magnitude="arith"),
    **_rules("conv1d conv2d conv3d", OpRule("product", rounding=_conv, magnitude="arith")),
    **_rules(
        "conv_transpose1d conv_transpose2d conv_transpose3d",
        OpRule("product", rounding=_conv_transpose, magnitude="arith"),
    ),
    "mul": OpRule("product", rounding=_one, magnitude="arith"),
    **_rules("matmul mm bmm mv", OpRule("product", rounding=_contraction, magnitude="arith")),
    "einsum": OpRule("product", rounding=_einsum, magnitude="arith"),
    "div": OpRule("divide", divisor=1, rounding=_one, magnitude="arith"),
    "rdiv": OpRule("divide", divisor=0, rounding=_one, magnitude="arith"),
    "batch_norm": OpRule(
        "batch_norm",
        rounding=_batch_norm_roundings,
        magnitude="batch_norm",
        rewrite=_frozen_batch_statistics,
    ),
    "add": OpRule("affine", rounding=_one, magnitude="arith"),
    **_rules("sub rsub", OpRule("affine", rounding=_one, magnitude="add")),
    **_rules("neg negative positive", OpRule("affine", magnitude="pass")),
    **_rules("sum nansum", OpRule("affine", rounding=_reduced)),
    "mean": OpRule("affine", rounding=_averaged),
    "cumsum": OpRule("affine", rounding=_cumulative),
    **{f"avg_pool{d}d": OpRule("affine", rounding=_pooled(d)) for d in (1, 2, 3)},
    **{f"adaptive_avg_pool{d}d": OpRule("affine", rounding=_adaptive(d)) for d in (1, 2, 3)},
    "fold": OpRule("affine", rounding=_folded),
    "where": OpRule("affine", values=(1, 2, "input", "other")),
    "masked_fill": OpRule("affine", values=(2, "value")),
    "__setitem__": OpRule("affine", values=(2,)),
    "pad": OpRule("affine", values=(3, "value")),
    "nan_to_num": OpRule("affine", values=(1, 2, 3, "nan", "posinf", "neginf")),
    **_rules(
        "dropout dropout1d dropout2d dropout3d alpha_dropout feature_alpha_dropout flatten "
        "unflatten view view_as reshape reshape_as permute transpose swapaxes swapdims "
        "movedim moveaxis t T.__get__ mT.__get__ contiguous unsqueeze squeeze expand "
        "expand_as broadcast_to repeat tile repeat_interleave __getitem__ narrow select "
        "index_select masked_select take gather split split_with_sizes chunk unbind "
        "tensor_split cat concat concatenate stack hstack vstack dstack flip fliplr flipud "
        "roll diagonal diag_embed tril triu clone to float double type_as unfold "
        "pixel_shuffle pixel_unshuffle channel_shuffle atleast_1d atleast_2d atleast_3d",
        OpRule("affine"),
    ),
    **_rules(
        "isnan isfinite isinf isneginf isposinf size dim numel nelement __len__ stride "
        "shape.__get__ dtype.__get__ device.__get__ ndim.__get__ layout.__get__ "
        "requires_grad.__get__ is_cuda.__get__ names.__get__ is_leaf.__get__ "
        "grad_fn.__get__ is_floating_point is_complex is_contiguous element_size "
        "get_device zeros_like ones_like empty_like full_like rand_like randn_like "
        "new_zeros new_ones new_full new_empty new_tensor",
        OpRule("constant"),
    ),
}
"""The rule of every operation the linearizer knows, by canonical name."""

UNKNOWN = OpRule("refused", UNKNOWN_REASON)
"""The rule of an operation that is not in :data:`OPS`."""

# Tensor methods and their canonical names.
_DUNDER = {
    **_rules("__add__ __radd__ __iadd__", "add"),
    **_rules("__sub__ __rsub__ __isub__", "sub"),
    **_rules("__mul__ __rmul__ __imul__", "mul"),
    **_rules("__truediv__ __itruediv__ __div__ __idiv__", "div"),
    **_rules("__rtruediv__ __rdiv__", "rdiv"),
    **_rules("__matmul__ __rmatmul__", "matmul"),
    **_rules("__pow__ __rpow__ __ipow__", "pow"),
    **_rules("__floordiv__ __rfloordiv__", "floor_divide"),
    **_rules("__mod__ __rmod__", "remainder"),
    "__neg__": "neg",
    "__pos__": "positive",
    "__abs__": "abs",
    **{f"__{op}__": op for op in "gt lt ge le eq ne".split()},
}
_INPLACE_DUNDER = frozenset("__iadd__ __isub__ __imul__ __itruediv__ __idiv__ __ipow__".split())
_PREFIXES = (
    "torch.nn.functional.",
    "torch.Tensor.",
    "torch._C._nn.",
    "torch.linalg.",
    "torch.special.",
    "torch.",
)

_CACHE: dict[Any, tuple[str, OpRule, bool]] = {}


def lookup(func: Any) -> tuple[str, OpRule, bool]:
    """The display name, rule and in-place flag of a torch function.

    Parameters
    ----------
    func : callable
        What ``__torch_function__`` received.

    Returns
    -------
    name : str
        The name without its module prefix, as error messages show it.
    rule : OpRule
        :data:`UNKNOWN` for operations not in :data:`OPS`.
    inplace : bool
        Whether the call modifies its first argument.

    Examples
    --------
    >>> import torch
    >>> from sklearn_roll._ops import lookup
    >>> name, rule, inplace = lookup(torch.Tensor.add_)
    >>> name, rule.kind, inplace
    ('add_', 'affine', True)
    """
    try:
        return _CACHE[func]
    except (KeyError, TypeError):
        pass
    short = resolve_name(func) or getattr(func, "__name__", repr(func))
    for prefix in _PREFIXES:
        if short.startswith(prefix):
            short = short[len(prefix) :]
            break
    inplace = short in _INPLACE_DUNDER or short == "__setitem__"
    if short.startswith("__") and short.endswith("__"):
        base = _DUNDER.get(short, short)
    elif short.endswith("_") and not short.endswith("__"):
        base, inplace = short[:-1], True
    else:
        base = short
    result = (short, OPS.get(base, UNKNOWN), inplace)
    try:
        _CACHE[func] = result
    except TypeError:
        pass
    return result


def tensors(obj: Any) -> Iterable[Tensor]:
    """The tensors among (nested lists, tuples and dicts of) call arguments."""
    if isinstance(obj, Tensor):
        yield obj
    elif isinstance(obj, (list, tuple)):
        for item in obj:
            yield from tensors(item)
    elif isinstance(obj, dict):
        for item in obj.values():
            yield from tensors(item)
