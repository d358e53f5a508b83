"""Memory and throughput of certified_margin_dask on a million MNIST-sized rows.

The 784-input 4x300 ReLU MLP of ``speed.py`` and ``memory.py`` (random weights: they
change neither the memory nor, much, the time) certifies l2 margins of rows that
``dask.array.random`` generates block by block on the workers of a
``dask.distributed.LocalCluster`` (one thread each, processes on loopback), so no
process ever holds the data. For each size a fresh cluster first certifies one small
block (the model and torch settle in), then each worker's peak resident memory is reset
(``/proc/self/clear_refs``, Linux) and the timed computation runs; the table gives each
worker's resident memory before it and its peak (VmHWM) during it, or, where the peak
cannot be reset, the largest resident memory seen by sampling the worker processes
every 50 ms. Bounded memory: the peaks do not grow with the number of rows.

    python benchmarks/dask_scale.py            # 100,000 and 1,000,000 rows
    python benchmarks/dask_scale.py --quick    # 10,000 and 40,000 rows, a few minutes
"""

from __future__ import annotations

import argparse
import os
import threading
import time
from pathlib import Path

import numpy as np

from _common import budget, markdown_table, write

SEED = 0
MIB = 2**20
N_FEATURES = 784
WIDTHS = (300,) * 4


def _status(field: str) -> int | None:
    """A memory field of this process's /proc/self/status in bytes, or None off Linux.

    _common.proc_status, defined here so that the function dask ships to a worker
    does not need the benchmarks folder on the worker's path.
    """
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def _worker_memory() -> dict:
    """Run on a worker: its process id, resident memory and peak since the last reset."""
    return {"pid": os.getpid(), "rss": _status("VmRSS"), "peak": _status("VmHWM")}


def _reset_peak() -> bool:
    """Run on a worker: reset VmHWM to the current resident size; False where not allowed."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


class RSSSampler:
    """The largest resident memory of some processes, sampled every 50 ms in a thread."""

    def __init__(self, pids: list[int]) -> None:
        import psutil

        self.processes = {pid: psutil.Process(pid) for pid in pids}
        self.peaks = dict.fromkeys(pids, 0)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            for pid, process in self.processes.items():
                self.peaks[pid] = max(self.peaks[pid], process.memory_info().rss)
            self._stop.wait(0.05)

    def __enter__(self) -> RSSSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


def model():
    """The 784-300x4-10 ReLU MLP with its initial random weights, one torch thread."""
    from sklearn_roll import ROLLClassifier

    rng = np.random.RandomState(SEED)
    clf = ROLLClassifier(
        hidden_layer_sizes=WIDTHS,
        lam=0.0,
        max_epochs=0,
        classes=np.arange(10),
        random_state=SEED,
        n_threads=1,
    )
    return clf.fit(rng.rand(1, N_FEATURES).astype(np.float32), [0])


def lazy_rows(n: int, chunk: int):
    """n rows of uniform [0, 1) float32 pixels, generated lazily in blocks of ``chunk``."""
    import dask.array as da

    generator = da.random.default_rng(SEED)
    return generator.random((n, N_FEATURES), chunks=(chunk, N_FEATURES), dtype=np.float32)


def measure(n: int, chunk: int, n_workers: int) -> dict:
    """Certify n rows on a fresh LocalCluster; the memory of each worker and the time."""
    from dask.distributed import Client, LocalCluster

    from sklearn_roll.parallel import certified_margin_dask

    clf = model()
    cluster = LocalCluster(
        n_workers=n_workers,
        threads_per_worker=1,
        processes=True,
        host="127.0.0.1",
        dashboard_address=None,
    )
    with cluster, Client(cluster) as client:
        certified_margin_dask(clf, lazy_rows(chunk, chunk)).compute()
        before = client.run(_worker_memory)
        reset = all(client.run(_reset_peak).values())
        pids = [memory["pid"] for memory in before.values()]
        start = time.perf_counter()
        with RSSSampler(pids) as sampler:
            margins = certified_margin_dask(clf, lazy_rows(n, chunk)).compute()
        seconds = time.perf_counter() - start
        after = client.run(_worker_memory)
    workers = []
    for address, memory in before.items():
        peak = after[address]["peak"] if reset else None
        workers.append(
            {
                "rss_before_bytes": memory["rss"],
                "peak_bytes": peak if peak is not None else sampler.peaks[memory["pid"]],
                "sampled_peak_bytes": sampler.peaks[memory["pid"]],
            }
        )
    if len(margins) != n or not (np.isfinite(margins) & (margins > 0)).all():
        raise RuntimeError("certified_margin_dask returned missing, infinite or zero margins")
    return {
        "n_rows": n,
        "chunk_rows": chunk,
        "n_blocks": -(-n // chunk),
        "block_bytes": chunk * N_FEATURES * 4,
        "n_workers": n_workers,
        "workers": workers,
        "peak_since_reset": reset,
        "seconds": seconds,
        "rows_per_second": n / seconds,
        "median_margin": float(np.median(margins)),
    }


def main(quick: bool, n_workers: int) -> None:
    wall = time.perf_counter()
    sizes, chunk = budget(
        quick, ((100_000, 1_000_000), 20_000), ((10_000, 40_000), 5_000), ((1_000, 2_000), 500)
    )
    results, table_rows = [], []
    for n in sizes:
        r = measure(n, chunk, n_workers)
        results.append(r)
        for i, w in enumerate(r["workers"]):
            table_rows.append(
                [
                    f"{n:,}",
                    f"{r['n_blocks']} x {chunk:,}",
                    i,
                    f"{w['rss_before_bytes'] / MIB:.0f}",
                    f"{w['peak_bytes'] / MIB:.0f}",
                    f"{(w['peak_bytes'] - w['rss_before_bytes']) / MIB:.0f}",
                    f"{r['seconds']:.0f}",
                    f"{r['rows_per_second']:.0f}",
                ]
            )
        print(table_rows[-len(r["workers"]) :], flush=True)
    table = markdown_table(
        [
            "rows",
            "blocks x rows",
            "worker",
            "RSS before (MiB)",
            "peak RSS (MiB)",
            "peak - before (MiB)",
            "seconds",
            "rows/s (all workers)",
        ],
        table_rows,
    )
    since = all(r["peak_since_reset"] for r in results)
    block_mib = results[0]["block_bytes"] / MIB
    text = (
        "# certified_margin_dask: MLP 784-300x4-10 ReLU, l2, float32 rows from "
        "dask.array.random\n\n"
        f"{table}\n\n"
        f"A LocalCluster of {n_workers} worker processes with one thread each (torch too, "
        "`n_threads=1`) on loopback, fresh for each size; the rows are generated on the "
        f"workers in blocks of {chunk:,} ({block_mib:.0f} MiB of float32), and only the "
        "margins (8 bytes a row) come back. A worker holds a few blocks at a time (the one "
        "it certifies and those dask has generated for it next) and one batch of tangents "
        "(the 64 MiB budget), so its peak is set by the block size, not by the number of "
        "rows. "
        + (
            "Peaks are each worker process's VmHWM, reset after a warm-up block and "
            "before the timed computation; `RSS before` is its resident memory then."
            if since
            else "Peaks are the largest resident memory seen by sampling the worker "
            "processes every 50 ms (VmHWM could not be reset)."
        )
        + " Seconds and rows/s: the whole computation, generating the data included.\n"
    )
    data = {
        "architecture": "MLP 784-300x4-10 ReLU",
        "p": 2,
        "seed": SEED,
        "results": results,
        "wall_seconds": time.perf_counter() - wall,
    }
    path = write("dask_scale", text, data, quick)
    print(text)
    print(f"wrote {path} in {data['wall_seconds']:.0f} s")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="reduced run")
    parser.add_argument(
        "--workers", type=int, default=2, help="worker processes, one thread each (default 2)"
    )
    args = parser.parse_args()
    main(args.quick, args.workers)
