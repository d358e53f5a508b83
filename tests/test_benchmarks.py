"""Every benchmark's --quick path runs end to end on a tiny budget, so none of them rots.

The scripts write their tables into a temporary folder (ROLL_BENCHMARK_OUTPUT), never
over the committed results, and ROLL_BENCHMARK_TINY=1 shrinks the --quick sizes.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"


@pytest.mark.parametrize(
    "script, needs",
    [
        ("speed.py", None),
        ("training_speed.py", "mnist"),
        ("memory.py", None),
        ("sequence_speed.py", None),
        ("dask_scale.py", "distributed"),
        ("defaults.py", None),
        ("tabular.py", None),
        ("mnist_table1.py", "mnist"),
        ("japanese_vowels_table2.py", "sktime"),
        ("gradient_distortion.py", "mnist"),
        ("soundness.py", None),
    ],
)
def test_benchmark_quick_path_runs(script, needs, tmp_path):
    if needs:
        pytest.importorskip(needs, reason=f"the benchmark needs {needs}")
    results = tmp_path / "results"
    env = {
        **os.environ,
        "ROLL_BENCHMARK_OUTPUT": str(results),
        "ROLL_BENCHMARK_TINY": "1",
        "OMP_NUM_THREADS": "1",
    }
    result = subprocess.run(
        [sys.executable, str(BENCHMARKS / script), "--quick"],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    stem = script.removesuffix(".py") + "_quick"
    markdown = (results / f"{stem}.md").read_text()
    assert markdown.startswith(f"<!-- written by benchmarks/{script} --quick -->")
    assert "|---" in markdown
    data = json.loads((results / f"{stem}.json").read_text())
    assert data["quick"] is True and data["machine"]["torch"]
