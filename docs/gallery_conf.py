"""Budgets and order of the example gallery, for sphinx-gallery (see conf.py).

sphinx-gallery runs every example in the docs build. The examples read their training
budget from ``ROLL_EXAMPLE_EPOCHS`` and where to save their figures from
``ROLL_EXAMPLE_OUTPUT``; :func:`set_budget` sets both before each example, so that the
whole build stays within a few minutes on two cores. The printed numbers and the
figures therefore come from shorter training than ``python examples/NAME.py`` runs.
"""

from __future__ import annotations

import os
from pathlib import Path

DOCS = Path(__file__).resolve().parent
EXAMPLES = DOCS.parent / "examples"
# Where the examples save their PNGs during the build; sphinx-gallery captures the
# figures themselves, so these copies are not part of the docs.
OUTPUT = DOCS / "_build" / "gallery_output"

# Epochs per example in the docs build (the scripts' own defaults are larger).
# sphinx-gallery reruns an example only when its file changes: after changing a
# budget, delete docs/auto_examples to see its effect.
EPOCHS = {
    "quickstart.py": 10,
    "toy_regions.py": 60,
    "grid_search.py": 5,
    "japanese_vowels.py": 25,
}
DEFAULT_EPOCHS = 5

ORDER = ["quickstart.py", "toy_regions.py", "grid_search.py", "japanese_vowels.py"]


def set_budget(gallery_conf, fname, when):
    """Set the example's epochs and output folder before it runs."""
    if when != "before" or fname is None:
        return
    OUTPUT.mkdir(parents=True, exist_ok=True)
    os.environ["ROLL_EXAMPLE_EPOCHS"] = str(EPOCHS.get(Path(fname).name, DEFAULT_EPOCHS))
    # sphinx-gallery runs each example from its own folder: a path relative to it
    # keeps the build machine's directories out of the printed output.
    os.environ["ROLL_EXAMPLE_OUTPUT"] = os.path.relpath(OUTPUT, EXAMPLES)


class ExampleOrder:
    """Gallery order: from the quickstart to the sequence example."""

    def __init__(self, src_dir):
        self.src_dir = src_dir

    def __call__(self, filename):
        name = Path(filename).name
        return (ORDER.index(name), name) if name in ORDER else (len(ORDER), name)

    def __repr__(self):
        # sphinx-gallery compares configurations by their repr between builds.
        return f"ExampleOrder({ORDER})"
