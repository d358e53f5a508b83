"""A tabular baseline: the estimators' defaults against scikit-learn's, in one run.

On scikit-learn's bundled tabular sets and on a 20,000 x 50 synthetic set per task, it
fits, each behind a StandardScaler and with its defaults:

* classification: ROLLClassifier, MLPClassifier and LogisticRegression (max_iter=1000,
  so that it converges);
* regression: ROLLRegressor, MLPRegressor and RidgeCV;

on 70/30 splits (stratified for classification) over three seeds, and reports the test
score (accuracy, R^2) and the fit time, with ROLL's time as a multiple of the MLP's.
Every fit runs on one thread (torch, and numpy's BLAS through threadpoolctl), after a
warm-up fit of each model that pays the one-time import costs.

    python benchmarks/tabular.py            # full run
    python benchmarks/tabular.py --quick    # smaller sets, one seed
"""

from __future__ import annotations

import argparse
import time
import warnings

import numpy as np
import torch
from sklearn.datasets import (
    load_breast_cancer,
    load_diabetes,
    load_digits,
    load_iris,
    load_wine,
    make_classification,
    make_regression,
)
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression, RidgeCV
from sklearn.model_selection import train_test_split
from sklearn.neural_network import MLPClassifier, MLPRegressor
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from threadpoolctl import threadpool_limits

from _common import budget, markdown_table, write
from sklearn_roll import ROLLClassifier, ROLLRegressor

SEEDS = [0, 1, 2]


def _synthetic_classification(n):
    return make_classification(
        n_samples=n, n_features=50, n_informative=20, n_redundant=10, random_state=0
    )


def _synthetic_regression(n):
    return make_regression(n_samples=n, n_features=50, n_informative=20, noise=10.0, random_state=0)


def tasks(quick: bool) -> dict:
    n = budget(quick, 20_000, 2_000, 300)
    synthetic = f"synthetic {n:,} x 50"
    classification = {
        "iris": lambda: load_iris(return_X_y=True),
        "wine": lambda: load_wine(return_X_y=True),
        "breast_cancer": lambda: load_breast_cancer(return_X_y=True),
        "digits": lambda: load_digits(return_X_y=True),
        synthetic: lambda: _synthetic_classification(n),
    }
    regression = {
        "diabetes": lambda: load_diabetes(return_X_y=True),
        synthetic: lambda: _synthetic_regression(n),
    }
    if quick:
        classification = {k: classification[k] for k in ("iris", synthetic)}
    return {
        "classification": {
            "datasets": classification,
            "score": "accuracy",
            "roll": ROLLClassifier,
            "models": {
                "ROLLClassifier": lambda: ROLLClassifier(**_tiny(quick, "roll")),
                "MLPClassifier": lambda: MLPClassifier(**_tiny(quick, "mlp")),
                "LogisticRegression": lambda: LogisticRegression(max_iter=1000),
            },
            "mlp": "MLPClassifier",
            "linear": "LogisticRegression",
            "synthetic": synthetic,
        },
        "regression": {
            "datasets": regression,
            "score": "R^2",
            "roll": ROLLRegressor,
            "models": {
                "ROLLRegressor": lambda: ROLLRegressor(**_tiny(quick, "roll")),
                "MLPRegressor": lambda: MLPRegressor(**_tiny(quick, "mlp")),
                "RidgeCV": lambda: RidgeCV(),
            },
            "mlp": "MLPRegressor",
            "linear": "RidgeCV",
            "synthetic": synthetic,
        },
    }


def _tiny(quick: bool, kind: str) -> dict:
    """No parameters but the defaults, except a tiny budget for the test suite's run."""
    epochs = budget(quick, None, None, 2)
    if epochs is None:
        return {}
    return {"max_epochs": epochs} if kind == "roll" else {"max_iter": epochs}


def fit_and_score(make, X, y, seed, classifier):
    stratify = y if classifier else None
    X_train, X_test, y_train, y_test = train_test_split(
        X, y, test_size=0.3, random_state=seed, stratify=stratify
    )
    model = make()
    params = model.get_params()
    if "random_state" in params:
        model.set_params(random_state=seed)
    pipe = make_pipeline(StandardScaler(), model)
    start = time.perf_counter()
    with warnings.catch_warnings():
        # The MLPs' defaults stop at max_iter on some sets; that is part of the baseline.
        warnings.simplefilter("ignore", ConvergenceWarning)
        pipe.fit(X_train, y_train)
    seconds = time.perf_counter() - start
    return float(pipe.score(X_test, y_test)), seconds


def main(quick: bool) -> None:
    wall = time.perf_counter()
    torch.set_num_threads(1)
    seeds = SEEDS[:1] if quick else SEEDS
    data = {"seeds": seeds, "tasks": {}}
    sections = []
    with threadpool_limits(1):
        for task, spec in tasks(quick).items():
            classifier = task == "classification"
            X0, y0 = spec["datasets"]["iris" if classifier else "diabetes"]()
            for make in spec["models"].values():
                fit_and_score(make, X0[:60], y0[:60], 0, False)  # warm-up, untimed
            results = {}
            for dataset, load in spec["datasets"].items():
                X, y = load()
                for name, make in spec["models"].items():
                    runs = [fit_and_score(make, X, y, seed, classifier) for seed in seeds]
                    results[(dataset, name)] = runs
                    scores, times = zip(*runs)
                    print(task, dataset, name, f"{np.mean(scores):.4f}", f"{np.mean(times):.2f}s")
            sections.append(_section(task, spec, results, seeds))
            data["tasks"][task] = {
                "score": spec["score"],
                "runs": [
                    {
                        "dataset": d,
                        "model": m,
                        "scores": [s for s, _ in r],
                        "seconds": [t for _, t in r],
                    }
                    for (d, m), r in results.items()
                ],
                "targets": _targets(task, spec, results),
            }
    data["wall_seconds"] = time.perf_counter() - wall
    text = (
        "# Tabular baseline: defaults against scikit-learn's\n\n"
        f"Each model with its defaults behind a StandardScaler; 70/30 splits, seeds {seeds} "
        "(mean, and the spread min - max of the score); fit time of the pipeline on one "
        "thread. LogisticRegression with max_iter=1000.\n\n"
        + "\n".join(sections)
        + "\n"
        + _targets_text(data["tasks"])
    )
    print(text)
    print(f"wrote {write('tabular', text, data, quick)} in {data['wall_seconds']:.0f} s")


def _section(task, spec, results, seeds):
    roll = spec["roll"].__name__
    rows = []
    for dataset in spec["datasets"]:
        for name in spec["models"]:
            scores, times = zip(*results[(dataset, name)])
            mlp_time = np.mean([t for _, t in results[(dataset, spec["mlp"])]])
            rows.append(
                [
                    dataset,
                    name,
                    f"{np.mean(scores):.3f} ({min(scores):.3f} - {max(scores):.3f})",
                    f"{np.mean(times):.2f}",
                    f"{np.mean(times) / mlp_time:.1f}x",
                ]
            )
    table = markdown_table(
        ["data set", "model", f"test {spec['score']}", "fit (s)", f"fit vs {spec['mlp']}"], rows
    )
    return f"**{task}** ({roll} against {spec['mlp']} and {spec['linear']}):\n\n{table}\n"


def _targets(task, spec, results):
    """The issue's targets, measured: score gaps and the fit-time ratio."""
    roll, mlp, linear = spec["roll"].__name__, spec["mlp"], spec["linear"]

    def mean(dataset, name, index):
        return float(np.mean([run[index] for run in results[(dataset, name)]]))

    datasets = list(spec["datasets"])
    gap_mlp = {d: mean(d, roll, 0) - mean(d, mlp, 0) for d in datasets}
    gap_linear = {d: mean(d, roll, 0) - mean(d, linear, 0) for d in datasets}
    synthetic = spec["synthetic"]
    return {
        "score_minus_mlp": gap_mlp,
        "mean_score_minus_mlp": float(np.mean(list(gap_mlp.values()))),
        "score_minus_linear": gap_linear,
        "synthetic_fit_time_ratio_to_mlp": mean(synthetic, roll, 1) / mean(synthetic, mlp, 1),
    }


def _targets_text(tasks_data):
    c = tasks_data["classification"]["targets"]
    r = tasks_data["regression"]["targets"]
    diabetes = r["score_minus_linear"].get("diabetes")
    synthetic = [k for k in c["score_minus_mlp"] if k.startswith("synthetic")][0]
    lines = [
        "Targets:",
        "",
        f"* ROLLClassifier's accuracy minus MLPClassifier's, mean over the data sets: "
        f"{100 * c['mean_score_minus_mlp']:+.1f} points (target: at least -1); per set: "
        + ", ".join(f"{d} {100 * v:+.1f}" for d, v in c["score_minus_mlp"].items())
        + ".",
        "* ROLLRegressor's R^2 minus MLPRegressor's: "
        + ", ".join(f"{d} {v:+.3f}" for d, v in r["score_minus_mlp"].items())
        + ".",
    ]
    if diabetes is not None:
        lines.append(
            f"* ROLLRegressor's R^2 minus RidgeCV's on diabetes: {diabetes:+.3f} (target: at "
            "least -0.02)."
        )
    lines.append(
        f"* Fit time of ROLLClassifier over MLPClassifier's on the {synthetic} set: "
        f"{c['synthetic_fit_time_ratio_to_mlp']:.1f}x (target: at most 5x); regression: "
        f"{r['synthetic_fit_time_ratio_to_mlp']:.1f}x."
    )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="reduced run")
    main(parser.parse_args().quick)
