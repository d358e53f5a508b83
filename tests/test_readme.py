"""The README stays true: its commands are the ones CI runs, its figures come from results."""

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _commands(text):
    return re.findall(r"```bash\n(.*?)\n```", text, re.S)


def test_readme_has_exactly_two_commands_and_ci_runs_the_test_command():
    commands = _commands((ROOT / "README.md").read_text())
    assert len(commands) == 2
    assert "examples/quickstart.py" in commands[0]
    assert commands[1] in (ROOT / ".ci" / "run").read_text().splitlines()


def test_readme_tables_match_the_results_files():
    result = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "readme.py"), "--check"],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr


def test_ci_runs_the_suite_under_two_threads_and_one():
    lines = (ROOT / ".ci" / "run").read_text().splitlines()
    readme_command = _commands((ROOT / "README.md").read_text())[1]
    # The first run takes the suite's default of two threads, not an inherited count.
    first = lines.index(readme_command)
    assert lines.index("unset ROLL_TEST_THREADS OMP_NUM_THREADS") < first
    assert lines.index("OMP_NUM_THREADS=1 python -m pytest") > first
