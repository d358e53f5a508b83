"""User modules the tests share."""

from torch import nn


class Residual(nn.Module):
    """A user module with a residual link, LeakyReLU and ReLU: not a Linear chain.

    Certificates and the loss take the general (forward-mode) path for it, and a
    pipeline folds its preprocessing into an input layer in front of it.
    """

    def __init__(self, n_features=6, n_outputs=3, width=12):
        super().__init__()
        self.inp = nn.Linear(n_features, width)
        self.act = nn.LeakyReLU(0.1)
        self.block = nn.Linear(width, width)
        self.act2 = nn.ReLU()
        self.out = nn.Linear(width, n_outputs)

    def forward(self, x):
        h = self.act(self.inp(x))
        return self.out(h + self.act2(self.block(h)))


def activation(slope):
    """nn.ReLU for slope 0, else nn.LeakyReLU(slope)."""
    return nn.ReLU() if slope == 0 else nn.LeakyReLU(slope)


class RandomResidual(nn.Module):
    """A user module with optional skip connections: not a chain, so the general path."""

    def __init__(self, n_features, width, slopes, skips, n_outputs):
        super().__init__()
        self.inp = nn.Linear(n_features, width)
        self.act = activation(slopes[0])
        self.hidden = nn.ModuleList(nn.Linear(width, width) for _ in slopes[1:])
        self.acts = nn.ModuleList(activation(s) for s in slopes[1:])
        self.skips = skips
        self.out = nn.Linear(width, n_outputs)

    def forward(self, x):
        h = self.act(self.inp(x))
        for linear, act, skip in zip(self.hidden, self.acts, self.skips):
            a = act(linear(h))
            h = a + h if skip else a
        return self.out(h)
