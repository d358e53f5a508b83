"""Epoch time of exact and approximate ROLL against plain training, and what each buys.

One run trains, on the same data and with the same seed:

* MNIST-sized input, the 4x300 ReLU MLP (784 inputs): plain training (lam=0), exact
  ROLL, and approximate ROLL with k = 8 and 4 probes by both methods ("axes", the
  paper's sampled input axes; "projections", Rademacher probes) and 2 projections;
* the convolutional ResNet on digits (8x8 images, where the exact loss fits in
  memory), the same six settings.

It reports the mean epoch time (skorch's history), the ratio to plain training, test
accuracy, the median certified l2 margin, the fraction of the exact loss's margin
gain that each approximation keeps, and the spread of each estimate: the relative
standard deviation, over 32 draws, of the approximate gradient term of the penalty
of the plainly trained network on one training batch, around the exact term. For the ResNet on 28x28 MNIST images the exact
loss is not run: the script reports the tangent memory it would need per batch.

    python benchmarks/training_speed.py            # full run
    python benchmarks/training_speed.py --quick    # reduced run
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

from _common import budget, markdown_table, write
from sklearn_roll import ROLLClassifier
from sklearn_roll.datasets import load_mnist
from sklearn_roll.loss import roll_penalty

SEED = 0
SETTINGS = [
    ("vanilla", dict(lam=0.0)),
    ("exact", dict()),
    ("axes k=8", dict(approx=8, approx_method="axes")),
    ("axes k=4", dict(approx=4, approx_method="axes")),
    ("projections k=8", dict(approx=8, approx_method="projections")),
    ("projections k=4", dict(approx=4, approx_method="projections")),
    ("projections k=2", dict(approx=2, approx_method="projections")),
]
# Draws of each estimate of the penalty on one batch, for its spread.
DRAWS = 32
# The ResNet loses accuracy fast above lam = 0.1 on digits (0.90 at lam = 0.3 and 0.48 at
# lam = 1 after 20 epochs with 8 sampled axes), so it is compared at a smaller lam.
MLP_SETTING = dict(lam=1.0, C=1.0)
RESNET_SETTING = dict(lam=0.1, C=1.0)


def mnist(n_train, n_test):
    X, y = load_mnist("train")
    X_test, y_test = load_mnist("test")
    rng = np.random.RandomState(SEED)
    train = rng.permutation(len(X))[:n_train]
    scale = lambda a: (a - 0.1307) / 0.3081  # noqa: E731 - the paper's standardisation
    return scale(X[train]), y[train], scale(X_test[:n_test]), y_test[:n_test]


def digits_images():
    X, y = load_digits(return_X_y=True)
    X = (X / 16.0 - 0.3) / 0.4
    Xtr, Xte, ytr, yte = train_test_split(X, y, test_size=0.3, random_state=SEED, stratify=y)
    return Xtr.reshape(-1, 1, 8, 8), ytr, Xte.reshape(-1, 1, 8, 8), yte


def spread(module, x, setting) -> float:
    """Relative standard deviation of the approximate gradient term around the exact one
    (C = 0: the hinge term is exact in both)."""
    x = torch.from_numpy(np.asarray(x, dtype=np.float32))
    with torch.no_grad():
        exact = roll_penalty(module, x, C=0.0).item()
        torch.manual_seed(SEED)
        draws = [
            roll_penalty(
                module, x, C=0.0, approx=setting["approx"], approx_method=setting["approx_method"]
            ).item()
            for _ in range(DRAWS)
        ]
    return float(np.sqrt(np.mean((np.asarray(draws) - exact) ** 2)) / exact)


def run(name, data, module_kwargs, max_epochs, lam, C):
    Xtr, ytr, Xte, yte = data
    rows, out = [], {}
    # Warm up torch's kernels so that the first setting timed is not penalised.
    ROLLClassifier(max_epochs=1, random_state=SEED, **module_kwargs).fit(Xtr[:128], ytr[:128])
    for label, setting in SETTINGS:
        clf = ROLLClassifier(
            **{"lam": lam, "C": C, **setting},
            max_epochs=max_epochs,
            random_state=SEED,
            **module_kwargs,
        )
        start = time.perf_counter()
        clf.fit(Xtr, ytr)
        fit_seconds = time.perf_counter() - start
        epoch = float(np.mean(clf.history[:, "dur"]))
        out[label] = {
            "epoch_seconds": epoch,
            "fit_seconds": fit_seconds,
            "accuracy": clf.score(Xte, yte),
            "median_l2_margin": float(np.median(clf.certified_margin(Xte))),
        }
        if label == "vanilla":
            plain_module = clf.module_.eval()
        print(name, label, out[label], flush=True)
    base, exact = out["vanilla"], out["exact"]
    exact_gain = exact["median_l2_margin"] / base["median_l2_margin"]
    for label, r in out.items():
        gain = r["median_l2_margin"] / base["median_l2_margin"]
        r["time_ratio_to_vanilla"] = r["epoch_seconds"] / base["epoch_seconds"]
        r["margin_ratio_to_vanilla"] = gain
        r["share_of_exact_gain"] = (
            (gain - 1) / (exact_gain - 1) if exact_gain != 1 else float("nan")
        )
        setting = dict(SETTINGS)[label]
        if "approx" in setting:
            r["relative_std"] = spread(plain_module, Xtr[:64], setting)
        rows.append(
            [
                label,
                f"{r['epoch_seconds']:.2f}",
                f"{r['time_ratio_to_vanilla']:.1f}x",
                f"{r['accuracy']:.3f}",
                f"{r['median_l2_margin']:.2e}",
                f"{gain:.1f}x",
                "-" if label == "vanilla" else f"{100 * r['share_of_exact_gain']:.0f}%",
                f"{r['relative_std']:.3f}" if "relative_std" in r else "-",
            ]
        )
    return rows, out


def main(quick: bool) -> None:
    wall = time.perf_counter()
    n_train, n_test, epochs = budget(quick, (10000, 2000, 5), (500, 200, 1), (64, 32, 1))
    header = [
        "setting",
        "epoch (s)",
        "epoch vs vanilla",
        "test accuracy",
        "median l2 margin",
        "margin vs vanilla",
        "share of exact gain",
        "estimate's relative std",
    ]
    data = {"seed": SEED, "epochs": epochs, "mlp": MLP_SETTING, "resnet": RESNET_SETTING}
    mlp_rows, data["mlp_mnist"] = run(
        "mlp", mnist(n_train, n_test), dict(hidden_layer_sizes=(300,) * 4), epochs, **MLP_SETTING
    )
    digits = digits_images()
    cnn_epochs = 1 if quick else 20
    if quick:
        digits = tuple(a[: budget(quick, None, 200, 32)] for a in digits)
    cnn_rows, data["resnet_digits"] = run(
        "resnet",
        digits,
        dict(module="cnn", hidden_layer_sizes=(16, 32), lr=3e-3),
        cnn_epochs,
        **RESNET_SETTING,
    )
    # Exact loss on 28x28 images: tangents of every unit for every input axis.
    units_28 = 16 * 28 * 28 * 3 + 32 * 14 * 14 * 2
    data["resnet_mnist_exact_tangent_gib_per_batch_of_64"] = 784 * 64 * units_28 * 4 / 2**30
    data["wall_seconds"] = time.perf_counter() - wall
    text = (
        "# Training cost of exact and approximate ROLL\n\n"
        f"4x300 ReLU MLP on {n_train} MNIST training images (784 inputs), {epochs} epochs, "
        f"lam = {MLP_SETTING['lam']:g}, C = {MLP_SETTING['C']:g}, Adam lr 1e-3, test on "
        f"{n_test}:\n\n{markdown_table(header, mlp_rows)}\n\n"
        f"ResNet (16, 32 channels) on digits as 8x8 images, {cnn_epochs} epochs, "
        f"lam = {RESNET_SETTING['lam']:g}, C = {RESNET_SETTING['C']:g}, Adam lr 3e-3:\n\n"
        f"{markdown_table(header, cnn_rows)}\n\n"
        "Batch 64. Share of exact gain: (margin ratio - 1) / (exact's margin "
        f"ratio - 1). Relative std: of {DRAWS} draws of the approximate gradient term of the "
        "plain network's penalty on 64 training samples, around the exact term. The exact loss for the same ResNet on 28x28 MNIST images would hold "
        f"{data['resnet_mnist_exact_tangent_gib_per_batch_of_64']:.0f} GiB of unit tangents "
        "per batch of 64 before autograd's own copies, so only the approximate loss is "
        "practical there.\n"
    )
    print(text)
    print(f"wrote {write('training_speed', text, data, quick)} in {data['wall_seconds']:.0f} s")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="reduced run")
    main(parser.parse_args().quick)
