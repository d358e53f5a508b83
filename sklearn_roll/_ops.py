"""The op policy of the linearizer: one rule per torch operation on input-dependent values.

Every operation the recorder sees with an input-dependent argument is looked up here
by its canonical name (``torch.nn.functional.conv2d``, ``Tensor.__add__`` and
``Tensor.add_`` all resolve to one entry) and treated according to its rule's kind:

* ``"affine"``: affine in its input-dependent arguments (layers, pooling by averages,
  sums, reshaping and indexing);
* ``"product"``: bilinear (``mul``, ``matmul``, ``linear``, ``conv*``, ...), so affine
  as long as at most one factor depends on the input;
* ``"divide"``: affine as long as the divisor does not depend on the input;
* ``"batch_norm"``: affine in eval mode, refused in training mode;
* ``"activation"``: ReLU and LeakyReLU, recorded as units;
* ``"constant"``: its output carries no continuous dependence on the input (shape
  queries, NaN masks, freshly allocated tensors);
* ``"refused"``: not piecewise linear, or piecewise linear in a way the certificates do
  not model; ``reason`` says why and what to use instead.

Any operation that is not in the table is refused too, with a message listing what is
supported. Adding an operation means adding one entry.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from typing import Any

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
BN_TRAIN_REASON = (
    "BatchNorm in training mode normalises by the statistics of the batch, which "
    "couples the examples and is not piecewise linear; keep the BatchNorm layers "
    "in eval mode (frozen) or remove them"
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
    """

    kind: str
    reason: str = ""
    divisor: int = 1
    slope: int | None = None

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
            training = args[5] if len(args) > 5 else kwargs.get("training", False)
            if training:
                return BN_TRAIN_REASON
        return ""


def _rules(names: str, value: Any) -> dict[str, Any]:
    return dict.fromkeys(names.split(), value)


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
    **_rules(
        "linear conv1d conv2d conv3d conv_transpose1d conv_transpose2d conv_transpose3d "
        "mul matmul mm bmm mv einsum",
        OpRule("product"),
    ),
    **_rules("div", OpRule("divide", divisor=1)),
    **_rules("rdiv", OpRule("divide", divisor=0)),
    **_rules("batch_norm", OpRule("batch_norm")),
    **_rules(
        "avg_pool1d avg_pool2d avg_pool3d adaptive_avg_pool1d adaptive_avg_pool2d "
        "adaptive_avg_pool3d dropout dropout1d dropout2d dropout3d alpha_dropout "
        "feature_alpha_dropout pad flatten unflatten view view_as reshape "
        "reshape_as permute transpose swapaxes swapdims movedim moveaxis t T.__get__ "
        "mT.__get__ contiguous unsqueeze squeeze expand expand_as broadcast_to repeat "
        "tile repeat_interleave __getitem__ __setitem__ narrow select index_select "
        "masked_select take gather split split_with_sizes chunk unbind tensor_split cat "
        "concat concatenate stack hstack vstack dstack flip fliplr flipud roll diagonal "
        "diag_embed tril triu add sub rsub neg negative positive sum mean nansum cumsum "
        "where masked_fill nan_to_num clone to float double type_as unfold fold "
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
