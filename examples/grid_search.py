"""
Choosing lam and C by cross-validation, keeping accuracy and maximising the margin
==================================================================================

A ``GridSearchCV`` over a ``StandardScaler + ROLLClassifier`` pipeline scores every
candidate by accuracy and by the median certified l2 margin, and refits the one with
the largest margin among those within one accuracy point of the best (the paper's
rule). The margins are in the units of the raw features: the scaler is folded into
the certificate. ``plot_tradeoff`` draws the candidates' accuracy against their
margin, with the frontier and the choice, into ``grid_search_tradeoff.png``.

Run it as a script::

    python examples/grid_search.py
"""

import os
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import numpy as np  # noqa: E402
from sklearn.datasets import load_breast_cancer  # noqa: E402
from sklearn.model_selection import GridSearchCV, train_test_split  # noqa: E402
from sklearn.pipeline import make_pipeline  # noqa: E402
from sklearn.preprocessing import StandardScaler  # noqa: E402

from sklearn_roll import ROLLClassifier, certified_margin  # noqa: E402
from sklearn_roll.metrics import margin_scorer  # noqa: E402
from sklearn_roll.model_selection import best_margin_within, tradeoff_table  # noqa: E402
from sklearn_roll.plotting import plot_tradeoff  # noqa: E402

# The test suite runs every example on a tiny budget through these two variables.
EPOCHS = int(os.environ.get("ROLL_EXAMPLE_EPOCHS", 30))
OUTPUT = Path(os.environ.get("ROLL_EXAMPLE_OUTPUT") or Path(__file__).parent)

X, y = load_breast_cancer(return_X_y=True)
X_train, X_test, y_train, y_test = train_test_split(X, y, test_size=0.3, random_state=0, stratify=y)

search = GridSearchCV(
    make_pipeline(StandardScaler(), ROLLClassifier(max_epochs=EPOCHS, random_state=0, n_threads=1)),
    [
        {"rollclassifier__lam": [0.0]},  # plain training, the baseline
        {"rollclassifier__lam": [0.5, 2.0], "rollclassifier__C": [0.25, 1.0, 4.0]},
    ],
    scoring={"accuracy": "accuracy", "margin": margin_scorer()},
    refit=best_margin_within(tolerance=0.01),
    cv=3,
    n_jobs=2,
)
search.fit(X_train, y_train)
tradeoff_table(search, print_table=True)
ax = plot_tradeoff(search)
out = OUTPUT / "grid_search_tradeoff.png"
ax.figure.tight_layout()
ax.figure.savefig(out, dpi=110)
print(f"saved {out}")

best = search.best_estimator_
vanilla = make_pipeline(
    StandardScaler(), ROLLClassifier(lam=0.0, max_epochs=EPOCHS, random_state=0)
)
vanilla.fit(X_train, y_train)
print(f"\nchosen: {search.best_params_}")
for name, model in (("vanilla", vanilla), ("chosen", best)):
    margins = certified_margin(model, X_test)  # in raw feature units, through the scaler
    print(
        f"{name:8s} test accuracy {model.score(X_test, y_test):.3f}   "
        f"median l2 margin (raw units) {np.median(margins):.3g}"
    )
