"""How far certificates are from independent computations, on trained networks.

A LeakyReLU MLP (64, 64; slope 0.01, which float32 cannot hold) and a ReLU MLP trained
on scikit-learn's digits (standardised, 70/30 split). On test points:

* float64 ``certified_margin`` (p = 1, 2, inf) and ``certified_radius`` against per-unit
  autograd in float64 (tests/reference.py): the largest relative excess (must be <= 0:
  a certificate never exceeds its value) and the largest relative shortfall;
* ``directional_margin`` along random directions and ``stability_bounds`` against the
  exact distances, computed in rational arithmetic (tests/reference.py
  ``exact_linearization``): the same two figures.

    python benchmarks/soundness.py            # 30 test points
    python benchmarks/soundness.py --quick    # 5 test points
"""

from __future__ import annotations

import argparse
import time
from fractions import Fraction

import numpy as np
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from sklearn.preprocessing import StandardScaler

from _common import budget, markdown_table, write
from reference import exact_linearization, margins, output_gradients, unit_gradients
from sklearn_roll import ROLLClassifier
from sklearn_roll.regions import (
    certified_margin,
    certified_radius,
    directional_margin,
    stability_bounds,
)

SEED = 0


def radii(module, X, q):
    """Robust radii by per-unit autograd: min(margin, gap / ||gradient difference||)."""
    z, g = unit_gradients(module, X)
    out, grads = output_gradients(module, X)
    radius = margins(z, g, q)
    for i in range(len(X)):
        y = out[i].argmax()
        for k in range(out.shape[1]):
            norm = np.linalg.norm(grads[i, y] - grads[i, k], ord=q)
            if k != y and norm > 0:
                radius[i] = min(radius[i], (out[i, y] - out[i, k]) / norm)
    return radius


def exact_distances(module, x, directions):
    """Exact distances from x along each direction to the first unit that switches."""
    pre, _ = exact_linearization(module, x, directions)
    best = []
    for j in range(len(directions)):
        found = [
            abs(z) / abs(rates[j]) if z * rates[j] < 0 else Fraction(0)
            for z, rates in pre
            if z * rates[j] < 0 or (z == 0 and rates[j] > 0)
        ]
        best.append(min(found) if found else None)
    return best


def relative(got, expected):
    finite = np.isfinite(expected) & (expected > 0)
    ratio = got[finite] / expected[finite] - 1
    return float(ratio.max()), float(-ratio.min())


def main(quick: bool) -> None:
    wall = time.perf_counter()
    X, y = load_digits(return_X_y=True)
    X = StandardScaler().fit_transform(X)
    X_train, X_test, y_train, _ = train_test_split(
        X, y, test_size=0.3, random_state=SEED, stratify=y
    )
    n = budget(quick, 30, 5, 2)
    points = X_test[:n]
    rng = np.random.RandomState(SEED)
    rows, data = [], {"seed": SEED, "n_points": n}
    for name, activation in (("LeakyReLU 0.01", "leaky_relu"), ("ReLU", "relu")):
        clf = ROLLClassifier(
            hidden_layer_sizes=(64, 64),
            activation=activation,
            max_epochs=budget(quick, 30, 10, 1),
            random_state=SEED,
        ).fit(X_train, y_train)
        module = clf.module_
        results = {}
        for p, q in ((1, np.inf), (2, 2), (np.inf, 1)):
            z, g = unit_gradients(module, points)
            results[f"certified_margin p={p}"] = relative(
                certified_margin(clf, points, p, precision="float64"), margins(z, g, q)
            )
            results[f"certified_radius p={p}"] = relative(
                certified_radius(clf, points, p, precision="float64"), radii(module, points, q)
            )
        directions = rng.randn(*points.shape)
        directions /= np.linalg.norm(directions, axis=1, keepdims=True)
        along = directional_margin(clf, points, directions)
        lower, upper = stability_bounds(clf, points)
        got, expected = [], []
        for i, x in enumerate(points):
            eye = np.eye(x.size)
            exact = exact_distances(module, x, [directions[i], *eye, *-eye])
            mine = [along[i], *upper[i], *-lower[i]]
            for value, truth in zip(mine, exact):
                if truth is not None and truth > 0:
                    got.append(value)
                    expected.append(float(truth))
                    # The float conversion of the exact value rounds; compare exactly.
                    assert Fraction(value) <= truth, (name, value, float(truth))
        results["directional margins and stability bounds (exact)"] = relative(
            np.array(got), np.array(expected)
        )
        for what, (excess, shortfall) in results.items():
            rows.append([name, what, f"{excess:.1e}", f"{shortfall:.1e}"])
            data[f"{name}: {what}"] = {"largest_excess": excess, "largest_shortfall": shortfall}
    text = (
        f"digits (standardised), MLP (64, 64) trained 30 epochs; {n} test points; directional "
        "margins along one random unit direction per point, stability bounds along every "
        "coordinate in both directions. Excess: largest relative amount a certificate lies "
        "above its reference (a negative value: all below); shortfall: largest relative "
        "amount below it.\n\n"
        + markdown_table(["network", "certificate", "largest excess", "largest shortfall"], rows)
    )
    data["wall_seconds"] = time.perf_counter() - wall
    print(text)
    print(f"wrote {write('soundness', text, data, quick)}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a reduced run")
    main(parser.parse_args().quick)
