"""The estimators' docstrings: the sections they share, filled in per task."""

from __future__ import annotations

from ._defaults import DEFAULTS, TRAINING

_COMMON_DOC = """
    Parameters
    ----------
    module : {"mlp", "rnn", "cnn1d", "cnn"}, nn.Module class or instance, default="mlp"
        The network: :class:`~sklearn_roll.nn.MLP` for 2-D input,
        :class:`~sklearn_roll.nn.ElmanRNN` or the 1-D convolutional
        :class:`~sklearn_roll.nn.ConvNet1d` (FCN; ``module__residual=True`` for the
        ResNet) for sequences (a 3-D array with trailing NaN time steps as padding,
        a list of 2-D arrays, or sktime's nested DataFrame; see ``sequence_layout``),
        :class:`~sklearn_roll.nn.ResNet` for images (n, channels, height, width), or
        your own module. Built-in modules infer their sizes from the data; a user
        class receives ``n_features``, ``n_outputs`` and, for images,
        ``input_shape`` if its ``__init__`` accepts them, plus every ``module__*``
        parameter. An instance is copied at every fit, whose starting point is its
        weights (``random_state`` then seeds the shuffling and probes only); it
        must fit the data's sizes itself. Instances clone, pickle and take part in
        grid searches like classes.
    hidden_layer_sizes : int, tuple of int or None, default=None
        Layer widths of the built-in module (RNN: stacked hidden sizes; CNN: channels
        per stage; 1-D CNN: filters per block), an int for a single layer; None takes
        the module's default: (100, 100) for "mlp", (64,) for "rnn", (32, 64, 32) for
        "cnn1d", (16, 32) for "cnn".
    activation : {"relu", "leaky_relu"}, default="relu"
        Hidden activation of the built-in module.
    negative_slope : float, default=0.01
        Slope below zero of the LeakyReLU.
    lam : float >= 0 or None, default=None
        Weight of the ROLL penalty (the paper's lambda); 0 trains the plain network.
        None takes the architecture's default (see Notes).
    C : float >= 0 or None, default=None
        Weight of the hinge ``max(0, 1 - |z_u|)`` within the per-unit loss; None takes
        the architecture's default (see Notes).
    gamma : float in (0, 100], default=100
        Percent of units, by largest per-unit loss, averaged per example; 100 is the
        mean over all units.
    approx : int or None, default=None
        None: exact unit gradients in the loss. An int k: estimate the gradient term
        from k random probes (requires gamma=100). Certificates stay exact.
    approx_method : {"axes", "projections"}, default="projections"
        Probes: sampled input axes, or Rademacher projections.
    sequence_layout : {"ntc", "nct"}, default="ntc"
        How sequences given as arrays are laid out. ``"ntc"``: a 3-D array is
        (n_samples, n_timepoints, n_channels), as PyTorch's batch-first recurrent
        layers read it, and a list holds (T_i, n_channels) arrays. ``"nct"``: a 3-D
        array is (n_samples, n_channels, n_timepoints), sktime's and aeon's numpy3D,
        and a list holds (n_channels, T_i) arrays, aeon's format for unequal lengths.
        A nested DataFrame (sktime's ``nested_univ``: a column per channel, a
        ``pd.Series`` per cell) carries its own layout and is read the same under
        both. The default keeps the layout the network itself reads (modules always
        receive (n_samples, n_timepoints, n_channels)); fit warns with a
        ``DataDimensionalityWarning`` when an array has fewer time steps than
        channels as declared, which is how numpy3D data look under ``"ntc"``. The
        layout concerns the input of each call, not the fitted network: results
        shaped like X (``explain``, ``stability_bounds``) come back in the layout
        X was given in, and changing the parameter after fit reads later input
        differently without refitting. Ignored for tabular and image input.
    input_shape : tuple of int or None, default=None
        Shape of one image when images are passed flattened.
%(task_parameters)s
    early_stopping : bool, default=False
        Hold out ``validation_fraction`` of the training data (%(stratified)s, seeded
        by ``random_state``) and stop when the validation loss has not fallen by
        ``tol`` for ``n_iter_no_change`` epochs, or after ``max_epochs``; the
        weights of the best epoch (``best_epoch_``) are restored from a copy in
        memory. The validation loss is the objective training minimises, on the
        held-out data: the task loss plus ``lam`` times the ROLL penalty, weighted
        like training (the paper's "best epoch by validation loss"). The history
        also records the task loss alone, ``train_task_loss`` and
        ``valid_task_loss``, and the validation %(score)s (``validation_scores_``).
    validation_fraction : float in (0, 1), default=0.1
        Share of the training data held out by ``early_stopping``.
    n_iter_no_change : int >= 1, default=10
        Epochs without improvement after which ``early_stopping`` stops.
    tol : float >= 0, default=1e-4
        The fall of the validation loss that counts as an improvement.
    random_state : int, RandomState instance or None, default=None
        Seeds weight initialisation, batch shuffling, the early-stopping split and
        probes (inside ``torch.random.fork_rng``, so the global torch RNG is left as
        it was). With an int, two fits give bit-identical networks, predictions and
        certificates, in one process or in separate processes, on CPU with the same
        machine and torch build. No torch setting is needed for that on CPU; keep
        ``n_threads`` fixed if the core count may differ, since large matrix
        products may split their sums differently with other thread counts. On
        GPU, call ``torch.use_deterministic_algorithms(True)`` (and set
        ``CUBLAS_WORKSPACE_CONFIG=:4096:8``) as well.
    n_threads : int or None, default=None
        torch threads during fit, predict, the certificates and the scorers of
        :mod:`sklearn_roll.metrics`; None leaves torch's setting alone. Set it to 1
        when folds run in parallel (joblib, dask or Ray workers).
    criterion : torch loss class or instance, or None, default=None
        The task loss, given %(criterion_input)s; None takes ``%(criterion)s``. It is
        built with ``reduction="none"``: the estimator averages the per-example
        losses with the sample weights, and adds the ROLL penalty.
    optimizer : torch optimizer class, default=torch.optim.Adam
        The optimizer; its parameters go as ``optimizer__*``.
    lr : float or None, default=None
        Learning rate; None takes the architecture's (%(lr_defaults)s; a user module
        takes "mlp"'s).
    max_epochs : int or None, default=None
        Epochs per call of ``fit`` (and of ``partial_fit``); None takes the
        architecture's (%(epoch_defaults)s).
    batch_size : int, default=64
        Samples per training batch (-1: all of them); also the batch size of
        ``predict``.
    train_split : callable or None, default=None
        skorch's internal validation split (e.g. ``skorch.dataset.ValidSplit(0.2)``),
        for your own callbacks; None trains on all the data, or on what
        ``early_stopping`` does not hold out.
    verbose : int, default=0
        1 prints skorch's epoch table; 2 or more also shows a progress bar over the
        batches of each epoch (skorch's ``ProgressBar`` callback, added to the default
        callbacks).
    **kwargs
        Everything else skorch accepts: ``module__*``, ``optimizer__*``,
        ``callbacks``, ``device``, ``iterator_train__*``, ``warm_start``, ...
        ``device="cuda"`` without a usable GPU is refused at fit.
"""

_FITTED_DOC = """
    n_features_in_ : int
        Features (tabular), channels (sequences) or values per image seen in fit.
    feature_names_in_ : ndarray of str
        Column names, when X was a DataFrame with string column names (for a nested
        DataFrame of sequences: the channels' names).
    input_kind_ : {"tabular", "sequence", "image"}
        The kind of input fit saw, which later input must match.
    image_shape_ : tuple of int
        (channels, height, width) of one image (image input only).
    n_iter_ : int
        Epochs trained, over every call since the network was initialized.
    best_epoch_ : int
        The epoch whose weights the network has: with ``early_stopping``, the last
        one that lowered the validation loss by at least ``tol``; otherwise the last.
    loss_curve_ : list of float
        The training objective (task loss plus ``lam`` times the ROLL penalty) of
        each epoch, its weighted mean over the batches.
    validation_scores_ : list of float or None
        The %(score)s on the validation split of each epoch; None without a split.
    module_ : nn.Module
        The trained network; it outputs logits (classifier) or %(outputs)s.
    history_ : skorch.History
        Per-epoch training record.
"""

_NOTES_DOC = """
    Notes
    -----
    Defaults per architecture: with ``lam=None`` and ``C=None`` the estimator uses
    ``(lam, C)`` = %(defaults)s; a user module takes the "mlp" values. They were
    chosen by ``benchmarks/defaults.py``, which trains each built-in network with its
    defaults over a grid of ``lam`` and ``C`` and keeps the largest median-margin
    gain among the settings whose mean test score stays within a point of plain
    training (``benchmarks/results/defaults.md``); "cnn1d" has no study yet and
    takes the "cnn" values.

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

    Interrupting training: a ``KeyboardInterrupt`` during ``fit`` or ``partial_fit``
    (Ctrl-C, or raised by a callback, the loss or the module) ends training, as in
    skorch. If it comes inside an epoch, the default callback
    ``last_finished_epoch`` puts back the weights and the optimizer's state as they
    were after the last finished epoch, drops the unfinished epoch from
    ``history_`` and warns: the estimator predicts and certifies as after that
    epoch, and ``partial_fit`` continues from it. It holds one copy of that state
    in memory during training; ``callbacks__last_finished_epoch=None`` turns it off.
"""


def _estimator_doc(summary: str, task: str, attributes: str, examples: str, **fields) -> str:
    """A class docstring from the shared sections, with the task's fields filled in."""
    defaults = ", ".join(
        f'({lam:g}, {C:g}) for "{module}"' for module, (lam, C) in DEFAULTS[task].items()
    )
    fields["defaults"] = defaults
    fields["lr_defaults"] = ", ".join(f'{lr:g} for "{m}"' for m, (lr, _) in TRAINING.items())
    fields["epoch_defaults"] = ", ".join(f'{e} for "{m}"' for m, (_, e) in TRAINING.items())
    text = summary + _COMMON_DOC + attributes + _FITTED_DOC + _NOTES_DOC + examples
    for key, value in fields.items():
        text = text.replace(f"%({key})s", value)
    return text
