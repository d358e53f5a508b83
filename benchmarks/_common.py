"""Shared helpers of the benchmark scripts: machine facts, GEMM speed, result files."""

from __future__ import annotations

import json
import os
import platform
import time
from pathlib import Path

import numpy as np
import sklearn
import skorch
import torch

RESULTS = Path(__file__).resolve().parent / "results"


def gemm_gflops(n: int = 2048, repeats: int = 5) -> float:
    """Measured float32 matrix-multiply speed of this machine, in GFLOP/s."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    start = time.perf_counter()
    for _ in range(repeats):
        a @ b
    return 2 * n**3 * repeats / (time.perf_counter() - start) / 1e9


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


def select(candidates: list[dict], baseline: dict, drop: float) -> dict | None:
    """The candidate with the largest validation median margin whose validation
    accuracy is at least the baseline's minus ``drop`` (the paper's rule); None if
    no candidate qualifies."""
    eligible = [c for c in candidates if c["valid_accuracy"] >= baseline["valid_accuracy"] - drop]
    return max(eligible, key=lambda c: c["valid_median_l2_margin"], default=None)
