"""Time certified_margin against the obvious alternatives, in one run.

For each architecture, sklearn-roll's ``certified_margin`` (l2, l1 and l_inf for the
MLP; l2 for the others) against (a) one autograd backward pass per hidden unit and
(b) ``torch.func.vmap(jacfwd)`` over all pre-activations, with the ratios, their
errors against a float64 reference, and this machine's float32 GEMM speed:

* the 4x300 ReLU MLP on 784 inputs (MNIST-sized), 256 samples, plain and briefly
  ROLL-trained (lam=1), whose hinge puts many units at similar ratios;
* the LeakyReLU Elman RNN (64 units) on 64 sequences of 29 steps x 12 channels
  (Japanese-Vowels-sized);
* the ResNet (16, 32 channels) on 16 images of 28 x 28;
* the 4x300 MLP trained on 10,000 MNIST images, plainly and with approximate ROLL,
  certified on MNIST's 10,000 test images (l2 only).

For the ResNet, (a) would need one backward pass for each of its 50,176 units; it is
timed on a random sample of units and extrapolated, and marked so.

For the MLP, ``certified_margin`` computes exact gradient rows only for the units
whose bounded ratio could set the minimum (``sklearn_roll._pruning``); it is also
timed with pruning off (the dense Jacobian of every unit), with the rows it computed
per sample (mean and largest) against the number of units.

    python benchmarks/speed.py            # full run
    python benchmarks/speed.py --quick    # reduced run, well under a minute
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from torch.func import jacfwd, vmap

from _common import budget, gemm_gflops, markdown_table, write
from reference import preactivations as capture
from reference import unit_jacobian
from sklearn_roll import ROLLClassifier
from sklearn_roll._adapter import view
from sklearn_roll.datasets import load_mnist
from sklearn_roll.linearize import float64_copy, linear_chain
from sklearn_roll.regions import FLOAT32_RTOL, certified_margin

SEED = 0
SAMPLED_UNITS = 400


def preactivations(module):
    """f(x) -> every hidden pre-activation, flattened per example (for the baselines)."""

    def f(x):
        return torch.cat(capture(module, x)[1], dim=-1)

    return f


def margins_from(z, jac, q):
    norms = torch.linalg.vector_norm(jac, ord=q, dim=2)
    ratio = torch.where(norms > 0, z.abs() / norms, torch.inf)
    return ratio.amin(dim=1).double().numpy()


def per_unit_backward(module, x, q, units=None):
    """Margins from one backward pass per unit (tests/reference.py); with ``units``,
    only those units."""
    return margins_from(*unit_jacobian(module, x, units), q)


def vmap_jacfwd(module, x, q):
    f = preactivations(module)

    def one(sample):
        return f(sample[None])[0]

    with torch.no_grad():
        jac = vmap(jacfwd(one))(x)
        return margins_from(f(x), jac.reshape(len(x), jac.shape[1], -1), q)


def evaluated(clf, X, p, prune):
    """``certified_margin(clf, X, p)`` with pruning on or off, and its rows per sample."""
    fitted = view(clf, X)
    with fitted.threads():
        evaluator = fitted.evaluator("float32")
        return evaluator.margins(p, None, False, prune=prune), evaluator.survivors


def timed(fn, repeats):
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - start)
    return min(times), out


def architectures(quick: bool, rng):
    n_mlp, n_rnn, n_cnn, steps = budget(quick, (256, 64, 16, 29), (32, 8, 2, 10), (4, 2, 1, 4))
    roll_epochs = budget(quick, 5, 2, 1)
    X = rng.rand(512, 784).astype(np.float32)
    y = rng.randint(0, 10, 512)
    mlp = ROLLClassifier(hidden_layer_sizes=(300,) * 4, lam=0.0, max_epochs=1, random_state=SEED)
    orders = ((2, 2), (1, np.inf), (np.inf, 1))
    yield "MLP 784-300x4-10 ReLU", mlp.fit(X, y), X[:n_mlp], orders
    roll = ROLLClassifier(
        hidden_layer_sizes=(300,) * 4, lam=1.0, max_epochs=roll_epochs, random_state=SEED
    )
    name = f"MLP 784-300x4-10 ReLU, ROLL lam=1, {roll_epochs} epochs"
    yield name, roll.fit(X, y), X[:n_mlp], orders
    S = rng.randn(128, steps, 12).astype(np.float32)
    rnn = ROLLClassifier(
        "rnn",
        hidden_layer_sizes=(64,),
        activation="leaky_relu",
        negative_slope=0.1,
        lam=0.0,
        max_epochs=1,
        random_state=SEED,
    )
    yield (
        f"Elman RNN, 64 LeakyReLU units, {steps} steps x 12",
        rnn.fit(S, y[:128] % 9),
        S[:n_rnn],
        ((2, 2),),
    )
    images = rng.rand(64, 1, 28, 28).astype(np.float32)
    cnn = ROLLClassifier(
        "cnn", hidden_layer_sizes=(16, 32), lam=0.0, max_epochs=1, random_state=SEED
    )
    yield "ResNet (16, 32) on 28x28", cnn.fit(images, y[:64]), images[:n_cnn], ((2, 2),)


def mnist_test_set(quick: bool) -> tuple[str, dict]:
    """``certified_margin`` (p = 2) of the MNIST 4x300 MLP on the 10,000 test images."""
    try:
        X, y = load_mnist("train")
        X_test, _ = load_mnist("test")
    except ImportError as error:
        return f"MNIST: skipped ({error}).", {}
    n_train, n_test, epochs = budget(quick, (10000, 10000, 5), (500, 1000, 1), (64, 64, 1))
    X, y, X_test = X[:n_train], y[:n_train], X_test[:n_test]
    rows, data = [], {}
    for label, setting in [
        ("plain", dict(lam=0.0)),
        ("ROLL lam=1, C=1, 8 projections", dict(lam=1.0, C=1.0, approx=8)),
    ]:
        clf = ROLLClassifier(
            hidden_layer_sizes=(300,) * 4, max_epochs=epochs, random_state=SEED, **setting
        ).fit(X, y)
        certified_margin(clf, X_test[:2])
        seconds, _ = timed(lambda clf=clf: certified_margin(clf, X_test), 1)
        _, survivors = evaluated(clf, X_test, 2, True)
        rows.append([label, len(X_test), f"{seconds:.1f}", f"{survivors.mean():.1f}"])
        data[label] = {"seconds": seconds, "rows_per_sample_mean": float(survivors.mean())}
        print(rows[-1], flush=True)
    text = (
        f"MLP 784-300x4-10 trained {epochs} epochs on {n_train} MNIST images (pixels in "
        f"[0, 1]), `certified_margin(clf, X_test)` (l2, float32) on {n_test} test images, "
        f"{torch.get_num_threads()} threads:\n\n"
        + markdown_table(["training", "images", "seconds", "exact rows per image (of 1200)"], rows)
    )
    return text, data


def main(quick: bool) -> None:
    wall = time.perf_counter()
    torch.manual_seed(SEED)
    rng = np.random.RandomState(SEED)
    gflops = gemm_gflops()
    rows, data = [], {"seed": SEED, "gemm_gflops_float32": gflops}
    for name, clf, X, orders in architectures(quick, rng):
        module64 = float64_copy(clf.module_)
        # The baselines run in the precision sklearn-roll's default uses: float32 for
        # Linear chains, float64 for other networks (see the regions module docstring).
        chain = linear_chain(module64) is not None
        module = clf.module_.eval() if chain else module64
        x = torch.from_numpy(X) if chain else torch.from_numpy(X).double()
        n_units = preactivations(module)(x[:1]).shape[1]
        sampled = n_units > 5000
        units = np.sort(rng.choice(n_units, SAMPLED_UNITS, replace=False)) if sampled else None
        for p, q in orders:
            certified_margin(clf, X[:2], p)
            t_ours, ours = timed(lambda p=p, X=X, clf=clf: certified_margin(clf, X, p), 3)
            if chain:
                t_dense, (dense, _) = timed(
                    lambda p=p, X=X, clf=clf: evaluated(clf, X, p, False), 3
                )
                _, survivors = evaluated(clf, X, p, True)
                pruning = {
                    "seconds_dense": t_dense,
                    "speedup_vs_dense": t_dense / t_ours,
                    "rows_per_sample_mean": float(survivors.mean()),
                    "rows_per_sample_max": int(survivors.max()),
                    "relative_difference_to_dense": float(np.max(np.abs(ours / dense - 1))),
                }
            else:
                pruning = {}
            t_a, ref_a = timed(lambda q=q, m=module, x=x, u=units: per_unit_backward(m, x, q, u), 1)
            if sampled:
                t_a *= n_units / SAMPLED_UNITS
            t_b, ref_b = timed(lambda q=q, m=module, x=x: vmap_jacfwd(m, x, q), 1)
            truth = vmap_jacfwd(module64, x.double(), q)

            def error(values, truth=truth):
                return float(np.max(np.abs(values / truth - 1)))

            # The float32 result is shrunk by the documented safety factor; undo it here.
            err = error(ours * (1 + FLOAT32_RTOL))
            err64 = error(certified_margin(clf, X, p, precision="float64"))
            label = {2: "2", 1: "1", np.inf: "inf"}[p]
            rows.append(
                [
                    name,
                    label,
                    len(X),
                    "float32" if chain else "float64",
                    f"{t_ours:.3f}",
                    f"{t_dense:.3f} ({t_dense / t_ours:.1f}x)" if pruning else "-",
                    f"{survivors.mean():.1f} / {survivors.max()} of {n_units}" if pruning else "-",
                    f"{t_a:.1f}" + (" (extrapolated)" if sampled else ""),
                    f"{t_b:.2f}",
                    f"{t_a / t_ours:.1f}x",
                    f"{t_b / t_ours:.1f}x",
                    f"{err:.1e}",
                    f"{err64:.1e}",
                    "-" if sampled else f"{error(ref_a):.1e}",
                    f"{error(ref_b):.1e}",
                ]
            )
            data[f"{name} p={label}"] = {
                "n_samples": len(X),
                "n_units": n_units,
                "precision": "float32" if chain else "float64",
                "seconds_sklearn_roll": t_ours,
                "seconds_per_unit_backward": t_a,
                "per_unit_backward_extrapolated_from_units": SAMPLED_UNITS if sampled else None,
                "seconds_vmap_jacfwd": t_b,
                "speedup_vs_per_unit_backward": t_a / t_ours,
                "speedup_vs_vmap_jacfwd": t_b / t_ours,
                "relative_error_sklearn_roll_float32": err,
                "relative_error_sklearn_roll_float64": err64,
                "relative_error_vmap_jacfwd": error(ref_b),
                **pruning,
            }
            print(rows[-1], flush=True)
    table = markdown_table(
        [
            "network",
            "p",
            "samples",
            "arithmetic",
            "sklearn-roll (s)",
            "pruning off (s)",
            "rows per sample: mean / max",
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
    mnist_text, data["mnist_test_set"] = mnist_test_set(quick)
    data["wall_seconds"] = time.perf_counter() - wall
    text = (
        f"# certified_margin speed\n\n{table}\n\n{mnist_text}\n\n"
        f"float32 GEMM on this machine: {gflops:.0f} GFLOP/s. Arithmetic: what sklearn-roll's "
        "default precision uses, and what the baselines were given: float32 with rigorous "
        "rounding bounds for Linear chains (the MLP), float64 for other networks, which "
        "have no float32 rounding bound (regions module docstring). "
        "Errors: largest relative difference to the margins of a float64 vmap(jacfwd); "
        f"sklearn-roll's margins are shown with the documented factor 1 + {FLOAT32_RTOL:g} "
        "removed. The float32 baselines err more because they round the pre-activations, "
        "which sklearn-roll takes from a float64 pass. Pruning off: the dense Jacobian of "
        "every unit, with the speed-up pruning gives in brackets; rows per sample: exact "
        "gradient rows pruning computed (a sample handed to the dense path counts all its "
        "units).\n"
    )
    path = write("speed", text, data, quick)
    print(text)
    print(f"wrote {path} in {data['wall_seconds']:.0f} s")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="reduced run")
    main(parser.parse_args().quick)
