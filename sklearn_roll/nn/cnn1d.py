"""1-D convolutional networks for time series: the FCN and ResNet of Wang, Yan and Oates.

Wang, Yan and Oates (2017), *Time series classification from scratch with deep
neural networks: a strong baseline*: Conv1d + BatchNorm + ReLU blocks, residual sums
for the ResNet, global average pooling and a linear output. Everything but
train-mode BatchNorm is piecewise linear; in eval mode BatchNorm is affine, and
for the ROLL loss in training mode its batch statistics are held constant
(:func:`~sklearn_roll.loss.roll_penalty`).
"""

from __future__ import annotations

from collections.abc import Sequence
from numbers import Integral

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..linearize import unit_mask
from ._activation import make_activation


class _Steps:
    """The valid steps of a padded batch, and how to keep padding out of its layers.

    ``valid`` (n, T) is True at the valid steps; ``mask`` (n, 1, T) broadcasts it
    over the channels of the layers' (n, channels, T) values. With padding,
    ``rows`` lists the flat (sample, step) positions of the valid steps and
    ``lookup`` maps every position to its row among them, or to one past the last
    for a padded step.
    """

    def __init__(self, valid: Tensor) -> None:
        self.mask = valid[:, None, :]
        self.padded = not bool(valid.all())
        self.lengths = valid.sum(dim=1, keepdim=True)
        flat = valid.reshape(-1)
        self.rows = flat.nonzero()[:, 0]
        # Positions of the valid steps count 0, 1, ...; padded ones point past them.
        order = flat.cumsum(0) - 1
        self.lookup = torch.where(flat, order, len(self.rows))

    def normalise(self, norm: nn.Module, z: Tensor) -> Tensor:
        """BatchNorm over the valid steps only: padding enters no batch statistic.

        The valid steps are gathered, normalised as a (steps, channels) batch and
        put back, zeros at the padded steps; without padding ``norm`` sees z as it
        is, which gives the same statistics.
        """
        if not self.padded:
            return norm(z)
        n, channels, T = z.shape
        flat = z.transpose(1, 2).reshape(n * T, channels)
        normed = norm(flat[self.rows])
        # Out of place, so that the linearizer's batched tangents pass through.
        back = torch.cat([normed, normed.new_zeros(1, channels)])[self.lookup]
        return back.reshape(n, T, channels).transpose(1, 2)

    def activate(self, act: nn.Module, z: Tensor) -> Tensor:
        """``act(z)`` with the units of padded steps uncounted, and zero there."""
        with unit_mask(self.mask):
            h = act(z)
        return torch.where(self.mask, h, 0.0) if self.padded else h


class _ConvNorm(nn.Module):
    """Conv1d with "same" zero padding, then BatchNorm1d (or nothing)."""

    def __init__(self, in_channels: int, out_channels: int, kernel: int, batch_norm: bool) -> None:
        super().__init__()
        self.conv = nn.Conv1d(in_channels, out_channels, kernel)
        # What padding="same" pads, written out: for even kernels torch warns about it.
        self.padding = ((kernel - 1) // 2, kernel // 2)
        self.norm = nn.BatchNorm1d(out_channels) if batch_norm else None

    def forward(self, h: Tensor, steps: _Steps) -> Tensor:
        z = self.conv(F.pad(h, self.padding))
        return z if self.norm is None else steps.normalise(self.norm, z)


class ConvBlock1d(nn.Module):
    """``act(norm(conv(x)))`` over a padded batch, or a residual block of such layers.

    Plain: one convolution. Residual: one convolution per kernel, each followed by
    the activation except the last, then ``act(y + shortcut(x))`` with a 1 x 1
    convolution (and BatchNorm) as the shortcut where the channels change.
    Convolutions pad with zeros to keep the length ("same" padding).

    Its input is (n, channels, T), the layout of ``nn.Conv1d``; ``valid`` (n, T),
    True at the valid steps of each sequence, marks the rest as padding, which
    is kept out as :class:`~sklearn_roll.nn.ConvNet1d` describes (whatever values it holds).

    Parameters
    ----------
    in_channels, out_channels : int
        Channels in and out.
    kernels : sequence of int, default=(8, 5, 3)
        Kernel sizes: one for a plain block, several for a residual one.
    residual : bool, default=True
        Residual block.
    batch_norm : bool, default=True
        BatchNorm after each convolution.
    activation : {"relu", "leaky_relu"}, default="relu"
        Activation.
    negative_slope : float, default=0.01
        Slope below zero of the LeakyReLU.

    Examples
    --------
    >>> import torch
    >>> from sklearn_roll.nn import ConvBlock1d
    >>> block = ConvBlock1d(3, 8).eval()
    >>> x = torch.randn(2, 3, 20)
    >>> block(x).shape
    torch.Size([2, 8, 20])
    >>> valid = torch.arange(20) < torch.tensor([[20], [12]])  # the second has 12 steps
    >>> torch.allclose(block(x, valid)[1:, :, :12], block(x[1:, :, :12]))
    True
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernels: Sequence[int] = (8, 5, 3),
        residual: bool = True,
        batch_norm: bool = True,
        activation: str = "relu",
        negative_slope: float = 0.01,
    ) -> None:
        super().__init__()
        widths = [in_channels] + [out_channels] * len(kernels)
        self.layers = nn.ModuleList(
            _ConvNorm(a, b, k, batch_norm) for a, b, k in zip(widths, widths[1:], kernels)
        )
        self.act = make_activation(activation, negative_slope)
        self.residual = residual
        self.shortcut = (
            _ConvNorm(in_channels, out_channels, 1, batch_norm)
            if residual and in_channels != out_channels
            else None
        )

    def forward(self, x: Tensor, valid: Tensor | None = None) -> Tensor:
        if valid is None:
            valid = torch.ones(x.shape[0], x.shape[2], dtype=torch.bool, device=x.device)
        return self._run(torch.where(valid[:, None, :], x, 0.0), _Steps(valid))

    def _run(self, x: Tensor, steps: _Steps) -> Tensor:
        """The block on x (n, channels, T), zero at the padded steps of ``steps``."""
        h = x
        for i, layer in enumerate(self.layers):
            z = layer(h, steps)
            if self.residual and i == len(self.layers) - 1:
                skip = x if self.shortcut is None else self.shortcut(x, steps)
                z = z + skip
            h = steps.activate(self.act, z)
        return h


class ConvNet1d(nn.Module):
    """FCN or ResNet for time series: convolution blocks, global average pooling, a linear output.

    Input is a float tensor (n, T, C), the layout of :class:`~sklearn_roll.nn.ElmanRNN`, in which
    trailing all-NaN time steps pad the shorter sequences. Padding changes nothing:
    padded steps are zero after every layer (as "same" zero padding of the shorter
    sequence would be), their units count in no certificate nor in the ROLL loss
    (:func:`~sklearn_roll.nn.unit_mask`), BatchNorm takes its batch statistics over
    the valid steps, and the pooling averages over the valid steps.

    With ``residual=False`` this is the FCN of Wang, Yan and Oates (2017): one
    block per entry of ``hidden_layer_sizes``, the i-th with kernel
    ``kernel_sizes[i]``. With ``residual=True`` it is their ResNet: each entry is a
    residual block of one convolution per kernel in ``kernel_sizes``. The paper's
    widths are (128, 256, 128) for the FCN and (64, 128, 128) for the ResNet; the
    default (32, 64, 32) costs about a sixteenth of the FCN's arithmetic per step,
    which certificates and the exact ROLL loss multiply by the number of input
    coordinates.

    Parameters
    ----------
    n_features : int
        Channels per time step.
    n_outputs : int
        Output dimension.
    hidden_layer_sizes : sequence of int, default=(32, 64, 32)
        Filters of each block.
    kernel_sizes : sequence of int, default=(8, 5, 3)
        Kernel sizes: per block (FCN; as many as blocks) or within every block
        (ResNet).
    residual : bool, default=False
        The ResNet instead of the FCN.
    batch_norm : bool, default=True
        BatchNorm after every convolution.
    activation : {"relu", "leaky_relu"}, default="relu"
        Activation.
    negative_slope : float, default=0.01
        Slope below zero of the LeakyReLU.

    Examples
    --------
    >>> import torch
    >>> from sklearn_roll.nn import ConvNet1d
    >>> net = ConvNet1d(3, 2, hidden_layer_sizes=(8, 8, 8)).eval()
    >>> x = torch.randn(4, 20, 3)
    >>> x[0, 12:] = float("nan")  # the first sequence has 12 steps
    >>> torch.allclose(net(x[:1, :12]), net(x)[:1])
    True
    """

    def __init__(
        self,
        n_features: int,
        n_outputs: int,
        hidden_layer_sizes: Sequence[int] = (32, 64, 32),
        kernel_sizes: Sequence[int] = (8, 5, 3),
        residual: bool = False,
        batch_norm: bool = True,
        activation: str = "relu",
        negative_slope: float = 0.01,
    ) -> None:
        super().__init__()
        sizes, kernels = list(hidden_layer_sizes), list(kernel_sizes)
        if not sizes or not kernels:
            raise ValueError("hidden_layer_sizes and kernel_sizes must not be empty.")
        if not all(isinstance(v, Integral) and v > 0 for v in sizes + kernels):
            raise ValueError(
                "hidden_layer_sizes and kernel_sizes must hold positive integers, got "
                f"{tuple(sizes)} and {tuple(kernels)}."
            )
        if not residual and len(kernels) != len(sizes):
            raise ValueError(
                f"The FCN has one kernel per block: got {len(kernels)} kernel_sizes for "
                f"{len(sizes)} hidden_layer_sizes (residual=True uses all kernels in "
                "every block)."
            )
        sizes, kernels = [int(v) for v in sizes], [int(v) for v in kernels]
        blocks = []
        width = n_features
        for i, size in enumerate(sizes):
            block_kernels = kernels if residual else [kernels[i]]
            blocks.append(
                ConvBlock1d(
                    width, size, block_kernels, residual, batch_norm, activation, negative_slope
                )
            )
            width = size
        self.blocks = nn.ModuleList(blocks)
        self.out = nn.Linear(width, n_outputs)

    def forward(self, x: Tensor) -> Tensor:
        channels = self.blocks[0].layers[0].conv.in_channels
        if x.dim() != 3 or x.shape[2] != channels:
            raise ValueError(
                f"ConvNet1d expects sequences (n, T, {channels}) with NaN steps as "
                f"padding; got shape {tuple(x.shape)}."
            )
        valid = ~torch.isnan(x).all(dim=2)
        if not bool(valid.any(dim=1).all()):
            raise ValueError("ConvNet1d got a sequence with no valid (non-NaN) time step.")
        steps = _Steps(valid)
        h = torch.where(valid[:, :, None], x, 0.0).transpose(1, 2)
        for block in self.blocks:
            h = block._run(h, steps)
        # Padded steps are zero: the mean over the valid ones.
        return self.out(h.sum(dim=2) / steps.lengths)
