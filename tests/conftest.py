import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits, load_iris, load_wine
from sklearn.preprocessing import StandardScaler

torch.set_num_threads(2)


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
