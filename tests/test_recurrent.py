"""The recurrent linearization of ElmanRNN against per-unit float64 autograd."""

import functools
import itertools

import pytest
import torch
from torch import nn

from sklearn_roll._recurrent import (
    TangentErrors,
    causal_linearize,
    directional_linearize,
    gram_recurrence,
    is_structured,
    recurrent_allowance,
)
from sklearn_roll.linearize import linearize, record
from sklearn_roll.nn import ElmanRNN
from sklearn_roll.nn.rnn import CayleyLinear

pytestmark = pytest.mark.usefixtures("one_thread")

CHANNELS, STEPS = 3, 6
# Sequence lengths of the batch: full, ragged, a single step.
LENGTHS = (6, 4, 1, 3)
# Far below the 1e-6 the certificates need; float64 rounding over these sizes is ~1e-15.
RTOL = 1e-10

ACTIVATIONS = [("relu", 0.0), ("leaky_relu", 0.01), ("leaky_relu", 0.1)]
CASES = [
    (sizes, activation, slope, orthogonal)
    for sizes, (activation, slope), orthogonal in itertools.product(
        [(5,), (4, 3)], ACTIVATIONS, [False, True]
    )
]
IDS = [f"{'x'.join(map(str, s))}-{a}{p}-{'cayley' if o else 'plain'}" for s, a, p, o in CASES]


def _rnn(sizes, activation, slope, orthogonal, dtype=torch.float64):
    torch.manual_seed(0)
    module = ElmanRNN(
        CHANNELS,
        2,
        hidden_layer_sizes=sizes,
        activation=activation,
        negative_slope=slope,
        orthogonal_recurrence=orthogonal,
    )
    for layer in module.recurrent:
        if isinstance(layer, CayleyLinear):
            # Far from the identity, so that the Cayley map matters.
            nn.init.normal_(layer.skew, std=0.5)
    return module.to(dtype)


def _sequences(dtype=torch.float64, lengths=LENGTHS, steps=STEPS):
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(len(lengths), steps, CHANNELS, generator=gen, dtype=torch.float64)
    for i, length in enumerate(lengths):
        x[i, length:] = float("nan")
    return x.to(dtype)


def _flipped(module, x):
    """The module's own pattern with about a fifth of the units switched."""
    gen = torch.Generator().manual_seed(2)
    own = [z > 0 for z in record(module, x).pre]
    return [on ^ (torch.rand(on.shape, generator=gen) < 0.2) for on in own]


@functools.cache
def _case(index, frozen):
    """Module, input, pattern (or None) and the per-unit autograd reference of a case."""
    module = _rnn(*CASES[index])
    x = _sequences()
    patterns = _flipped(module, x) if frozen else None
    return (module, x, patterns, *_autograd(module, x, patterns))


def _autograd(module, x, patterns):
    """Unit gradients (n, U, T*C) and output gradients (n, K, T*C), one backward each.

    With ``patterns``, a hook replaces each activation by the product with its
    frozen slopes, so the module's own forward pass runs the frozen network.
    """
    xt = x.clone().requires_grad_(True)
    captured = []

    def freeze(act, args, out):
        captured.append(args[0])
        if patterns is None:
            return None
        below = torch.tensor(getattr(act, "negative_slope", 0.0), dtype=x.dtype)
        return args[0] * torch.where(patterns[len(captured) - 1], 1.0, below)

    handle = module.act.register_forward_hook(freeze)
    try:
        out = module(xt)
    finally:
        handle.remove()
    z = torch.cat(captured, dim=1)
    n = x.shape[0]

    def rows(values):
        return torch.stack(
            [
                torch.autograd.grad(values[:, u].sum(), xt, retain_graph=True)[0].reshape(n, -1)
                for u in range(values.shape[1])
            ],
            dim=1,
        )

    return rows(z), rows(out)


def _assert_rows_close(actual, expected, rtol=RTOL):
    """Each row (n, u, :) within rtol of the largest entry of its reference row."""
    scale = expected.abs().amax(dim=-1, keepdim=True)
    assert ((actual - expected).abs() <= rtol * scale).all()


@pytest.mark.parametrize("index", range(len(CASES)), ids=IDS)
def test_units_and_counted_masks_equal_record(index):
    module, x, *_ = _case(index, False)
    expected = record(module, x)
    for got in (gram_recurrence(module, x), causal_linearize(module, x)):
        assert len(got.pre) == len(expected.pre) == len(module.inputs) * STEPS
        for z, ref in zip(got.pre, expected.pre):
            torch.testing.assert_close(z, ref, rtol=1e-13, atol=1e-15)
        assert all(torch.equal(c, ref) for c, ref in zip(got.counted, expected.counted))
        assert got.negative_slopes == expected.negative_slopes
        torch.testing.assert_close(got.output, expected.output, rtol=1e-13, atol=1e-15)


@pytest.mark.parametrize("frozen", [False, True], ids=["own-pattern", "given-pattern"])
@pytest.mark.parametrize("index", range(len(CASES)), ids=IDS)
def test_gram_norms_equal_per_unit_autograd(index, frozen):
    module, x, patterns, grads, out_grads = _case(index, frozen)
    gram = gram_recurrence(module, x, patterns=patterns)
    expected = (grads**2).sum(dim=2)
    got = torch.cat(gram.grad_sq, dim=1)
    assert got.shape == expected.shape
    assert ((got - expected).abs() <= RTOL * expected).all()
    expected_gram = out_grads @ out_grads.mT
    scale = expected_gram.diagonal(dim1=1, dim2=2).amax(dim=1)[:, None, None]
    assert ((gram.output_gram - expected_gram).abs() <= RTOL * scale).all()


@pytest.mark.parametrize("frozen", [False, True], ids=["own-pattern", "given-pattern"])
@pytest.mark.parametrize("index", range(len(CASES)), ids=IDS)
def test_causal_gradients_equal_per_unit_autograd(index, frozen):
    module, x, patterns, grads, out_grads = _case(index, frozen)
    lin = causal_linearize(module, x, patterns=patterns)
    assert [g.shape for g in lin.pre_tangents] == [
        (x.shape[0], z.shape[1], STEPS * CHANNELS) for z in lin.pre
    ]
    _assert_rows_close(torch.cat(lin.pre_tangents, dim=1), grads)
    _assert_rows_close(lin.output_tangents, out_grads)


@pytest.mark.parametrize("frozen", [False, True], ids=["own-pattern", "given-pattern"])
@pytest.mark.parametrize("index", range(len(CASES)), ids=IDS)
def test_directional_derivatives_equal_gradient_products(index, frozen):
    module, x, patterns, grads, out_grads = _case(index, frozen)
    gen = torch.Generator().manual_seed(3)
    direction = torch.randn(x.shape, generator=gen, dtype=x.dtype)
    # Entries at padded steps are ignored, NaN included.
    direction = torch.where(torch.isnan(x), float("nan"), direction)
    flat = torch.nan_to_num(direction).reshape(x.shape[0], -1, 1)
    lin = directional_linearize(module, x, direction, patterns=patterns)
    _assert_rows_close(torch.cat(lin.pre_tangents, dim=1), grads @ flat)
    _assert_rows_close(lin.output_tangents, out_grads @ flat)
    assert [g.shape for g in lin.pre_tangents] == [(x.shape[0], z.shape[1], 1) for z in lin.pre]


def test_reduce_gets_each_full_block():
    module, x, patterns, grads, _ = _case(IDS.index("4x3-leaky_relu0.1-cayley"), True)
    shapes = []

    def l1(block):
        shapes.append(tuple(block.shape))
        return block.abs().sum(dim=2)

    lin = causal_linearize(module, x, l1, patterns=patterns)
    # Called step by step (all layers at step 0 first), stored in block order.
    assert sorted(shapes) == sorted((x.shape[0], z.shape[1], STEPS * CHANNELS) for z in lin.pre)
    expected = grads.abs().sum(dim=2)
    got = torch.cat(lin.pre_tangents, dim=1)
    assert ((got - expected).abs() <= RTOL * expected).all()


def _penalty(output, pre, counted, grad_sq, output_gram):
    """A loss of the ROLL kind with unit-specific weights and the output, so every
    parameter and every term matters."""
    gen = torch.Generator().manual_seed(4)
    total = 0.0
    for z, c, g in zip(pre, counted, grad_sq):
        weight = torch.rand(g.shape, generator=gen, dtype=g.dtype)
        total = total + ((weight * g + torch.relu(1 - z.abs())) * c).sum()
    mix = torch.rand(output_gram.shape[1:], generator=gen, dtype=output_gram.dtype)
    return total + (mix * output_gram).sum() + output.sum()


@pytest.mark.parametrize(
    "name", ["5-relu0.0-plain", "5-leaky_relu0.01-cayley", "4x3-leaky_relu0.1-cayley"]
)
def test_parameter_gradients_equal_those_through_linearize(name):
    module, x, *_ = _case(IDS.index(name), False)
    params = list(module.parameters())

    def gradients(lin_or_gram, grad_sq, output_gram):
        loss = _penalty(
            lin_or_gram.output, lin_or_gram.pre, lin_or_gram.counted, grad_sq, output_gram
        )
        return torch.autograd.grad(loss, params)

    lin = linearize(module, x, "basis")
    expected = gradients(lin, [(g**2).sum(dim=2) for g in lin.pre_tangents], _gram(lin))
    gram = gram_recurrence(module, x)
    for a, b in zip(gradients(gram, gram.grad_sq, gram.output_gram), expected):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-9 * b.abs().max().item())


def _gram(lin):
    return lin.output_tangents @ lin.output_tangents.mT


def test_directional_derivatives_are_differentiable():
    module, x, *_ = _case(IDS.index("4x3-leaky_relu0.1-cayley"), False)
    direction = torch.ones_like(x).masked_fill(torch.isnan(x), 0.0)
    # With the slopes constant, derivatives do not depend on the biases.
    params = [p for name, p in module.named_parameters() if not name.endswith("bias")]

    def gradients(lin):
        loss = sum((g**2).sum() for g in lin.pre_tangents) + (lin.output_tangents**2).sum()
        return torch.autograd.grad(loss, params)

    expected = gradients(linearize(module, x, direction[None]))
    for a, b in zip(gradients(directional_linearize(module, x, direction)), expected):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-9 * b.abs().max().item())


def _reduce_with_errors(index, block, errors):
    return block.clone(), errors.entries()


@pytest.mark.parametrize("index", range(len(CASES)), ids=IDS)
def test_allowance_bounds_the_rounding(index):
    """Against the same computations in float32 promoted to float64: the float64
    bounds are far below the float32 errors, and the float64 values against a
    float64 reference are within them (a check of scale; exactness against rational
    arithmetic is in test_float64_soundness)."""
    module, x, _, grads, out_grads = _case(index, False)
    allowance = recurrent_allowance(module, x)
    reference = record(module, x)
    for z, ref, error in zip(allowance.record.pre, reference.pre, allowance.pre):
        assert ((z - ref).abs() <= error + 1e-300).all()
        assert (error <= 1e-12 * (1 + z.abs())).all()
    gram = gram_recurrence(module, x, allowance=allowance)
    expected = (grads**2).sum(dim=2)
    got = torch.cat(gram.grad_sq, dim=1)
    errors = torch.cat(gram.grad_sq_error, dim=1)
    assert ((got - expected).abs() <= errors + 1e-14 * expected).all()
    assert (errors <= 1e-10 * expected.amax(dim=1, keepdim=True)).all()
    lin, output_errors = causal_linearize(module, x, _reduce_with_errors, allowance=allowance)
    for (g, error), ref in zip(lin.pre_tangents, grads.split([z.shape[1] for z in lin.pre], 1)):
        assert ((g - ref).abs() <= error + 1e-14 * ref.abs().amax()).all()
        assert (error <= 1e-12 * (1 + ref.abs().amax())).all()
    assert ((lin.output_tangents - out_grads).abs() <= output_errors.entries() + 1e-14).all()


def test_allowance_stays_small_over_long_sequences():
    """The errors propagate through the network itself: over 400 steps of a
    default-initialised RNN (whose absolute-valued weights grow geometrically) the
    bounds stay near float64 resolution."""
    torch.manual_seed(0)
    module = ElmanRNN(6, 5, hidden_layer_sizes=(16,)).double()
    x = torch.randn(3, 400, 6, dtype=torch.float64)
    allowance = recurrent_allowance(module, x)
    z = torch.cat(allowance.record.pre, dim=1)
    error = torch.cat(allowance.pre, dim=1)
    assert (error <= 1e-10 * (1 + z.abs())).all()
    gram = gram_recurrence(module, x, allowance=allowance)
    assert all(
        ((e <= 1e-8 * g.amax(dim=1, keepdim=True)).all())
        for e, g in zip(gram.grad_sq_error, gram.grad_sq)
    )


def test_allowance_is_the_same_with_more_padding():
    module = _rnn((4, 3), "leaky_relu", 0.1, True)
    short, long = _sequences(), _sequences(steps=STEPS + 3)
    long[:, :STEPS] = short
    a, b = recurrent_allowance(module, short), recurrent_allowance(module, long)
    keep = [layer * (STEPS + 3) + t for layer in range(2) for t in range(STEPS)]
    for i, j in enumerate(keep):
        torch.testing.assert_close(a.pre[i], b.pre[j], rtol=1e-13, atol=0)
    torch.testing.assert_close(a.output, b.output, rtol=1e-13, atol=0)


def test_float32_module_computes_in_float32():
    module, x, _, grads, out_grads = _case(IDS.index("4x3-leaky_relu0.01-plain"), False)
    single = _rnn((4, 3), "leaky_relu", 0.01, False, torch.float32)
    gram = gram_recurrence(single, x.float())
    lin = causal_linearize(single, x.float())
    assert {t.dtype for t in [*gram.grad_sq, gram.output_gram, *lin.pre_tangents]} == {
        torch.float32
    }
    expected = (grads**2).sum(dim=2)
    assert ((torch.cat(gram.grad_sq, dim=1).double() - expected).abs() <= 1e-4 * expected).all()
    _assert_rows_close(torch.cat(lin.pre_tangents, dim=1).double(), grads, rtol=1e-4)


def test_more_padding_changes_nothing():
    module = _rnn((4, 3), "leaky_relu", 0.1, True)
    short, long = _sequences(), _sequences(steps=STEPS + 3)
    long[:, :STEPS] = short
    a, b = gram_recurrence(module, short), gram_recurrence(module, long)
    keep = [layer * (STEPS + 3) + t for layer in range(2) for t in range(STEPS)]
    for i, j in enumerate(keep):
        torch.testing.assert_close(a.grad_sq[i], b.grad_sq[j], rtol=1e-13, atol=0)
    torch.testing.assert_close(a.output_gram, b.output_gram, rtol=1e-13, atol=0)
    assert not any(b.counted[j].any() for j in set(range(len(b.pre))) - set(keep))


def test_bad_arguments_are_refused():
    module, x, *_ = _case(0, False)
    with pytest.raises(TypeError, match="ElmanRNN"):
        gram_recurrence(nn.Sequential(nn.Linear(3, 2)), x)
    with pytest.raises(ValueError, match="shape"):
        causal_linearize(module, x[:, :, :2])
    with pytest.raises(ValueError, match="patterns"):
        gram_recurrence(module, x, patterns=[z > 0 for z in record(module, x).pre][:-1])
    with pytest.raises(ValueError, match="patterns"):
        gram_recurrence(module, x, patterns=[(z > 0).double() for z in record(module, x).pre])
    with pytest.raises(ValueError, match="direction"):
        directional_linearize(module, x, x[:, :-1])
    smooth = _rnn((5,), "relu", 0.0, False)
    smooth.act = nn.Tanh()
    with pytest.raises(TypeError, match="ReLU"):
        gram_recurrence(smooth, x)


def test_structured_paths_serve_only_the_builtin_forward():
    class OwnForward(ElmanRNN):
        def forward(self, x):
            return ElmanRNN.forward(self, x)

    assert is_structured(ElmanRNN(3, 2)) and not is_structured(OwnForward(3, 2))
    hooked = ElmanRNN(3, 2)
    hooked.act.register_forward_hook(lambda module, args, out: out * 2)
    smooth = ElmanRNN(3, 2)
    smooth.act = nn.Tanh()
    assert not is_structured(hooked) and not is_structured(smooth)
    assert not is_structured(nn.Sequential(nn.Linear(3, 2)))


@pytest.mark.parametrize("q", [1.0, 2.0, float("inf")])
def test_tangent_error_norms_bound_the_norms_of_their_entries(q):
    gen = torch.Generator().manual_seed(5)
    errors = TangentErrors(
        *(torch.rand(2, n, generator=gen, dtype=torch.float64) for n in (3, 3, 7, 7))
    )
    columns = torch.tensor([0, 3, 6])
    for cols in (None, columns):
        entries = errors.entries(cols)
        assert entries.shape == (2, 3, 7 if cols is None else 3)
        assert (
            torch.linalg.vector_norm(entries, ord=q, dim=2) <= errors.norms(q, cols) + 1e-12
        ).all()


@pytest.mark.parametrize("activation", ["relu", "leaky_relu"])
def test_norm_reach_bounds_the_gram_reach_of_a_near_orthogonal_layer(activation):
    from sklearn_roll._recurrent import _norm_reach, _unroll

    torch.manual_seed(0)
    rnn = ElmanRNN(3, 2, hidden_layer_sizes=(16,), activation=activation).double()
    x = torch.randn(4, 40, 3, dtype=torch.float64)
    x[0, 25:] = float("nan")
    with torch.no_grad():
        run = _unroll(rnn, x, None)
        by_norms = _norm_reach(run)
        assert by_norms is not None
        reach, output_reach = by_norms
        # The sums of ||P||^2 themselves: Gram matrices of identities injected after
        # every valid step, in float64 (relative error far below the tolerance).
        W, R = run.recurrent[0], run.readout
        gram = torch.zeros(len(x), 16, 16, dtype=torch.float64)
        for t, (slopes, loose) in enumerate(zip(run.slopes, reach)):
            z = W @ gram @ W.T
            assert torch.all(loose.square() >= z.diagonal(dim1=1, dim2=2) * (1 - 1e-12))
            valid = run.valid[:, t, None, None]
            new = slopes[:, :, None] * z * slopes[:, None, :] + torch.eye(16)
            gram = torch.where(valid, new, gram)
        outputs = torch.einsum("kh,nhj,kj->nk", R, gram, R)
        assert torch.all(output_reach.square() >= outputs * (1 - 1e-12))
        assert reach[-1].max() < 1.01 * 40**0.5


def test_norm_reach_leaves_stacked_and_expanding_recurrences_to_the_gram_pass():
    from sklearn_roll._recurrent import _norm_reach, _unroll

    torch.manual_seed(0)
    x = torch.randn(2, 30, 3, dtype=torch.float64)
    stacked = ElmanRNN(3, 2, hidden_layer_sizes=(8, 8)).double()
    assert _norm_reach(_unroll(stacked, x, None)) is None
    expanding = ElmanRNN(3, 2, hidden_layer_sizes=(8,), orthogonal_recurrence=False).double()
    with torch.no_grad():
        expanding.recurrent[0].weight.mul_(2.0)
    assert _norm_reach(_unroll(expanding, x, None)) is None
