"""Shared helpers of the benchmark scripts: machine facts, GEMM speed, result files."""

from __future__ import annotations

import json
import os
import pickle
import platform
import sys
import time
from collections.abc import Callable
from pathlib import Path

import joblib
import numpy as np
import sklearn
import skorch
import torch

import sklearn_roll
from sklearn_roll.model_selection import best_margin_within

# The benchmarks reuse the tests' independent reference computations.
sys.path.append(str(Path(__file__).resolve().parent.parent / "tests"))

RESULTS = Path(
    os.environ.get("ROLL_BENCHMARK_OUTPUT") or Path(__file__).resolve().parent / "results"
)
# tests/test_benchmarks.py runs every --quick path on a still smaller budget.
TINY = os.environ.get("ROLL_BENCHMARK_TINY") == "1"


def budget(quick: bool, full, reduced, tiny):
    """The run's size: ``full``, ``reduced`` under --quick, or ``tiny`` under --quick
    when the test suite sets ROLL_BENCHMARK_TINY=1."""
    if not quick:
        return full
    return tiny if TINY else reduced


def gemm_gflops(n: int = 2048, repeats: int = 5) -> float:
    """Measured float32 matrix-multiply speed of this machine, in GFLOP/s."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    start = time.perf_counter()
    for _ in range(repeats):
        a @ b
    return 2 * n**3 * repeats / (time.perf_counter() - start) / 1e9


def proc_status(field: str) -> int | None:
    """A memory field of this process's /proc/self/status in bytes, or None off Linux."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def machine() -> dict:
    """The machine and library versions a result was measured with."""
    return {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": np.__version__,
        "scikit-learn": sklearn.__version__,
        "skorch": skorch.__version__,
    }


def write(name: str, markdown: str, data: dict, quick: bool) -> Path:
    """Write ``results/<name>[_quick].md`` and ``.json``; return the Markdown path."""
    RESULTS.mkdir(exist_ok=True)
    stem = f"{name}_quick" if quick else name
    data = {**data, "machine": machine(), "quick": quick}
    (RESULTS / f"{stem}.json").write_text(json.dumps(data, indent=2, default=float) + "\n")
    header = f"<!-- written by benchmarks/{name}.py{' --quick' if quick else ''} -->\n"
    footer = (
        f"\nMachine: {data['machine']['processor']}, {data['machine']['cpu_count']} cores, "
        f"torch {data['machine']['torch']} ({data['machine']['torch_threads']} threads), "
        f"scikit-learn {data['machine']['scikit-learn']}, skorch {data['machine']['skorch']}.\n"
    )
    path = RESULTS / f"{stem}.md"
    path.write_text(header + markdown.rstrip() + "\n" + footer)
    return path


def markdown_table(header: list[str], rows: list[list]) -> str:
    """A GitHub Markdown table."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def percentiles(values, scale: float = 1.0) -> dict:
    """P25 / P50 / P75 / P100 of certified margins, multiplied by ``scale``."""
    values = np.asarray(values, dtype=float) * scale
    return {f"P{q}": float(np.percentile(values, q)) for q in (25, 50, 75, 100)}


def select(candidates: list[dict], drop: float) -> dict | None:
    """The paper's rule over a grid whose first candidate is plain training: the ROLL
    candidate with the largest validation median margin whose validation accuracy is
    at least plain training's minus ``drop`` (sklearn_roll's best_margin_within with
    reference="plain"); None if no ROLL candidate qualifies."""
    results = {
        "params": [{"lam": c["lam"]} for c in candidates],
        "mean_test_accuracy": [c["valid_accuracy"] for c in candidates],
        "mean_test_margin": [c["valid_median_l2_margin"] for c in candidates],
    }
    chosen = best_margin_within(drop, reference="plain")(results)
    return None if candidates[chosen]["lam"] == 0 else candidates[chosen]


DROPS = {"equal accuracy": 0.003, "1 point lower": 0.01}


def cache_key(estimator, data_key: str) -> str:
    """A hash of the estimator's parameters, the training data and the library versions,
    so a cached model is reused only when it would be fitted the same way again.

    joblib hashes each parameter by content (a callback by its settings, a validation
    Dataset by its arrays, a function or class by its name), never by ``repr``, which
    for most objects holds a memory address that changes from run to run.
    """
    params = sorted(estimator.get_params(deep=False).items())
    return joblib.hash((params, data_key, sklearn_roll.__version__, torch.__version__))


def silent(*args, **kwargs):
    """A callback's message sink that prints nothing: the scripts report what they
    need themselves. Defined here so that fitted models pickle in worker processes."""


def _fit_cached(path: Path, make: Callable, lam: float, C: float, X, y, threads: int | None):
    """The model fitted for (lam, C) and its fit time, from ``path`` or fitted and saved there."""
    if path.exists():
        return pickle.loads(path.read_bytes())
    if threads:
        torch.set_num_threads(threads)
    start = time.perf_counter()
    model = make(lam, C).fit(X, y)
    seconds = time.perf_counter() - start
    path.write_bytes(pickle.dumps((model, seconds)))
    return model, seconds


def fit_grid(
    cache: str,
    settings: list[tuple[float, float]],
    make: Callable[[float, float], object],
    X,
    y,
    X_valid,
    y_valid,
    scale: float = 1.0,
    n_margin: int | None = None,
    n_jobs: int = 1,
) -> list[dict]:
    """Fit one model per (lam, C), or load it from ``.cache/<cache>/``, and measure it
    on the validation split: accuracy and median certified l2 margin (times ``scale``),
    the margin on the first ``n_margin`` validation examples when given (certificates
    of convolutional networks are costly).

    Fitted models are cached so that an interrupted run resumes where it stopped,
    under a key of everything that shapes them (:func:`cache_key`). With ``n_jobs``
    above 1, that many fits run at once in joblib worker processes, one torch
    thread each.
    """
    folder = RESULTS.parent / ".cache" / cache
    folder.mkdir(parents=True, exist_ok=True)
    data_key = joblib.hash((X, y))
    paths = [
        folder / f"lam{lam}_C{C}_{cache_key(make(lam, C), data_key)}.pkl" for lam, C in settings
    ]
    threads = 1 if n_jobs > 1 else None
    fitted = joblib.Parallel(n_jobs=n_jobs, return_as="generator")(
        joblib.delayed(_fit_cached)(path, make, lam, C, X, y, threads)
        for path, (lam, C) in zip(paths, settings)
    )
    candidates = []
    for (lam, C), (model, seconds) in zip(settings, fitted):
        record = {
            "lam": lam,
            "C": C,
            "fit_seconds": seconds,
            "model": model,
            "valid_accuracy": model.score(X_valid, y_valid),
            "valid_median_l2_margin": float(
                np.median(model.certified_margin(X_valid[:n_margin])) * scale
            ),
        }
        if "valid_loss" in model.history[-1]:
            record["best_epoch"] = int(np.argmin(model.history[:, "valid_loss"])) + 1
        candidates.append(record)
        print({k: v for k, v in record.items() if k != "model"}, flush=True)
    return candidates


def choose(candidates: list[dict]) -> dict[str, dict | None]:
    """Plain training (the first candidate) and the paper's two selections."""
    chosen = {"vanilla": candidates[0]}
    chosen.update({name: select(candidates, drop) for name, drop in DROPS.items()})
    return chosen


def evaluate(chosen: dict[str, dict | None], X_test, y_test, scale: float = 1.0) -> dict:
    """Test accuracy, #CLR bounds and l1 / l2 margin percentiles of the selected models."""
    from sklearn_roll.regions import count_linear_regions

    table = {}
    for name, c in chosen.items():
        if c is None:
            continue
        model = c["model"]
        n_patterns, n_jacobians = count_linear_regions(model, X_test)
        table[name] = {
            "lam": c["lam"],
            "C": c["C"],
            "valid_accuracy": c["valid_accuracy"],
            "test_accuracy": model.score(X_test, y_test),
            "n_patterns": n_patterns,
            "n_jacobians": n_jacobians,
            "l2": percentiles(model.certified_margin(X_test, p=2), scale),
            "l1": percentiles(model.certified_margin(X_test, p=1), scale),
        }
    return table


def write_selection(
    name: str,
    setup: str,
    grid: list[tuple[float, float]],
    table: dict,
    paper: dict[str, tuple[float, float]],
    candidates: list[dict],
    data: dict,
    quick: bool,
    started: float,
) -> None:
    """Write a paper-table benchmark: its setup, the grid, the selected models beside
    the paper's figures and every candidate's validation scores; ``started`` is the
    run's ``time.perf_counter()`` at its start."""
    lams, Cs = sorted({g[0] for g in grid}), sorted({g[1] for g in grid})
    text = f"{setup.rstrip()} Grid: lam x C in {lams} x {Cs}.\n\n" + selection_markdown(
        table, paper, candidates
    )
    data = {
        **data,
        "selected": table,
        "candidates": [{k: v for k, v in c.items() if k != "model"} for c in candidates],
        "wall_seconds": time.perf_counter() - started,
    }
    print(text)
    print(f"wrote {write(name, text, data, quick)}")


def selection_markdown(
    table: dict, paper: dict[str, tuple[float, float]], candidates: list[dict]
) -> str:
    """The results table beside the paper's figures, and every candidate's validation scores."""
    rows = []
    for name, (paper_acc, paper_margin) in paper.items():
        ratio = paper_margin / paper["vanilla"][1]
        paper_text = f"{paper_acc:.2f} / {paper_margin:.1e} / {ratio:.1f}x"
        r = table.get(name)
        if r is None:
            rows.append([name, "no candidate qualified", "-", "-", "-", "-", "-", paper_text])
            continue
        rows.append(
            [
                name,
                "-" if name == "vanilla" else f"{r['lam']:g} / {r['C']:g}",
                f"{r['test_accuracy']:.3f}",
                f"{r['n_jacobians']} - {r['n_patterns']}",
                " / ".join(f"{r['l1'][q]:.1e}" for q in ("P25", "P50", "P75", "P100")),
                " / ".join(f"{r['l2'][q]:.1e}" for q in ("P25", "P50", "P75", "P100")),
                f"{r['l2']['P50'] / table['vanilla']['l2']['P50']:.1f}x",
                paper_text,
            ]
        )
    header = [
        "model",
        "lam / C",
        "test accuracy",
        "#CLR (lower - upper)",
        "l1 margin P25 / P50 / P75 / P100",
        "l2 margin P25 / P50 / P75 / P100",
        "median l2 vs vanilla",
        "paper: accuracy / median l2 / ratio",
    ]
    valid_rows = [
        [
            c["lam"],
            c["C"],
            f"{c['valid_accuracy']:.4f}",
            f"{c['valid_median_l2_margin']:.2e}",
            c.get("best_epoch", "-"),
            f"{c['fit_seconds']:.0f}",
        ]
        for c in candidates
    ]
    return (
        markdown_table(header, rows)
        + "\n\nValidation accuracy and median l2 margin of every candidate:\n\n"
        + markdown_table(
            ["lam", "C", "valid accuracy", "valid median l2 margin", "best epoch", "fit (s)"],
            valid_rows,
        )
        + "\n"
    )
