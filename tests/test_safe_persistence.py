"""save / load: model files that loading runs no code from.

Every kind of model (mlp, rnn with orthogonal recurrence, cnn, a user module class;
classifier and regressor) comes back with bit-identical answers and continues training
bit-identically; damaged, tampered or incompatible files are refused with a message
naming the problem; and a class that a file names is never imported unless allowed.
"""

import doctest
import json
import os
import pickle
import sys

import numpy as np
import pandas as pd
import pytest
import safetensors.torch
import torch
from safetensors import safe_open
from sklearn.exceptions import NotFittedError
from skorch.callbacks import EpochTimer
from skorch.dataset import ValidSplit
from skorch.exceptions import DeviceWarning
from torch import nn

from sklearn_roll import ROLLClassifier, ROLLRegressor, estimators, persistence
from sklearn_roll.persistence import ModelFileError

pytestmark = pytest.mark.usefixtures("one_thread")

SMALL = dict(max_epochs=2, random_state=0, n_threads=1)


class TinyNet(nn.Module):
    """A user module class: sklearn-roll passes it n_features and n_outputs."""

    def __init__(self, n_features, n_outputs, width=4):
        super().__init__()
        self.hidden = nn.Linear(n_features, width)
        self.act = nn.ReLU()
        self.out = nn.Linear(width, n_outputs)

    def forward(self, x):
        return self.out(self.act(self.hidden(x)))


def _tabular(seed=0):
    rng = np.random.RandomState(seed)
    X = rng.randn(40, 5)
    return X, X[:, 0] - X[:, 1] > 0


def _case(name):
    """(estimator, X, y, allowed_modules) for one kind of model."""
    rng = np.random.RandomState(0)
    X, positive = _tabular()
    if name == "mlp-classifier":
        # Column names and string labels: feature_names_in_ and a str classes_.
        frame = pd.DataFrame(X, columns=[f"f{i}" for i in range(5)])
        y = np.where(positive, "yes", "no")
        return ROLLClassifier(hidden_layer_sizes=(6,), **SMALL), frame, y, ()
    if name == "mlp-regressor":
        y = np.c_[X[:, 0], X[:, 1] * X[:, 2]]
        return ROLLRegressor(hidden_layer_sizes=(6, 6), **SMALL), X, y, ()
    if name == "rnn-classifier":
        seqs = [rng.randn(rng.randint(2, 5), 3) for _ in range(16)]
        y = np.array([int(s[:, 0].sum() > 0) for s in seqs])
        est = ROLLClassifier(
            "rnn", hidden_layer_sizes=(4,), module__orthogonal_recurrence=True, **SMALL
        )
        return est, seqs, y, ()
    if name == "cnn1d-classifier":
        # BatchNorm: its running statistics and batch count are tensors of the file.
        seqs = [rng.randn(rng.randint(3, 7), 2) for _ in range(16)]
        y = np.array([int(s[:, 0].sum() > 0) for s in seqs])
        est = ROLLClassifier(
            "cnn1d",
            hidden_layer_sizes=(3, 2),
            module__kernel_sizes=(3, 2),
            module__residual=True,
            **SMALL,
        )
        return est, seqs, y, ()
    if name == "cnn-classifier":
        images = rng.randn(16, 1, 6, 6)
        y = (images.mean(axis=(1, 2, 3)) > 0).astype(int)
        # A tensor-valued parameter travels as a tensor of the file.
        est = ROLLClassifier(
            "cnn", hidden_layer_sizes=(2, 3), criterion__weight=torch.tensor([1.0, 2.0]), **SMALL
        )
        return est, images, y, ()
    # A user module class, another optimizer (with momentum state) and criterion.
    est = ROLLRegressor(
        TinyNet,
        module__width=5,
        optimizer=torch.optim.SGD,
        optimizer__momentum=0.9,
        criterion=nn.HuberLoss,
        criterion__delta=0.5,
        lr=0.05,
        **SMALL,
    )
    return est, X, X[:, 0] * 2.0, (TinyNet,)


CASES = [
    "mlp-classifier",
    "mlp-regressor",
    "rnn-classifier",
    "cnn1d-classifier",
    "cnn-classifier",
    "user-regressor",
]


@pytest.fixture(scope="module", params=CASES)
def saved(request, tmp_path_factory):
    est, X, y, allowed = _case(request.param)
    est.fit(X, y)
    path = tmp_path_factory.mktemp(request.param) / "model.safetensors"
    est.save(path)
    return est, X, y, allowed, path


def _answers(est, X):
    """Everything a user reads from a fitted model, as arrays."""
    regressor = isinstance(est, ROLLRegressor)
    grads = est.explain(X, target=0 if regressor and est.n_outputs_ > 1 else None)
    answers = [
        est.predict(X),
        est.certified_margin(X, p=2),
        est.certified_margin(X, p=np.inf, precision="float64"),
        np.concatenate([np.ravel(g) for g in grads]) if isinstance(grads, list) else grads,
    ]
    if not regressor:
        answers.append(est.predict_proba(X))
    return [np.asarray(a) for a in answers]


def _assert_identical(a, b):
    for left, right in zip(a, b, strict=True):
        assert left.dtype == right.dtype and left.shape == right.shape
        assert np.array_equal(left, right)


def _assert_same_value(x, y):
    if isinstance(x, torch.Tensor):
        assert x.dtype == y.dtype and torch.equal(x, y)
    elif isinstance(x, np.ndarray):
        assert x.dtype == y.dtype and np.array_equal(x, y)
    else:
        assert type(x) is type(y) and x == y


def _state(est):
    """The module's and the optimizer's tensors, flattened to name -> tensor."""
    tensors = {f"module.{k}": v for k, v in est.module_.state_dict().items()}
    for i, state in est.optimizer_.state_dict()["state"].items():
        tensors.update({f"optimizer.{i}.{k}": v for k, v in state.items()})
    return tensors


def test_round_trip_is_bit_identical(saved):
    est, X, _, allowed, path = saved
    loaded = type(est).load(path, allowed_modules=allowed)
    assert type(loaded) is type(est)
    _assert_identical(_answers(est, X), _answers(loaded, X))
    original, restored = est.get_params(deep=False), loaded.get_params(deep=False)
    assert original.keys() == restored.keys()
    for name in original:
        _assert_same_value(original[name], restored[name])
    for name in est._fitted_attributes:
        assert hasattr(loaded, name) == hasattr(est, name)
        if hasattr(est, name):
            _assert_same_value(getattr(est, name), getattr(loaded, name))
    assert loaded.history.to_list() == est.history.to_list()
    assert (
        loaded.optimizer_.state_dict()["param_groups"]
        == est.optimizer_.state_dict()["param_groups"]
    )


def test_training_continues_bit_identically(saved):
    est, X, y, allowed, path = saved
    loaded = persistence.load(path, allowed_modules=allowed)
    twin = pickle.loads(pickle.dumps(est))
    twin.partial_fit(X, y)
    loaded.partial_fit(X, y)
    expected, got = _state(twin), _state(loaded)
    assert expected.keys() == got.keys()
    for name in expected:
        _assert_same_value(expected[name], got[name])
    assert len(loaded.history) == len(twin.history) == 2 * est.max_epochs
    _assert_identical(_answers(twin, X), _answers(loaded, X))


def test_loading_leaves_the_global_rng_alone(saved):
    est, _, _, allowed, path = saved
    before = torch.random.get_rng_state()
    persistence.load(path, allowed_modules=allowed)
    assert torch.equal(before, torch.random.get_rng_state())


# ------------------------------------------------------------------ bad files


@pytest.fixture(scope="module")
def model_file(tmp_path_factory):
    """A small saved classifier, its data, and the file's description and tensors."""
    X, positive = _tabular()
    y = np.where(positive, "yes", "no")
    est = ROLLClassifier(hidden_layer_sizes=(3,), max_epochs=1, random_state=0, n_threads=1)
    est.fit(X, y)
    path = tmp_path_factory.mktemp("model") / "model.safetensors"
    est.save(path)
    with safe_open(path, "pt") as f:
        description = json.loads(f.metadata()["sklearn_roll"])
        tensors = {name: f.get_tensor(name) for name in f.keys()}
    return est, X, path, description, tensors


def _write(path, description, tensors):
    text = description if isinstance(description, str) else json.dumps(description)
    safetensors.torch.save_file(tensors, path, metadata={"sklearn_roll": text})


def _edited(model_file, tmp_path, edit):
    """The model file with ``edit(description, tensors)`` applied to copies of both."""
    _, _, _, description, tensors = model_file
    description, tensors = json.loads(json.dumps(description)), dict(tensors)
    edit(description, tensors)
    path = tmp_path / "edited.safetensors"
    _write(path, description, tensors)
    return path


def _retype(d, t, name="module.0.weight"):
    t[name] = t[name].double()


def _retype_both(d, t):
    _retype(d, t)
    d["tensors"]["module.0.weight"]["dtype"] = "float64"


def _add(d, t, name, listed=True):
    t[name] = torch.zeros(2)
    if listed:
        d["tensors"][name] = {"dtype": "float32", "shape": [2]}


def _remove(d, t, name, listed=True):
    del t[name]
    if listed:
        del d["tensors"][name]


BYTE_EDITS = {
    "empty": (lambda raw: b"", "empty"),
    "truncated tensors": (lambda raw: raw[:-5], "truncated: its tensors need"),
    "truncated header": (lambda raw: raw[:40], "truncated: its header needs"),
    "trailing bytes": (lambda raw: raw + b"\0", "1 bytes after its last tensor"),
    "zip archive": (lambda raw: b"PK\x03\x04" + bytes(60), "Not a safetensors file"),
    "a pickle": (lambda raw: pickle.dumps({"a": 1}), "Not a safetensors file"),
}


@pytest.mark.parametrize("case", BYTE_EDITS)
def test_damaged_files_are_refused(case, model_file, tmp_path):
    edit, message = BYTE_EDITS[case]
    path = tmp_path / "damaged.safetensors"
    path.write_bytes(edit(model_file[2].read_bytes()))
    with pytest.raises(ModelFileError, match=message):
        persistence.load(path)


DESCRIPTION_EDITS = {
    "other format": (lambda d, t: d.update(format="pytorch"), "format is 'pytorch'"),
    "no format version": (lambda d, t: d.pop("format_version"), "no format version"),
    "future format version": (
        lambda d, t: d.update(format_version=2),
        "Unsupported format version 2",
    ),
    "format version as text": (
        lambda d, t: d.update(format_version="1"),
        "Unsupported format version '1'",
    ),
    "incompatible release": (
        lambda d, t: d["versions"].update({"sklearn-roll": "1.0.0"}),
        "written by sklearn-roll 1.0.0, which this sklearn-roll 0.1.0 cannot read",
    ),
    "dtype in the description": (
        lambda d, t: d["tensors"]["module.0.weight"].update(dtype="float64"),
        "'module.0.weight' is float32 in the file, but the description says float64",
    ),
    "dtype in the file": (
        _retype,
        "'module.0.weight' is float64 in the file, but the description says float32",
    ),
    "shape in the description": (
        lambda d, t: d["tensors"]["module.0.bias"].update(shape=[4]),
        r"'module.0.bias' has shape \[3\] in the file, but the description says \[4\]",
    ),
    "shape of the rebuilt module": (
        lambda d, t: d["fitted"].update(n_features_in_=6),
        r"'module.0.weight' is float32 of shape \[3, 5\] in the file, but float32 of shape "
        r"\[3, 6\] in the module rebuilt",
    ),
    "dtype of the rebuilt module": (
        _retype_both,
        r"'module.0.weight' is float64 of shape \[3, 5\] in the file, but float32",
    ),
    "tensor not listed": (
        lambda d, t: _add(d, t, "extra", listed=False),
        r"tensors that the description does not list: \['extra'\]",
    ),
    "listed tensor missing": (
        lambda d, t: _remove(d, t, "module.0.bias", listed=False),
        r"missing tensors that the description lists: \['module.0.bias'\]",
    ),
    "unused tensor": (
        lambda d, t: _add(d, t, "extra"),
        r"tensors that the description does not use: \['extra'\]",
    ),
    "extra module tensor": (
        lambda d, t: _add(d, t, "module.9.weight"),
        r"module tensors the rebuilt module lacks: \['9.weight'\]",
    ),
    "missing module tensor": (
        lambda d, t: _remove(d, t, "module.0.bias"),
        r"lacks tensors of the rebuilt module: \['0.bias'\]",
    ),
    "missing optimizer tensor": (
        lambda d, t: _remove(d, t, "optimizer.state.0.exp_avg"),
        "refers to tensor 'optimizer.state.0.exp_avg', which the file lacks",
    ),
    "tensor in another place": (
        lambda d, t: d["params"].update(lam={"$tensor": "module.0.bias"}),
        "param.lam refers to tensor 'module.0.bias'",
    ),
    "estimator class": (
        lambda d, t: d.update(estimator="sklearn.svm:SVC"),
        "estimator of class 'sklearn.svm:SVC'; only ROLLClassifier and ROLLRegressor",
    ),
    "unknown parameter": (
        lambda d, t: d["params"].update(frobnicate=1),
        r"Unknown parameters in the description: \['frobnicate'\]",
    ),
    "missing parameter": (
        lambda d, t: d["params"].pop("lam"),
        r"lacks the parameters \['lam'\]",
    ),
    "invalid parameter": (
        lambda d, t: d["params"].update(lr=-1.0),
        "does not rebuild a ROLLClassifier: The 'lr' parameter",
    ),
    "unknown module parameter": (
        lambda d, t: d["params"].update(module__frobnicate=1),
        "unexpected keyword argument 'frobnicate'",
    ),
    "unknown fitted attribute": (
        lambda d, t: d["fitted"].update(coef_=1),
        r"Unknown fitted attributes in the description: \['coef_'\]",
    ),
    "unknown entry": (
        lambda d, t: d.update(signature="..."),
        "Unknown entries in the description: 'signature'",
    ),
    "missing entry": (lambda d, t: d.pop("history"), "Missing entries in the description"),
    "unknown value tag": (
        lambda d, t: d["params"].update(lam={"$pickle": "gASV"}),
        "param.lam: unknown or malformed value tag '\\$pickle'",
    ),
    "classes and outputs disagree": (
        lambda d, t: d["fitted"]["classes_inferred_"]["$array"].update(shape=[1], data=["no"]),
        "lists 1 classes but n_outputs_=2",
    ),
    "values beyond their dtype": (
        lambda d, t: d["fitted"]["classes_inferred_"]["$array"].update(data=["no", "maybe"]),
        "do not fit dtype '<U3'",
    ),
    "optimizer state of no group": (
        lambda d, t: d["optimizer"]["state"].update({"7": {}}),
        r"names parameters \[7\] of no group",
    ),
}


@pytest.mark.parametrize("case", DESCRIPTION_EDITS)
def test_tampered_files_are_refused(case, model_file, tmp_path):
    edit, message = DESCRIPTION_EDITS[case]
    with pytest.raises(ModelFileError, match=message):
        persistence.load(_edited(model_file, tmp_path, edit))


@pytest.mark.parametrize(
    "text, message",
    [
        (None, "safetensors file without the 'sklearn_roll' description"),
        ("{", "not valid JSON"),
        ('{"format": NaN}', "not strict JSON: it contains NaN"),
        ('{"format": "a", "format": "b"}', "has the key 'format' twice"),
        ("[]", "Not an sklearn-roll model file"),
    ],
)
def test_files_without_a_valid_description_are_refused(text, message, model_file, tmp_path):
    path = tmp_path / "other.safetensors"
    tensors = model_file[4]
    if text is None:
        safetensors.torch.save_file(tensors, path)
    else:
        _write(path, text, tensors)
    with pytest.raises(ModelFileError, match=message):
        persistence.load(path)


def test_deeply_nested_json_is_refused(model_file, tmp_path):
    text = json.dumps(model_file[3]).replace(
        '"gamma": 100.0', '"gamma": ' + "[" * 10**5 + "]" * 10**5
    )
    path = tmp_path / "nested.safetensors"
    _write(path, text, model_file[4])
    with pytest.raises(ModelFileError, match="nested too deeply"):
        persistence.load(path)


def test_a_regressor_file_is_not_a_classifier(saved):
    est, _, _, allowed, path = saved
    other = ROLLClassifier if isinstance(est, ROLLRegressor) else ROLLRegressor
    with pytest.raises(ModelFileError, match=f"holds a {type(est).__name__}, not a"):
        other.load(path, allowed_modules=allowed)


def test_other_library_versions_warn_but_load(model_file, tmp_path):
    est, X, *_ = model_file
    path = _edited(model_file, tmp_path, lambda d, t: d["versions"].update(torch="0.0.1"))
    with pytest.warns(UserWarning, match=r"torch 0.0.1 \(here .*\); predictions"):
        loaded = ROLLClassifier.load(path)
    _assert_identical(_answers(est, X), _answers(loaded, X))


@pytest.mark.skipif(torch.cuda.is_available(), reason="maps to the CPU only without CUDA")
def test_a_gpu_model_loads_on_the_cpu_with_a_warning(model_file, tmp_path):
    est, X, *_ = model_file
    path = _edited(model_file, tmp_path, lambda d, t: d["params"].update(device="cuda"))
    with pytest.warns(DeviceWarning, match="CUDA is not available"):
        loaded = ROLLClassifier.load(path)
    assert loaded.device == "cpu"
    _assert_identical(_answers(est, X), _answers(loaded, X))


# ------------------------------------------------------------ allowed classes


@pytest.fixture(scope="module")
def user_file(tmp_path_factory):
    est, X, y, _ = _case("user-regressor")
    path = tmp_path_factory.mktemp("user") / "model.safetensors"
    est.fit(X, y).save(path)
    return est, X, path


def test_a_user_module_class_must_be_allowed(user_file):
    est, X, path = user_file
    name = f"{TinyNet.__module__}:TinyNet"
    with pytest.raises(ModelFileError, match=f"param.module names the class '{name}', which"):
        ROLLRegressor.load(path)
    with pytest.raises(ModelFileError, match="not allowed"):
        ROLLRegressor.load(path, allowed_modules=[nn.Linear])
    for allowed in (TinyNet, [name]):
        loaded = ROLLRegressor.load(path, allowed_modules=allowed)
        assert loaded.module is TinyNet
        _assert_identical(_answers(est, X), _answers(loaded, X))


@pytest.fixture
def payload(tmp_path, monkeypatch):
    """An importable module that leaves a mark when imported, and a spy on os.system."""
    (tmp_path / "roll_payload.py").write_text(
        "import pathlib\n"
        "pathlib.Path(__file__).with_suffix('.ran').write_text('imported')\n"
        "class Net:\n"
        "    pass\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    calls = []
    monkeypatch.setattr(os, "system", lambda *args: calls.append(args))
    yield calls
    assert "roll_payload" not in sys.modules
    assert not (tmp_path / "roll_payload.ran").exists()
    assert calls == []


@pytest.mark.parametrize("param", ["module", "optimizer", "criterion", "dataset"])
@pytest.mark.parametrize(
    "target",
    [
        "os:system",
        "roll_payload:Net",
        "builtins:eval",
        "torch.optim.lr_scheduler:LambdaLR",
        "torch.optim.adam:torch",
        "torch.nn.modules.loss:Module",
    ],
)
def test_code_that_a_file_names_is_never_imported_or_called(
    param, target, payload, model_file, tmp_path
):
    path = _edited(
        model_file, tmp_path, lambda d, t: d["params"].update({param: {"$class": target}})
    )
    with pytest.raises(ModelFileError, match=f"param.{param} names the class '{target}', which is"):
        persistence.load(path)


def test_allowed_modules_takes_classes_and_import_paths(model_file):
    with pytest.raises(TypeError, match="allowed_modules takes classes and import paths"):
        persistence.load(model_file[2], allowed_modules=[TinyNet(5, 1)])


# ------------------------------------------------------------------ saving


def test_save_refuses_what_a_file_cannot_describe(model_file, tmp_path):
    est, X, *_ = model_file
    y = est.classes_[np.arange(len(X)) % 2]
    path = tmp_path / "model.safetensors"
    with pytest.raises(NotFittedError):
        ROLLClassifier().save(path)

    class Subclass(ROLLClassifier):
        pass

    with pytest.raises(TypeError, match="save stores ROLLClassifier and ROLLRegressor"):
        persistence.save(Subclass(max_epochs=0).fit(X, y), path)
    with_callback = ROLLClassifier(max_epochs=0, callbacks=[EpochTimer()]).fit(X, y)
    with pytest.raises(TypeError, match=r"Cannot save param.callbacks.0=<skorch"):
        with_callback.save(path)
    with_split = ROLLRegressor(max_epochs=0, train_split=ValidSplit(2)).fit(X, X[:, 0])
    with pytest.raises(TypeError, match="Cannot save param.train_split=.*ValidSplit"):
        with_split.save(path)
    assert not path.exists()


def test_docstring_examples_run():
    finder, runner = doctest.DocTestFinder(), doctest.DocTestRunner()
    tests = finder.find(persistence)
    for method in (estimators._ROLLMixin.save, estimators._ROLLMixin.load.__func__):
        tests += finder.find(method, method.__qualname__, globs={})
    assert sum(len(t.examples) for t in tests) > 20
    for test in tests:
        runner.run(test)
    assert runner.failures == 0
