"""Saved models give bit-identical answers after loading; fits are reproducible.

``test_estimators.py`` already round-trips a fitted classifier through pickle and
joblib, and ``test_safe_persistence.py`` tests ``save`` / ``load``; here: skorch's
``save_params`` / ``load_params``, which store tensors only, with a zero-epoch
restore, regressors and sequence models, nets and parameter files recorded on a GPU
device loaded on a CPU-only machine, and determinism within and across processes.
"""

import contextlib
import pickle
import subprocess
import sys
import textwrap

import joblib
import numpy as np
import pytest
import torch
from sklearn.base import clone
from skorch.exceptions import DeviceWarning
from torch import serialization

from sklearn_roll import ROLLClassifier, ROLLRegressor

pytestmark = pytest.mark.usefixtures("one_thread")

# One thread: these networks are tiny, and fits must match the subprocess bit for bit.
SMALL = dict(hidden_layer_sizes=(12, 12), max_epochs=3, random_state=0, n_threads=1)


def _sequences(n=24, channels=3, seed=0):
    rng = np.random.RandomState(seed)
    X = [rng.randn(rng.randint(2, 6), channels) for _ in range(n)]
    return X, np.array([int(x[:, 0].sum() > 0) for x in X])


@pytest.fixture(scope="module", params=["classifier", "regressor", "rnn"])
def fitted(request, wine):
    X, y = wine
    if request.param == "classifier":
        return ROLLClassifier(**SMALL).fit(X, y), X[:20], y[:20]
    if request.param == "regressor":
        target = np.c_[y, X[:, 0]] / 2.0
        return ROLLRegressor(**SMALL).fit(X, target), X[:20], target[:20]
    X, y = _sequences()
    clf = ROLLClassifier("rnn", activation="leaky_relu", hidden_layer_sizes=(6,), n_threads=1)
    return clf.set_params(max_epochs=2, random_state=0).fit(X, y), X[:10], y[:10]


def _answers(est, X):
    """Everything a user reads from a fitted model, as arrays."""
    regressor = isinstance(est, ROLLRegressor)
    outputs = est.predict(X) if regressor else est.predict_proba(X)
    target = 1 if regressor else None
    grads = est.explain(X, target=target)
    answers = [
        outputs,
        est.certified_margin(X, p=2),
        est.certified_margin(X, p=1, precision="float64"),
        np.concatenate([np.ravel(g) for g in grads]) if isinstance(grads, list) else grads,
    ]
    return [np.asarray(a) for a in answers]


def _assert_identical(a, b):
    for left, right in zip(a, b):
        assert left.dtype == right.dtype and left.shape == right.shape
        assert left.tobytes() == right.tobytes()


# test_estimators.py round-trips the MLP classifier; here the other two.
@pytest.mark.parametrize("fitted", ["regressor", "rnn"], indirect=True)
def test_pickle_and_joblib_round_trips(fitted, tmp_path):
    est, X, _ = fitted
    before = _answers(est, X)
    joblib.dump(est, tmp_path / "model.joblib")
    for other in (pickle.loads(pickle.dumps(est)), joblib.load(tmp_path / "model.joblib")):
        _assert_identical(before, _answers(other, X))


def _sized_like(est, X, y):
    """A zero-epoch fit that sizes the module as est's, for skorch's parameter files."""
    restored = clone(est).set_params(max_epochs=0)
    if hasattr(est, "classes_"):
        restored.set_params(classes=est.classes_)
    restored.fit(X[:1], y[:1])
    if isinstance(est, ROLLRegressor):
        # The target scale is learned from the data, and skorch's files do not hold it.
        restored.y_mean_, restored.y_scale_ = est.y_mean_, est.y_scale_
    return restored


def test_save_params_restore_from_zero_epochs(fitted, tmp_path):
    est, X, y = fitted
    files = dict(
        f_params=tmp_path / "params.pt",
        f_optimizer=tmp_path / "optimizer.pt",
        f_history=tmp_path / "history.json",
    )
    est.save_params(**files)
    # skorch's files hold no fitted attributes: a zero-epoch fit sizes the module.
    restored = _sized_like(est, X, y)
    restored.load_params(**files)
    restored.set_params(max_epochs=est.max_epochs)
    _assert_identical(_answers(est, X), _answers(restored, X))
    assert len(restored.history) == len(est.history)
    # The optimizer state came back too: one more epoch on both matches.
    twin = pickle.loads(pickle.dumps(est))
    twin.set_params(max_epochs=1).partial_fit(X, y)
    restored.set_params(max_epochs=1).partial_fit(X, y)
    _assert_identical(_answers(twin, X), _answers(restored, X))


def test_bare_initialize_cannot_rebuild_the_module_and_says_so():
    with pytest.raises(ValueError, match="infers its sizes from the data: call fit"):
        ROLLClassifier().initialize()


def test_net_pickled_with_a_gpu_device_loads_on_cpu(fitted):
    """A net trained with device='cuda' unpickles here with device='cpu', as skorch does.

    This machine cannot make CUDA tensors, so the net records device='cuda' while its
    tensors stay on the CPU, which exercises skorch's mapping in ``__setstate__``.
    """
    if torch.cuda.is_available():
        pytest.skip("the mapping to the CPU happens only where CUDA is unavailable")
    est, X, _ = fitted
    on_gpu = pickle.loads(pickle.dumps(est))
    on_gpu.device = "cuda"
    blob = pickle.dumps(on_gpu)
    with pytest.warns(DeviceWarning, match="cuda"):
        loaded = pickle.loads(blob)
    assert str(loaded.device) == "cpu"
    _assert_identical(_answers(est, X), _answers(loaded, X))


@contextlib.contextmanager
def _saved_as_on_cuda(module):
    """torch.save records the module's tensors as lying on 'cuda:0', as on a GPU.

    torch tags each storage with its device through a registry of taggers; one
    registered first claims the module's storages for 'cuda:0'.
    """
    pointers = {t.untyped_storage().data_ptr() for t in module.state_dict().values()}

    def tag(storage):
        return "cuda:0" if storage.data_ptr() in pointers else None

    serialization.register_package(0, tag, lambda obj, location: None)
    try:
        yield
    finally:
        # torch has no public way to unregister a tagger.
        registry = serialization._package_registry
        registry[:] = [entry for entry in registry if entry[1] is not tag]


def test_params_saved_on_a_gpu_load_on_cpu(fitted, tmp_path):
    if torch.cuda.is_available():
        pytest.skip("the mapping to the CPU happens only where CUDA is unavailable")
    est, X, y = fitted
    path = tmp_path / "params.pt"
    with _saved_as_on_cuda(est.module_):
        est.save_params(f_params=path)
    with pytest.raises(RuntimeError, match="CUDA"):
        torch.load(path, weights_only=True)
    restored = _sized_like(est, X, y)
    # A net trained on the GPU also records device='cuda'.
    restored.device = "cuda"
    with pytest.warns(DeviceWarning, match="cuda"):
        restored.load_params(f_params=path)
    assert str(restored.device) == "cpu"
    _assert_identical(_answers(est, X), _answers(restored, X))


def test_same_random_state_is_bit_identical_within_a_process(wine):
    X, y = wine
    runs = [_answers(ROLLClassifier(**SMALL).fit(X, y), X) for _ in range(2)]
    _assert_identical(*runs)


_SCRIPT = textwrap.dedent(
    """
    import sys
    import numpy as np
    import torch
    from sklearn.datasets import load_wine
    from sklearn.preprocessing import StandardScaler
    from sklearn_roll import ROLLClassifier

    torch.set_num_threads(2)
    X, y = load_wine(return_X_y=True)
    X = StandardScaler().fit_transform(X)
    clf = ROLLClassifier(
        hidden_layer_sizes=(12, 12), max_epochs=3, random_state=0, n_threads=1
    ).fit(X, y)
    out = np.concatenate([clf.predict_proba(X).ravel(), clf.certified_margin(X)])
    sys.stdout.buffer.write(out.tobytes())
    """
)


@pytest.mark.slow
def test_same_random_state_is_bit_identical_across_processes(wine):
    X, y = wine
    clf = ROLLClassifier(**SMALL).fit(X, y)
    here = np.concatenate([clf.predict_proba(X).ravel(), clf.certified_margin(X)])
    there = subprocess.run(
        [sys.executable, "-c", _SCRIPT], capture_output=True, check=True, timeout=300
    ).stdout
    assert there == here.tobytes()
