"""The estimators in scikit-learn workflows, and their refusal of bad input."""

import pickle

import joblib
import numpy as np
import pytest
import torch
from sklearn.base import clone
from sklearn.exceptions import NotFittedError
from sklearn.model_selection import GridSearchCV, train_test_split
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from skorch.dataset import ValidSplit
from torch import nn

import sklearn_roll._base as base_module
import sklearn_roll._defaults as defaults_module
from sklearn_roll import ROLLClassifier, ROLLRegressor
from sklearn_roll.loss import roll_penalty

SMALL = dict(hidden_layer_sizes=(16,), max_epochs=3, random_state=0)


def test_grid_search_over_lam_and_C_in_a_pipeline(wine):
    X, y = wine
    search = GridSearchCV(
        make_pipeline(StandardScaler(), ROLLClassifier(**SMALL)),
        {"rollclassifier__lam": [0.0, 1.0], "rollclassifier__C": [0.5, 2.0]},
        cv=2,
    )
    search.fit(X, y)
    assert len(search.cv_results_["params"]) == 4
    assert search.best_estimator_[-1].lam in (0.0, 1.0)
    assert search.predict(X).shape == (len(X),)


def test_round_trips_keep_predictions_margins_and_explanations(fitted_wine, wine, tmp_path):
    X, _ = wine
    before = (
        fitted_wine.predict_proba(X),
        fitted_wine.certified_margin(X, p=1),
        fitted_wine.explain(X),
    )
    path = tmp_path / "model.joblib"
    joblib.dump(fitted_wine, path)
    for other in (pickle.loads(pickle.dumps(fitted_wine)), joblib.load(path)):
        after = (other.predict_proba(X), other.certified_margin(X, p=1), other.explain(X))
        for a, b in zip(before, after):
            np.testing.assert_array_equal(a, b)


def test_clone_and_params(fitted_wine):
    twin = clone(fitted_wine)
    assert twin.get_params()["lam"] == fitted_wine.lam
    assert not hasattr(twin, "module_")
    twin.set_params(lam=3.0, module__hidden_layer_sizes=(4,))
    assert twin.lam == 3.0
    assert all(not name.endswith("_") for name in twin.get_params(deep=False))


def test_same_random_state_gives_identical_models(wine):
    X, y = wine
    a = ROLLClassifier(**SMALL).fit(X, y)
    b = ROLLClassifier(**SMALL).fit(X, y)
    np.testing.assert_array_equal(a.predict_proba(X), b.predict_proba(X))
    np.testing.assert_array_equal(a.certified_margin(X), b.certified_margin(X))
    state = torch.random.get_rng_state()
    ROLLClassifier(**SMALL).fit(X, y)
    assert torch.equal(state, torch.random.get_rng_state()), "fit must not consume the global RNG"


def test_lam_zero_never_computes_the_penalty(wine, monkeypatch):
    X, y = wine

    def forbidden(*args, **kwargs):
        raise AssertionError("roll_penalty called with lam=0")

    monkeypatch.setattr(base_module, "_penalty_and_output", forbidden)
    ROLLClassifier(lam=0.0, **SMALL).fit(X, y)
    with pytest.raises(AssertionError, match="lam=0"):
        ROLLClassifier(lam=1.0, **SMALL).fit(X, y)


def test_loss_adds_the_penalty_in_training_and_under_no_grad(fitted_wine, wine):
    X, y = wine
    x = torch.tensor(X[:20], dtype=torch.float32)
    target = torch.tensor(y[:20])
    net = fitted_wine
    net.module_.eval()
    with torch.no_grad():
        logits = net.module_(x)
        loss = net.get_loss(logits, target, X=x, training=False)
        expected = nn.functional.cross_entropy(logits, target) + net.lam * roll_penalty(
            net.module_, x, C=net.C
        )
    assert loss.item() == pytest.approx(expected.item(), rel=1e-6)
    clf = ROLLClassifier(train_split=ValidSplit(4, stratified=True), **SMALL).fit(X, y)
    assert np.isfinite(clf.history[-1, "valid_loss"]) and 0 <= clf.history[-1, "valid_acc"] <= 1


@pytest.mark.slow
def test_roll_enlarges_margins_on_digits(digits):
    X, y = digits
    Xtr, Xte, ytr, yte = train_test_split(X, y, test_size=0.3, random_state=0, stratify=y)
    settings = dict(hidden_layer_sizes=(64, 64), max_epochs=15, random_state=0)
    vanilla = ROLLClassifier(lam=0.0, **settings).fit(Xtr, ytr)
    roll = ROLLClassifier(lam=1.0, C=1.0, **settings).fit(Xtr, ytr)
    acc_v, acc_r = vanilla.score(Xte, yte), roll.score(Xte, yte)
    assert acc_v > 0.9 and acc_r > 0.9
    assert abs(acc_v - acc_r) < 0.03
    ratio = np.median(roll.certified_margin(Xte)) / np.median(vanilla.certified_margin(Xte))
    assert ratio > 2.0, ratio


def test_partial_fit_continues_training(wine):
    X, y = wine
    clf = ROLLClassifier(**SMALL)
    clf.partial_fit(X[:50], y[:50], classes=[0, 1, 2])
    clf.partial_fit(X, y)
    assert len(clf.history) == 6
    assert list(clf.classes_) == [0, 1, 2]
    with pytest.raises(ValueError, match="not seen in the first fit"):
        clf.partial_fit(X, y + 5)


def test_dtypes_are_cast_and_sizes_inferred(wine):
    X, y = wine
    clf = ROLLClassifier(**SMALL).fit(X.astype(np.float64), y.astype(np.int32))
    assert clf.n_features_in_ == X.shape[1]
    assert clf.module_[0].in_features == X.shape[1] and clf.module_[-1].out_features == 3
    clf.predict(X.astype(np.float32))
    reg = ROLLRegressor(**SMALL).fit(X, y.astype(np.int64))
    assert reg.predict(X).dtype == np.float64 and reg.predict(X).shape == (len(X),)


def test_dataframe_feature_names_are_kept_and_checked(wine):
    pd = pytest.importorskip("pandas")
    X, y = wine
    df = pd.DataFrame(X, columns=[f"f{i}" for i in range(X.shape[1])])
    clf = ROLLClassifier(**SMALL).fit(df, y)
    assert list(clf.feature_names_in_) == list(df.columns)
    np.testing.assert_array_equal(clf.certified_margin(df), clf.certified_margin(X))
    with pytest.raises(ValueError, match="feature names"):
        clf.predict(df.rename(columns={"f0": "other"}))


def test_user_module_receives_inferred_sizes(wine):
    class Net(nn.Module):
        def __init__(self, n_features, n_outputs, width=8):
            super().__init__()
            self.seq = nn.Sequential(
                nn.Linear(n_features, width), nn.ReLU(), nn.Linear(width, n_outputs)
            )

        def forward(self, x):
            return self.seq(x)

    X, y = wine
    clf = ROLLClassifier(Net, module__width=5, **SMALL).fit(X, y)
    assert clf.module_.seq[0].out_features == 5
    assert clf.certified_margin(X[:3]).shape == (3,)


def test_threads_are_set_during_fit_and_restored(wine, monkeypatch):
    X, y = wine
    seen = []
    original = ROLLClassifier.train_step

    def spy(self, *args, **kwargs):
        seen.append(torch.get_num_threads())
        return original(self, *args, **kwargs)

    monkeypatch.setattr(ROLLClassifier, "train_step", spy)
    before = torch.get_num_threads()
    ROLLClassifier(n_threads=1, **SMALL).fit(X, y)
    assert set(seen) == {1} and torch.get_num_threads() == before


@pytest.mark.parametrize(
    "bad, message",
    [
        (dict(lam=-1.0), "lam"),
        (dict(C=-0.5), "'C'"),
        (dict(gamma=0.0), "gamma"),
        (dict(gamma=150.0), "gamma"),
        (dict(activation="tanh"), "activation"),
        (dict(approx=0), "approx"),
        (dict(approx=4, gamma=50.0), "requires gamma=100"),
        (dict(approx_method="sobol"), "approx_method"),
        (dict(module="transformer"), "module"),
    ],
)
def test_bad_parameters_are_refused_at_fit(wine, bad, message):
    X, y = wine
    with pytest.raises(ValueError, match=message):
        ROLLClassifier(**{**SMALL, **bad}).fit(X, y)


def test_bad_input_is_refused_with_a_clear_message(fitted_wine, wine):
    X, y = wine
    with pytest.raises(ValueError, match="NaN"):
        ROLLClassifier(**SMALL).fit(np.where(np.eye(len(X), X.shape[1]) > 0, np.nan, X), y)
    with pytest.raises(ValueError, match="infinity"):
        fitted_wine.predict(np.full((2, X.shape[1]), np.inf))
    with pytest.raises(ValueError, match="NaN"):
        fitted_wine.certified_margin(np.full((2, X.shape[1]), np.nan))
    with pytest.raises(ValueError, match="Reshape your data"):
        fitted_wine.predict(X[0])
    with pytest.raises(ValueError, match="3-D input"):
        fitted_wine.explain(X[:4, :, None])
    with pytest.raises(ValueError, match="expects 2-D input"):
        ROLLClassifier(**SMALL).fit(X[:, :, None], y)
    with pytest.raises(ValueError, match="13 features"):
        fitted_wine.certified_margin(X[:, :5])
    with pytest.raises(ValueError, match="only one class"):
        ROLLClassifier(**SMALL).fit(X, np.zeros(len(X)))
    with pytest.raises(ValueError, match="Unknown label type"):
        ROLLClassifier(**SMALL).fit(X, np.linspace(0, 1, len(X)))
    with pytest.raises(ValueError, match="inconsistent numbers of samples"):
        ROLLClassifier(**SMALL).fit(X, y[:-1])
    with pytest.raises(ValueError, match="y contains NaN|Input y contains NaN"):
        ROLLRegressor(**SMALL).fit(X, np.where(np.arange(len(X)) == 3, np.nan, 1.0))


@pytest.mark.parametrize(
    "method", ["predict", "predict_proba", "certified_margin", "explain", "score"]
)
def test_not_fitted_error_before_fit(wine, method):
    X, y = wine
    args = (X, y) if method == "score" else (X,)
    with pytest.raises(NotFittedError):
        getattr(ROLLClassifier(), method)(*args)


def _sequential():
    torch.manual_seed(1)
    return nn.Sequential(nn.Linear(13, 12), nn.ReLU(), nn.Linear(12, 3))


def test_module_instances_work_as_classes_do(wine):
    X, y = wine
    instance = _sequential()
    before = {k: v.clone() for k, v in instance.state_dict().items()}
    clf = ROLLClassifier(module=instance, **SMALL)
    first = clf.fit(X, y).predict_proba(X)
    # The parameter never trains: every fit starts from its weights.
    for key, value in instance.state_dict().items():
        assert torch.equal(value, before[key])
    assert clf.module_ is not instance
    np.testing.assert_array_equal(clf.fit(X, y).predict_proba(X), first)
    twin = clone(clf)
    assert twin.module is not instance
    np.testing.assert_array_equal(twin.fit(X, y).predict_proba(X), first)
    np.testing.assert_array_equal(pickle.loads(pickle.dumps(clf)).predict_proba(X), first)
    assert clf.certified_margin(X[:3]).shape == (3,)


def test_a_grid_search_over_module_instances(wine):
    X, y = wine
    wide = nn.Sequential(nn.Linear(13, 24), nn.LeakyReLU(0.1), nn.Linear(24, 3))
    search = GridSearchCV(
        ROLLClassifier(**SMALL), {"module": [_sequential(), wide]}, cv=2, refit=True
    ).fit(X, y)
    assert np.isfinite(search.cv_results_["mean_test_score"]).all()
    assert isinstance(search.best_estimator_.module_, nn.Sequential)
    criterion = ROLLClassifier(criterion=nn.CrossEntropyLoss(label_smoothing=0.1), **SMALL)
    assert clone(criterion).fit(X, y).criterion_.label_smoothing == 0.1


def test_an_int_hidden_layer_size_is_one_layer(wine):
    X, y = wine
    as_int = ROLLClassifier(**{**SMALL, "hidden_layer_sizes": 16}).fit(X, y)
    as_tuple = ROLLClassifier(**SMALL).fit(X, y)
    np.testing.assert_array_equal(as_int.predict_proba(X), as_tuple.predict_proba(X))


def test_lam_none_takes_the_architectures_default(wine, monkeypatch):
    X, y = wine
    default = ROLLClassifier(**SMALL).fit(X, y)
    explicit = ROLLClassifier(**{**SMALL, "lam": 1.0, "C": 1.0}).fit(X, y)
    np.testing.assert_array_equal(default.predict_proba(X), explicit.predict_proba(X))
    assert ROLLClassifier().lam is None and ROLLClassifier().C is None
    assert '(1, 1) for "mlp"' in ROLLClassifier.__doc__
    monkeypatch.setitem(defaults_module.DEFAULTS["classifier"], "mlp", (0.0, 1.0))
    plain = ROLLClassifier(**SMALL).fit(X, y)
    lam_zero = ROLLClassifier(**{**SMALL, "lam": 0.0}).fit(X, y)
    np.testing.assert_array_equal(plain.predict_proba(X), lam_zero.predict_proba(X))


def test_lr_and_max_epochs_none_take_the_architectures_defaults(wine):
    X, y = wine[0][::4], wine[1][::4]
    assert ROLLClassifier().lr is None and ROLLClassifier().max_epochs is None
    small = {"hidden_layer_sizes": (4,), "lam": 0.0, "random_state": 0}
    mlp = ROLLClassifier(**small).fit(X, y)
    assert len(mlp.history_) == 50 and mlp.optimizer_.param_groups[0]["lr"] == 1e-3
    sequences = X[:, :12].reshape(-1, 12, 1)
    rnn = ROLLClassifier("rnn", **small).fit(sequences, y)
    assert len(rnn.history_) == 100 and rnn.optimizer_.param_groups[0]["lr"] == 3e-3
    rnn.partial_fit(sequences, y)
    assert len(rnn.history_) == 200
    explicit = ROLLClassifier("rnn", lr=0.02, max_epochs=2, **small).fit(sequences, y)
    assert len(explicit.history_) == 2 and explicit.optimizer_.param_groups[0]["lr"] == 0.02
    prefixed = ROLLClassifier("rnn", optimizer__lr=0.05, max_epochs=1, **small).fit(sequences, y)
    assert prefixed.optimizer_.param_groups[0]["lr"] == 0.05
    assert '0.003 for "rnn"' in ROLLClassifier.__doc__ and '100 for "rnn"' in ROLLClassifier.__doc__


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_a_cuda_device_without_a_gpu_is_refused(wine):
    X, y = wine
    for device in ("cuda", "cuda:0"):
        with pytest.raises(ValueError, match=rf"device='{device}', but .*use device='cpu'"):
            ROLLClassifier(device=device, **SMALL).fit(X, y)
    with pytest.raises(ValueError, match="device='gpu' is not a torch device"):
        ROLLClassifier(device="gpu", **SMALL).fit(X, y)


def test_unsupported_layers_and_losses_say_why(wine):
    X, y = wine
    prelu = nn.Sequential(nn.Linear(13, 8), nn.PReLU(), nn.Linear(8, 3))
    with pytest.raises(Exception, match="piecewise linear, but its slope below zero is a learned"):
        ROLLClassifier(module=prelu, **SMALL).fit(X, y)

    class Summed(nn.Module):
        def forward(self, out, target):
            return nn.functional.cross_entropy(out, target)

    with pytest.raises(TypeError, match="does not accept reduction='none'"):
        ROLLClassifier(criterion=Summed, **SMALL).fit(X, y)
    with pytest.raises(TypeError, match="has no 'reduction'"):
        ROLLClassifier(criterion=Summed(), **SMALL).fit(X, y)


def test_partial_fit_with_an_unseen_label_points_to_classes(wine):
    X, y = wine
    clf = ROLLClassifier(**SMALL).partial_fit(X[y < 2], y[y < 2])
    with pytest.raises(ValueError, match=r"labels not seen in the first fit: \[2\].*classes=\["):
        clf.partial_fit(X, y)
    ROLLClassifier(**SMALL).partial_fit(X[y < 2], y[y < 2], classes=[0, 1, 2]).partial_fit(X, y)


def test_the_default_batches_are_skorchs(wine):
    """Fetching a batch by one indexing gives skorch's batches, so the same fit."""
    X, y = wine
    params = dict(SMALL, early_stopping=True, validation_fraction=0.2)
    weight = np.arange(len(y)) % 3 + 1.0
    fast = ROLLClassifier(**params).fit(X, y, sample_weight=weight)
    skorchs = ROLLClassifier(
        **params, iterator_train__shuffle=False, iterator_valid__shuffle=False
    ).fit(X, y, sample_weight=weight)
    np.testing.assert_array_equal(fast.predict_proba(X), skorchs.predict_proba(X))
    assert fast.history[:, "valid_loss"] == skorchs.history[:, "valid_loss"]


def _step_gradients(clf, xb, yb, shared: bool):
    clf.module_.zero_grad()
    torch.manual_seed(1)
    if shared:
        loss = clf.train_step_single((xb, yb))["loss"]
    else:
        clf._set_training(True)
        y_pred = clf.infer(xb)
        torch.manual_seed(1)
        loss = clf.get_loss(y_pred, yb, X=xb, training=True)
        loss.backward()
    return loss.item(), [p.grad.clone() for p in clf.module_.parameters()]


@pytest.mark.parametrize(
    "params, shape",
    [
        ({"hidden_layer_sizes": (8, 8, 8)}, (-1, 64)),
        ({"hidden_layer_sizes": (8, 8, 8), "approx": 3}, (-1, 64)),
        ({"module": "rnn", "hidden_layer_sizes": (6,)}, (-1, 8, 8)),
        ({"module": "cnn", "hidden_layer_sizes": (2, 3)}, (-1, 1, 8, 8)),
        ({"module": "cnn1d", "hidden_layer_sizes": (3, 3, 3)}, (-1, 8, 8)),
    ],
    ids=["deep-mlp", "approx", "rnn", "resnet", "cnn1d-batchnorm"],
)
def test_the_training_step_reads_the_penalty_output_with_skorchs_loss(digits, params, shape):
    X, y = digits
    X = X[:24].reshape(shape).astype(np.float32)
    clf = ROLLClassifier(max_epochs=1, lam=1.0, C=1.0, random_state=0, **params)
    clf.fit(X, y[:24])
    xb = torch.from_numpy(X)
    yb = torch.from_numpy(np.searchsorted(clf.classes_, y[:24]))
    calls = []
    clf.infer = lambda x, **kw: calls.append(1) or type(clf).infer(clf, x, **kw)
    loss, grads = _step_gradients(clf, xb, yb, shared=True)
    # Only the BatchNorm network runs the forward pass of its own.
    assert len(calls) == (params.get("module") == "cnn1d")
    expected_loss, expected = _step_gradients(clf, xb, yb, shared=False)
    assert loss == pytest.approx(expected_loss, rel=1e-5)
    for got, want in zip(grads, expected):
        assert torch.allclose(got, want, rtol=1e-4, atol=1e-5 * want.abs().max())
