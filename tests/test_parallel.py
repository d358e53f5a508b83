"""The same search on a dask.distributed cluster and with loky, and certificates of dask arrays."""

import sys

import numpy as np
import pytest
from joblib import parallel_backend
from sklearn.datasets import load_wine
from sklearn.model_selection import GridSearchCV, StratifiedKFold
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from sklearn_roll import ROLLClassifier, certified_margin
from sklearn_roll.metrics import margin_scorer
from sklearn_roll.model_selection import best_margin_within
from sklearn_roll.parallel import certified_margin_dask
from sklearn_roll.regions import FLOAT32_RTOL

distributed = pytest.importorskip("distributed")
dask = pytest.importorskip("dask")
da = pytest.importorskip("dask.array")

pytestmark = pytest.mark.usefixtures("one_thread")

SMALL = dict(hidden_layer_sizes=(16,), max_epochs=3, lr=1e-2, random_state=0, n_threads=1)


@pytest.fixture(scope="module")
def client():
    cluster = distributed.LocalCluster(
        n_workers=2,
        threads_per_worker=1,
        processes=True,
        host="127.0.0.1",
        dashboard_address=None,
    )
    client = distributed.Client(cluster)
    try:
        yield client
    finally:
        client.close()
        cluster.close()


@pytest.fixture(scope="module")
def raw_wine():
    return load_wine(return_X_y=True)


def _search():
    return GridSearchCV(
        make_pipeline(StandardScaler(), ROLLClassifier(**SMALL)),
        {"rollclassifier__lam": [0.0, 1.0], "rollclassifier__C": [0.5, 2.0]},
        scoring={"accuracy": "accuracy", "margin": margin_scorer()},
        refit=best_margin_within(),
        cv=StratifiedKFold(3, shuffle=True, random_state=0),
        n_jobs=2,
    )


@pytest.mark.slow
def test_cluster_search_equals_loky_search(client, raw_wine):
    X, y = raw_wine
    with parallel_backend("loky"):
        local = _search().fit(X, y)
    with distributed.get_task_stream(client) as tasks, parallel_backend("dask"):
        remote = _search().fit(X, y)
    # The fits ran on the cluster's workers (joblib may batch several into one task).
    workers = {task["worker"] for task in tasks.data}
    assert workers and workers <= set(client.scheduler_info()["workers"])
    for key, value in local.cv_results_.items():
        if key.endswith(("_test_accuracy", "_test_margin")):
            np.testing.assert_array_equal(remote.cv_results_[key], value, err_msg=key)
    assert remote.cv_results_["params"] == local.cv_results_["params"]
    assert remote.best_index_ == local.best_index_
    np.testing.assert_array_equal(remote.predict_proba(X), local.predict_proba(X))


@pytest.mark.slow
def test_n_threads_controls_torch_inside_a_worker(client, raw_wine):
    X, y = raw_wine

    def threads_during_fit(n_threads):
        import torch
        from skorch.callbacks import Callback

        seen = []

        class Probe(Callback):
            def on_epoch_begin(self, net, **kwargs):
                seen.append(torch.get_num_threads())

        before = torch.get_num_threads()
        params = {**SMALL, "n_threads": n_threads, "max_epochs": 2}
        ROLLClassifier(callbacks=[Probe()], **params).fit(X, y)
        return before, seen, torch.get_num_threads()

    before, seen, after = client.submit(threads_during_fit, 2, pure=False).result()
    assert seen == [2, 2] and after == before
    before, seen, after = client.submit(threads_during_fit, None, pure=False).result()
    assert seen == [before, before]


def test_dask_array_margins_equal_in_memory_margins(client, raw_wine):
    X, y = raw_wine
    pipe = make_pipeline(StandardScaler(), ROLLClassifier(**SMALL)).fit(X, y)
    lazy = certified_margin_dask(pipe, da.from_array(X, chunks=(50, 4)), p=1, precision="float64")
    assert lazy.chunks == ((50, 50, 50, 28),)
    np.testing.assert_allclose(
        lazy.compute(), certified_margin(pipe, X, p=1, precision="float64"), rtol=1e-12
    )
    bare = pipe[-1]
    Z = pipe[0].transform(X)
    # Float32 certificates of other batch shapes agree within their contract.
    np.testing.assert_allclose(
        certified_margin_dask(bare, da.from_array(Z, chunks=60)).compute(scheduler="sync"),
        certified_margin(bare, Z),
        rtol=2 * FLOAT32_RTOL,
    )
    # On the cluster, a failing block is named as well.
    bad = X.copy()
    bad[120, 3] = np.nan
    with pytest.raises(
        ValueError, match=r"^Block 2 \(rows 100 to 149\) of X: Input X contains NaN"
    ):
        certified_margin_dask(pipe, da.from_array(bad, chunks=50)).compute()


def _with_block(X, rows, replaced):
    """X as a dask array in blocks of 50 rows, with ``rows`` computed as ``replaced``,
    whatever its shape: a block whose data disagree with the array's declared shape."""
    start, stop = rows
    lying = da.from_delayed(dask.delayed(replaced), shape=(stop - start, X.shape[1]), dtype=X.dtype)
    parts = [da.from_array(X[:start], chunks=50), lying, da.from_array(X[stop:], chunks=50)]
    return da.concatenate(parts)


def _nan_row(X):
    bad = X[100:150].copy()
    bad[20, 3] = np.nan
    return bad


def _inf_row(X):
    bad = X[100:150].copy()
    bad[49, 0] = -np.inf
    return bad


BAD_BLOCKS = {
    "NaN": (_nan_row, "Input X contains NaN"),
    "infinity": (_inf_row, "Input X contains infinity"),
    "features": (lambda X: X[100:150, :12], "X has 12 features, but .* is expecting 13"),
}


@pytest.mark.parametrize("case", list(BAD_BLOCKS))
def test_a_failing_block_is_named_with_its_rows_and_the_reason(raw_wine, case):
    X, y = raw_wine
    pipe = make_pipeline(StandardScaler(), ROLLClassifier(**SMALL)).fit(X, y)
    make, reason = BAD_BLOCKS[case]
    lazy = certified_margin_dask(pipe, _with_block(X, (100, 150), make(X)), precision="float64")
    assert lazy.numblocks == (4,)
    with pytest.raises(ValueError, match=rf"^Block 2 \(rows 100 to 149\) of X: {reason}") as info:
        lazy.compute(scheduler="sync")
    assert isinstance(info.value.__cause__, ValueError)
    # The other blocks are fine.
    good = lazy.blocks[[0, 1, 3]].compute(scheduler="sync")
    expected = certified_margin(pipe, np.r_[X[:100], X[150:]], precision="float64")
    np.testing.assert_allclose(good, expected, rtol=1e-12)


def test_a_dask_array_with_the_wrong_number_of_features_is_refused_before_it_runs(raw_wine):
    X, y = raw_wine
    clf = ROLLClassifier(**SMALL).fit(X, y)
    with pytest.raises(ValueError, match="X has 5 features, but ROLLClassifier is expecting 13"):
        certified_margin_dask(clf, da.from_array(X[:, :5], chunks=50))


def test_dask_helper_errors(raw_wine, monkeypatch):
    X, y = raw_wine
    clf = ROLLClassifier(**SMALL)
    with pytest.raises(TypeError, match="must be a dask array"):
        certified_margin_dask(clf, X)
    with pytest.raises(TypeError, match="not a sklearn-roll estimator"):
        certified_margin_dask(StandardScaler().fit(X), da.from_array(X))
    monkeypatch.setitem(sys.modules, "dask", None)
    monkeypatch.setitem(sys.modules, "dask.array", None)
    with pytest.raises(ImportError, match=r'pip install "dask\[distributed\]"'):
        certified_margin_dask(clf, X)
