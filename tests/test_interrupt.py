"""A KeyboardInterrupt inside an epoch leaves the estimator at its last finished epoch.

skorch ends training on a KeyboardInterrupt wherever it is raised; the default
callback ``last_finished_epoch`` puts back the weights and optimizer state of the
last epoch that finished, so the estimator predicts as after that epoch and
``partial_fit`` continues from it.
"""

import numpy as np
import pytest
from skorch.callbacks import Callback
from torch import nn

from sklearn_roll import ROLLClassifier

pytestmark = pytest.mark.usefixtures("one_thread")

# 178 wine samples in batches of 64: three batches per epoch.
SMALL = dict(hidden_layer_sizes=(16,), max_epochs=5, random_state=0, n_threads=1)
INTERRUPTED = "Training was interrupted in epoch 3; .* last finished epoch \\(2\\)"


class InterruptOnce(Callback):
    """Raise KeyboardInterrupt once, after batch ``batch`` of epoch ``epoch`` (from 1)."""

    def __init__(self, epoch, batch=2):
        self.epoch = epoch
        self.batch = batch

    def initialize(self):
        self.raised_ = False
        return self

    def on_batch_end(self, net, **kwargs):
        batches = len(net.history[-1, "batches"])
        if not self.raised_ and len(net.history) == self.epoch and batches == self.batch:
            self.raised_ = True
            raise KeyboardInterrupt


class InterruptingLoss(nn.CrossEntropyLoss):
    """Cross-entropy that raises KeyboardInterrupt at its ``at``-th call, once."""

    def __init__(self, at, **kwargs):
        super().__init__(**kwargs)
        self.at = at
        self.calls = 0

    def forward(self, input, target):
        self.calls += 1
        if self.calls == self.at:
            raise KeyboardInterrupt
        return super().forward(input, target)


class StopAtEpochEnd(Callback):
    """Raise KeyboardInterrupt at the end of epoch 2, as EarlyStopping does."""

    def on_epoch_end(self, net, **kwargs):
        if len(net.history) == 2:
            raise KeyboardInterrupt


INTERRUPTS = {
    # After the second of epoch 3's three updates.
    "callback": dict(callbacks=[InterruptOnce(epoch=3)]),
    # In the loss of epoch 3's second batch, after one of its updates.
    "loss": dict(criterion=InterruptingLoss, criterion__at=2 * 3 + 2),
}


def _answers(est, X):
    return est.predict_proba(X), est.certified_margin(X), est.explain(X)


def _assert_identical(a, b):
    for left, right in zip(a, b):
        np.testing.assert_array_equal(left, right)


@pytest.mark.parametrize("source", list(INTERRUPTS))
def test_an_interrupt_inside_an_epoch_keeps_the_last_finished_epoch(wine, source):
    X, y = wine
    two_epochs = ROLLClassifier(**{**SMALL, "max_epochs": 2}).fit(X, y)
    clf = ROLLClassifier(**SMALL, **INTERRUPTS[source])
    with pytest.warns(UserWarning, match=INTERRUPTED):
        clf.fit(X, y)
    assert len(clf.history) == 2 and clf.history[-1, "epoch"] == 2
    _assert_identical(_answers(clf, X), _answers(two_epochs, X))
    # Without the callback, skorch leaves the network halfway through epoch 3.
    bare = ROLLClassifier(**SMALL, **INTERRUPTS[source], callbacks__last_finished_epoch=None)
    bare.fit(X, y)
    assert len(bare.history) == 3
    assert not np.array_equal(bare.predict_proba(X), two_epochs.predict_proba(X))
    # partial_fit continues from epoch 2, optimizer state included: one more epoch on
    # each gives the same network.
    clf.set_params(max_epochs=1).partial_fit(X, y)
    two_epochs.set_params(max_epochs=1).partial_fit(X, y)
    assert [row["epoch"] for row in clf.history] == [1, 2, 3]
    _assert_identical(_answers(clf, X), _answers(two_epochs, X))


def test_an_interrupt_in_the_first_epoch_keeps_the_starting_weights(wine):
    X, y = wine
    untrained = ROLLClassifier(**{**SMALL, "max_epochs": 0}).fit(X, y)
    clf = ROLLClassifier(**SMALL, callbacks=[InterruptOnce(epoch=1, batch=1)])
    with pytest.warns(UserWarning, match="interrupted in epoch 1"):
        clf.fit(X, y)
    assert len(clf.history) == 0
    _assert_identical(_answers(clf, X), _answers(untrained, X))
    # In partial_fit, the weights it started from.
    clf = ROLLClassifier(**{**SMALL, "max_epochs": 1}, callbacks=[InterruptOnce(epoch=2)])
    one_epoch = _answers(clf.fit(X, y), X)
    with pytest.warns(UserWarning, match="interrupted in epoch 2"):
        clf.set_params(max_epochs=3).partial_fit(X, y)
    assert len(clf.history) == 1
    _assert_identical(_answers(clf, X), one_epoch)


def test_an_interrupt_at_the_end_of_an_epoch_keeps_that_epoch(wine, recwarn):
    X, y = wine
    clf = ROLLClassifier(**SMALL, callbacks=[StopAtEpochEnd()]).fit(X, y)
    two_epochs = ROLLClassifier(**{**SMALL, "max_epochs": 2}).fit(X, y)
    assert len(clf.history) == 2
    _assert_identical(_answers(clf, X), _answers(two_epochs, X))
    assert not [w for w in recwarn if "interrupted" in str(w.message)]


def test_the_kept_copy_does_not_outlive_training(wine):
    X, y = wine
    clf = ROLLClassifier(**{**SMALL, "max_epochs": 2}).fit(X, y)
    # So that a pickled or copied estimator holds its weights once.
    assert dict(clf.callbacks_)["last_finished_epoch"].state_ is None
