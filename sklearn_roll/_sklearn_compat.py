"""What it takes for a skorch network to behave as a scikit-learn estimator.

skorch's ``NeuralNet`` predates parts of scikit-learn's estimator contract: it sets
attributes in ``__init__``, treats private bookkeeping as parameters, has its own
parameter validation and class inference, and no ``random_state``. The mixin here
reconciles the two, so that the estimators' own classes hold only what ROLL adds.
"""

from __future__ import annotations

import contextlib
import types
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
from sklearn.base import BaseEstimator
from sklearn.utils import check_random_state

__all__ = ["SkorchSklearnMixin"]


class SkorchSklearnMixin:
    """scikit-learn's estimator contract on top of skorch; comes before skorch in the MRO.

    Subclasses set ``_default_criterion`` (the task loss used when ``criterion`` is
    None) and have ``random_state`` and ``n_threads`` parameters.
    """

    # skorch's __init__ sets these three; class-level defaults let __init__ drop them,
    # so that, as scikit-learn requires, __init__ sets parameters only.
    history_ = None
    initialized_ = False
    virtual_params_ = types.MappingProxyType({})

    def _drop_skorch_init_state(self) -> None:
        for name, default in (("history_", None), ("initialized_", False), ("virtual_params_", {})):
            if vars(self).get(name, default) == default:
                vars(self).pop(name, None)

    def _get_param_names(self):
        # skorch treats every attribute not ending in "_" as a parameter, including
        # its private bookkeeping (e.g. _params_to_validate); keep only public ones.
        return [name for name in super()._get_param_names() if not name.startswith("_")]

    def _validate_sklearn_params(self) -> None:
        # skorch's NeuralNet defines its own _validate_params; run scikit-learn's.
        BaseEstimator._validate_params(self)

    def check_data(self, X, y=None):
        """Input is validated in fit; skorch's own class inference is not used."""
        self._check_y_given(y)

    def _check_y_given(self, y: Any) -> None:
        if y is None:
            raise ValueError(
                f"{type(self).__name__} requires y to be passed, but the target y is None."
            )

    def initialize_criterion(self):
        """Build the loss: ``criterion``, or the estimator's default when it is None."""
        criterion = self._default_criterion if self.criterion is None else self.criterion
        self.criterion_ = self.initialized_instance(criterion, self.get_params_for("criterion"))
        return self

    @contextlib.contextmanager
    def _threads(self) -> Iterator[None]:
        """Set torch's thread count to ``n_threads`` (if set), restoring it after."""
        threads = torch.get_num_threads()
        try:
            if self.n_threads is not None:
                torch.set_num_threads(self.n_threads)
            yield
        finally:
            torch.set_num_threads(threads)

    @contextlib.contextmanager
    def _torch_context(self) -> Iterator[None]:
        """Seed torch from random_state and set its thread count, restoring both after."""
        with contextlib.ExitStack() as stack:
            if self.random_state is not None:
                seed = int(check_random_state(self.random_state).randint(np.iinfo(np.int32).max))
                stack.enter_context(torch.random.fork_rng(devices=[]))
                torch.manual_seed(seed)
            stack.enter_context(self._threads())
            yield

    @staticmethod
    def _float32(a: np.ndarray, what: str) -> np.ndarray:
        """``a`` as the float32 array the network trains on, refusing overflow."""
        with np.errstate(over="ignore"):
            out = a.astype(np.float32)
        if not np.isfinite(out[~np.isnan(a)]).all():
            raise ValueError(
                f"{what} has values beyond the float32 range (|value| > 3.4e38), in "
                "which the network trains; rescale it."
            )
        return out
