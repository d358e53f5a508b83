"""The estimators' shared base: skorch's training loop with the ROLL penalty added.

:class:`_ROLLMixin` holds what ROLLClassifier and ROLLRegressor share: parameters and
their validation, the module built from the data's sizes, the skorch hooks (loss,
training step, batches, optimizer settings, epochs), fitting, and the certificates,
which reach the network through ``__sklearn_roll_network__``. scikit-learn's
estimator contract comes from :mod:`._sklearn_compat`, input checks from
:mod:`._validation`, the penalty from :mod:`.loss`.
"""

from __future__ import annotations

import copy
import inspect
import weakref
from collections.abc import Mapping
from numbers import Integral, Real

import numpy as np
import torch
from sklearn.base import is_classifier
from sklearn.utils._param_validation import (
    Interval,
    InvalidParameterError,
    Options,
    StrOptions,
)
from sklearn.utils.validation import check_is_fitted
from skorch.callbacks import PassthroughScoring, ProgressBar
from skorch.dataset import Dataset, unpack_data
from skorch.utils import is_dataset, to_tensor
from torch import nn
from torch.utils.data import DataLoader, Subset

from . import _early_stopping, regions
from ._adapter import Network
from ._defaults import roll_weights, training_settings
from ._docs import fill_doc
from ._evaluation import check_parameters, forward
from ._interrupt import LastFinishedEpoch
from ._sklearn_compat import SkorchSklearnMixin
from ._validation import check_input
from ._weights import normalized
from .linearize import check_supported, float64_copy
from .loss import APPROX_METHODS, _penalty_and_output
from .nn import MLP, ConvNet1d, ElmanRNN, ResNet
from .nn._activation import ACTIVATIONS

_BUILTIN_MODULES = {"mlp": MLP, "rnn": ElmanRNN, "cnn1d": ConvNet1d, "cnn": ResNet}

# Float64 copies of trained networks for predict, by network, with the parameter
# versions and the buffer values (BatchNorm statistics) they were copied at.
_FLOAT64_COPIES: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _inputs(X):
    """The inputs, and the sample weights or None, of the data skorch passes around."""
    if isinstance(X, Mapping):
        return X["X"], X.get("sample_weight")
    return X, None


def _weighted_mean(values: torch.Tensor, weight: torch.Tensor | None) -> torch.Tensor:
    return values.mean() if weight is None else (values * weight).mean()


class _ROLLMixin(SkorchSklearnMixin):
    """The ROLL part shared by the two estimators; comes before skorch's class in the MRO."""

    _parameter_constraints: dict = {
        "module": [StrOptions(set(_BUILTIN_MODULES)), type, nn.Module],
        "hidden_layer_sizes": ["array-like", Interval(Integral, 1, None, closed="left"), None],
        "activation": [StrOptions(set(ACTIVATIONS))],
        "negative_slope": [Interval(Real, 0, None, closed="left")],
        "lam": [Interval(Real, 0, None, closed="left"), None],
        "C": [Interval(Real, 0, None, closed="left"), None],
        "gamma": [Interval(Real, 0, 100, closed="right")],
        "approx": [Interval(Integral, 1, None, closed="left"), None],
        "approx_method": [StrOptions(set(APPROX_METHODS))],
        "sequence_layout": [StrOptions({"ntc", "nct"})],
        "input_shape": ["array-like", None],
        "early_stopping": ["boolean"],
        "validation_fraction": [Interval(Real, 0, 1, closed="neither")],
        "n_iter_no_change": [Interval(Integral, 1, None, closed="left")],
        "tol": [Interval(Real, 0, None, closed="left")],
        "random_state": ["random_state"],
        "n_threads": [Interval(Integral, 1, None, closed="left"), None],
        "criterion": [type, nn.Module, None],
        "optimizer": [callable],
        "lr": [Interval(Real, 0, None, closed="neither"), None],
        "max_epochs": [Interval(Integral, 0, None, closed="left"), None],
        "batch_size": [Interval(Integral, 1, None, closed="left"), Options(Integral, {-1})],
        "train_split": [callable, None],
        "verbose": ["verbose"],
    }

    # What fit learns from the data besides the tensors, each set or not: the module is
    # rebuilt from these, so sklearn_roll.persistence saves and restores them.
    _fitted_attributes = (
        "classes_inferred_",
        "n_outputs_",
        "y_ndim_",
        "y_mean_",
        "y_scale_",
        "n_features_in_",
        "feature_names_in_",
        "input_kind_",
        "image_shape_",
        "n_iter_",
        "best_epoch_",
        "loss_curve_",
        "validation_scores_",
    )

    # The history key of the validation score (validation_scores_).
    _validation_score: str

    def __init__(
        self,
        module="mlp",
        *,
        hidden_layer_sizes=None,
        activation="relu",
        negative_slope=0.01,
        lam=None,
        C=None,
        gamma=100.0,
        approx=None,
        approx_method="projections",
        sequence_layout="ntc",
        input_shape=None,
        early_stopping=False,
        validation_fraction=0.1,
        n_iter_no_change=10,
        tol=1e-4,
        random_state=None,
        n_threads=None,
        criterion=None,
        optimizer=torch.optim.Adam,
        lr=None,
        max_epochs=None,
        batch_size=64,
        train_split=None,
        verbose=0,
        **kwargs,
    ):
        super().__init__(
            module,
            criterion=criterion,
            optimizer=optimizer,
            lr=lr,
            max_epochs=max_epochs,
            batch_size=batch_size,
            train_split=train_split,
            verbose=verbose,
            **kwargs,
        )
        self.hidden_layer_sizes = hidden_layer_sizes
        self.activation = activation
        self.negative_slope = negative_slope
        self.lam = lam
        self.C = C
        self.gamma = gamma
        self.approx = approx
        self.approx_method = approx_method
        self.sequence_layout = sequence_layout
        self.input_shape = input_shape
        self.early_stopping = early_stopping
        self.validation_fraction = validation_fraction
        self.n_iter_no_change = n_iter_no_change
        self.tol = tol
        self.random_state = random_state
        self.n_threads = n_threads
        self._drop_skorch_init_state()

    def _check_params(self) -> None:
        if isinstance(self.train_split, Real) and not isinstance(self.train_split, bool):
            raise InvalidParameterError(
                f"The 'train_split' parameter of {type(self).__name__} must be a callable or "
                f"None, got {self.train_split!r}: skorch splits with a callable such as "
                f"skorch.dataset.ValidSplit({self.train_split!r}). For early stopping on a "
                f"held-out share, set early_stopping=True, validation_fraction="
                f"{self.train_split!r} instead."
            )
        self._validate_sklearn_params()
        if self.approx is not None and self.gamma != 100:
            raise ValueError(
                f"approx={self.approx} requires gamma=100 (got gamma={self.gamma}): the "
                "approximation estimates the mean over all units."
            )
        if self.early_stopping and self.train_split is not None:
            raise ValueError(
                "early_stopping=True holds out validation_fraction of the data itself; leave "
                "train_split=None (or set early_stopping=False to use your train_split)."
            )
        self._check_usable_device()

    def _roll_weights(self) -> tuple[float, float]:
        """``(lam, C)``: the parameters, or the architecture's defaults where they are None."""
        task = "classifier" if is_classifier(self) else "regressor"
        return roll_weights(task, self.module, self.lam, self.C)

    def _training_settings(self) -> tuple[float, int]:
        """``(lr, max_epochs)``: the parameters, or the architecture's defaults."""
        return training_settings(self.module, self.lr, self.max_epochs)

    # ------------------------------------------------------------ skorch hooks

    def get_params_for_optimizer(self, prefix, named_parameters):
        """skorch's optimizer arguments, with the architecture's learning rate for None."""
        args, kwargs = super().get_params_for_optimizer(prefix, named_parameters)
        if kwargs.get("lr") is None:
            kwargs["lr"] = self._training_settings()[0]
        return args, kwargs

    def fit_loop(self, X, y=None, epochs=None, **fit_params):
        """skorch's loop, for the architecture's number of epochs when none is set."""
        if epochs is None:
            epochs = self._training_settings()[1]
        return super().fit_loop(X, y, epochs=epochs, **fit_params)

    def _data_sizes(self) -> dict:
        """Sizes the data fixed at fit, under the names modules take them by."""
        sizes = {"n_features": self.n_features_in_, "n_outputs": self.n_outputs_}
        if self.input_kind_ == "image":
            sizes["input_shape"] = self.image_shape_
        return sizes

    def initialize_module(self):
        """Build the module, inferring its input and output sizes from the data.

        A module instance is copied, so that every fit starts from its weights and the
        parameter itself never trains.
        """
        kwargs = self.get_params_for("module")
        fitted = hasattr(self, "n_outputs_")
        if isinstance(self.module, str):
            if not fitted:
                raise ValueError(
                    f"module={self.module!r} infers its sizes from the data: call fit "
                    "instead of initialize."
                )
            builder = _BUILTIN_MODULES[self.module]
            params = {"activation": self.activation, "negative_slope": self.negative_slope}
            if self.hidden_layer_sizes is not None:
                sizes = self.hidden_layer_sizes
                params["hidden_layer_sizes"] = (
                    (int(sizes),) if isinstance(sizes, Integral) else tuple(sizes)
                )
            sizes = {
                k: v
                for k, v in self._data_sizes().items()
                if k in inspect.signature(builder).parameters
            }
            module = builder(**{**sizes, **params, **kwargs})
        elif isinstance(self.module, nn.Module) and not kwargs:
            module = copy.deepcopy(self.module)
        else:
            if isinstance(self.module, type) and fitted:
                accepted = inspect.signature(self.module).parameters
                for name, value in self._data_sizes().items():
                    if name in accepted and name not in kwargs:
                        kwargs[name] = value
            module = self.initialized_instance(self.module, kwargs)
        self.module_ = module
        return self

    def on_train_begin(self, net, X=None, y=None, **kwargs):
        """Refuse what cannot train before any training: modules the certificates cannot
        model, and callbacks that watch a validation split there is none of."""
        super().on_train_begin(net, X=X, y=y, **kwargs)
        _early_stopping.check_monitors(
            self.callbacks_, self.early_stopping or self.train_split is not None
        )
        sample = to_tensor(_inputs(X)[0][:4], device=self.device)
        was_training = self.module_.training
        try:
            self.module_.eval()
            check_supported(self.module_, sample)
            if self._roll_weights()[0] > 0:
                # The ROLL loss linearizes the module in training mode.
                self.module_.train()
                check_supported(self.module_, sample)
        finally:
            self.module_.train(was_training)

    @property
    def _default_callbacks(self):
        callbacks = list(super()._default_callbacks)
        # Before the user's callbacks (and the early stopping), so that an interrupt at
        # the end of an epoch comes after that epoch was kept.
        callbacks += [
            ("last_finished_epoch", LastFinishedEpoch()),
            ("train_task_loss", PassthroughScoring("train_task_loss", on_train=True)),
            ("valid_task_loss", PassthroughScoring("valid_task_loss")),
        ]
        # get_params reads this property, so invalid parameters must not raise here.
        if self.early_stopping is True:
            callbacks.append(
                (_early_stopping.NAME, _early_stopping.callback(self.n_iter_no_change, self.tol))
            )
        if isinstance(self.verbose, Real) and self.verbose >= 2:
            callbacks.append(("progress_bar", ProgressBar()))
        return callbacks

    def get_split_datasets(self, X, y=None, **fit_params):
        """skorch's split, or with ``early_stopping`` the held-out ``validation_fraction``."""
        if not self.early_stopping:
            return super().get_split_datasets(X, y, **fit_params)
        split = _early_stopping.split(
            self.validation_fraction, is_classifier(self), self.random_state
        )
        return split(self.get_dataset(X, y), y, **fit_params)

    def get_iterator(self, dataset, training=False):
        """skorch's batches; with the default DataLoader, each fetched by one indexing.

        The batches are those of skorch's default (in order, ``batch_size`` each), but
        the arrays are indexed once per batch instead of once per sample, which for a
        small network is much of an epoch's work. Any ``iterator_*`` parameter, or
        another iterator or dataset, takes skorch's own path.
        """
        prefix = "iterator_train" if training else "iterator_valid"
        plain = isinstance(dataset, Dataset) or (
            isinstance(dataset, Subset) and isinstance(dataset.dataset, Dataset)
        )
        if getattr(self, prefix) is not DataLoader or self.get_params_for(prefix) or not plain:
            return super().get_iterator(dataset, training=training)
        n = len(dataset)
        size = n if self.batch_size == -1 else self.batch_size
        # Slices, not index arrays: skorch turns an index array into a list, which
        # scikit-learn's indexing then inspects element by element.
        batches = [slice(start, min(start + size, n)) for start in range(0, n, size)]
        return DataLoader(dataset, batch_size=None, sampler=batches)

    def infer(self, x, **fit_params):
        """The module's output on a batch (the sample weights stay out of its forward)."""
        return super().infer(_inputs(x)[0], **fit_params)

    def get_loss(self, y_pred, y_true, X=None, training=False):
        """Weighted task loss plus ``lam`` times the weighted ROLL penalty of the batch."""
        x, weight = self._batch_inputs(X)
        loss = self._task_loss(y_pred, y_true, x, weight, training)
        lam, C = self._roll_weights()
        if lam == 0 or x is None:
            return loss
        return loss + lam * self._penalty(x, weight, C)[0]

    def train_step_single(self, batch, **fit_params):
        """skorch's training step, running the network forward once with the ROLL loss.

        Where the penalty's linearized forward pass computes the output (every path
        but the closed form of shallow chains), the task loss reads that output
        instead of running the network again. Networks with normalisation layers,
        whose penalty holds the batch statistics constant, and forward arguments in
        ``fit_params`` take skorch's step.
        """
        Xi, yi = unpack_data(batch)
        x, weight = self._batch_inputs(Xi)
        lam, C = self._roll_weights()
        if lam == 0 or x is None or fit_params or self._normalised():
            return super().train_step_single(batch, **fit_params)
        self._set_training(True)
        penalty, y_pred = self._penalty(x, weight, C)
        if y_pred is None:
            y_pred = self.infer(Xi)
        loss = self._task_loss(y_pred, yi, x, weight, True) + lam * penalty
        loss.backward()
        return {"loss": loss, "y_pred": y_pred}

    def _normalised(self) -> bool:
        return any(isinstance(m, nn.modules.batchnorm._NormBase) for m in self.module_.modules())

    def _batch_inputs(self, X):
        """A batch's inputs, and its sample weights as a tensor (or None)."""
        x, weight = _inputs(X)
        return x, None if weight is None else to_tensor(weight, device=self.device)

    def _task_loss(self, y_pred, y_true, x, weight, training: bool):
        """The criterion's per-example losses, averaged with the sample weights, recorded."""
        losses = super().get_loss(y_pred, y_true, X=x, training=training)
        if losses.dim() == 0:
            raise TypeError(
                f"criterion {type(self.criterion_).__name__} returned one number, but the "
                "estimator needs one loss per example (reduction='none')."
            )
        loss = _weighted_mean(losses.reshape(len(losses), -1).mean(dim=1), weight)
        self._record_batch(f"{'train' if training else 'valid'}_task_loss", loss.item())
        return loss

    def _penalty(self, x, weight, C: float):
        """The batch's ROLL penalty, and the output its forward pass computed (or None)."""
        return _penalty_and_output(
            self.module_,
            to_tensor(x, device=self.device),
            C=C,
            gamma=self.gamma,
            approx=self.approx,
            approx_method=self.approx_method,
            sample_weight=weight,
        )

    def _record_batch(self, key: str, value: float) -> None:
        # get_loss also serves callers outside the training loop, with no batch to record.
        history = self.history_
        if history and history[-1].get("batches"):
            history.record_batch(key, value)

    # ------------------------------------------------------------------ fitting

    def fit(self, X, y, sample_weight=None, **fit_params):
        """Initialize the network and train it on (X, y).

        Parameters
        ----------
        X : array-like
            Training samples: 2-D (n_samples, n_features); sequences as a 3-D
            NaN-padded array or a list of 2-D arrays, laid out as ``sequence_layout``
            says, or as a nested DataFrame; images as a 4-D array.
        y : array-like of shape (n_samples,) or (n_samples, n_outputs)
            Targets.
        sample_weight : array-like of shape (n_samples,) or None, default=None
            Weights >= 0 of the samples in the task loss and the ROLL penalty alike
            (an integer weight k counts a sample as k copies of it); only their
            ratios matter. With early stopping, the validation loss is weighted too.
        **fit_params : dict
            Passed to the module's forward and to ``train_split``.

        Returns
        -------
        self

        Examples
        --------
        Sequences in sktime's and aeon's numpy3D layout, (n_samples, n_channels,
        n_timepoints); explanations come back in it:

        >>> import numpy as np
        >>> from sklearn_roll import ROLLClassifier
        >>> X = np.random.RandomState(0).randn(20, 2, 8)
        >>> y = np.arange(20) % 2
        >>> rnn = ROLLClassifier(
        ...     "rnn", sequence_layout="nct", hidden_layer_sizes=(4,), max_epochs=2, random_state=0
        ... )
        >>> rnn.fit(X, y).n_features_in_
        2
        >>> rnn.explain(X[:3]).shape
        (3, 2, 8)
        """
        self._check_params()
        fresh = not self.warm_start or not self.initialized_
        x, y = self._fit_data(X, y, sample_weight, reset=fresh, partial=False)
        with self._torch_context():
            if fresh:
                self.initialize()
            self._train(x, y, _routing_method="fit", **fit_params)
        return self

    def partial_fit(self, X, y, classes=None, sample_weight=None, **fit_params):
        """Train for ``max_epochs`` more epochs, initializing on the first call.

        Parameters
        ----------
        X : array-like
            Training samples, as in :meth:`fit`.
        y : array-like
            Targets.
        classes : array-like or None, default=None
            All class labels, needed on the first call of a classifier if ``y`` does
            not contain every class.
        sample_weight : array-like of shape (n_samples,) or None, default=None
            Weights of the samples, as in :meth:`fit`.
        **fit_params : dict
            Passed to the module's forward and to ``train_split``.

        Returns
        -------
        self
        """
        self._check_params()
        fresh = not self.initialized_
        x, y = self._fit_data(X, y, sample_weight, reset=fresh, classes=classes, partial=True)
        with self._torch_context():
            if fresh:
                self.initialize()
            self._train(x, y, **fit_params)
        return self

    def _train(self, data, y, **fit_params) -> None:
        """skorch's training loop, then the fitted attributes read from its history."""
        if self.early_stopping:
            classes = self.classes_ if is_classifier(self) else None
            _early_stopping.check_split(self.validation_fraction, y, classes)
        super().partial_fit(data, y, **fit_params)
        summary = _early_stopping.summary(
            self.history_, dict(self.callbacks_), self._validation_score
        )
        for name, value in summary.items():
            setattr(self, name, value)

    def _fit_input(self, X, y, reset: bool) -> np.ndarray:
        """Validated training input as float32 (sizes set from it when ``reset``)."""
        x, _ = check_input(self, X, reset=reset)
        self._check_y_given(y)
        return self._float32(x, "X")

    @staticmethod
    def _training_data(x: np.ndarray, weight: np.ndarray | None):
        """What skorch trains on: the inputs, and their weights (mean 1) if any."""
        if weight is None:
            return x
        return {"X": x, "sample_weight": normalized(weight)}

    # --------------------------------------------------------------- predicting

    def _convert(self, X):
        """Validated input in the module's layout, and its restore function."""
        check_is_fitted(self)
        return check_input(self, X, reset=False)

    def _network(self) -> nn.Module:
        """The network in eval mode, on the CPU (inputs come from numpy)."""
        module = self.module_
        module.eval()
        if any(param.device.type != "cpu" for param in module.parameters()):
            module = copy.deepcopy(module).cpu()
        return module

    def _network64(self) -> nn.Module:
        """The float64 copy of the network, remade only when its parameters changed.

        Kept outside the estimator, which predict must not modify.
        """
        module = self.module_
        key = tuple((id(p), p._version) for p in module.parameters())
        # Train-mode BatchNorm updates its running statistics in place without
        # bumping their versions, so buffers are compared by value.
        buffers = [b.detach() for b in module.buffers()]
        cached = _FLOAT64_COPIES.get(module)
        if (
            cached is None
            or cached[0] != key
            or len(cached[1]) != len(buffers)
            or not all(torch.equal(a, b) for a, b in zip(cached[1], buffers))
        ):
            cached = (key, [b.clone() for b in buffers], float64_copy(module))
            _FLOAT64_COPIES[module] = cached
        return cached[2]

    def __sklearn_roll_network__(self) -> Network:
        """The network and its input conversion, for :mod:`sklearn_roll.regions`.

        Returns
        -------
        Network
        """
        sample_shape = {
            "tabular": (self.n_features_in_,),
            "image": tuple(getattr(self, "image_shape_", ())),
        }.get(self.input_kind_)
        classifier = is_classifier(self)
        return Network(
            self._network(),
            self._convert,
            self.input_kind_,
            sample_shape,
            self.classes_ if classifier else None,
            self._threads,
            output_scale=None if classifier else self.y_scale_,
            feature_names=getattr(self, "feature_names_in_", None),
        )

    def _forward(self, X, logits: bool = False) -> np.ndarray:
        """Predictions of the network in float64, after its output nonlinearity.

        With ``logits`` the raw outputs, before the nonlinearity.

        Predictions use the same float64 arithmetic as the certificates, so a
        certified radius and ``predict`` agree even next to a decision boundary, and
        batching changes results by float64 rounding at most. skorch's own datasets
        (its internal validation split) take skorch's float32 path.
        """
        if is_dataset(X):
            return super().predict_proba(X)
        x, _ = self._convert(X)
        check_parameters(self.module_)
        nonlinearity = (lambda out: out) if logits else self._get_predict_nonlinearity()
        size = len(x) if self.batch_size == -1 else self.batch_size
        with self._threads():
            out = forward(self._network64(), x, size, nonlinearity)
        if not np.isfinite(out).all():
            bad = int(np.flatnonzero(~np.isfinite(out).all(axis=1))[0])
            raise ValueError(
                f"The network's output for sample {bad} is not finite in float64 "
                "(overflow): its weights or the inputs are too large."
            )
        return out

    # ------------------------------------------------------------ persistence

    @fill_doc
    def save(self, path):
        """Save the fitted estimator to a file that loading runs no code from.

        See :func:`sklearn_roll.persistence.save`: a safetensors file with the
        tensors and a JSON description of the rest. Share models this way, not
        with pickle or joblib.

        Parameters
        ----------
        path : str or path-like
            Where to write; an existing file is replaced.

        Examples
        --------
        >>> import tempfile
        >>> from pathlib import Path
        %(fitted_iris)s
        >>> with tempfile.TemporaryDirectory() as tmp:
        ...     clf.save(Path(tmp) / "iris.safetensors")
        ...     restored = ROLLClassifier.load(Path(tmp) / "iris.safetensors")
        >>> bool((restored.predict_proba(X) == clf.predict_proba(X)).all())
        True
        """
        from . import persistence  # imported here: persistence imports this module

        persistence.save(self, path)

    @classmethod
    def load(cls, path, *, allowed_modules=()):
        """Rebuild an estimator of this class from a file written by :meth:`save`.

        See :func:`sklearn_roll.persistence.load`: nothing in the file is executed,
        and a class it names (your module class, a custom optimizer) is used only
        if torch provides it (optimizers, losses) or ``allowed_modules`` names it.

        Parameters
        ----------
        path : str or path-like
            A file written by :meth:`save`.
        allowed_modules : class, str or iterable of them, default=()
            Classes the file may name beyond torch's optimizers and losses, as the
            class or its import path ``"package.module:ClassName"``.

        Returns
        -------
        estimator : instance of this class
            Fitted, with its optimizer state and history.

        Examples
        --------
        >>> import tempfile
        >>> from pathlib import Path
        >>> import numpy as np
        >>> from sklearn.datasets import load_diabetes
        >>> from sklearn.preprocessing import scale
        >>> from sklearn_roll import ROLLRegressor
        >>> X, y = load_diabetes(return_X_y=True)
        >>> X, y = scale(X), scale(y)
        >>> reg = ROLLRegressor(hidden_layer_sizes=(8,), max_epochs=2, random_state=0)
        >>> reg = reg.fit(X, y)
        >>> with tempfile.TemporaryDirectory() as tmp:
        ...     reg.save(Path(tmp) / "diabetes.safetensors")
        ...     restored = ROLLRegressor.load(Path(tmp) / "diabetes.safetensors")
        >>> np.array_equal(restored.explain(X), reg.explain(X))
        True
        """
        from . import persistence

        return persistence.load(path, allowed_modules=allowed_modules, estimator_class=cls)

    # ------------------------------------------------------------ certificates

    @fill_doc
    def certified_margin(
        self, X, p=2, *, features=None, precision="float32", batch_size=None, progress=False
    ):
        """Certified l_p margin of each sample's linear region.

        See :func:`sklearn_roll.regions.certified_margin`.

        Parameters
        ----------
        %(X)s
        %(p)s
        %(features)s
        %(precision)s
        %(batch_size)s
        %(progress)s

        Returns
        -------
        ndarray of shape (n_samples,)
        """
        return regions.certified_margin(
            self,
            X,
            p,
            features=features,
            precision=precision,
            batch_size=batch_size,
            progress=progress,
        )

    @fill_doc
    def explain(
        self,
        X,
        target=None,
        *,
        features=None,
        precision="float32",
        batch_size=None,
        progress=False,
    ):
        """Exact input gradient of the target's logit (or of the prediction).

        See :func:`sklearn_roll.regions.explain`.

        Parameters
        ----------
        %(X)s
        %(target)s
        %(features)s
        precision : {"float32", "float64"}, default="float32"
            Arithmetic of the gradient.
        %(batch_size)s
        %(progress)s

        Returns
        -------
        array shaped like X (a list for list input, a nested DataFrame for one)
        """
        return regions.explain(
            self,
            X,
            target,
            features=features,
            precision=precision,
            batch_size=batch_size,
            progress=progress,
        )
