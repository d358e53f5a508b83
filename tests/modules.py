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
