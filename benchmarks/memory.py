"""Peak memory of certified_margin and explain on many MNIST-sized samples.

The 784-input 4x300 ReLU MLP (MNIST-sized; its weights do not change the memory, so
it is not trained) on float32 inputs. Each measurement runs in a fresh subprocess
that builds the data and the model, then runs one call and reports its peak
resident memory: VmHWM after resetting it through ``/proc/self/clear_refs`` (Linux),
else ``ru_maxrss``, which then also counts what came before the call. The table
compares the extra memory of the call with the size of its input and output:
bounded memory means the extra memory stays flat as the number of samples grows.

    python benchmarks/memory.py            # 10,000 and 100,000 samples
    python benchmarks/memory.py --quick    # 2,000 and 4,000 samples, well under a minute
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from _common import budget, markdown_table, proc_status, write

SEED = 0
CALLS = ("certified_margin", "explain")
MIB = 2**20


def _reset_peak() -> bool:
    """Reset VmHWM to the current resident size (Linux 4.0+); False where not allowed."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


def measure(call: str, n: int) -> dict:
    """Run one call on n samples in this process and report its memory (the child's job)."""
    import torch

    from sklearn_roll import ROLLClassifier

    rng = np.random.RandomState(SEED)
    X = rng.rand(n, 784).astype(np.float32)
    y = rng.randint(0, 10, n)
    clf = ROLLClassifier(
        hidden_layer_sizes=(300,) * 4, lam=0.0, max_epochs=0, classes=np.arange(10)
    )
    clf.set_params(random_state=SEED).fit(X[:1], y[:1])
    # One small call first, so that lazy allocations of torch are not charged to n.
    getattr(clf, call)(X[:2])
    before = proc_status("VmRSS")
    reset = _reset_peak()
    start = time.perf_counter()
    out = getattr(clf, call)(X)
    seconds = time.perf_counter() - start
    peak = proc_status("VmHWM") if reset else None
    if peak is None:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return {
        "call": call,
        "n_samples": n,
        "input_bytes": X.nbytes,
        "output_bytes": np.asarray(out).nbytes,
        "rss_before_bytes": before,
        "peak_bytes": peak,
        "peak_since_call": reset,
        "seconds": seconds,
        "torch_threads": torch.get_num_threads(),
    }


def run_child(call: str, n: int) -> dict:
    """One measurement in a fresh interpreter."""
    out = subprocess.run(
        [sys.executable, __file__, "--child", call, str(n)],
        capture_output=True,
        text=True,
        check=True,
        cwd=Path(__file__).resolve().parent,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(quick: bool) -> None:
    wall = time.perf_counter()
    sizes = budget(quick, (10_000, 100_000), (2_000, 4_000), (200, 400))
    rows, results = [], []
    for call in CALLS:
        for n in sizes:
            r = run_child(call, n)
            results.append(r)
            extra = r["peak_bytes"] - r["rss_before_bytes"]
            rows.append(
                [
                    call,
                    f"{n:,}",
                    f"{r['input_bytes'] / MIB:.0f}",
                    f"{r['output_bytes'] / MIB:.1f}",
                    f"{r['rss_before_bytes'] / MIB:.0f}",
                    f"{r['peak_bytes'] / MIB:.0f}",
                    f"{extra / MIB:.0f}",
                    f"{(extra - r['output_bytes']) / MIB:.0f}",
                    f"{r['seconds']:.1f}",
                ]
            )
            print(rows[-1], flush=True)
    table = markdown_table(
        [
            "call",
            "samples",
            "input (MiB)",
            "output (MiB)",
            "RSS before the call (MiB)",
            "peak RSS (MiB)",
            "peak - before (MiB)",
            "peak - before - output (MiB)",
            "seconds",
        ],
        rows,
    )
    since = all(r["peak_since_call"] for r in results)
    text = (
        "# Peak memory: MLP 784-300x4-10 ReLU, float32 inputs, default settings\n\n"
        f"{table}\n\n"
        "Each row is a fresh process: it builds the inputs and the model, makes one "
        "small call, then the measured one. `peak - before` is the memory the call "
        "adds to what the process held (inputs, model, torch); without the output "
        "array it is the working memory, which the 64 MiB tangent budget per batch "
        "bounds whatever the number of samples. "
        + (
            "Peaks are VmHWM, reset just before the call."
            if since
            else "Peaks are ru_maxrss (VmHWM could not be reset), so they also count "
            "what the process held before the call."
        )
        + "\n"
    )
    data = {
        "architecture": "MLP 784-300x4-10 ReLU",
        "seed": SEED,
        "results": results,
        "wall_seconds": time.perf_counter() - wall,
    }
    path = write("memory", text, data, quick)
    print(text)
    print(f"wrote {path} in {data['wall_seconds']:.0f} s")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="reduced run")
    parser.add_argument("--child", nargs=2, metavar=("CALL", "N"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(measure(args.child[0], int(args.child[1]))))
    else:
        main(args.quick)
