"""Every example runs end to end, on a tiny budget, so that none of them rots."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


@pytest.mark.parametrize(
    "script, needs",
    [
        ("quickstart.py", None),
        ("grid_search.py", "matplotlib"),
        ("toy_regions.py", "matplotlib"),
        ("japanese_vowels.py", "sktime"),
    ],
)
def test_example_runs(script, needs, tmp_path):
    if needs:
        pytest.importorskip(needs, reason=f"the example needs {needs}")
    env = {**os.environ, "ROLL_EXAMPLE_EPOCHS": "1", "ROLL_EXAMPLE_OUTPUT": str(tmp_path)}
    result = subprocess.run(
        [sys.executable, str(EXAMPLES / script)],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "accuracy" in result.stdout
    for png in [
        line.split()[-1] for line in result.stdout.splitlines() if line.startswith("saved")
    ]:
        assert Path(png).parent == tmp_path and Path(png).stat().st_size > 1000
