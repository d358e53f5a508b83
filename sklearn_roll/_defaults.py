"""The ROLL weights an estimator uses when ``lam`` or ``C`` is None: one pair per architecture.

``benchmarks/defaults.py`` chose them: for each built-in module and task it trains the
default network over a grid of ``lam`` and ``C`` and keeps the setting with the largest
median-margin gain whose mean test score stays within a point of plain training
(``benchmarks/results/defaults.md``). A user module takes the values of ``"mlp"``.
``"cnn1d"`` has no study yet and takes the image ResNet's values.
"""

from __future__ import annotations

from typing import Any

__all__ = ["DEFAULTS", "roll_weights"]

DEFAULTS: dict[str, dict[str, tuple[float, float]]] = {
    # task -> module -> (lam, C)
    "classifier": {
        "mlp": (1.0, 1.0),
        "cnn": (0.03, 1.0),
        "rnn": (0.0625, 16.0),
        "cnn1d": (0.03, 1.0),
    },
    # Only the MLP has a regression study; the others take their classifier's values.
    "regressor": {
        "mlp": (16.0, 0.25),
        "cnn": (0.03, 1.0),
        "rnn": (0.0625, 16.0),
        "cnn1d": (0.03, 1.0),
    },
}


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
    default_lam, default_C = DEFAULTS[task].get(module if isinstance(module, str) else "mlp")
    return (default_lam if lam is None else float(lam), default_C if C is None else float(C))
