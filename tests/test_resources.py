"""Bounded memory: batches follow a memory budget, and oversized requests are refused.

Peak memory on 100,000 MNIST-sized samples is measured by ``benchmarks/memory.py``,
and of certified_margin_dask on 1,000,000 by ``benchmarks/dask_scale.py``.
"""

import re
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
def test_an_oversized_batch_size_is_refused(model, small_cap, call):
    clf, X = model
    message = (
        r"batch_size=1000000 needs about [\d.]+ [KM]iB of working memory per batch, more "
        r"than the 64.0 KiB memory cap \(an eighth of physical memory, at most 2.0 GiB\); pass "
        r"batch_size=(\d+) or less, or None"
    )
    with pytest.raises(ValueError, match=message) as info:
        call(clf, X, 1_000_000)
    # The largest size the message offers is accepted, one more is not.
    most = int(re.search(message, str(info.value)).group(1))
    call(clf, X, most)
    with pytest.raises(ValueError, match=f"batch_size={most + 1} needs about"):
        call(clf, X, most + 1)


def test_the_refusal_names_the_memory_the_batch_needs(model, small_cap):
    clf, X = model
    # 300 samples x 20 tangents x 66 units and outputs x 4 bytes.
    needed = 300 * _tangent_bytes(20) / 2**20
    with pytest.raises(ValueError, match=rf"needs about {needed:.1f} MiB .* pass batch_size=12 "):
        clf.certified_margin(X, p=1, batch_size=1_000_000)


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
