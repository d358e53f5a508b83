"""Copy the result tables from benchmarks/results/ into README.md.

README.md marks each table with ``<!-- results:NAME -->`` ... ``<!-- /results:NAME -->``;
this script replaces what lies between the markers with ``results/NAME.md`` (its
first heading dropped), so every figure in the README comes from a file a benchmark
wrote.

    python benchmarks/readme.py          # rewrite README.md
    python benchmarks/readme.py --check  # exit 1 if README.md is out of date
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
MARKER = re.compile(
    r"(<!-- results:(?P<name>[\w-]+) -->\n)(?P<body>.*?)(<!-- /results:(?P=name) -->)", re.S
)


def block(name: str) -> str:
    """The README body for results/NAME.md: the file without its comment and heading."""
    lines = (RESULTS / f"{name}.md").read_text().splitlines()
    kept = [line for line in lines if not line.startswith("<!--") and not line.startswith("# ")]
    text = "\n".join(kept).strip("\n")
    return f"{text}\n\n*From `benchmarks/results/{name}.md`.*\n"


def render(readme: str) -> str:
    """README text with every marked block replaced by its results file."""
    return MARKER.sub(lambda m: m.group(1) + block(m.group("name")) + m.group(4), readme)


def main(check: bool) -> int:
    path = ROOT / "README.md"
    current = path.read_text()
    updated = render(current)
    if check:
        if updated != current:
            print("README.md is out of date: run python benchmarks/readme.py", file=sys.stderr)
            return 1
        return 0
    path.write_text(updated)
    return 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only check")
    sys.exit(main(parser.parse_args().check))
