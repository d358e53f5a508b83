"""From "a fitted estimator or pipeline" to "a network, its input and its output layout".

The certificates work on a torch module and arrays. A fitted ROLL estimator describes
its network through one documented hook, ``__sklearn_roll_network__()``, which
returns a :class:`Network`; this module is the only place that asks for it. A fitted
``Pipeline`` whose last step is a ROLL estimator and whose other steps are affine
(:mod:`sklearn_roll._affine`) becomes the composed network, in float64, on the raw
features the pipeline receives.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Any

import numpy as np
from sklearn.pipeline import Pipeline
from sklearn.utils.validation import check_is_fitted
from torch import nn

from ._affine import check_raw_input, compose, fold
from ._evaluation import Evaluator
from .linearize import float64_copy

__all__ = ["Network", "View", "network_of", "view"]

Restore = Callable[[np.ndarray], Any]

HOOK = "__sklearn_roll_network__"


@dataclasses.dataclass(frozen=True)
class Network:
    """What a fitted estimator tells the certificates about its network.

    Attributes
    ----------
    module : nn.Module
        The network in eval mode, on the CPU, in its own precision; its first output
        is the logits (classifier) or the prediction (regressor).
    convert : callable
        ``convert(X) -> (x, restore)``: validates X as ``predict`` does and returns
        it in the module's layout (C-contiguous float32 or float64), with a function
        that maps an array shaped like ``x`` (gradients, bounds) back to the layout
        of X.
    kind : {"tabular", "sequence", "image"}
        The kind of input, which decides what preprocessing can be folded in.
    sample_shape : tuple of int or None
        The shape of one sample as the module reads it; None for sequences, whose
        length varies.
    classes : ndarray or None
        The class labels of a classifier (logit i is class ``classes[i]``); None for
        a regressor.
    threads : callable
        A context manager factory that sets the estimator's torch threads.
    """

    module: nn.Module
    convert: Callable[[Any], tuple[np.ndarray, Restore]]
    kind: str
    sample_shape: tuple[int, ...] | None
    classes: np.ndarray | None
    threads: Callable[[], AbstractContextManager] = contextlib.nullcontext


@dataclasses.dataclass
class View:
    """A network at the points of one call, and how to read more arrays like them.

    Attributes
    ----------
    module : nn.Module
        The network in its own precision.
    x : ndarray
        The points, in the module's layout.
    restore : callable
        Maps an array shaped like ``x`` back to the layout the caller passed.
    classes : ndarray or None
        Class labels (classifiers).
    inputs : callable
        ``inputs(data) -> (array, restore)`` for further arrays in the layout of X
        (directions).
    threads : callable
        Context manager factory for the estimator's torch threads.
    module64 : nn.Module or None
        The float64 network the certificates concern when ``module`` was derived
        from it (a pipeline's network folded with its preprocessing); None for a
        float64 copy of ``module``.
    """

    module: nn.Module
    x: np.ndarray
    restore: Restore
    classes: np.ndarray | None
    inputs: Callable[[Any], tuple[np.ndarray, Restore]]
    threads: Callable[[], AbstractContextManager]
    module64: nn.Module | None = None

    def exact_module(self) -> nn.Module:
        """The float64 network, in eval mode."""
        return float64_copy(self.module) if self.module64 is None else self.module64

    def evaluator(self, precision: str, features: np.ndarray | None = None) -> Evaluator:
        """The certificates of this network at ``x`` (in the subspace of ``features``)."""
        return Evaluator(self.module, self.x, precision, exact=self.module64, features=features)


def network_of(estimator: Any) -> Network:
    """The network of a fitted ROLL estimator, or of a pipeline's last step.

    Parameters
    ----------
    estimator : ROLLClassifier, ROLLRegressor or Pipeline
        A fitted estimator, or a fitted pipeline ending in one.

    Returns
    -------
    Network

    Raises
    ------
    TypeError
        If there is no ROLL estimator, naming the estimator or the pipeline step.
    NotFittedError
        If it is not fitted.
    """
    if isinstance(estimator, Pipeline):
        name, last = estimator.steps[-1]
        if not hasattr(last, HOOK):
            kind = repr(last) if isinstance(last, str) or last is None else type(last).__name__
            raise TypeError(
                f"The last step '{name}' of the pipeline is {kind}, not a sklearn-roll "
                "estimator; certificates need a Pipeline ending in a fitted ROLLClassifier "
                "or ROLLRegressor."
            )
        estimator = last
    elif not hasattr(estimator, HOOK):
        raise TypeError(
            f"{type(estimator).__name__} is not a sklearn-roll estimator; pass a fitted "
            "ROLLClassifier or ROLLRegressor, or a Pipeline ending in one."
        )
    check_is_fitted(estimator)
    return getattr(estimator, HOOK)()


def view(estimator: Any, X: Any) -> View:
    """The network of a fitted estimator or pipeline at the samples X.

    Parameters
    ----------
    estimator : ROLLClassifier, ROLLRegressor or Pipeline
        A fitted estimator, or a fitted pipeline ending in one whose other steps are
        affine.
    X : array-like
        Samples, in the layout the estimator or pipeline was fitted on.

    Returns
    -------
    View
    """
    network = network_of(estimator)
    amap = compose(estimator.steps[:-1]) if isinstance(estimator, Pipeline) else None
    if amap is None:
        x, restore = network.convert(X)
        return View(network.module, x, restore, network.classes, network.convert, network.threads)
    if network.kind == "sequence":
        raise ValueError(
            "A sequence model cannot follow affine preprocessing steps in a pipeline: they "
            "transform 2-D tables, not sequences."
        )
    module64 = fold(float64_copy(network.module), amap, network.sample_shape)
    # The working copy keeps the network's own precision, as for a bare estimator.
    dtype = next((param.dtype for param in network.module.parameters()), None)
    module = copy.deepcopy(module64).to(dtype) if dtype is not None else module64

    def inputs(data: Any) -> tuple[np.ndarray, Restore]:
        return check_raw_input(estimator, data, amap.n_in), _identity

    x, restore = inputs(X)
    return View(module, x, restore, network.classes, inputs, network.threads, module64=module64)


def _identity(a: np.ndarray) -> np.ndarray:
    return a
