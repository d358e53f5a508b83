"""Elman recurrent network with LeakyReLU units, for variable-length sequences."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from ..linearize import unit_mask
from ._activation import make_activation


class ElmanRNN(nn.Module):
    """Stacked Elman RNN, ``h_t = act(W x_t + U h_{t-1} + b)``, classifying from the last step.

    Input is a float tensor (n, T, C) in which trailing all-NaN time steps pad the
    shorter sequences. Padded steps leave the hidden state unchanged and their units
    are excluded from every certificate and from the ROLL loss (via
    :func:`~sklearn_roll.nn.unit_mask`), so the output is read at each sequence's
    last valid step and appending padding changes nothing.

    Parameters
    ----------
    n_features : int
        Channels per time step.
    n_outputs : int
        Output dimension.
    hidden_layer_sizes : sequence of int, default=(64,)
        Hidden size of each stacked recurrent layer.
    activation : {"relu", "leaky_relu"}, default="leaky_relu"
        Hidden activation (the paper uses LeakyReLU).
    negative_slope : float, default=0.01
        Slope below zero of the LeakyReLU.
    orthogonal_recurrence : bool, default=True
        Constrain each recurrent matrix to be orthogonal through the Cayley map
        ``(I + A)^-1 (I - A)`` of a learned skew-symmetric ``A`` (see
        :class:`CayleyLinear`; the paper trains a scaled-Cayley orthogonal RNN).

    Examples
    --------
    >>> import torch
    >>> from sklearn_roll.nn import ElmanRNN
    >>> rnn = ElmanRNN(3, 2, hidden_layer_sizes=(8,))
    >>> x = torch.randn(4, 5, 3)
    >>> x[0, 3:] = float("nan")  # the first sequence has 3 steps
    >>> rnn(x).shape
    torch.Size([4, 2])
    """

    def __init__(
        self,
        n_features: int,
        n_outputs: int,
        hidden_layer_sizes: Sequence[int] = (64,),
        activation: str = "leaky_relu",
        negative_slope: float = 0.01,
        orthogonal_recurrence: bool = True,
    ) -> None:
        super().__init__()
        self.inputs = nn.ModuleList()
        self.recurrent = nn.ModuleList()
        width = n_features
        for size in hidden_layer_sizes:
            self.inputs.append(nn.Linear(width, size))
            self.recurrent.append(
                CayleyLinear(size) if orthogonal_recurrence else nn.Linear(size, size, bias=False)
            )
            width = size
        self.act = make_activation(activation, negative_slope)
        self.out = nn.Linear(width, n_outputs)

    def forward(self, x: Tensor) -> Tensor:
        valid = ~torch.isnan(x).all(dim=2)
        seq = torch.where(valid[:, :, None], x, 0.0)
        for inputs, recurrent in zip(self.inputs, self.recurrent):
            drive = inputs(seq)
            # The recurrent matrix (a Cayley map for orthogonal recurrence) is built
            # once per forward, not once per step.
            weight = recurrent.weight
            h = drive.new_zeros(drive.shape[0], drive.shape[2])
            states = []
            for t in range(drive.shape[1]):
                step = valid[:, t, None]
                with unit_mask(step):
                    new = self.act(drive[:, t] + h @ weight.T)
                h = torch.where(step, new, h)
                states.append(h)
            seq = torch.stack(states, dim=1)
        return self.out(h)


class CayleyLinear(nn.Module):
    """A bias-free linear map whose matrix is orthogonal: the Cayley map of a skew matrix.

    ``weight = (I + A)^-1 (I - A)`` with ``A = U - U^T`` for ``U`` the strict upper
    triangle of the learned matrix, so ``weight`` stays orthogonal during training.
    Written out rather than with ``torch.nn.utils.parametrizations.orthogonal``
    because torch refuses to pickle parametrized modules, and estimators must pickle.

    Parameters
    ----------
    size : int
        Input and output dimension.

    Examples
    --------
    >>> import torch
    >>> from sklearn_roll.nn import CayleyLinear
    >>> w = CayleyLinear(4).weight
    >>> torch.allclose(w @ w.T, torch.eye(4), atol=1e-6)
    True
    """

    def __init__(self, size: int) -> None:
        super().__init__()
        self.skew = nn.Parameter(torch.empty(size, size))
        # Small skew part: the map starts near the identity, a stable recurrence.
        nn.init.normal_(self.skew, std=0.1 / size**0.5)

    @property
    def weight(self) -> Tensor:
        """The orthogonal matrix."""
        upper = self.skew.triu(1)
        skew = upper - upper.T
        eye = torch.eye(len(skew), dtype=skew.dtype, device=skew.device)
        return torch.linalg.solve(eye + skew, eye - skew)

    def forward(self, x: Tensor) -> Tensor:
        return x @ self.weight.T
