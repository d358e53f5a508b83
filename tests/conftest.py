import os

import numpy as np
import pytest
import torch
from hypothesis import settings
from sklearn.datasets import load_digits, load_iris, load_wine
from sklearn.preprocessing import StandardScaler


def _threads() -> int:
    """The suite's torch threads: ROLL_TEST_THREADS, else OMP_NUM_THREADS, else 2.

    torch.set_num_threads overrides OMP_NUM_THREADS, so the suite reads it itself:
    ``OMP_NUM_THREADS=1 python -m pytest`` runs with one thread, as .ci/run does
    after its run with two.
    """
    # OMP_NUM_THREADS may list one count per nesting level ("4,2"): the first is torch's.
    value = os.environ.get("ROLL_TEST_THREADS") or os.environ.get("OMP_NUM_THREADS", "")
    value = value.split(",")[0].strip()
    if not value:
        return 2
    if not value.isdigit() or int(value) < 1:
        raise ValueError(f"The test thread count must be a positive integer, got {value!r}.")
    return int(value)


THREADS = _threads()
torch.set_num_threads(THREADS)


def pytest_terminal_summary(terminalreporter):
    # Shown under -q as well, so a CI log says which of its runs failed.
    terminalreporter.write_line(f"torch threads: {THREADS}")


# "ci" (the default) replays the same examples on every run, so a landing is never
# blocked by a rare draw; "hunt" searches afresh with ten times the examples:
#     python -m pytest tests/test_properties.py --hypothesis-profile=hunt
# Property tests scale their example counts by the profile's max_examples. A
# counterexample found while hunting is kept as an explicit @example.
settings.register_profile("ci", max_examples=100, derandomize=True, print_blob=True)
settings.register_profile("hunt", max_examples=1000, derandomize=False, print_blob=True)
settings.load_profile("ci")


@pytest.fixture(scope="session")
def wine():
    X, y = load_wine(return_X_y=True)
    return StandardScaler().fit_transform(X), y


@pytest.fixture(scope="session")
def iris():
    X, y = load_iris(return_X_y=True)
    return StandardScaler().fit_transform(X), y


@pytest.fixture(scope="session")
def digits():
    X, y = load_digits(return_X_y=True)
    return StandardScaler().fit_transform(X), y


@pytest.fixture(scope="session")
def fitted_wine(wine):
    from sklearn_roll import ROLLClassifier

    X, y = wine
    clf = ROLLClassifier(hidden_layer_sizes=(32, 32), lam=0.5, C=1.0, max_epochs=20, random_state=0)
    return clf.fit(X, y)


@pytest.fixture
def rng():
    return np.random.RandomState(0)


@pytest.fixture(scope="module")
def one_thread():
    """Run a module's tests with one torch thread: tiny networks gain nothing from two,
    and on a busy machine two OpenMP threads spin and run many times slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
