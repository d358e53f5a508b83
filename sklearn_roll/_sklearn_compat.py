"""What it takes for a skorch network to behave as a scikit-learn estimator.

skorch's ``NeuralNet`` predates parts of scikit-learn's estimator contract: it sets
attributes in ``__init__``, treats private bookkeeping as parameters, has its own
parameter validation and class inference, and no ``random_state``. The mixin here
reconciles the two, so that the estimators' own classes hold only what ROLL adds.
"""

from __future__ import annotations

import contextlib
import copy
import types
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
from sklearn.base import BaseEstimator
from sklearn.utils import check_random_state
from torch import nn

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

    def __setattr__(self, name: str, value: Any) -> None:
        # skorch treats a torch module assigned outside its initialize methods as a
        # component and refuses it; a parameter (``module=nn.Sequential(...)``, a
        # criterion instance) is a value that __init__, clone and set_params assign.
        if isinstance(value, nn.Module) and not name.endswith("_") and "__" not in name:
            object.__setattr__(self, name, value)
            return
        super().__setattr__(name, value)

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
        """Build the loss with ``reduction="none"``: ``criterion``, or the default when None.

        The estimator averages the per-example losses itself, with the sample weights.
        """
        criterion = self._default_criterion if self.criterion is None else self.criterion
        params = self.get_params_for("criterion")
        if isinstance(criterion, nn.Module) and not params:
            loss = copy.deepcopy(criterion)
            if not hasattr(loss, "reduction"):
                raise TypeError(
                    f"criterion {type(loss).__name__} has no 'reduction': the estimator needs "
                    "per-example losses (reduction='none') to weight and average them."
                )
            loss.reduction = "none"
        else:
            try:
                loss = self.initialized_instance(criterion, {**params, "reduction": "none"})
            except TypeError as exc:
                raise TypeError(
                    f"criterion {getattr(criterion, '__name__', type(criterion).__name__)} "
                    "does not accept reduction='none': the estimator needs per-example losses "
                    f"to weight and average them ({exc})."
                ) from exc
        self.criterion_ = loss
        return self

    def _check_usable_device(self) -> None:
        """Refuse a ``device`` torch cannot use here, saying why."""
        if self.device is None:
            return
        try:
            device = torch.device(self.device)
        except (RuntimeError, TypeError, ValueError) as exc:
            raise ValueError(f"device={self.device!r} is not a torch device: {exc}") from exc
        if device.type != "cuda":
            return
        if not torch.cuda.is_available():
            build = (
                "this torch build has no CUDA support"
                if torch.version.cuda is None
                else "torch finds no CUDA GPU (torch.cuda.is_available() is False)"
            )
            raise ValueError(f"device={self.device!r}, but {build}; use device='cpu'.")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ValueError(
                f"device={self.device!r}, but torch sees {torch.cuda.device_count()} CUDA "
                "device(s)."
            )

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
