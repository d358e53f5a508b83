"""Early stopping as scikit-learn's MLP has it: a held-out split, patience, the best epoch."""

import copy

import numpy as np
import pytest
import torch
from sklearn.utils._param_validation import InvalidParameterError
from skorch.callbacks import Callback, EarlyStopping
from skorch.dataset import ValidSplit

from sklearn_roll import ROLLClassifier, ROLLRegressor

pytestmark = pytest.mark.usefixtures("one_thread")

# A wide network at a high learning rate on few samples: the validation loss rises
# after a few epochs.
OVERFIT = dict(
    hidden_layer_sizes=(64, 64),
    lr=3e-2,
    batch_size=16,
    max_epochs=80,
    random_state=0,
    n_threads=1,
    early_stopping=True,
    validation_fraction=0.3,
    n_iter_no_change=5,
    tol=1e-4,
)


class Snapshots(Callback):
    """The module's weights after every epoch."""

    def initialize(self):
        self.states = []
        return self

    def on_epoch_end(self, net, **kwargs):
        self.states.append(copy.deepcopy(net.module_.state_dict()))


@pytest.fixture(scope="module")
def noisy(wine):
    X, y = wine
    rng = np.random.RandomState(0)
    flipped = np.where(rng.rand(len(y)) < 0.3, rng.randint(0, 3, len(y)), y)
    return X[::2], flipped[::2]


@pytest.fixture(scope="module")
def stopped(noisy):
    X, y = noisy
    snapshots = Snapshots()
    clf = ROLLClassifier(callbacks=[("snapshots", snapshots)], **OVERFIT).fit(X, y)
    return clf, snapshots


def test_early_stopping_restores_the_best_epoch(stopped):
    clf, snapshots = stopped
    history = clf.history
    assert clf.n_iter_ == len(history) < OVERFIT["max_epochs"]
    # It stopped n_iter_no_change epochs after the last improvement, whose weights it kept.
    assert clf.n_iter_ == clf.best_epoch_ + OVERFIT["n_iter_no_change"]
    valid = np.array(history[:, "valid_loss"])
    assert valid[clf.best_epoch_ - 1] == valid[: clf.best_epoch_].min()
    assert (valid[clf.best_epoch_ :] > valid[clf.best_epoch_ - 1] - OVERFIT["tol"]).all()
    best = snapshots.states[clf.best_epoch_ - 1]
    for key, value in clf.module_.state_dict().items():
        torch.testing.assert_close(value, best[key], rtol=0, atol=0)
    assert not all(
        torch.equal(value, snapshots.states[-1][key])
        for key, value in clf.module_.state_dict().items()
    )


def test_the_history_keeps_the_task_loss_and_the_scores(stopped):
    clf, _ = stopped
    history = clf.history
    # With lam > 0 the validation loss is the objective: task loss plus the penalty.
    assert (np.array(history[:, "valid_loss"]) > np.array(history[:, "valid_task_loss"])).all()
    assert (np.array(history[:, "train_loss"]) > np.array(history[:, "train_task_loss"])).all()
    assert clf.loss_curve_ == list(history[:, "train_loss"])
    assert clf.validation_scores_ == list(history[:, "valid_acc"])
    assert all(0 <= score <= 1 for score in clf.validation_scores_)


def test_the_split_is_stratified_and_seeded(noisy):
    X, y = noisy
    clf = ROLLClassifier(**{**OVERFIT, "max_epochs": 1}).fit(X, y)
    train, valid = clf.get_split_datasets(X.astype(np.float32), y)
    counts = np.bincount(y[valid.indices], minlength=3)
    expected = np.bincount(y, minlength=3) * OVERFIT["validation_fraction"]
    assert np.abs(counts - expected).max() <= 1
    again, _ = (
        ROLLClassifier(**{**OVERFIT, "max_epochs": 1})
        .fit(X, y)
        .get_split_datasets(X.astype(np.float32), y)
    )
    np.testing.assert_array_equal(train.indices, again.indices)


def test_two_early_stopped_fits_are_identical(noisy):
    X, y = noisy
    params = {**OVERFIT, "max_epochs": 12}
    a = ROLLClassifier(**params).fit(X, y)
    b = ROLLClassifier(**params).fit(X, y)
    assert a.best_epoch_ == b.best_epoch_
    np.testing.assert_array_equal(a.predict_proba(X), b.predict_proba(X))


def test_the_regressor_stops_on_its_validation_loss(wine):
    X, _ = wine
    target = X[:, 0] * 100.0 + np.random.RandomState(0).randn(len(X)) * 50.0
    reg = ROLLRegressor(**{**OVERFIT, "max_epochs": 30}).fit(X[:, 1:], target)
    assert 1 <= reg.best_epoch_ <= reg.n_iter_ <= 30
    assert reg.validation_scores_ == list(reg.history[:, "valid_r2"])
    assert all(score <= 1 for score in reg.validation_scores_)


def test_without_early_stopping_the_last_epoch_is_kept(noisy):
    X, y = noisy
    clf = ROLLClassifier(hidden_layer_sizes=(8,), max_epochs=3, random_state=0).fit(X, y)
    assert clf.n_iter_ == clf.best_epoch_ == 3 and clf.validation_scores_ is None
    clf.partial_fit(X, y)
    assert clf.n_iter_ == clf.best_epoch_ == 6 == len(clf.loss_curve_)
    split = ROLLClassifier(hidden_layer_sizes=(8,), max_epochs=2, train_split=ValidSplit(0.25))
    assert len(split.fit(X, y).validation_scores_) == 2


def test_a_float_train_split_says_what_to_pass(noisy):
    X, y = noisy
    with pytest.raises(InvalidParameterError, match=r"ValidSplit\(0.2\).*validation_fraction=0.2"):
        ROLLClassifier(train_split=0.2, max_epochs=1).fit(X, y)


def test_a_monitor_without_a_split_is_named(noisy):
    X, y = noisy
    clf = ROLLClassifier(callbacks=[EarlyStopping()], max_epochs=1)
    with pytest.raises(ValueError, match="monitors 'valid_loss', which needs a validation split"):
        clf.fit(X, y)
    # With a split it runs.
    clf.set_params(train_split=ValidSplit(0.25)).fit(X, y)


def test_early_stopping_owns_the_split(noisy):
    X, y = noisy
    clf = ROLLClassifier(early_stopping=True, train_split=ValidSplit(0.2), max_epochs=1)
    with pytest.raises(ValueError, match="leave train_split=None"):
        clf.fit(X, y)


@pytest.mark.parametrize(
    "y, fraction, message",
    [
        (np.array([0, 1, 2] * 4 + [0, 1]), 0.1, r"validation split of 2, fewer than the 3 classes"),
        (np.array([0, 1] * 6 + [2]), 0.3, r"the class 2 has a single sample"),
        (np.array([0, 1, 2] * 3), 0.8, r"training split of 1, fewer than the 3 classes"),
    ],
)
def test_a_split_too_small_for_the_classes_is_refused(wine, y, fraction, message):
    X = wine[0][: len(y)]
    clf = ROLLClassifier(early_stopping=True, validation_fraction=fraction, max_epochs=1)
    with pytest.raises(ValueError, match=message):
        clf.fit(X, y)
    assert not hasattr(clf, "history_") or not clf.history_


def test_a_regression_split_needs_two_validation_samples(wine):
    X = wine[0][:8]
    reg = ROLLRegressor(early_stopping=True, validation_fraction=0.1, max_epochs=1)
    with pytest.raises(ValueError, match="needs at least 1 and 2"):
        reg.fit(X, X[:, 0])
