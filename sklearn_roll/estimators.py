"""ROLLClassifier and ROLLRegressor: skorch networks trained with the ROLL loss.

The estimators are thin: skorch runs the training loop, :func:`~sklearn_roll.loss.roll_penalty`
is added to the task loss (:mod:`._base`), scikit-learn's estimator contract comes from
:mod:`._sklearn_compat`, input checks from :mod:`._validation`, and the certificates
from :mod:`.regions`, which reach the network through ``__sklearn_roll_network__``.
"""

from __future__ import annotations

import numpy as np
import torch
from sklearn.metrics import r2_score
from sklearn.utils import column_or_1d
from sklearn.utils._param_validation import StrOptions
from sklearn.utils.metaestimators import available_if
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import check_array, check_consistent_length
from skorch import NeuralNetClassifier, NeuralNetRegressor
from skorch.callbacks import EpochScoring
from skorch.dataset import unpack_data
from skorch.utils import to_numpy

from ._base import _ROLLMixin
from ._docs import fill_doc
from ._estimator_docs import _estimator_doc
from ._weights import check_sample_weight, per_sample_class_weight, standardization

__all__ = ["ROLLClassifier", "ROLLRegressor"]


def _encoded_accuracy(net, X, y) -> float:
    """Accuracy of the network's argmax against encoded targets (skorch scoring)."""
    if y is None:
        _, y = unpack_data(next(iter(net.get_iterator(X))))
    return float(np.mean(to_numpy(net.forward(X)).argmax(axis=1) == to_numpy(y)))


def _standardized_r2(net, X, y) -> float:
    """R^2 of the network's outputs against the standardised targets (skorch scoring).

    R^2 does not change under the affine map back to raw target units.
    """
    if y is None:
        _, y = unpack_data(next(iter(net.get_iterator(X))))
    y = to_numpy(y).reshape(len(y), -1)
    return float(r2_score(y, to_numpy(net.forward(X)).reshape(len(y), -1)))


class ROLLClassifier(_ROLLMixin, NeuralNetClassifier):
    __doc__ = _estimator_doc(
        """Classifier whose input gradients are provably stable around each sample.

    A skorch ``NeuralNetClassifier`` trained with cross-entropy plus the ROLL
    penalty, which enlarges the linear regions of a piecewise-linear network around
    the training points, with per-sample certificates of their size.
""",
        "classifier",
        """
    Attributes
    ----------
    classes_ : ndarray of shape (n_classes,)
        Class labels; logit i is class ``classes_[i]``.
    n_outputs_ : int
        Number of classes.
""",
        """
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

    Weighted classes, and early stopping on a tenth of the data held out:

    >>> clf = ROLLClassifier(
    ...     hidden_layer_sizes=(16,), class_weight="balanced", early_stopping=True,
    ...     n_iter_no_change=3, max_epochs=30, random_state=0,
    ... ).fit(X, y)
    >>> 1 <= clf.best_epoch_ <= clf.n_iter_ <= 30
    True
    """,
        task_parameters="""    class_weight : dict, "balanced" or None, default=None
        Weights of the classes, multiplying the sample weights: a dict from class
        label to weight (classes it omits weigh 1), or "balanced", which weighs each
        class inversely to its (weighted) frequency in y, ``n_samples / (n_classes *
        count)``. Not available with ``partial_fit``, which sees part of the data.""",
        stratified="stratified by class",
        score="accuracy",
        criterion_input="logits",
        criterion="CrossEntropyLoss",
        outputs="logits",
    )

    _parameter_constraints: dict = {
        **_ROLLMixin._parameter_constraints,
        "class_weight": [StrOptions({"balanced"}), dict, None],
    }

    _default_criterion = torch.nn.CrossEntropyLoss
    _validation_score = "valid_acc"

    def __init__(self, module="mlp", *, class_weight=None, **kwargs):
        super().__init__(module, **kwargs)
        self.class_weight = class_weight

    def _fit_data(self, X, y, sample_weight, reset, classes=None, partial=False):
        x = self._fit_input(X, y, reset)
        y = column_or_1d(y, warn=True)
        check_consistent_length(x, y)
        check_classification_targets(y)
        weight = check_sample_weight(sample_weight, len(x))
        if partial and isinstance(self.class_weight, str):
            raise ValueError(
                "class_weight='balanced' is not available with partial_fit, which sees one "
                "part of the data at a time: compute the weights once from all labels, e.g. "
                "sklearn.utils.class_weight.compute_class_weight('balanced', classes=classes, "
                "y=y), and pass them as a dict."
            )
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
                f"y contains labels not seen in the first fit: {unknown.tolist()[:5]}; the "
                f"classes were fixed then as {known.tolist()[:20]}. Pass every label to the "
                "first partial_fit as classes=[...] (or set the estimator's classes "
                "parameter)."
            )
        encoded = np.searchsorted(known, y).astype(np.int64)
        weight = per_sample_class_weight(self.class_weight, known, encoded, weight)
        return self._training_data(x, weight), encoded

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
    __doc__ = _estimator_doc(
        """Regressor whose input gradients are provably stable around each sample.

    A skorch ``NeuralNetRegressor`` trained with mean squared error plus the ROLL
    penalty. By default it standardises the target internally, so that the balance
    between the task loss and the penalty does not depend on the target's units;
    predictions, explanations and scores are in raw target units.
""",
        "regressor",
        """
    Attributes
    ----------
    n_outputs_ : int
        Number of regression targets.
    y_ndim_ : int
        Dimensions of y in fit (1 or 2); ``predict`` returns the same.
    y_mean_, y_scale_ : ndarray of shape (n_outputs,)
        The (weighted) mean and standard deviation of each target in the first fit,
        by which the network's outputs are mapped to raw units: ``predict`` is
        ``output * y_scale_ + y_mean_`` (0 and 1 with ``standardize_target=False``).
""",
        """
    Examples
    --------
    >>> from sklearn.datasets import load_diabetes
    >>> from sklearn.preprocessing import scale
    >>> from sklearn_roll import ROLLRegressor
    >>> X, y = load_diabetes(return_X_y=True)
    >>> reg = ROLLRegressor(hidden_layer_sizes=(16,), max_epochs=5, random_state=0)
    >>> reg.fit(scale(X), y).predict(scale(X)[:2]).shape
    (2,)
    >>> bool(abs(reg.y_mean_[0] - y.mean()) < 1e-9)
    True
    """,
        task_parameters="""    standardize_target : bool, default=True
        Train on the target minus its mean, divided by its standard deviation (both
        weighted by the sample weights, per output, set by the first fit), and map
        the outputs back. False trains on the raw target.""",
        stratified="not stratified",
        score="R^2",
        criterion_input="the network's outputs and the (standardised) targets",
        criterion="MSELoss",
        outputs="standardised predictions",
    )

    _parameter_constraints: dict = {
        **_ROLLMixin._parameter_constraints,
        "standardize_target": ["boolean"],
    }

    _default_criterion = torch.nn.MSELoss
    _validation_score = "valid_r2"

    def __init__(self, module="mlp", *, standardize_target=True, **kwargs):
        super().__init__(module, **kwargs)
        self.standardize_target = standardize_target

    def _fit_data(self, X, y, sample_weight, reset, classes=None, partial=False):
        x = self._fit_input(X, y, reset)
        y = check_array(y, ensure_2d=False, dtype=np.float64, input_name="y")
        check_consistent_length(x, y)
        if y.ndim > 2:
            raise ValueError(f"y must be 1-D or 2-D, got {y.ndim}-D.")
        y2 = y.reshape(len(y), -1)
        weight = check_sample_weight(sample_weight, len(x))
        if reset:
            self.n_outputs_ = y2.shape[1]
            self.y_ndim_ = y.ndim
            if self.standardize_target:
                self.y_mean_, self.y_scale_ = standardization(y2, weight)
            else:
                self.y_mean_, self.y_scale_ = np.zeros(y2.shape[1]), np.ones(y2.shape[1])
        elif y2.shape[1] != self.n_outputs_:
            raise ValueError(
                f"y has {y2.shape[1]} outputs, but the model was fitted with {self.n_outputs_}."
            )
        target = self._float32((y2 - self.y_mean_) / self.y_scale_, "y")
        return self._training_data(x, weight), target

    @fill_doc
    def predict(self, X):
        """Predicted targets, in raw units.

        Parameters
        ----------
        %(X)s

        Returns
        -------
        ndarray of shape (n_samples,) or (n_samples, n_outputs)
        """
        out = self._forward(X) * self.y_scale_ + self.y_mean_
        return out.ravel() if self.y_ndim_ == 1 else out

    @available_if(lambda self: False)
    def predict_proba(self, X):
        """Not available: a regressor has no class probabilities."""

    @property
    def _default_callbacks(self):
        return [
            *super()._default_callbacks,
            ("valid_r2", EpochScoring(_standardized_r2, name="valid_r2", lower_is_better=False)),
        ]

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.target_tags.multi_output = True
        tags.target_tags.single_output = True
        return tags
