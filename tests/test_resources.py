"""Bounded memory: batches follow a memory budget, and oversized requests are capped.

Peak memory on 100,000 MNIST-sized samples is measured by ``benchmarks/memory.py``.
"""

import warnings

import numpy as np
import pytest

from sklearn_roll import ROLLClassifier, _evaluation, _rounding, regions

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def model():
    rng = np.random.RandomState(0)
    X = rng.randn(300, 20)
    y = (X[:, 0] > 0).astype(int)
    clf = ROLLClassifier(hidden_layer_sizes=(32, 32), max_epochs=0, random_state=0)
    return clf.fit(X, y), X


@pytest.fixture
def small_cap(monkeypatch):
    """A memory cap of 64 KiB: 12 samples' float32 tangents for p=1 on this network."""
    monkeypatch.setattr(_evaluation, "_memory_cap", lambda: 2**16)


def _tangent_bytes(k):
    # float32 tangents of the 32 + 32 units and 2 outputs, k per example.
    return 4 * k * (32 + 32 + 2)


def test_default_batches_follow_the_budget(model, monkeypatch):
    clf, X = model
    seen = []
    original = _rounding.linearize

    def spy(module, x, *args, **kwargs):
        seen.append(len(x))
        return original(module, x, *args, **kwargs)

    monkeypatch.setattr(_evaluation, "MEMORY_BUDGET", 50 * _tangent_bytes(20))
    monkeypatch.setattr(_rounding, "linearize", spy)
    clf.certified_margin(X, p=1)
    assert max(seen) == 50 and len(seen) == 6


@pytest.mark.parametrize(
    "call",
    [
        lambda clf, X, b: clf.certified_margin(X, p=1, batch_size=b),
        lambda clf, X, b: regions.certified_radius(clf, X, np.inf, batch_size=b),
        lambda clf, X, b: regions.stability_bounds(clf, X, batch_size=b),
        lambda clf, X, b: regions.explain(clf, X, batch_size=b),
    ],
    ids=["certified_margin", "certified_radius", "stability_bounds", "explain"],
)
def test_an_oversized_batch_size_is_capped_with_a_warning(model, small_cap, call):
    clf, X = model
    with pytest.warns(
        UserWarning, match=r"batch_size=1000000 would need about .* using batch_size=\d+"
    ):
        capped = call(clf, X, 1_000_000)
    expected = call(clf, X, 10)
    for got, want in zip(
        capped if isinstance(capped, tuple) else (capped,),
        expected if isinstance(expected, tuple) else (expected,),
    ):
        np.testing.assert_allclose(got, want, rtol=1e-6)


def test_a_batch_size_within_the_cap_is_kept_silently(model, small_cap):
    clf, X = model
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        clf.certified_margin(X, p=1, batch_size=8)
        # The cap counts the samples a batch really holds.
        clf.certified_margin(X[:5], p=1, batch_size=1_000_000)


def test_the_cap_is_a_fraction_of_physical_memory():
    cap = _evaluation._memory_cap()
    assert _evaluation.MEMORY_BUDGET <= cap <= _evaluation._MEMORY_CAP
