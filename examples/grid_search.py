"""
Choosing lam and C by cross-validation, keeping accuracy and maximising the margin
==================================================================================

A ``GridSearchCV`` over a ``StandardScaler + ROLLClassifier`` pipeline scores every
candidate by accuracy and by the median certified l2 margin, and refits the one with
the largest margin among those within one accuracy point of the best (the paper's
rule). The margins are in the units of the raw features: the scaler is folded into
the certificate.

Run it as a script::

    python examples/grid_search.py
"""

import os

import numpy as np
from sklearn.datasets import load_breast_cancer
from sklearn.model_selection import GridSearchCV, train_test_split
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from sklearn_roll import ROLLClassifier, certified_margin
from sklearn_roll.metrics import margin_scorer
from sklearn_roll.model_selection import best_margin_within, tradeoff_table

# The test suite runs every example on a tiny budget through this variable.
EPOCHS = int(os.environ.get("ROLL_EXAMPLE_EPOCHS", 30))

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
