"""Time certified_margin against the obvious alternatives, in one run.

The 4x300 ReLU MLP on 784 inputs (MNIST-sized), 256 samples: sklearn-roll's
``certified_margin`` against (a) one autograd backward per hidden unit and (b)
``torch.func.vmap(jacfwd)``, all in float32, with the ratios and this machine's own
float32 GEMM speed for context.

    python benchmarks/speed.py            # full run
    python benchmarks/speed.py --quick    # reduced run, well under a minute
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from torch.func import jacfwd, vmap

from _common import gemm_gflops, markdown_table, write
from sklearn_roll import ROLLClassifier
from sklearn_roll.linearize import float64_copy
from sklearn_roll.regions import FLOAT32_RTOL, certified_margin

SEED = 0


def preactivations(module):
    """f(x) -> all hidden pre-activations, for the baselines."""
    layers = list(module)

    def f(x):
        pre = []
        h = x
        for layer in layers[:-1]:
            h = layer(h)
            if isinstance(layer, torch.nn.Linear):
                pre.append(h)
        return torch.cat(pre, dim=-1)

    return f


def margins_from(z, jac, q):
    norms = torch.linalg.vector_norm(jac, ord=q, dim=2)
    ratio = torch.where(norms > 0, z.abs() / norms, torch.inf)
    return ratio.amin(dim=1).double().numpy()


def per_unit_backward(module, x, q):
    f = preactivations(module)
    xg = x.clone().requires_grad_(True)
    z = f(xg)
    jac = torch.empty(z.shape[0], z.shape[1], x.shape[1], dtype=x.dtype)
    for u in range(z.shape[1]):
        (jac[:, u],) = torch.autograd.grad(z[:, u].sum(), xg, retain_graph=True)
    return margins_from(z.detach(), jac, q)


def vmap_jacfwd(module, x, q):
    f = preactivations(module)
    with torch.no_grad():
        jac = vmap(jacfwd(f))(x)
        return margins_from(f(x), jac, q)


def timed(fn, repeats):
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - start)
    return min(times), out


def main(quick: bool) -> None:
    wall = time.perf_counter()
    torch.manual_seed(SEED)
    rng = np.random.RandomState(SEED)
    n = 32 if quick else 256
    X = rng.rand(512, 784).astype(np.float32)
    y = rng.randint(0, 10, 512)
    clf = ROLLClassifier(hidden_layer_sizes=(300,) * 4, lam=0.0, max_epochs=1, random_state=SEED)
    clf.fit(X, y)
    module = clf.module_.eval()
    module64 = float64_copy(module)
    x = torch.from_numpy(X[:n])
    gflops = gemm_gflops()
    rows, data = [], {"n_samples": n, "architecture": "MLP 784-300x4-10 ReLU", "seed": SEED}
    for p, q in ((2, 2), (1, np.inf), (np.inf, 1)):
        certified_margin(clf, X[:2], p)
        t_ours, ours = timed(lambda p=p: certified_margin(clf, X[:n], p), 3)
        t_a, ref_a = timed(lambda q=q: per_unit_backward(module, x, q), 1)
        t_b, ref_b = timed(lambda q=q: vmap_jacfwd(module, x, q), 1)
        truth = per_unit_backward(module64, x.double(), q)

        def error(values, truth=truth):
            return float(np.max(np.abs(values / truth - 1)))

        # The float32 result is shrunk by the documented safety factor; undo it here.
        err = error(ours * (1 + FLOAT32_RTOL))
        err64 = error(certified_margin(clf, X[:n], p, precision="float64"))
        label = {2: "2", 1: "1", np.inf: "inf"}[p]
        rows.append(
            [
                label,
                f"{t_ours:.3f}",
                f"{t_a:.2f}",
                f"{t_b:.2f}",
                f"{t_a / t_ours:.1f}x",
                f"{t_b / t_ours:.1f}x",
                f"{err:.1e}",
                f"{err64:.1e}",
                f"{error(ref_a):.1e}",
                f"{error(ref_b):.1e}",
            ]
        )
        data[f"p={label}"] = {
            "seconds_sklearn_roll": t_ours,
            "seconds_per_unit_backward": t_a,
            "seconds_vmap_jacfwd": t_b,
            "speedup_vs_per_unit_backward": t_a / t_ours,
            "speedup_vs_vmap_jacfwd": t_b / t_ours,
            "relative_error_sklearn_roll_float32": err,
            "relative_error_sklearn_roll_float64": err64,
            "relative_error_per_unit_backward": error(ref_a),
            "relative_error_vmap_jacfwd": error(ref_b),
        }
        print(rows[-1], flush=True)
    table = markdown_table(
        [
            "p",
            "sklearn-roll (s)",
            "(a) backward per unit (s)",
            "(b) vmap(jacfwd) (s)",
            "speed-up vs (a)",
            "speed-up vs (b)",
            "error: sklearn-roll",
            "error: float64 mode",
            "error: (a)",
            "error: (b)",
        ],
        rows,
    )
    data["gemm_gflops_float32"] = gflops
    data["wall_seconds"] = time.perf_counter() - wall
    text = (
        f"# certified_margin speed: {data['architecture']}, {n} samples\n\n{table}\n\n"
        f"float32 GEMM on this machine: {gflops:.0f} GFLOP/s. All methods run in float32 "
        "except the float64 mode. Errors: largest relative difference to per-unit autograd "
        "in float64; sklearn-roll's float32 margins are shown with the documented safety "
        f"factor 1 + {FLOAT32_RTOL:g} removed. The float32 baselines err more because "
        "they round the pre-activations, which sklearn-roll takes from a float64 pass.\n"
    )
    path = write("speed", text, data, quick)
    print(text)
    print(f"wrote {path} in {data['wall_seconds']:.0f} s")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="reduced run")
    main(parser.parse_args().quick)
