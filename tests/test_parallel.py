"""The same search on a dask.distributed cluster and with loky, a search that loses a
worker, and certificates of dask arrays (failing blocks included)."""

import os
import signal
import sys
import threading
import time
import uuid
from pathlib import Path

import numpy as np
import pytest
from joblib import parallel_backend
from sklearn.datasets import load_wine
from sklearn.model_selection import GridSearchCV, StratifiedKFold
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from skorch.callbacks import Callback

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


def _search(**params):
    return GridSearchCV(
        make_pipeline(StandardScaler(), ROLLClassifier(**SMALL, **params)),
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


def _stall_when_flagged(folder):
    """A callback that records each finished fit in ``folder`` and, while the file
    ``folder/stall`` exists, makes each fit that starts write ``<process id>.pid``
    there and wait (60 s at most) for the flag to go. It changes no fit's result.

    Made here so that its class is local: pickled by value, the workers need not
    import this test module.
    """

    class StallWhenFlagged(Callback):
        def __init__(self, folder):
            self.folder = folder

        def on_train_begin(self, net, **kwargs):
            flag = Path(self.folder, "stall")
            if flag.exists():
                Path(self.folder, f"{os.getpid()}.pid").touch()
                deadline = time.monotonic() + 60
                while flag.exists() and time.monotonic() < deadline:
                    time.sleep(0.02)

        def on_train_end(self, net, **kwargs):
            Path(self.folder, f"{uuid.uuid4().hex}.done").touch()

    return StallWhenFlagged(str(folder))


def _kill_a_worker_mid_search(folder, after, killed):
    """Once ``after`` fits have finished, raise the stall flag, SIGKILL the process of
    the first fit that stalls, and take the flag down again."""
    deadline = time.monotonic() + 120
    while len(list(folder.glob("*.done"))) < after and time.monotonic() < deadline:
        time.sleep(0.02)
    (folder / "stall").touch()
    try:
        while not killed and time.monotonic() < deadline:
            stalled = sorted(folder.glob("*.pid"))
            if stalled:
                pid = int(stalled[0].stem)
                os.kill(pid, signal.SIGKILL)
                killed.append(pid)
            time.sleep(0.02)
    finally:
        (folder / "stall").unlink()


def _worker_removals(dask_scheduler):
    """Per worker the scheduler removed: its tasks in progress, and data lost with it.

    Read on the scheduler: its events also hold objects that do not serialize.
    """
    return [
        {
            "in progress": len(event["processing-tasks"]),
            "data lost": len(event["lost-scattered-tasks"]),
        }
        for _, event in dask_scheduler.get_events("all")
        if isinstance(event, dict) and event.get("action") == "remove-worker"
    ]


@pytest.mark.slow
def test_a_search_that_loses_a_worker_mid_fit_gives_the_same_results(raw_wine, tmp_path):
    """A worker process killed while it fits: dask reruns its tasks elsewhere, and the
    scores are those of an undisturbed search (fits are deterministic given
    random_state and n_threads)."""
    X, y = raw_wine
    cluster = distributed.LocalCluster(
        n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1", dashboard_address=None
    )
    with cluster, distributed.Client(cluster) as client:
        workers = client.run(os.getpid)

        def search():
            # error_score="raise": a fit that failed would otherwise score NaN quietly.
            search = _search(callbacks=[_stall_when_flagged(tmp_path)])
            return search.set_params(error_score="raise")

        # scatter copies the data to every worker: joblib would otherwise place it on
        # one, and data scattered to a lost worker cannot be recomputed.
        with parallel_backend("dask", scatter=[X, y]):
            undisturbed = search().fit(X, y)
        for done in tmp_path.glob("*.done"):
            done.unlink()
        killed = []
        killer = threading.Thread(target=_kill_a_worker_mid_search, args=(tmp_path, 4, killed))
        killer.start()
        try:
            with parallel_backend("dask", scatter=[X, y]):
                disturbed = search().fit(X, y)
        finally:
            killer.join()
        assert len(killed) == 1 and killed[0] in workers.values()
        # The scheduler lost the worker with a task in progress, and no data with it.
        removals = client.run_on_scheduler(_worker_removals)
        assert len(removals) == 1
        assert removals[0]["in progress"] >= 1 and removals[0]["data lost"] == 0
    # The disturbed search's 12 fits (the lost task's again) and its refit here.
    assert len(list(tmp_path.glob("*.done"))) >= 12 + 1
    results, expected = disturbed.cv_results_, undisturbed.cv_results_
    assert results.keys() == expected.keys()
    for key, value in expected.items():
        if key == "params":
            assert results[key] == value
        elif "_time" not in key:
            np.testing.assert_array_equal(results[key], value, err_msg=key)
    assert disturbed.best_index_ == undisturbed.best_index_
    np.testing.assert_array_equal(disturbed.predict_proba(X), undisturbed.predict_proba(X))


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


def test_dask_array_margins_equal_in_memory_margins(raw_wine):
    X, y = raw_wine
    pipe = make_pipeline(StandardScaler(), ROLLClassifier(**SMALL)).fit(X, y)
    lazy = certified_margin_dask(pipe, da.from_array(X, chunks=(50, 4)), p=1, precision="float64")
    assert lazy.chunks == ((50, 50, 50, 28),)
    np.testing.assert_allclose(
        lazy.compute(scheduler="sync"),
        certified_margin(pipe, X, p=1, precision="float64"),
        rtol=1e-12,
    )
    bare = pipe[-1]
    Z = pipe[0].transform(X)
    # Float32 certificates of other batch shapes agree within their contract.
    np.testing.assert_allclose(
        certified_margin_dask(bare, da.from_array(Z, chunks=60)).compute(scheduler="sync"),
        certified_margin(bare, Z),
        rtol=2 * FLOAT32_RTOL,
    )


@pytest.mark.slow
def test_dask_array_margins_on_the_cluster(client, raw_wine):
    X, y = raw_wine
    pipe = make_pipeline(StandardScaler(), ROLLClassifier(**SMALL)).fit(X, y)
    lazy = certified_margin_dask(pipe, da.from_array(X, chunks=50), p=1, precision="float64")
    np.testing.assert_allclose(
        lazy.compute(), certified_margin(pipe, X, p=1, precision="float64"), rtol=1e-12
    )
    # The error of a failing block comes back from its worker, naming the block.
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
