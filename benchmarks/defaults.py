"""How the estimators' defaults were chosen: a small study per architecture and task.

For each built-in architecture it trains the default network (Adam at the
architecture's default learning rate and epochs, batch 64) with plain training (lam=0) and with ROLL over a grid of lam and C, and
reports the mean test score and the median certified l2 margin relative to plain
training. The default of each study is the setting with the largest median-margin
gain (geometric mean over data sets and seeds) whose mean score stays within a point
(0.01 of accuracy or R^2) of plain training's; sklearn_roll/_defaults.py holds them.

* "mlp" (classifier): the 2x100 ReLU MLP on scikit-learn's classification sets
  (digits, breast cancer, wine, iris), standardised, 70/30 split, two seeds;
* "mlp-regressor": the same MLP as a regressor (standardised target) on diabetes and
  on Friedman's first synthetic problem (1,000 samples), five seeds;
* "cnn": the ResNet (16, 32 channels) on digits as 8x8 images in [0, 1], two seeds;
* "rnn": the Elman RNN (64 ReLU units, orthogonal recurrence) on four sequence
  sets with their official splits: Japanese Vowels (12 channels, 7-29 steps),
  sktime's BasicMotions (6 x 100), ItalyPowerDemand (1 x 24) and GunPoint (1 x 150),
  the latter three read as sktime's numpy3D (``sequence_layout="nct"``), one seed.

    python benchmarks/defaults.py               # every study (hours on 2 cores)
    python benchmarks/defaults.py --study rnn   # one study; the others' results are kept
    python benchmarks/defaults.py --quick       # one data set, one seed, small grids
"""

from __future__ import annotations

import argparse
import json
import time
from typing import NamedTuple

import joblib
import numpy as np
import torch
from sklearn.datasets import (
    load_breast_cancer,
    load_diabetes,
    load_digits,
    load_iris,
    load_wine,
    make_friedman1,
)
from sklearn.model_selection import train_test_split
from sklearn.preprocessing import StandardScaler

import sklearn_roll
from _common import RESULTS, budget, markdown_table, write
from sklearn_roll import ROLLClassifier, ROLLRegressor
from sklearn_roll._defaults import DEFAULTS, training_settings
from sklearn_roll.datasets import load_japanese_vowels

# A point of accuracy, or of R^2.
TOLERANCE = 0.01


def _digits_images():
    X, y = load_digits(return_X_y=True)
    return (X / 16.0).reshape(-1, 1, 8, 8), y


def _friedman():
    return make_friedman1(n_samples=1000, noise=1.0, random_state=0)


def _japanese_vowels():
    X, y = load_japanese_vowels("train")
    X_test, y_test = load_japanese_vowels("test")
    return Split(X, X_test, y, y_test, "ntc")


def _sktime(name):
    def load():
        import sktime.datasets

        loader = getattr(sktime.datasets, f"load_{name}")
        parts = [loader(split=s, return_type="numpy3D", return_X_y=True) for s in ("train", "test")]
        (X, y), (X_test, y_test) = parts
        return Split(X.astype(np.float32), X_test.astype(np.float32), y, y_test, "nct")

    return load


class Split(NamedTuple):
    """A data set's official train/test split, and the layout of its sequences."""

    X: object
    X_test: object
    y: np.ndarray
    y_test: np.ndarray
    layout: str


STUDIES = {
    "mlp": {
        "task": "classifier",
        "module": "mlp",
        "datasets": {
            "digits": lambda: load_digits(return_X_y=True),
            "breast_cancer": lambda: load_breast_cancer(return_X_y=True),
            "wine": lambda: load_wine(return_X_y=True),
            "iris": lambda: load_iris(return_X_y=True),
        },
        "seeds": [0, 1],
        "grid": [(lam, C) for lam in (0.25, 1.0, 4.0) for C in (0.25, 1.0, 4.0)],
        "score": "accuracy",
        "network": "2x100 ReLU MLP",
    },
    "mlp-regressor": {
        "task": "regressor",
        "module": "mlp",
        "datasets": {"diabetes": lambda: load_diabetes(return_X_y=True), "friedman1": _friedman},
        "seeds": [0, 1, 2, 3, 4],
        "grid": [(lam, C) for lam in (0.25, 1.0, 4.0, 16.0) for C in (0.25, 1.0, 4.0)],
        "score": "R^2",
        "network": "2x100 ReLU MLP regressor, standardised target",
    },
    "cnn": {
        "task": "classifier",
        "module": "cnn",
        "datasets": {"digits 8x8": _digits_images},
        "seeds": [0, 1],
        "grid": [(lam, 1.0) for lam in (0.001, 0.003, 0.01, 0.03)],
        "score": "accuracy",
        "network": "ResNet (16, 32 channels)",
    },
    "rnn": {
        "task": "classifier",
        "module": "rnn",
        "datasets": {
            "japanese_vowels": _japanese_vowels,
            "basic_motions": _sktime("basic_motions"),
            "italy_power_demand": _sktime("italy_power_demand"),
            "gunpoint": _sktime("gunpoint"),
        },
        "seeds": [0],
        "grid": [(lam, C) for lam in (2.0**-6, 2.0**-5, 2.0**-4) for C in (4.0, 16.0)],
        "score": "accuracy",
        "network": "Elman RNN, 64 ReLU units, orthogonal recurrence",
        "n_margin": 200,
    },
}


def _split(X, y, seed, classifier):
    if isinstance(X, Split):
        return X
    stratify = y if classifier else None
    Xtr, Xte, ytr, yte = train_test_split(X, y, test_size=0.3, random_state=seed, stratify=stratify)
    if Xtr.ndim == 2:
        scaler = StandardScaler().fit(Xtr)
        Xtr, Xte = scaler.transform(Xtr), scaler.transform(Xte)
    return Xtr, Xte, ytr, yte


def _reduced(data, quick):
    """``(X, y)`` for _split: the first rows only in quick runs."""
    n = budget(quick, None, 600, 150)
    if isinstance(data, Split):
        return (data._replace(X=data.X[:n], y=data.y[:n]), None)
    X, y = data
    return X[:n], y[:n]


def evaluate(study, split, seed, lam, C, max_epochs, n_margin):
    """Test score and median certified l2 margin of one fit, cached by what shapes it."""
    Xtr, Xte, ytr, yte, *layout = split
    params = {"sequence_layout": layout[0]} if layout else {}
    training = training_settings(study["module"], None, max_epochs)
    key = joblib.hash(
        (study["module"], study["task"], Xtr, ytr, Xte, seed, lam, C, training, n_margin)
        + tuple(params.items())
    )
    cache = RESULTS.parent / ".cache" / "defaults" / f"{key}_{sklearn_roll.__version__}.json"
    if cache.exists():
        return tuple(json.loads(cache.read_text()))
    Estimator = ROLLClassifier if study["task"] == "classifier" else ROLLRegressor
    est = Estimator(
        study["module"], lam=lam, C=C, max_epochs=max_epochs, random_state=seed, **params
    )
    est.fit(Xtr, ytr)
    result = (est.score(Xte, yte), float(np.median(est.certified_margin(Xte[:n_margin]))))
    cache.parent.mkdir(parents=True, exist_ok=True)
    cache.write_text(json.dumps(result))
    return result


def run(name, study, quick):
    """Every run of one study: {(lam, C): [(dataset, seed, score, margin)]}."""
    datasets = list(study["datasets"])[:1] if quick else list(study["datasets"])
    seeds = study["seeds"][:1] if quick else study["seeds"]
    grid = study["grid"][:1] if quick else study["grid"]
    max_epochs = budget(quick, None, 5, 1)
    results = {}
    for dataset in datasets:
        data = study["datasets"][dataset]()
        n_margin = budget(quick, study.get("n_margin"), 100, 20)
        for seed in seeds:
            split = _split(*_reduced(data, quick), seed, study["task"] == "classifier")
            for lam, C in [(0.0, 0.0)] + grid:
                score, margin = evaluate(study, split, seed, lam, C, max_epochs, n_margin)
                results.setdefault((lam, C), []).append((dataset, seed, score, margin))
                print(name, dataset, seed, lam, C, f"{score:.3f}", f"{margin:.3g}", flush=True)
    return results, datasets, seeds, training_settings(study["module"], None, max_epochs)


def summarise(results):
    """Per setting: mean score, its drop from plain training, and margin ratios."""
    plain = {(d, s): (a, m) for d, s, a, m in results[(0.0, 0.0)]}
    rows = []
    for (lam, C), runs in results.items():
        ratios = [m / plain[(d, s)][1] for d, s, _, m in runs]
        rows.append(
            {
                "lam": lam,
                "C": C,
                "mean_score": float(np.mean([a for _, _, a, _ in runs])),
                "mean_score_drop": float(np.mean([plain[(d, s)][0] - a for d, s, a, _ in runs])),
                "geometric_mean_margin_ratio": float(np.exp(np.mean(np.log(ratios)))),
                "min_margin_ratio": float(min(ratios)),
                "runs": [
                    {"dataset": d, "seed": s, "score": a, "median_l2_margin": m}
                    for d, s, a, m in runs
                ],
            }
        )
    return rows


def choose(rows):
    """The ROLL setting with the largest margin gain within TOLERANCE of plain training."""
    eligible = [r for r in rows if r["lam"] > 0 and r["mean_score_drop"] <= TOLERANCE + 1e-12]
    if not eligible:
        return None
    return max(eligible, key=lambda r: r["geometric_mean_margin_ratio"])


def section(name: str, entry: dict) -> str:
    """The Markdown of one study's results."""
    study = STUDIES[name]
    default = tuple(DEFAULTS[study["task"]][study["module"]])
    chosen = None if entry["chosen"] is None else tuple(entry["chosen"])
    table = markdown_table(
        [
            "lam",
            "C",
            f"mean test {study['score']}",
            "change vs lam=0 (points)",
            "median-margin ratio (geometric mean)",
            "smallest ratio",
            "selection",
        ],
        [
            [
                r["lam"],
                r["C"],
                f"{r['mean_score']:.3f}",
                f"{-100 * r['mean_score_drop'] + 0.0:+.1f}",
                f"{r['geometric_mean_margin_ratio']:.2f}x",
                f"{r['min_margin_ratio']:.2f}x",
                ("chosen" if (r["lam"], r["C"]) == chosen else "")
                + (" (default)" if (r["lam"], r["C"]) == default else ""),
            ]
            for r in entry["settings"]
        ],
    )
    verdict = (
        "no ROLL setting stays within a point of plain training"
        if chosen is None
        else f"chosen: lam={chosen[0]:g}, C={chosen[1]:g}"
    )
    return (
        f"**{name}**: {study['network']}; {', '.join(entry['datasets'])}; seeds "
        f"{entry['seeds']}; Adam lr {entry['lr']:g}, {entry['max_epochs']} epochs\n\n{table}"
        f"\n\n{verdict}; the package's default is lam={default[0]:g}, C={default[1]:g}.\n"
    )


def main(quick: bool, only: list[str] | None = None) -> None:
    """Run the studies (``only`` these, the others' results kept from the last full run)."""
    wall = time.perf_counter()
    torch.set_num_threads(1)
    studies = {}
    previous = RESULTS / "defaults.json"
    if only and not quick and previous.exists():
        studies = json.loads(previous.read_text())["studies"]
    for name, study in STUDIES.items():
        if only and name not in only:
            continue
        results, datasets, seeds, (lr, max_epochs) = run(name, study, quick)
        rows = summarise(results)
        chosen = choose(rows)
        studies[name] = {
            "task": study["task"],
            "module": study["module"],
            "datasets": datasets,
            "seeds": seeds,
            "lr": lr,
            "max_epochs": max_epochs,
            "settings": rows,
            "chosen": None if chosen is None else [chosen["lam"], chosen["C"]],
            "default": list(DEFAULTS[study["task"]][study["module"]]),
        }
    studies = {name: studies[name] for name in STUDIES if name in studies}
    data = {"studies": studies, "wall_seconds": time.perf_counter() - wall}
    text = (
        "# Choosing the defaults, per architecture: batch 64\n\n"
        + "\n".join(section(name, entry) for name, entry in studies.items())
        + "\nChange is ROLL's mean test score minus plain training's, averaged over data "
        "sets and seeds, in points (0.01 of accuracy or R^2). Ratios compare the median "
        "certified l2 margin on the test split (standardised features; pixels in [0, 1]) "
        "with plain training's. Chosen: the largest margin gain within a point of plain "
        "training.\n"
    )
    print(text)
    print(f"wrote {write('defaults', text, data, quick)} in {data['wall_seconds']:.0f} s")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="reduced run")
    parser.add_argument(
        "--study",
        action="append",
        choices=list(STUDIES),
        help="run only this study (repeatable); the results keep the other studies' "
        "figures from the last run",
    )
    args = parser.parse_args()
    main(args.quick, args.study)
