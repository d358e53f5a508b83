"""Bad input, for every public method of both estimators: a correct result or a clear error.

Each cell of the matrix (input case x method) either raises a ValueError / TypeError
whose message names the problem, or returns the same answer as the equivalent clean
float array.
"""

import pickle
import warnings

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from sklearn.base import clone
from sklearn.exceptions import UndefinedMetricWarning

from sklearn_roll import ROLLClassifier, ROLLRegressor, regions
from sklearn_roll.regions import FLOAT32_RTOL

pytestmark = pytest.mark.usefixtures("one_thread")

SMALL = dict(hidden_layer_sizes=(8,), max_epochs=2, random_state=0, n_threads=1)
N = 40


def _continued(est):
    return pickle.loads(pickle.dumps(est))


# method name -> (callable(est, X, y), needs a classifier)
METHODS = {
    "fit": (lambda est, X, y: clone(est).fit(X, y), False),
    "partial_fit": (lambda est, X, y: clone(est).partial_fit(X, y), False),
    "partial_fit again": (lambda est, X, y: _continued(est).partial_fit(X, y), False),
    "predict": (lambda est, X, y: est.predict(X), False),
    "predict_proba": (lambda est, X, y: est.predict_proba(X), True),
    "score": (lambda est, X, y: est.score(X, y), False),
    "certified_margin": (lambda est, X, y: est.certified_margin(X), False),
    "explain": (lambda est, X, y: est.explain(X, target=0 if is_regressor(est) else None), False),
    "certified_radius": (lambda est, X, y: regions.certified_radius(est, X), True),
    "directional_margin": (
        lambda est, X, y: regions.directional_margin(est, X, np.ones(est.n_features_in_)),
        False,
    ),
    "stability_bounds": (lambda est, X, y: regions.stability_bounds(est, X), False),
    "activation_patterns": (lambda est, X, y: regions.activation_patterns(est, X), False),
    "count_linear_regions": (lambda est, X, y: regions.count_linear_regions(est, X), False),
}
FITTING = {"fit", "partial_fit"}


def is_regressor(est):
    return isinstance(est, ROLLRegressor)


@pytest.fixture(scope="module")
def data(wine):
    X, y = wine
    rows = np.arange(0, len(X), 4)[:N]
    return X[rows], y[rows] % 2


@pytest.fixture(scope="module", params=["classifier", "regressor"])
def model(request, data):
    X, y = data
    if request.param == "classifier":
        return ROLLClassifier(**SMALL).fit(X, y), X, y
    target = np.c_[y, X[:, 0]] / 2.0
    return ROLLRegressor(**SMALL).fit(X, target), X, target


def _cells(model):
    est, X, y = model
    return [
        name
        for name, (_, classifier_only) in METHODS.items()
        if not classifier_only or not is_regressor(est)
    ]


def _call(name, est, X, y):
    return METHODS[name][0](est, X, y)


def _with(X, value, dtype=None):
    bad = X.astype(dtype) if dtype else X.copy()
    bad[1, 2] = value
    return bad


# Refused everywhere: (case, make bad X from X, error type, message pattern).
REFUSED = [
    ("NaN", lambda X: _with(X, np.nan), ValueError, "Input X contains NaN"),
    ("infinity", lambda X: _with(X, np.inf), ValueError, "Input X contains infinity"),
    ("no samples", lambda X: X[:0], ValueError, r"0 sample\(s\)"),
    ("a string", lambda X: _with(X, "a", object), ValueError, "could not convert string to float"),
    ("complex", lambda X: X + 1j, ValueError, "Complex data not supported"),
    ("scipy sparse", sp.csr_matrix, TypeError, "Sparse data was passed.*dense data is required"),
    ("1-D", lambda X: X[0], ValueError, "Expected 2D array, got 1D array"),
    ("3-D", lambda X: X[:, :, None], ValueError, "expects 2-D input|fitted on 2-D input"),
    ("ragged rows", lambda X: [list(X[0]), list(X[1][:-1])], ValueError, "inhomogeneous"),
]


@pytest.mark.parametrize("case, make, error, message", REFUSED, ids=[c[0] for c in REFUSED])
def test_refused_input(model, case, make, error, message):
    est, X, y = model
    bad = make(X)
    y = {"ragged rows": y[:2], "1-D": y[:1], "no samples": y[:0]}.get(case, y)
    for name in _cells(model):
        with pytest.raises(error, match=message):
            _call(name, est, bad, y)


def test_wrong_number_of_features(model):
    est, X, y = model
    for name in _cells(model):
        if name in FITTING:
            assert _call(name, est, X[:, :5], y).n_features_in_ == 5  # a new fit
        else:
            with pytest.raises(ValueError, match="X has 5 features, but .* is expecting 13"):
                _call(name, est, X[:, :5], y)


def test_values_beyond_float32_are_refused_for_training_and_fine_in_float64(model):
    est, X, y = model
    big = _with(X, 1e39)
    for name in _cells(model):
        if name in FITTING or name == "partial_fit again":
            with pytest.raises(ValueError, match="beyond the float32 range"):
                _call(name, est, big, y)
    # Predictions and certificates run in float64, where 1e39 is an ordinary value.
    out = est.predict(big)
    assert np.isfinite(out).all()
    assert not np.isnan(est.certified_margin(big)).any()


def _same(a, b, X):
    """Bit-identical answers: arrays, tuples of arrays, numbers, or models predicting X."""
    if isinstance(a, (ROLLClassifier, ROLLRegressor)):
        a, b = a.predict(X), b.predict(X)
    if isinstance(a, tuple):
        for left, right in zip(a, b):
            _same(left, right, X)
        return
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


# Accepted: the answer equals the one for the clean float64 array.
EQUIVALENT = [
    ("object dtype numbers", lambda X: X.astype(object)),
    ("list of lists", lambda X: X.tolist()),
    ("float32", lambda X: X.astype(np.float32).astype(np.float64)),
    ("DataFrame without column names", pd.DataFrame),
]


@pytest.mark.parametrize("case, make", EQUIVALENT, ids=[c[0] for c in EQUIVALENT])
def test_equivalent_input_gives_the_same_answer(model, case, make):
    est, X, y = model
    clean = make(X) if case == "float32" else X
    for name in _cells(model):
        _same(_call(name, est, clean, y), _call(name, est, make(X), y), clean)


def test_integer_features(model):
    est, X, y = model
    ints = np.round(X * 4).astype(np.int64)
    floats = ints.astype(np.float64)
    for name in _cells(model):
        _same(_call(name, est, floats, y), _call(name, est, ints, y), floats)


def test_one_sample_matches_its_row_of_a_batch(model):
    est, X, y = model
    for name in _cells(model):
        if name in FITTING or name in ("partial_fit again", "score", "count_linear_regions"):
            continue
        whole, one = _call(name, est, X, y), _call(name, est, X[:1], y[:1])
        # Matrix products of other shapes may round differently, as the CPU's kernel
        # for them does: float32 explanations by float32 rounding of their sums (up to
        # 1e-5 of the largest entry), float32 certificates within their contract
        # (both at most, and within 2e-4 of, the float64 one); float64 by its rounding.
        rtol = {
            "explain": 1e-5,
            "certified_margin": 2 * FLOAT32_RTOL,
            "certified_radius": 2 * FLOAT32_RTOL,
        }.get(name, 1e-12)
        for a, b in zip(*(r if isinstance(r, tuple) else (r,) for r in (whole, one))):
            a = np.asarray(a)[:1]
            atol = 1e-5 * np.abs(a).max() if name == "explain" else 0
            np.testing.assert_allclose(a, np.asarray(b), rtol=rtol, atol=atol)
    assert np.isfinite(est.score(X[:1], y[:1])) or is_regressor(est)
    if is_regressor(est):
        # scikit-learn's R^2 is undefined for one sample: NaN with a warning, as everywhere.
        with pytest.warns(UndefinedMetricWarning, match="less than two samples"):
            est.score(X[:1], y[:1])
        clone(est).fit(X[:1], y[:1])
    else:
        with pytest.raises(ValueError, match="only one class"):
            clone(est).fit(X[:1], y[:1])
    assert regions.count_linear_regions(est, X[:1]) == (1, 1)


@pytest.mark.parametrize("columns", [1, "constant"], ids=["one feature", "a constant feature"])
def test_one_feature_and_constant_features_work(model, columns):
    est, X, y = model
    X = X[:, :1] if columns == 1 else np.c_[X[:, :3], np.full(len(X), 2.5)]
    fitted = clone(est).fit(X, y)
    for name in _cells(model):
        result = _call(name, fitted, X, y)
        for part in result if isinstance(result, tuple) else (result,):
            if isinstance(part, np.ndarray) and part.dtype.kind == "f":
                assert not np.isnan(part).any(), name
    margin = fitted.certified_margin(X, precision="float64")
    assert np.all(margin >= 0)


def test_dataframe_feature_names_are_kept_and_checked_everywhere(model):
    est, X, y = model
    columns = [f"f{i}" for i in range(X.shape[1])]
    frame = pd.DataFrame(X, columns=columns)
    fitted = clone(est).fit(frame, y)
    assert list(fitted.feature_names_in_) == columns
    reference = clone(est).fit(X, y)
    renamed = frame.rename(columns={"f0": "other"})
    reordered = frame[columns[::-1]]
    for name in _cells(model):
        if name in FITTING:
            continue
        _same(_call(name, reference, X, y), _call(name, fitted, frame, y), X)
        for wrong in (renamed, reordered):
            with pytest.raises(ValueError, match="feature names"):
                _call(name, fitted, wrong, y)


# Bad targets: (case, y from the valid y, error, message), for fit, partial_fit and
# score; per estimator, since what is bad differs.
COMMON_BAD_TARGETS = [
    ("NaN", lambda y: np.where(np.arange(len(y)) == 3, np.nan, y.T).T, "contains NaN"),
    ("wrong length", lambda y: y[:-1], "inconsistent numbers of samples"),
    ("None", lambda y: None, "requires y to be passed|y_true"),
]
BAD_TARGETS = {
    "classifier": COMMON_BAD_TARGETS
    + [
        ("2-D", lambda y: np.c_[y, y], "1d array|multilabel"),
        ("continuous", lambda y: y + 0.5 * np.arange(len(y)) / len(y), "continuous"),
    ],
    "regressor": COMMON_BAD_TARGETS
    + [
        ("strings", lambda y: np.array(["a"] * len(y)), "could not convert string to float"),
        (
            "beyond float32",
            lambda y: np.where(np.arange(len(y)) == 2, 1e39, y.T).T,
            "float32 range",
        ),
    ],
}


def test_bad_targets(model):
    est, X, y = model
    for case, make, message in BAD_TARGETS["regressor" if is_regressor(est) else "classifier"]:
        bad = make(y)
        for name in ("fit", "partial_fit", "partial_fit again"):
            # A standardised target fits float32 unless the scale is fixed already.
            raw = case == "beyond float32" and name != "partial_fit again"
            refuser = clone(est).set_params(standardize_target=False) if raw else est
            with pytest.raises(ValueError, match=message):
                _call(name, refuser, X, bad)
        if case == "beyond float32":
            continue  # scoring runs in float64, where 1e39 is an ordinary target
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            with pytest.raises(ValueError, match=message if case != "None" else "y_true"):
                est.score(X, bad)


def test_a_single_class(data):
    X, y = data
    clf = ROLLClassifier(**SMALL)
    for call in (
        lambda: clone(clf).fit(X, np.zeros(N)),
        lambda: clone(clf).partial_fit(X, np.zeros(N)),
    ):
        with pytest.raises(ValueError, match="only one class is present"):
            call()
    with pytest.raises(ValueError, match="only one class is present"):
        clone(clf).partial_fit(X, np.zeros(N), classes=[0])
    # With both classes declared, one-class batches are fine, and so is scoring them.
    fitted = clone(clf).partial_fit(X, np.zeros(N), classes=[0, 1])
    assert fitted.score(X, np.zeros(N)) == np.mean(fitted.predict(X) == 0)
    # A constant target is an ordinary regression problem.
    assert np.isfinite(ROLLRegressor(**SMALL).fit(X, np.full(N, 3.0)).predict(X)).all()


def test_bad_arguments_of_the_certificates(model):
    est, X, y = model
    with pytest.raises(ValueError, match="p must be 1, 2 or np.inf"):
        est.certified_margin(X, p=3)
    with pytest.raises(ValueError, match="precision must be one of"):
        regions.activation_patterns(est, X, precision="half")
    for bad in (0, -1, 2.5, True):
        with pytest.raises(ValueError, match="batch_size must be a positive integer"):
            est.certified_margin(X, batch_size=bad)
        with pytest.raises(ValueError, match="batch_size must be a positive integer"):
            regions.explain(est, X, target=0 if is_regressor(est) else None, batch_size=bad)
    d = X.shape[1]
    for direction, message in [
        (np.r_[np.nan, np.ones(d - 1)], "directions must be finite"),
        (np.r_[np.inf, np.ones(d - 1)], "directions must be finite"),
        (np.zeros(d), "non-zero"),
        (np.ones(5), r"shaped like one sample \(13,\)"),
        ("north", "directions must be numeric"),
        (np.ones((3, d)), "one direction per sample"),
    ]:
        with pytest.raises(ValueError, match=message):
            regions.directional_margin(est, X, direction)


# Sequences (module="rnn"): padding errors for every method.
def _sequences(n=16, channels=3):
    rng = np.random.RandomState(0)
    X = [rng.randn(rng.randint(2, 6), channels) for _ in range(n)]
    return X, np.array([int(x[:, 0].sum() > 0) for x in X])


@pytest.fixture(scope="module")
def rnn():
    X, y = _sequences()
    clf = ROLLClassifier("rnn", activation="leaky_relu", **{**SMALL, "hidden_layer_sizes": (4,)})
    return clf.fit(X, y), X, y


BAD_SEQUENCES = [
    (
        "NaN before valid steps",
        lambda s: np.r_[s[:1], np.full((1, 3), np.nan), s[1:]],
        "followed by valid steps",
    ),
    ("NaN in some channels", lambda s: _with(s, np.nan), "in some channels"),
    ("infinity", lambda s: _with(s, np.inf), "infinity"),
    ("zero length", lambda s: s[:0], "zero length"),
    ("only padding", lambda s: np.full_like(s, np.nan), "zero length|no valid time steps"),
    ("wrong channels", lambda s: s[:, :2], "channels"),
]


def _nested(sequences):
    """sktime's nested_univ DataFrame: a row per sequence, a pd.Series per channel."""
    cells = np.empty((len(sequences), sequences[0].shape[1]), dtype=object)
    for (i, c), _ in np.ndenumerate(cells):
        cells[i, c] = pd.Series(sequences[i][:, c])
    return pd.DataFrame(cells)


# The same sequences in each layout: (sequence_layout, list of (T_i, C) -> X, padded).
SEQUENCE_LAYOUTS = {
    "ntc list": ("ntc", list),
    "nct list": ("nct", lambda seqs: [s.T for s in seqs]),
    "ntc array": ("ntc", lambda padded: padded),
    "nct array": ("nct", lambda padded: padded.transpose(0, 2, 1)),
    "nested DataFrame": ("ntc", _nested),
}


@pytest.mark.parametrize("layout", SEQUENCE_LAYOUTS)
@pytest.mark.parametrize("case, make, message", BAD_SEQUENCES, ids=[c[0] for c in BAD_SEQUENCES])
def test_bad_sequences_for_every_method(rnn, case, make, message, layout):
    est, X, y = rnn
    sequence_layout, arrange = SEQUENCE_LAYOUTS[layout]
    est = _continued(est).set_params(sequence_layout=sequence_layout)
    bad = [make(X[0])] + list(X[1:4])
    if layout.endswith("array"):
        if case in ("zero length", "wrong channels"):
            return  # a padded array holds neither
        padded = np.full((4, 8, 3), np.nan)
        for i, s in enumerate(bad):
            padded[i, : len(s)] = s
        bad = padded
    names = [name for name in _cells((est, X, y)) if name != "directional_margin"]
    if layout.startswith("nested") and case == "wrong channels":
        # Every sequence of a frame has its columns: a new fit is fine, the others refuse it.
        bad = [s[:, :2] for s in bad]
        names = [name for name in names if name not in FITTING]
    for name in names:
        with pytest.raises(ValueError, match=message):
            _call(name, est, arrange(bad), y[:4])


def test_sequences_in_the_wrong_layout(rnn):
    est, X, y = rnn
    for bad, message in [
        (np.zeros((4, 3)), "3-D"),
        ([x[:, 0] for x in X[:4]], "a list of 2-D arrays"),
        (sp.csr_matrix(np.zeros((4, 3))), "Sparse data was passed"),
    ]:
        for name in _cells((est, X, y)):
            if name == "directional_margin":
                continue
            with pytest.raises((ValueError, TypeError), match=message):
                _call(name, est, bad, y[:4])
