"""The paper's Table 2 on Japanese Vowels: plain training vs ROLL, LeakyReLU RNN.

The official split (270 training / 370 test sequences of 7 to 29 frames, 12
channels, 9 speakers). 54 training sequences (20%, stratified) validate. The network
standardises each channel with the training statistics inside the module, so margins
are in the units of the raw features, then runs an Elman RNN with LeakyReLU units
and an orthogonal (Cayley) recurrent matrix, as the paper's scaled-Cayley RNN.
Adam, batch 32, keeping the epoch with the lowest validation loss. ROLL (gamma =
100) runs over a lam x C grid of powers of two and is selected on validation by the
paper's rule (largest validation median l2 margin at validation accuracy equal to
plain training's, or at most 1 point lower).

The exact loss needs a tangent for each of the up to 29 x 12 = 348 input coordinates
and costs about a second per batch of 32 here, so the grid trains with the
approximate loss (``--approx`` sampled input axes or projections per sequence);
``--approx 0`` selects the exact loss.

    python benchmarks/japanese_vowels_table2.py            # full grid
    python benchmarks/japanese_vowels_table2.py --quick    # two settings, few epochs
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from sklearn.model_selection import train_test_split
from skorch.callbacks import EarlyStopping
from skorch.dataset import Dataset
from skorch.helper import predefined_split
from torch import nn

from _common import budget, choose, evaluate, fit_grid, write_selection
from sklearn_roll import ROLLClassifier
from sklearn_roll.datasets import load_japanese_vowels
from sklearn_roll.nn import ElmanRNN

SEED = 0
GRID = [(2.0**a, 2.0**b) for a in (-7, -5, -3, -1) for b in (0, 2, 4)]
PAPER = {
    "vanilla": (0.98, 61e-6),
    "equal accuracy": (0.98, 207e-6),
    "1 point lower": (0.97, 1249e-6),
}


class StandardisedRNN(nn.Module):
    """Per-channel standardisation with fixed statistics, then :class:`ElmanRNN`."""

    def __init__(self, n_features, n_outputs, mean, scale, **rnn):
        super().__init__()
        self.register_buffer("mean", torch.as_tensor(mean, dtype=torch.float32))
        self.register_buffer("scale", torch.as_tensor(scale, dtype=torch.float32))
        self.rnn = ElmanRNN(n_features, n_outputs, **rnn)

    def forward(self, x):
        return self.rnn((x - self.mean) / self.scale)


def _silent(*args, **kwargs):
    """EarlyStopping's message sink: the table reports the best epoch."""


def padded(sequences):
    out = np.full((len(sequences), max(map(len, sequences)), 12), np.nan, dtype=np.float32)
    for i, s in enumerate(sequences):
        out[i, : len(s)] = s
    return out


def main(quick: bool, approx: int, method: str) -> None:
    wall = time.perf_counter()
    X, y = load_japanese_vowels("train")
    X_test, y_test = load_japanese_vowels("test")
    n_test = budget(quick, len(X_test), len(X_test), 40)
    X_test, y_test = X_test[:n_test], y_test[:n_test]
    train, valid = train_test_split(np.arange(len(X)), test_size=0.2, random_state=SEED, stratify=y)
    Xtr, ytr = [X[i] for i in train], y[train]
    Xva, yva = [X[i] for i in valid], y[valid]
    steps = np.concatenate(Xtr)
    classes = np.unique(ytr)
    valid_set = Dataset(padded(Xva), np.searchsorted(classes, yva).astype(np.int64))
    epochs = budget(quick, 150, 20, 1)
    grid = [(2.0**-5, 2.0**4)] if quick else GRID

    def make(lam, C):
        return ROLLClassifier(
            StandardisedRNN,
            module__mean=steps.mean(axis=0),
            module__scale=steps.std(axis=0),
            module__hidden_layer_sizes=(64,),
            module__activation="leaky_relu",
            module__negative_slope=0.1,
            module__orthogonal_recurrence=True,
            lam=lam,
            C=C,
            approx=approx or None,
            approx_method=method,
            lr=3e-3,
            batch_size=32,
            max_epochs=epochs,
            train_split=predefined_split(valid_set),
            callbacks=[EarlyStopping(patience=epochs + 1, load_best=True, sink=_silent)],
            random_state=SEED,
        )

    candidates = fit_grid(
        f"vowels_{approx}_{method}" + ("_quick" if quick else ""),
        [(0.0, 0.0)] + grid,
        make,
        Xtr,
        ytr,
        Xva,
        yva,
    )
    loss = "exact" if not approx else f"approximate ({approx} {method} per sequence)"
    table = evaluate(choose(candidates), X_test, y_test)
    setup = (
        "# Japanese Vowels, LeakyReLU RNN (the paper's Table 2)\n\n"
        f"{len(Xtr)} training / {len(Xva)} validation / {len(X_test)} test sequences; "
        f"Elman RNN, 64 LeakyReLU units (slope 0.1), orthogonal recurrence, Adam lr 3e-3, "
        f"batch 32, {epochs} epochs, best epoch by validation loss; ROLL with the {loss} loss, "
        "gamma = 100, selected on validation. Margins in raw feature units."
    )
    facts = {"seed": SEED, "epochs": epochs, "loss": loss}
    write_selection(
        "japanese_vowels_table2", setup, grid, table, PAPER, candidates, facts, quick, wall
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="reduced run")
    parser.add_argument("--approx", type=int, default=16, help="probes per sequence; 0 = exact")
    parser.add_argument("--method", default="axes", choices=["projections", "axes"])
    args = parser.parse_args()
    main(args.quick, args.approx, args.method)
