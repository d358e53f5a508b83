"""A small residual convolutional network (ResNet) built from certifiable layers."""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

from ._activation import make_activation


class ResidualBlock(nn.Module):
    """``act(x' + conv(act(conv(x))))`` where x' is x, or a strided 1x1 projection of it.

    Parameters
    ----------
    in_channels, out_channels : int
        Channels in and out.
    stride : int, default=1
        Stride of the first convolution (2 halves the resolution).
    activation : {"relu", "leaky_relu"}, default="relu"
        Activation.
    negative_slope : float, default=0.01
        Slope below zero of the LeakyReLU.

    Examples
    --------
    >>> import torch
    >>> from sklearn_roll.nn import ResidualBlock
    >>> ResidualBlock(3, 8, stride=2)(torch.randn(2, 3, 8, 8)).shape
    torch.Size([2, 8, 4, 4])
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        stride: int = 1,
        activation: str = "relu",
        negative_slope: float = 0.01,
    ) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1)
        self.act1 = make_activation(activation, negative_slope)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1)
        self.act2 = make_activation(activation, negative_slope)
        self.skip = (
            nn.Identity()
            if stride == 1 and in_channels == out_channels
            else nn.Conv2d(in_channels, out_channels, 1, stride=stride)
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.act2(self.skip(x) + self.conv2(self.act1(self.conv1(x))))


class ResNet(nn.Module):
    """Convolutional stem, residual stages, global average pooling, linear output.

    Only affine layers, residual sums, average pooling and ReLU / LeakyReLU, so the
    network is piecewise linear and every certificate applies; downsampling uses
    strided convolutions instead of max pooling.

    Parameters
    ----------
    input_shape : tuple of int
        (channels, height, width) of one image.
    n_outputs : int
        Output dimension.
    hidden_layer_sizes : sequence of int, default=(16, 32)
        Channels of the stem and of each stage; every stage after the first halves
        the resolution.
    blocks_per_stage : int, default=1
        Residual blocks per stage.
    activation : {"relu", "leaky_relu"}, default="relu"
        Activation.
    negative_slope : float, default=0.01
        Slope below zero of the LeakyReLU.

    Examples
    --------
    >>> import torch
    >>> from sklearn_roll.nn import ResNet
    >>> net = ResNet((1, 8, 8), 10, hidden_layer_sizes=(4, 8))
    >>> net(torch.randn(2, 1, 8, 8)).shape
    torch.Size([2, 10])
    """

    def __init__(
        self,
        input_shape: Sequence[int],
        n_outputs: int,
        hidden_layer_sizes: Sequence[int] = (16, 32),
        blocks_per_stage: int = 1,
        activation: str = "relu",
        negative_slope: float = 0.01,
    ) -> None:
        super().__init__()
        channels = list(hidden_layer_sizes)
        self.stem = nn.Conv2d(input_shape[0], channels[0], 3, padding=1)
        self.act = make_activation(activation, negative_slope)
        blocks: list[nn.Module] = []
        width = channels[0]
        for i, size in enumerate(channels):
            for j in range(blocks_per_stage):
                stride = 2 if i > 0 and j == 0 else 1
                blocks.append(ResidualBlock(width, size, stride, activation, negative_slope))
                width = size
        self.blocks = nn.Sequential(*blocks)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.out = nn.Linear(width, n_outputs)

    def forward(self, x: Tensor) -> Tensor:
        h = self.blocks(self.act(self.stem(x)))
        return self.out(self.pool(h).flatten(1))
