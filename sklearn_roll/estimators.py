"""ROLLClassifier and ROLLRegressor: skorch networks trained with the ROLL loss.

The estimators are thin: skorch runs the training loop, :func:`~sklearn_roll.loss.roll_penalty`
is added to the task loss in ``get_loss``, scikit-learn's estimator contract comes from
:mod:`._sklearn_compat`, input checks from :mod:`._validation`, and the certificates
from :mod:`.regions`, which reach the network through ``__sklearn_roll_network__``.
"""

from __future__ import annotations

import copy
import inspect
import weakref
from numbers import Integral, Real

import numpy as np
import torch
from sklearn.base import is_classifier
from sklearn.utils import column_or_1d
from sklearn.utils._param_validation import Interval, Options, StrOptions
from sklearn.utils.metaestimators import available_if
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import check_array, check_consistent_length, check_is_fitted
from skorch import NeuralNetClassifier, NeuralNetRegressor
from skorch.callbacks import EpochScoring, ProgressBar
from skorch.dataset import unpack_data
from skorch.utils import is_dataset, to_numpy, to_tensor
from torch import nn

from . import regions
from ._adapter import Network
from ._docs import fill_doc
from ._evaluation import check_parameters, forward
from ._sklearn_compat import SkorchSklearnMixin
from ._validation import check_input
from .linearize import check_supported, float64_copy
from .loss import APPROX_METHODS, roll_penalty
from .nn import MLP, ConvNet1d, ElmanRNN, ResNet
from .nn._activation import ACTIVATIONS

__all__ = ["ROLLClassifier", "ROLLRegressor"]

_BUILTIN_MODULES = {"mlp": MLP, "rnn": ElmanRNN, "cnn1d": ConvNet1d, "cnn": ResNet}

# Float64 copies of trained networks for predict, by network, with the parameter
# versions and the buffer values (BatchNorm statistics) they were copied at.
_FLOAT64_COPIES: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


class _ROLLMixin(SkorchSklearnMixin):
    """The ROLL part shared by the two estimators; comes before skorch's class in the MRO."""

    _parameter_constraints: dict = {
        "module": [StrOptions(set(_BUILTIN_MODULES)), type, nn.Module],
        "hidden_layer_sizes": ["array-like", None],
        "activation": [StrOptions(set(ACTIVATIONS))],
        "negative_slope": [Interval(Real, 0, None, closed="left")],
        "lam": [Interval(Real, 0, None, closed="left")],
        "C": [Interval(Real, 0, None, closed="left")],
        "gamma": [Interval(Real, 0, 100, closed="right")],
        "approx": [Interval(Integral, 1, None, closed="left"), None],
        "approx_method": [StrOptions(set(APPROX_METHODS))],
        "input_shape": ["array-like", None],
        "random_state": ["random_state"],
        "n_threads": [Interval(Integral, 1, None, closed="left"), None],
        "criterion": [type, nn.Module, None],
        "optimizer": [callable],
        "lr": [Interval(Real, 0, None, closed="neither")],
        "max_epochs": [Interval(Integral, 0, None, closed="left")],
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
        "n_features_in_",
        "feature_names_in_",
        "input_kind_",
        "image_shape_",
    )

    def __init__(
        self,
        module="mlp",
        *,
        hidden_layer_sizes=None,
        activation="relu",
        negative_slope=0.01,
        lam=1.0,
        C=1.0,
        gamma=100.0,
        approx=None,
        approx_method="projections",
        input_shape=None,
        random_state=None,
        n_threads=None,
        criterion=None,
        optimizer=torch.optim.Adam,
        lr=1e-3,
        max_epochs=50,
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
        self.input_shape = input_shape
        self.random_state = random_state
        self.n_threads = n_threads
        self._drop_skorch_init_state()

    def _check_params(self) -> None:
        self._validate_sklearn_params()
        if self.approx is not None and self.gamma != 100:
            raise ValueError(
                f"approx={self.approx} requires gamma=100 (got gamma={self.gamma}): the "
                "approximation estimates the mean over all units."
            )

    # ------------------------------------------------------------ skorch hooks

    def _data_sizes(self) -> dict:
        """Sizes the data fixed at fit, under the names modules take them by."""
        sizes = {"n_features": self.n_features_in_, "n_outputs": self.n_outputs_}
        if self.input_kind_ == "image":
            sizes["input_shape"] = self.image_shape_
        return sizes

    def initialize_module(self):
        """Build the module, inferring its input and output sizes from the data."""
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
                params["hidden_layer_sizes"] = tuple(self.hidden_layer_sizes)
            sizes = {
                k: v
                for k, v in self._data_sizes().items()
                if k in inspect.signature(builder).parameters
            }
            module = builder(**{**sizes, **params, **kwargs})
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
        """Refuse modules the certificates cannot model before any training."""
        super().on_train_begin(net, X=X, y=y, **kwargs)
        sample = to_tensor(X[:4], device=self.device)
        was_training = self.module_.training
        try:
            self.module_.eval()
            check_supported(self.module_, sample)
            if self.lam > 0:
                # The ROLL loss linearizes the module in training mode.
                self.module_.train()
                check_supported(self.module_, sample)
        finally:
            self.module_.train(was_training)

    @property
    def _default_callbacks(self):
        callbacks = list(super()._default_callbacks)
        # get_params reads this property, so an invalid verbose must not raise here.
        if isinstance(self.verbose, Real) and self.verbose >= 2:
            callbacks.append(("progress_bar", ProgressBar()))
        return callbacks

    def get_loss(self, y_pred, y_true, X=None, training=False):
        """Task loss plus ``lam`` times the ROLL penalty of the batch."""
        loss = super().get_loss(y_pred, y_true, X=X, training=training)
        if self.lam == 0 or X is None:
            return loss
        penalty = roll_penalty(
            self.module_,
            to_tensor(X, device=self.device),
            C=self.C,
            gamma=self.gamma,
            approx=self.approx,
            approx_method=self.approx_method,
        )
        return loss + self.lam * penalty

    # ------------------------------------------------------------------ fitting

    def fit(self, X, y, **fit_params):
        """Initialize the network and train it on (X, y).

        Parameters
        ----------
        X : array-like
            Training samples: 2-D (n_samples, n_features); sequences as a 3-D
            NaN-padded array or a list of 2-D arrays; images as a 4-D array.
        y : array-like of shape (n_samples,) or (n_samples, n_outputs)
            Targets.
        **fit_params : dict
            Passed to the module's forward and to ``train_split``.

        Returns
        -------
        self
        """
        self._check_params()
        fresh = not self.warm_start or not self.initialized_
        x, y = self._fit_data(X, y, reset=fresh)
        with self._torch_context():
            if fresh:
                self.initialize()
            super().partial_fit(x, y, _routing_method="fit", **fit_params)
        return self

    def partial_fit(self, X, y, classes=None, **fit_params):
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
        **fit_params : dict
            Passed to the module's forward and to ``train_split``.

        Returns
        -------
        self
        """
        self._check_params()
        fresh = not self.initialized_
        x, y = self._fit_data(X, y, reset=fresh, classes=classes)
        with self._torch_context():
            if fresh:
                self.initialize()
            super().partial_fit(x, y, **fit_params)
        return self

    def _fit_input(self, X, y, reset: bool) -> np.ndarray:
        """Validated training input as float32 (sizes set from it when ``reset``)."""
        x, _ = check_input(self, X, reset=reset)
        self._check_y_given(y)
        return self._float32(x, "X")

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
        classes = self.classes_ if is_classifier(self) else None
        return Network(
            self._network(), self._convert, self.input_kind_, sample_shape, classes, self._threads
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
    def certified_margin(self, X, p=2, *, precision="float32", batch_size=None, progress=False):
        """Certified l_p margin of each sample's linear region.

        See :func:`sklearn_roll.regions.certified_margin`.

        Parameters
        ----------
        %(X)s
        %(p)s
        %(precision)s
        %(batch_size)s
        %(progress)s

        Returns
        -------
        ndarray of shape (n_samples,)
        """
        return regions.certified_margin(
            self, X, p, precision=precision, batch_size=batch_size, progress=progress
        )

    @fill_doc
    def explain(self, X, target=None, *, precision="float32", batch_size=None, progress=False):
        """Exact input gradient of the target's logit (or of the output).

        See :func:`sklearn_roll.regions.explain`.

        Parameters
        ----------
        %(X)s
        %(target)s
        precision : {"float32", "float64"}, default="float32"
            Arithmetic of the gradient.
        %(batch_size)s
        %(progress)s

        Returns
        -------
        array shaped like X
        """
        return regions.explain(
            self, X, target, precision=precision, batch_size=batch_size, progress=progress
        )


_COMMON_DOC = """
    Parameters
    ----------
    module : {"mlp", "rnn", "cnn1d", "cnn"}, nn.Module class or instance, default="mlp"
        The network: :class:`~sklearn_roll.nn.MLP` for 2-D input,
        :class:`~sklearn_roll.nn.ElmanRNN` or the 1-D convolutional
        :class:`~sklearn_roll.nn.ConvNet1d` (FCN; ``module__residual=True`` for the
        ResNet) for sequences (a 3-D array with trailing NaN time steps as padding,
        or a list of 2-D arrays), :class:`~sklearn_roll.nn.ResNet` for images (n,
        channels, height, width), or your own module. Built-in modules infer their
        sizes from the data; a user class receives ``n_features``, ``n_outputs`` and, for images,
        ``input_shape`` if its ``__init__`` accepts them, plus every ``module__*``
        parameter.
    hidden_layer_sizes : tuple of int or None, default=None
        Layer widths of the built-in module (RNN: stacked hidden sizes; CNN: channels
        per stage; 1-D CNN: filters per block); None takes the module's default: (100, 100) for "mlp",
        (64,) for "rnn", (32, 64, 32) for "cnn1d", (16, 32) for "cnn".
    activation : {"relu", "leaky_relu"}, default="relu"
        Hidden activation of the built-in module.
    negative_slope : float, default=0.01
        Slope below zero of the LeakyReLU.
    lam : float >= 0, default=1.0
        Weight of the ROLL penalty (the paper's lambda); 0 trains the plain network.
    C : float >= 0, default=1.0
        Weight of the hinge ``max(0, 1 - |z_u|)`` within the per-unit loss.
    gamma : float in (0, 100], default=100
        Percent of units, by largest per-unit loss, averaged per example; 100 is the
        mean over all units.
    approx : int or None, default=None
        None: exact unit gradients in the loss. An int k: estimate the gradient term
        from k random probes (requires gamma=100). Certificates stay exact.
    approx_method : {"axes", "projections"}, default="projections"
        Probes: sampled input axes, or Rademacher projections.
    input_shape : tuple of int or None, default=None
        Shape of one image when images are passed flattened.
    random_state : int, RandomState instance or None, default=None
        Seeds weight initialisation, batch shuffling and probes (inside
        ``torch.random.fork_rng``, so the global torch RNG is left as it was). With
        an int, two fits give bit-identical networks, predictions and certificates,
        in one process or in separate processes, on CPU with the same machine and
        torch build. No torch setting is needed for that on CPU; keep
        ``n_threads`` fixed if the core count may differ, since large matrix
        products may split their sums differently with other thread counts. On
        GPU, call ``torch.use_deterministic_algorithms(True)`` (and set
        ``CUBLAS_WORKSPACE_CONFIG=:4096:8``) as well.
    n_threads : int or None, default=None
        torch threads during fit, predict, the certificates and the scorers of
        :mod:`sklearn_roll.metrics`; None leaves torch's setting alone. Set it to 1
        when folds run in parallel (joblib, dask or Ray workers).
    criterion : torch loss class or None, default=None
        The task loss, given logits; None takes ``CrossEntropyLoss`` for the
        classifier and ``MSELoss`` for the regressor. The ROLL penalty is added to it.
    optimizer : torch optimizer class, default=torch.optim.Adam
        The optimizer; its parameters go as ``optimizer__*``.
    lr : float, default=1e-3
        Learning rate.
    max_epochs : int, default=50
        Epochs per call of ``fit`` (and of ``partial_fit``).
    batch_size : int, default=64
        Samples per training batch (-1: all of them); also the batch size of
        ``predict``.
    train_split : callable or None, default=None
        skorch's internal validation split; None trains on all the data.
    verbose : int, default=0
        1 prints skorch's epoch table; 2 or more also shows a progress bar over the
        batches of each epoch (skorch's ``ProgressBar`` callback, added to the default
        callbacks).
    **kwargs
        Everything else skorch accepts: ``module__*``, ``optimizer__*``,
        ``callbacks``, ``device``, ``iterator_train__*``, ``warm_start``, ...
"""

_FITTED_DOC = """
    n_features_in_ : int
        Features (tabular), channels (sequences) or values per image seen in fit.
    feature_names_in_ : ndarray of str
        Column names, when X was a DataFrame with string column names.
    input_kind_ : {"tabular", "sequence", "image"}
        The kind of input fit saw, which later input must match.
    image_shape_ : tuple of int
        (channels, height, width) of one image (image input only).
    module_ : nn.Module
        The trained network; it outputs logits (classifier) or predictions.
    history_ : skorch.History
        Per-epoch training record.
"""

_NOTES_DOC = """
    Notes
    -----
    The defaults were chosen by ``benchmarks/defaults.py``, which trains the default
    network on scikit-learn's tabular sets over a grid of ``lam`` and ``C`` and keeps
    the largest median-margin gain among the settings whose mean accuracy stays
    within a point of plain training (``benchmarks/results/defaults.md``).

    Saving and loading: ``est.save(path)`` and ``ROLLClassifier.load(path)`` /
    ``ROLLRegressor.load(path)`` (see :mod:`sklearn_roll.persistence`) write and read
    a safetensors file: the tensors, and a JSON description of the parameters,
    fitted attributes, history and optimizer state. Loading runs no code from the
    file, and a user module class is used only if passed in ``allowed_modules``; the
    loaded estimator predicts, certifies and explains bit-identically, and
    ``partial_fit`` continues training where the saved one stopped. This is the
    format to share models in. ``pickle`` and ``joblib`` also keep the whole
    estimator, but unpickling runs whatever code the file names: use them only for
    in-process copies and your own files (``clone``, joblib workers, caches), never
    for files from elsewhere. A net pickled with ``device="cuda"`` unpickles on a
    machine without a GPU with ``device="cpu"`` (skorch maps the tensors and warns),
    and ``load`` does the same.
"""


def _encoded_accuracy(net, X, y) -> float:
    """Accuracy of the network's argmax against encoded targets (skorch scoring)."""
    if y is None:
        _, y = unpack_data(next(iter(net.get_iterator(X))))
    return float(np.mean(to_numpy(net.forward(X)).argmax(axis=1) == to_numpy(y)))


class ROLLClassifier(_ROLLMixin, NeuralNetClassifier):
    __doc__ = (
        """Classifier whose input gradients are provably stable around each sample.

    A skorch ``NeuralNetClassifier`` trained with cross-entropy plus the ROLL
    penalty, which enlarges the linear regions of a piecewise-linear network around
    the training points, with per-sample certificates of their size.
"""
        + _COMMON_DOC
        + """
    Attributes
    ----------
    classes_ : ndarray of shape (n_classes,)
        Class labels; logit i is class ``classes_[i]``.
    n_outputs_ : int
        Number of classes.
"""
        + _FITTED_DOC
        + _NOTES_DOC
        + """
    Examples
    --------
    >>> from sklearn.datasets import load_iris
    >>> from sklearn_roll import ROLLClassifier
    >>> X, y = load_iris(return_X_y=True)
    >>> clf = ROLLClassifier(hidden_layer_sizes=(16,), max_epochs=5, random_state=0)
    >>> clf.fit(X, y).predict(X[:2]).shape
    (2,)
    >>> clf.certified_margin(X[:2]).shape
    (2,)
    """
    )

    _default_criterion = torch.nn.CrossEntropyLoss

    def _fit_data(self, X, y, reset, classes=None):
        x = self._fit_input(X, y, reset)
        y = column_or_1d(y, warn=True)
        check_consistent_length(x, y)
        check_classification_targets(y)
        if reset:
            if classes is None:
                classes = self.classes if self.classes is not None else np.unique(y)
            classes = np.asarray(classes)
            if len(classes) < 2:
                raise ValueError(
                    f"Classifier can't train when only one class is present: y has the single class {classes[0]!r}."
                )
            self.classes_inferred_ = np.unique(classes)
            self.n_outputs_ = len(self.classes_inferred_)
        known = self.classes_
        unknown = np.setdiff1d(np.unique(y), known)
        if len(unknown):
            raise ValueError(
                f"y contains labels not seen in the first fit: {unknown.tolist()[:5]}."
            )
        return x, np.searchsorted(known, y).astype(np.int64)

    @fill_doc
    def predict_proba(self, X):
        """Class probabilities (softmax of the logits).

        Parameters
        ----------
        %(X)s

        Returns
        -------
        ndarray of shape (n_samples, n_classes)
        """
        return self._forward(X)

    @fill_doc
    def predict(self, X):
        """Predicted class labels.

        Parameters
        ----------
        %(X)s

        Returns
        -------
        ndarray of shape (n_samples,)
        """
        # The argmax of the logits, as in the certificates: probabilities can round
        # distinct logits to a tie.
        logits = self._forward(X, logits=True)
        return self.classes_[logits.argmax(axis=1)]

    @property
    def _default_callbacks(self):
        # skorch's valid_acc compares predict() with the encoded targets of its
        # validation split; score the cached logits against them directly.
        return [
            (name, EpochScoring(_encoded_accuracy, name="valid_acc", lower_is_better=False))
            if name == "valid_acc"
            else (name, cb)
            for name, cb in super()._default_callbacks
        ]


class ROLLRegressor(_ROLLMixin, NeuralNetRegressor):
    __doc__ = (
        """Regressor whose input gradients are provably stable around each sample.

    A skorch ``NeuralNetRegressor`` trained with mean squared error plus the ROLL
    penalty. Targets are not scaled: standardise them (e.g. with
    ``TransformedTargetRegressor``) when they are large.
"""
        + _COMMON_DOC
        + """
    Attributes
    ----------
    n_outputs_ : int
        Number of regression targets.
    y_ndim_ : int
        Dimensions of y in fit (1 or 2); ``predict`` returns the same.
"""
        + _FITTED_DOC
        + _NOTES_DOC
        + """
    Examples
    --------
    >>> from sklearn.datasets import load_diabetes
    >>> from sklearn.preprocessing import scale
    >>> from sklearn_roll import ROLLRegressor
    >>> X, y = load_diabetes(return_X_y=True)
    >>> reg = ROLLRegressor(hidden_layer_sizes=(16,), max_epochs=5, random_state=0)
    >>> reg.fit(scale(X), scale(y)).predict(scale(X)[:2]).shape
    (2,)
    """
    )

    _default_criterion = torch.nn.MSELoss

    def _fit_data(self, X, y, reset, classes=None):
        x = self._fit_input(X, y, reset)
        y = check_array(y, ensure_2d=False, dtype=np.float64, input_name="y")
        check_consistent_length(x, y)
        if y.ndim > 2:
            raise ValueError(f"y must be 1-D or 2-D, got {y.ndim}-D.")
        y2 = y.reshape(len(y), -1)
        if reset:
            self.n_outputs_ = y2.shape[1]
            self.y_ndim_ = y.ndim
        elif y2.shape[1] != self.n_outputs_:
            raise ValueError(
                f"y has {y2.shape[1]} outputs, but the model was fitted with {self.n_outputs_}."
            )
        return x, self._float32(y2, "y")

    @fill_doc
    def predict(self, X):
        """Predicted targets.

        Parameters
        ----------
        %(X)s

        Returns
        -------
        ndarray of shape (n_samples,) or (n_samples, n_outputs)
        """
        out = self._forward(X)
        return out.ravel() if self.y_ndim_ == 1 else out

    @available_if(lambda self: False)
    def predict_proba(self, X):
        """Not available: a regressor has no class probabilities."""

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.target_tags.multi_output = True
        tags.target_tags.single_output = True
        return tags
