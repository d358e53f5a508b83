"""
Quickstart: plain training vs ROLL on scikit-learn's digits
===========================================================

Trains the same ReLU network twice, with lam=0 (plain training) and with the ROLL
penalty, and prints test accuracy next to percentiles of the certified l2 and l1
margins: the radius around each test image within which its input gradient (its
explanation) provably does not change. The margins are in the images' own pixel units
(0 to 16): the scaler in front of the network is folded into the certificate. Saves
``quickstart_margins.png`` when matplotlib is installed.

Run it as a script::

    python examples/quickstart.py
"""

import os
from pathlib import Path

import numpy as np
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from sklearn_roll import ROLLClassifier, certified_margin

# The test suite runs every example on a tiny budget through these two variables.
EPOCHS = int(os.environ.get("ROLL_EXAMPLE_EPOCHS", 50))
OUTPUT = Path(os.environ.get("ROLL_EXAMPLE_OUTPUT") or Path(__file__).parent)

X, y = load_digits(return_X_y=True)
X_train, X_test, y_train, y_test = train_test_split(X, y, test_size=0.3, random_state=0, stratify=y)

models = {
    "vanilla (lam=0)": make_pipeline(
        StandardScaler(), ROLLClassifier(lam=0.0, max_epochs=EPOCHS, random_state=0)
    ),
    "ROLL (lam=1, C=1)": make_pipeline(
        StandardScaler(), ROLLClassifier(lam=1.0, C=1.0, max_epochs=EPOCHS, random_state=0)
    ),
}

rows, l2 = [], {}
for name, model in models.items():
    model.fit(X_train, y_train)
    m2 = certified_margin(model, X_test, p=2)
    m1 = certified_margin(model, X_test, p=1)
    l2[name] = m2
    rows.append(
        (
            name,
            model.score(X_test, y_test),
            np.percentile(m2, [25, 50, 75, 100]),
            np.percentile(m1, [25, 50, 75, 100]),
        )
    )

print(
    f"{'model':20s} {'accuracy':>8s}   {'l2 margin P25 / P50 / P75 / P100':>40s}   {'l1 margin P50':>13s}"
)
for name, acc, p2, p1 in rows:
    print(f"{name:20s} {acc:8.3f}   {' / '.join(f'{v:.2e}' for v in p2):>40s}   {p1[1]:13.2e}")
base = np.median(l2["vanilla (lam=0)"])
print(f"\nMedian l2 margin, ROLL vs vanilla: {np.median(l2['ROLL (lam=1, C=1)']) / base:.1f}x")

try:
    import matplotlib

    matplotlib.use("Agg")
    from sklearn_roll.plotting import plot_margin_distribution

    ax = plot_margin_distribution(l2, xlabel="certified l2 margin (pixel units, 0-16)")
    ax.set_title("digits: certified l2 margins on the test split")
    out = OUTPUT / "quickstart_margins.png"
    ax.figure.tight_layout()
    ax.figure.savefig(out, dpi=120)
    print(f"saved {out}")
except ImportError:
    print("matplotlib is not installed: skipping the plot (pip install 'sklearn-roll[plot]')")
