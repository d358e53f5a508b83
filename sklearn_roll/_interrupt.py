"""A fit that a KeyboardInterrupt stops keeps the weights of its last finished epoch.

skorch ends training quietly on a ``KeyboardInterrupt`` (Ctrl-C, or one raised by a
callback, the loss or the module), wherever it comes from; inside an epoch that
leaves the network with the updates of some of the epoch's batches only, weights that
no epoch of the history describes. :class:`LastFinishedEpoch`, one of the estimators'
default callbacks, keeps a copy of the state at the end of each epoch and puts it
back when training ends inside one.
"""

from __future__ import annotations

import copy
import warnings

from skorch.callbacks import Callback

__all__ = ["LastFinishedEpoch"]

# What training changes: the network and the loss (whose parameters, if any, the
# optimizer may train), and the optimizer's own state (Adam's moments, step counts).
_STATE = ("module_", "criterion_", "optimizer_")


class LastFinishedEpoch(Callback):
    """Restore the last finished epoch when a KeyboardInterrupt ends training inside one.

    At the start of training and at the end of every epoch, the state dicts of the
    network, the loss and the optimizer are copied (in memory, on their device); if
    training ends between an epoch's begin and its end, they are loaded back, the
    unfinished epoch's row is dropped from the history, and a warning says so. The
    estimator then predicts with the weights of the last finished epoch (those it
    had when ``fit`` or ``partial_fit`` was called, if none finished) and
    ``partial_fit`` continues from there. An interrupt raised at the end of an epoch
    after this callback has run (skorch's ``EarlyStopping`` raises one there) keeps
    that epoch. The copy is dropped when training ends.

    The state of other callbacks (a learning-rate scheduler's step count) is not
    rolled back. Disable the callback with ``callbacks__last_finished_epoch=None``,
    e.g. for a network too large to hold twice.

    Examples
    --------
    >>> from sklearn.datasets import load_iris
    >>> from skorch.callbacks import Callback
    >>> from sklearn_roll import ROLLClassifier
    >>> class StopInThirdEpoch(Callback):
    ...     def on_batch_end(self, net, **kwargs):
    ...         if len(net.history) == 3:
    ...             raise KeyboardInterrupt
    >>> X, y = load_iris(return_X_y=True)
    >>> clf = ROLLClassifier(hidden_layer_sizes=(8,), max_epochs=5, random_state=0)
    >>> clf = clf.set_params(callbacks=[StopInThirdEpoch()]).fit(X, y)
    >>> len(clf.history)  # epochs 1 and 2; the weights are those after epoch 2
    2
    """

    def on_train_begin(self, net, **kwargs):
        self._keep(net)

    def on_epoch_begin(self, net, **kwargs):
        self.unfinished_ = True

    def on_epoch_end(self, net, **kwargs):
        self._keep(net)

    def on_train_end(self, net, **kwargs):
        if self.unfinished_:
            epoch = len(net.history)
            for name, state in self.state_.items():
                # A copy again: load_state_dict may keep the tensors it is given.
                getattr(net, name).load_state_dict(copy.deepcopy(state))
            net.history.pop()
            warnings.warn(
                f"Training was interrupted in epoch {epoch}; the network keeps the "
                f"weights and optimizer state of the last finished epoch ({epoch - 1}).",
                UserWarning,
                stacklevel=2,
            )
        # Needed during training only: a pickled estimator holds its weights once.
        self.state_, self.unfinished_ = None, False

    def _keep(self, net) -> None:
        self.state_ = {
            name: copy.deepcopy(getattr(net, name).state_dict())
            for name in _STATE
            if getattr(net, name, None) is not None
        }
        self.unfinished_ = False
