"""How the estimators' defaults were chosen: a small study on tabular data sets.

For each of scikit-learn's bundled classification sets (standardised, 70/30 split,
two seeds) it trains the default network (2x100 ReLU, Adam lr 1e-3, batch 64, 50
epochs) with plain training (lam=0) and with ROLL over a lam x C grid, and reports
test accuracy and the median certified l2 margin relative to plain training.

    python benchmarks/defaults.py            # full study
    python benchmarks/defaults.py --quick    # one data set, one seed, small grid
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from sklearn.datasets import load_breast_cancer, load_digits, load_iris, load_wine
from sklearn.model_selection import train_test_split
from sklearn.preprocessing import StandardScaler

from _common import budget, markdown_table, write
from sklearn_roll import ROLLClassifier

DATASETS = {
    "digits": load_digits,
    "breast_cancer": load_breast_cancer,
    "wine": load_wine,
    "iris": load_iris,
}


def evaluate(X, y, seed, lam, C, max_epochs):
    Xtr, Xte, ytr, yte = train_test_split(X, y, test_size=0.3, random_state=seed, stratify=y)
    scaler = StandardScaler().fit(Xtr)
    Xtr, Xte = scaler.transform(Xtr), scaler.transform(Xte)
    clf = ROLLClassifier(lam=lam, C=C, max_epochs=max_epochs, random_state=seed).fit(Xtr, ytr)
    return clf.score(Xte, yte), float(np.median(clf.certified_margin(Xte)))


def main(quick: bool) -> None:
    wall = time.perf_counter()
    datasets = ["wine"] if quick else list(DATASETS)
    seeds = [0] if quick else [0, 1]
    grid = (
        [(1.0, 1.0)] if quick else [(lam, C) for lam in (0.25, 1.0, 4.0) for C in (0.25, 1.0, 4.0)]
    )
    max_epochs = budget(quick, 50, 5, 1)
    results = {}
    for name in datasets:
        X, y = DATASETS[name](return_X_y=True)
        for seed in seeds:
            for lam, C in [(0.0, 0.0)] + grid:
                acc, margin = evaluate(X, y, seed, lam, C, max_epochs)
                results.setdefault((lam, C), []).append((name, seed, acc, margin))
                print(name, seed, lam, C, f"{acc:.3f}", f"{margin:.3g}", flush=True)
    vanilla = {(d, s): (a, m) for d, s, a, m in results[(0.0, 0.0)]}
    rows, data = (
        [],
        {"settings": [], "datasets": datasets, "seeds": seeds, "max_epochs": max_epochs},
    )
    for (lam, C), runs in results.items():
        acc_drop = np.mean([vanilla[(d, s)][0] - a for d, s, a, _ in runs])
        ratios = [m / vanilla[(d, s)][1] for d, s, _, m in runs]
        acc = np.mean([a for _, _, a, _ in runs])
        rows.append(
            [
                lam,
                C,
                f"{acc:.3f}",
                f"{100 * acc_drop:+.1f}",
                f"{np.exp(np.mean(np.log(ratios))):.2f}x",
                f"{min(ratios):.2f}x",
            ]
        )
        data["settings"].append(
            {
                "lam": lam,
                "C": C,
                "mean_accuracy": acc,
                "mean_accuracy_drop_points": 100 * acc_drop,
                "geometric_mean_margin_ratio": float(np.exp(np.mean(np.log(ratios)))),
                "min_margin_ratio": min(ratios),
                "runs": [
                    {"dataset": d, "seed": s, "accuracy": a, "median_l2_margin": m}
                    for d, s, a, m in runs
                ],
            }
        )
    table = markdown_table(
        [
            "lam",
            "C",
            "mean test accuracy",
            "accuracy change vs lam=0 (points)",
            "median-margin ratio (geometric mean)",
            "smallest ratio",
        ],
        rows,
    )
    data["wall_seconds"] = time.perf_counter() - wall
    text = (
        f"# Choosing the defaults: {', '.join(datasets)}; seeds {seeds}; 2x100 ReLU MLP, "
        f"Adam lr 1e-3, batch 64, {max_epochs} epochs\n\n{table}\n\n"
        "Accuracy change is plain training minus ROLL, averaged over data sets and seeds "
        "(positive: ROLL is less accurate). Ratios compare the median certified l2 margin "
        "on the test split with plain training's.\n"
    )
    print(text)
    print(f"wrote {write('defaults', text, data, quick)} in {data['wall_seconds']:.0f} s")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="reduced run")
    main(parser.parse_args().quick)
