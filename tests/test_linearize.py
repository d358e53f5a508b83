"""The linearized forward against per-unit autograd, and the check of supported ops."""

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from modules import Residual
from reference import output_gradients, unit_gradients
from sklearn_roll.linearize import (
    UnsupportedOperationError,
    check_supported,
    linearize,
    record,
    unit_mask,
)
from sklearn_roll.nn import MLP


class FunctionalResidualNet(Residual):
    """The same network written with F.relu / F.leaky_relu calls."""

    def forward(self, x):
        h = F.leaky_relu(self.inp(x), 0.1)
        h = h + F.relu(self.block(h))
        return self.out(h)


def _relative_error(a, b):
    return np.abs(a - b).max() / max(np.abs(b).max(), 1e-300)


def _np(t):
    return t.detach().numpy()


def _stack(lin):
    return _np(torch.cat(lin.pre, 1)), _np(torch.cat(lin.pre_tangents, 1))


@pytest.mark.parametrize(
    "make",
    [
        lambda: MLP(6, 3, (8, 5, 4)),
        lambda: MLP(6, 3, (8, 5), activation="leaky_relu", negative_slope=0.2),
        lambda: Residual(width=7),
    ],
    ids=["mlp-relu", "mlp-leaky", "residual"],
)
def test_unit_gradients_equal_per_unit_autograd(make, rng):
    torch.manual_seed(0)
    module = make().double()
    x = rng.randn(5, 6)
    z_ref, g_ref = unit_gradients(module, x)
    lin = linearize(module, torch.tensor(x), "basis")
    z, g = _stack(lin)
    assert _relative_error(z, z_ref) <= 1e-12
    assert _relative_error(g, g_ref) <= 1e-6
    out_ref, og_ref = output_gradients(module, x)
    assert _relative_error(_np(lin.output), out_ref) <= 1e-12
    assert _relative_error(_np(lin.output_tangents), og_ref) <= 1e-6


def test_l2_basis_preserves_norms_and_inner_products(rng):
    torch.manual_seed(1)
    module = MLP(40, 4, (10, 10)).double()  # D > width: the chain path compresses
    x = torch.tensor(rng.randn(6, 40))
    full, compressed = linearize(module, x, "basis"), linearize(module, x, "l2")
    assert compressed.pre_tangents[0].shape[2] == 10
    for a, b in zip(full.pre_tangents, compressed.pre_tangents):
        np.testing.assert_allclose(
            _np(a @ a.transpose(1, 2)), _np(b @ b.transpose(1, 2)), rtol=1e-9, atol=1e-12
        )


def test_functional_calls_are_recorded_like_modules(rng):
    torch.manual_seed(0)
    a = Residual(width=7).double()
    b = FunctionalResidualNet(width=7).double()
    b.load_state_dict(a.state_dict())
    x = torch.tensor(rng.randn(4, 6))
    la, lb = linearize(a, x), linearize(b, x)
    assert lb.negative_slopes == [0.1, 0.0]
    for u, v in zip(la.pre_tangents, lb.pre_tangents):
        np.testing.assert_array_equal(_np(u), _np(v))


def test_chain_and_general_paths_agree(rng):
    torch.manual_seed(0)
    mlp = MLP(6, 3, (8, 5)).double()

    class Wrapped(nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, x):
            return self.inner(x)

    x = torch.tensor(rng.randn(4, 6))
    chain, general = linearize(mlp, x), linearize(Wrapped(mlp), x)
    for u, v in zip(chain.pre_tangents, general.pre_tangents):
        np.testing.assert_allclose(_np(u), _np(v), rtol=1e-12, atol=1e-14)


def test_explicit_tangents_give_directional_derivatives(rng):
    torch.manual_seed(0)
    module = Residual(width=7).double()
    x = rng.randn(3, 6)
    v = rng.randn(2, 3, 6)
    _, g_ref = unit_gradients(module, x)
    lin = linearize(module, torch.tensor(x), torch.tensor(v))
    _, g = _stack(lin)
    expected = np.einsum("nud,knd->nuk", g_ref, v)
    assert _relative_error(g, expected) <= 1e-9


def test_unit_mask_marks_units_that_do_not_count():
    class Masked(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(3, 4)

        def forward(self, x):
            with unit_mask(torch.tensor([True, False, True, False])):
                return F.relu(self.lin(x))

    lin = record(Masked(), torch.randn(2, 3))
    np.testing.assert_array_equal(lin.counted[0].numpy(), [[True, False, True, False]] * 2)


def test_inplace_activation_records_the_preactivation():
    class Inplace(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(3, 4)
            self.act = nn.ReLU(inplace=True)

        def forward(self, x):
            return self.act(self.lin(x))

    module = Inplace()
    x = torch.randn(5, 3)
    lin = record(module, x)
    np.testing.assert_array_equal(_np(lin.pre[0]), _np(module.lin(x)))


def _net(layer, before=None):
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(1, 2, 3, padding=1)
            self.bad = layer

        def forward(self, x):
            h = self.conv(x)
            return (before(h) if before else self.bad(h)).flatten(1)

    return Net()


@pytest.mark.parametrize(
    "layer, message",
    [
        (nn.MaxPool2d(2), "average pooling"),
        (nn.AdaptiveMaxPool2d(1), "average pooling"),
        (nn.Tanh(), "nn.ReLU or nn.LeakyReLU"),
        (nn.Sigmoid(), "nn.ReLU or nn.LeakyReLU"),
        (nn.GELU(), "nn.ReLU or nn.LeakyReLU"),
        (nn.Softplus(), "nn.ReLU or nn.LeakyReLU"),
        (nn.ReLU6(), "data-dependent choice"),
        (nn.Softmax(dim=1), "return logits"),
        (nn.GroupNorm(1, 2), "statistics of the input"),
    ],
    ids=lambda v: type(v).__name__ if isinstance(v, nn.Module) else None,
)
def test_unsupported_layers_are_refused_with_layer_name(layer, message):
    with pytest.raises(UnsupportedOperationError, match=message) as info:
        check_supported(_net(layer), torch.randn(2, 1, 4, 4))
    assert "in layer 'bad'" in str(info.value)


def test_train_mode_batchnorm_linearizes_with_the_batch_statistics_held_constant():
    torch.manual_seed(0)
    net = _net(nn.Sequential(nn.BatchNorm2d(2), nn.ReLU())).double().train()
    x = torch.randn(5, 1, 4, 4, dtype=torch.float64)
    running = net.bad[0].running_mean.clone()
    lin = linearize(net, x, "basis")
    # The linearizer leaves the running statistics alone.
    assert torch.equal(net.bad[0].running_mean, running)
    # The same network in eval mode with the batch's statistics as running ones.
    with torch.no_grad():
        h = net.conv(x)
    frozen = copy.deepcopy(net).eval()
    frozen.bad[0].running_mean = h.mean(dim=(0, 2, 3))
    frozen.bad[0].running_var = h.var(dim=(0, 2, 3), unbiased=False)
    expected = linearize(frozen, x, "basis")
    torch.testing.assert_close(lin.output, net(x))
    for a, b in zip([*lin.pre, *lin.pre_tangents], [*expected.pre, *expected.pre_tangents]):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


def test_batchnorm_without_running_statistics_is_refused():
    net = _net(nn.BatchNorm2d(2, track_running_stats=False)).eval()
    with pytest.raises(UnsupportedOperationError, match="running statistics"):
        check_supported(net, torch.randn(2, 1, 4, 4))


@pytest.mark.parametrize(
    "expr, message",
    [
        (lambda h: h * h, "multiplies two input-dependent"),
        (lambda h: 1.0 / h, "divides by an input-dependent"),
        (lambda h: h / h.sum(), "divides by an input-dependent"),
        (lambda h: torch.abs(h), "data-dependent choice"),
        (lambda h: torch.clamp(h, 0, 1), "data-dependent choice"),
        (lambda h: torch.maximum(h, torch.zeros_like(h)), "data-dependent choice"),
        (lambda h: h.detach(), "cuts the input gradient"),
        (lambda h: torch.where(h > 0, h, 0.0), "data-dependent choice"),
        (lambda h: torch.fft.fft(h).real, "not among the operations"),
    ],
    ids=["square", "reciprocal", "normalise", "abs", "clamp", "maximum", "detach", "where", "fft"],
)
def test_nonlinear_ops_on_input_are_refused(expr, message):
    with pytest.raises(UnsupportedOperationError, match=message):
        check_supported(_net(nn.Identity(), before=expr), torch.randn(2, 1, 4, 4))


def test_supported_building_blocks_pass():
    class Good(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(1, 4, 3, stride=2, padding=1)
            self.bn = nn.BatchNorm2d(4).eval()
            self.pool = nn.AvgPool2d(2)
            self.drop = nn.Dropout(0.3)
            self.rec = nn.utils.parametrizations.orthogonal(
                nn.Linear(4, 4, bias=False), orthogonal_map="cayley"
            )
            self.out = nn.Linear(4, 2)

        def forward(self, x):
            valid = ~torch.isnan(x).all(dim=1, keepdim=True)
            x = torch.where(valid, x, 0.0)
            h = F.leaky_relu(self.bn(self.conv(x)), 0.05)
            h = self.drop(self.pool(h)).mean(dim=(2, 3))
            h = h + 0.5 * self.rec(F.relu(h))
            return self.out(torch.cat([h[:, :2], h[:, 2:]], dim=1))

    check_supported(Good().train(False), torch.randn(3, 1, 8, 8))
