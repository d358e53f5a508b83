"""
Linear regions in 2-D, plain training vs ROLL (the paper's Figure 1)
====================================================================

Trains the same small ReLU network on two interleaved half moons with lam=0 and with
the ROLL penalty, and draws for each: its linear regions (one colour per activation
pattern), the certified l2 circle around every training point, the prediction heat
map and the gradient arrows. ROLL's regions around the data are larger, so the
circles are larger and the arrows agree over larger areas. Saves
``toy_regions.png``.

Run it as a script::

    python examples/toy_regions.py
"""

import os
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from sklearn.datasets import make_moons  # noqa: E402
from sklearn.preprocessing import StandardScaler  # noqa: E402

from sklearn_roll import ROLLClassifier, certified_margin  # noqa: E402
from sklearn_roll.plotting import (  # noqa: E402
    plot_certified_balls,
    plot_decision_surface,
    plot_gradients,
    plot_linear_regions,
)

# The test suite runs every example on a tiny budget through these two variables.
EPOCHS = int(os.environ.get("ROLL_EXAMPLE_EPOCHS", 300))
OUTPUT = Path(os.environ.get("ROLL_EXAMPLE_OUTPUT") or Path(__file__).parent)

X, y = make_moons(n_samples=120, noise=0.15, random_state=0)
X = StandardScaler().fit_transform(X)
settings = {"vanilla (lam=0)": 0.0, "ROLL (lam=1, C=1)": 1.0}
window = (-2.6, 2.6)

fig, axes = plt.subplots(1, 2, figsize=(10, 5))
for ax, (name, lam) in zip(axes, settings.items()):
    clf = ROLLClassifier(
        hidden_layer_sizes=(32, 32), lam=lam, C=1.0, max_epochs=EPOCHS, lr=3e-3, random_state=0
    ).fit(X, y)
    plot_decision_surface(clf, window, window, ax=ax, resolution=200)
    plot_linear_regions(clf, window, window, ax=ax, resolution=300)
    plot_certified_balls(clf, X, ax=ax)
    plot_gradients(clf, X[::3], ax=ax)
    margin = np.median(certified_margin(clf, X))
    ax.set_title(f"{name}\naccuracy {clf.score(X, y):.2f}, median l2 margin {margin:.3f}")
    print(f"{name:20s} training accuracy {clf.score(X, y):.3f}  median l2 margin {margin:.4f}")
fig.tight_layout()
out = OUTPUT / "toy_regions.png"
fig.savefig(out, dpi=110)
print(f"saved {out}")
