"""The settings an estimator uses where its parameter is None: one set per architecture.

``benchmarks/defaults.py`` chose them. For each built-in module and task it trains the
default network over a grid of ``lam`` and ``C`` and keeps the setting with the largest
median-margin gain whose mean test score stays within a point of plain training
(``benchmarks/results/defaults.md``). The recurrent network trains with a larger
learning rate and for more epochs than the others: at the others' settings it is
still far from converged on the sequence sets of its study. A user module takes the
values of ``"mlp"``. ``"cnn1d"`` has no study yet and takes the image ResNet's values.
"""

from __future__ import annotations

from typing import Any

__all__ = ["DEFAULTS", "TRAINING", "roll_weights", "training_settings"]

DEFAULTS: dict[str, dict[str, tuple[float, float]]] = {
    # task -> module -> (lam, C)
    "classifier": {
        "mlp": (1.0, 1.0),
        "cnn": (0.03, 1.0),
        "rnn": (0.015625, 16.0),
        "cnn1d": (0.03, 1.0),
    },
    # Only the MLP has a regression study; the others take their classifier's values.
    "regressor": {
        "mlp": (16.0, 0.25),
        "cnn": (0.03, 1.0),
        "rnn": (0.015625, 16.0),
        "cnn1d": (0.03, 1.0),
    },
}


# module -> (Adam learning rate, epochs per fit); other modules take "mlp"'s.
TRAINING: dict[str, tuple[float, int]] = {
    "mlp": (1e-3, 50),
    "cnn": (1e-3, 50),
    "rnn": (3e-3, 100),
    "cnn1d": (1e-3, 50),
}


def _key(module: Any) -> str:
    return module if isinstance(module, str) else "mlp"


def training_settings(module: Any, lr: float | None, max_epochs: int | None) -> tuple[float, int]:
    """``(lr, max_epochs)``, each the architecture's default where it is None.

    Parameters
    ----------
    module : str, class or nn.Module
        The estimator's ``module`` parameter.
    lr : float or None
        The estimator's learning rate.
    max_epochs : int or None
        The estimator's epochs per fit.

    Returns
    -------
    tuple of (float, int)

    Examples
    --------
    >>> from sklearn_roll._defaults import training_settings
    >>> training_settings("rnn", None, None)
    (0.003, 100)
    >>> training_settings("mlp", 0.01, None)
    (0.01, 50)
    """
    default_lr, default_epochs = TRAINING[_key(module)]
    return (
        default_lr if lr is None else lr,
        default_epochs if max_epochs is None else max_epochs,
    )


def roll_weights(task: str, module: Any, lam: float | None, C: float | None) -> tuple[float, float]:
    """``(lam, C)``, each the architecture's default where it is None.

    Parameters
    ----------
    task : {"classifier", "regressor"}
        The estimator's task.
    module : str, class or nn.Module
        The estimator's ``module`` parameter.
    lam, C : float or None
        The estimator's parameters.

    Returns
    -------
    tuple of float

    Examples
    --------
    >>> from sklearn_roll._defaults import roll_weights
    >>> roll_weights("classifier", "mlp", None, 4.0)
    (1.0, 4.0)
    """
    default_lam, default_C = DEFAULTS[task][_key(module)]
    return (default_lam if lam is None else float(lam), default_C if C is None else float(C))
