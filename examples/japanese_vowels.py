"""
Stability bounds on speech sequences (the paper's Figure 3)
===========================================================

Trains a LeakyReLU RNN on the Japanese Vowels speaker-recognition data (variable-length
sequences of 12 LPC coefficients) with plain training and with the ROLL penalty, and
plots, for one test sequence, each channel with its per-value stability bounds: how
far that single value can move with the network's gradient provably unchanged. The
sequences go in as a list of arrays of different lengths; the RNN reads NaN padding
internally. Needs sktime, which ships the data (``pip install sktime``). Saves
``japanese_vowels_bounds.png``.

Run it as a script::

    python examples/japanese_vowels.py
"""

import os
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from sklearn_roll import ROLLClassifier  # noqa: E402
from sklearn_roll.datasets import load_japanese_vowels  # noqa: E402
from sklearn_roll.plotting import plot_stability_bounds  # noqa: E402
from sklearn_roll.regions import stability_bounds  # noqa: E402

# The test suite runs every example on a tiny budget through these two variables.
EPOCHS = int(os.environ.get("ROLL_EXAMPLE_EPOCHS", 80))
OUTPUT = Path(os.environ.get("ROLL_EXAMPLE_OUTPUT") or Path(__file__).parent)

X, y = load_japanese_vowels("train")
X_test, y_test = load_japanese_vowels("test")
settings = {"vanilla (lam=0)": 0.0, "ROLL (lam=0.1, C=1)": 0.1}

fig, axes = plt.subplots(2, 1, figsize=(8, 6), sharex=True, sharey=True)
sample = X_test[0]
for ax, (name, lam) in zip(axes, settings.items()):
    clf = ROLLClassifier(
        "rnn",
        activation="leaky_relu",
        negative_slope=0.1,
        hidden_layer_sizes=(32,),
        lam=lam,
        C=1.0,
        approx=8,  # 8 sampled input axes per sequence estimate the gradient term
        approx_method="axes",
        lr=3e-3,
        batch_size=32,
        max_epochs=EPOCHS,
        random_state=0,
    ).fit(X, y)
    lower, upper = stability_bounds(clf, [sample])
    width = np.median(upper[0] - lower[0])
    print(
        f"{name:22s} test accuracy {clf.score(X_test, y_test):.3f}  median bound width {width:.3g}"
    )
    plot_stability_bounds(sample, lower[0], upper[0], channels=[0, 1, 2, 3], ax=ax, clip=1.0)
    ax.set_title(f"{name}: median width of the stability interval {width:.3g}")
fig.tight_layout()
out = OUTPUT / "japanese_vowels_bounds.png"
fig.savefig(out, dpi=110)
print(f"saved {out}")
