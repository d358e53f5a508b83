"""Layouts of sequence data: (n, T, C), (n, C, T), nested DataFrames and ragged lists.

The same sequences in any layout reach the network as the same float64 array, so every
answer is bit-identical, and per-coordinate outputs come back in the layout passed.
"""

import pickle
import warnings

import numpy as np
import pandas as pd
import pytest
from sklearn.base import clone
from sklearn.exceptions import DataDimensionalityWarning
from sklearn.utils._param_validation import InvalidParameterError

from sklearn_roll import ROLLClassifier, persistence, regions
from sklearn_roll._validation import SEQUENCE_LAYOUTS

pytestmark = pytest.mark.usefixtures("one_thread")

SMALL = dict(
    hidden_layer_sizes=(5,),
    activation="leaky_relu",
    negative_slope=0.1,
    lam=0.5,
    max_epochs=2,
    random_state=0,
    n_threads=1,
)
CHANNELS = 3


def _ragged(seed=0, n=24, lengths=(4, 10)):
    rng = np.random.RandomState(seed)
    X = [rng.randn(rng.randint(*lengths), CHANNELS) for _ in range(n)]
    return X, np.array([int(x[:, 0].sum() > 0) for x in X])


def _padded(X):
    out = np.full((len(X), max(map(len, X)), CHANNELS), np.nan)
    for i, x in enumerate(X):
        out[i, : len(x)] = x
    return out


def _nested(X, columns=("x", "y", "z")):
    """sktime's nested_univ: a row per sequence, a column per channel, a pd.Series per cell."""
    cells = np.empty((len(X), X[0].shape[1]), dtype=object)
    for i, x in enumerate(X):
        for c in range(x.shape[1]):
            cells[i, c] = pd.Series(x[:, c], index=pd.RangeIndex(10, 10 + len(x)))
    return pd.DataFrame(cells, columns=list(columns), index=[f"s{i}" for i in range(len(X))])


def _from_nested(frame):
    """A nested DataFrame back to a list of (T_i, C) arrays."""
    return [np.column_stack([cell.to_numpy() for cell in row]) for row in frame.to_numpy()]


# Each layout: (name, sequence_layout, X from a list of (T_i, C) arrays, that list from
# an output shaped like X).
LAYOUTS = [
    ("ntc list", "ntc", list, list),
    ("nct list", "nct", lambda X: [x.T for x in X], lambda out: [o.T for o in out]),
    ("ntc array", "ntc", _padded, lambda out: list(out)),
    (
        "nct array",
        "nct",
        lambda X: _padded(X).transpose(0, 2, 1),
        lambda out: list(out.transpose(0, 2, 1)),
    ),
    ("nested DataFrame", "ntc", _nested, _from_nested),
    ("nested DataFrame, nct", "nct", _nested, _from_nested),
]


@pytest.fixture(scope="module")
def model():
    X, y = _ragged()
    return ROLLClassifier("rnn", **SMALL).fit(X, y), X, y


def _copy(est):
    return pickle.loads(pickle.dumps(est))


def _answers(est, X, back):
    """Everything a user reads about X, with outputs shaped like X as (T_i, C) arrays."""
    lower, upper = regions.stability_bounds(est, X)
    gradients = est.explain(X)
    return {
        "predict_proba": est.predict_proba(X),
        "margin l2": est.certified_margin(X),
        "margin linf float64": est.certified_margin(X, np.inf, precision="float64"),
        "radius l1": regions.certified_radius(est, X, 1),
        "patterns": regions.activation_patterns(est, X),
        "regions": np.array(regions.count_linear_regions(est, X)),
        # The gradients, in the layout of X, as directions: they go back in as passed.
        "directional": regions.directional_margin(est, X, gradients),
        "explain": back(gradients),
        "lower": back(lower),
        "upper": back(upper),
    }


def _same_sequences(a, b, lengths):
    """Equal per-coordinate outputs: each (T_i, C) prefix, NaN beyond it (padding)."""
    assert len(a) == len(b) == len(lengths)
    for left, right, n in zip(a, b, lengths):
        np.testing.assert_array_equal(left[:n], right[:n])
        assert np.isnan(left[n:]).all() and np.isnan(right[n:]).all()


@pytest.mark.parametrize("name, layout, make, back", LAYOUTS, ids=[c[0] for c in LAYOUTS])
def test_every_layout_gives_identical_answers(model, name, layout, make, back):
    est, X, _ = model
    reference = _answers(est, X, list)
    other = _copy(est).set_params(sequence_layout=layout)
    answers = _answers(other, make(X), back)
    lengths = [len(x) for x in X]
    for key, value in reference.items():
        if key in ("explain", "lower", "upper"):
            _same_sequences(answers[key], value, lengths)
        else:
            np.testing.assert_array_equal(answers[key], value, err_msg=key)


@pytest.mark.parametrize("name, layout, make, back", LAYOUTS, ids=[c[0] for c in LAYOUTS])
def test_fitting_in_any_layout_trains_the_same_network(model, name, layout, make, back):
    est, X, y = model
    other = clone(est).set_params(sequence_layout=layout).fit(make(X), y)
    np.testing.assert_array_equal(other.predict_proba(make(X)), est.predict_proba(X))
    if name.startswith("nested"):
        assert list(other.feature_names_in_) == ["x", "y", "z"]
    else:
        assert not hasattr(other, "feature_names_in_")


def test_outputs_come_back_in_the_layout_passed(model):
    est, X, _ = model
    est_nct = _copy(est).set_params(sequence_layout="nct")
    lists = [x.T for x in X]
    for out in (est_nct.explain(lists), *regions.stability_bounds(est_nct, lists)):
        assert isinstance(out, list) and [o.shape for o in out] == [x.shape for x in lists]
        assert all(o.flags.c_contiguous for o in out)
        assert not any(np.isnan(o).any() for o in out)
    array = _padded(X).transpose(0, 2, 1)
    for out in (est_nct.explain(array), *regions.stability_bounds(est_nct, array)):
        assert out.shape == array.shape and out.flags.c_contiguous
        assert np.array_equal(np.isnan(out), np.isnan(array))
    frame = _nested(X)
    for out in (est.explain(frame), *regions.stability_bounds(est, frame)):
        assert isinstance(out, pd.DataFrame)
        assert out.index.equals(frame.index) and out.columns.equals(frame.columns)
        for got, given in zip(out.to_numpy().ravel(), frame.to_numpy().ravel()):
            assert isinstance(got, pd.Series) and got.index.equals(given.index)
            assert got.dtype == np.float64 and not got.isna().any()


def test_a_single_direction_is_read_in_the_declared_layout(model):
    est, X, _ = model
    direction = np.random.RandomState(1).randn(max(map(len, X)), CHANNELS)
    expected = regions.directional_margin(est, X, direction)
    est_nct = _copy(est).set_params(sequence_layout="nct")
    got = regions.directional_margin(est_nct, [x.T for x in X], direction.T)
    np.testing.assert_array_equal(got, expected)
    with pytest.raises(ValueError, match="as long as the longest"):
        regions.directional_margin(est, X, direction[:-1])
    with pytest.raises(ValueError, match="Invalid directions.*expecting 3 channels"):
        regions.directional_margin(est, X, direction.T)


def test_the_layout_can_change_after_fit(model):
    est, X, _ = model
    assert ROLLClassifier._parameter_constraints["sequence_layout"][0].options == set(
        SEQUENCE_LAYOUTS
    )
    other = _copy(est).set_params(sequence_layout="nct")
    np.testing.assert_array_equal(other.predict_proba([x.T for x in X]), est.predict_proba(X))
    other.set_params(sequence_layout="tnc")
    with pytest.raises(InvalidParameterError, match="'sequence_layout' parameter"):
        other.predict(X)
    with pytest.raises(InvalidParameterError, match="sequence_layout"):
        clone(est).set_params(sequence_layout="tnc").fit(X, np.arange(len(X)) % 2)


def test_the_layout_survives_clone_pickle_and_model_files(model, tmp_path):
    est, X, y = model
    fitted = clone(est).set_params(sequence_layout="nct").fit(_nested(X), y)
    assert clone(fitted).get_params()["sequence_layout"] == "nct"
    lists = [x.T for x in X]
    expected = fitted.certified_margin(lists)
    path = tmp_path / "nct.safetensors"
    persistence.save(fitted, path)
    for copy in (pickle.loads(pickle.dumps(fitted)), persistence.load(path)):
        assert copy.sequence_layout == "nct"
        assert list(copy.feature_names_in_) == ["x", "y", "z"]
        np.testing.assert_array_equal(copy.certified_margin(lists), expected)
        with pytest.raises(ValueError, match="channels .* differ from those seen in fit"):
            copy.predict(_nested(X, columns=("z", "y", "x")))


@pytest.mark.parametrize(
    "shape", [(20, 6, 100), (20, 1, 24)], ids=["BasicMotions-like", "ItalyPowerDemand-like"]
)
def test_fewer_steps_than_channels_warns_naming_the_parameter(shape):
    X = np.random.RandomState(0).randn(*shape)
    y = np.arange(shape[0]) % 2
    est = ROLLClassifier("rnn", **{**SMALL, "lam": 0.0, "max_epochs": 1})
    message = r"fewer time steps \(\d+\) than channels.*sequence_layout='nct'"
    with pytest.warns(DataDimensionalityWarning, match=message):
        clone(est).fit(X, y)
    with pytest.warns(DataDimensionalityWarning, match="the sequences are"):
        clone(est).fit(list(X), y)
    with warnings.catch_warnings():
        warnings.simplefilter("error", DataDimensionalityWarning)
        fitted = clone(est).set_params(sequence_layout="nct").fit(X, y)
        fitted.predict(X)  # warns at fit only
    assert fitted.n_features_in_ == shape[1]


def test_sktime_basic_motions_in_each_of_its_formats():
    datasets = pytest.importorskip("sktime.datasets", reason="sktime ships BasicMotions")
    X3, y = datasets.load_basic_motions(split="train", return_type="numpy3D", return_X_y=True)
    nested, _ = datasets.load_basic_motions(
        split="train", return_type="nested_univ", return_X_y=True
    )
    assert X3.shape == (40, 6, 100)
    est = ROLLClassifier("rnn", **{**SMALL, "lam": 0.0, "max_epochs": 1})
    with pytest.warns(DataDimensionalityWarning, match="sequence_layout='nct'"):
        clone(est).fit(X3, y)
    fitted = clone(est).set_params(sequence_layout="nct").fit(X3, y)
    assert fitted.n_features_in_ == 6
    as_ntc = clone(est).fit(X3.transpose(0, 2, 1), y)
    from_nested = clone(est).fit(nested, y)
    assert list(from_nested.feature_names_in_) == [f"dim_{c}" for c in range(6)]
    margins = fitted.certified_margin(X3[:4])
    for other, X in ((as_ntc, X3.transpose(0, 2, 1)), (from_nested, nested)):
        np.testing.assert_array_equal(other.predict_proba(X), fitted.predict_proba(X3))
        np.testing.assert_array_equal(other.certified_margin(X[:4]), margins)
    gradients = from_nested.explain(nested.iloc[:2])
    assert gradients.shape == (2, 6) and len(gradients.iloc[0, 0]) == 100
    np.testing.assert_array_equal(
        np.stack([np.stack(list(row)) for row in gradients.to_numpy()]), fitted.explain(X3[:2])
    )


def test_sktime_japanese_vowels_nested_frame_with_unequal_lengths():
    datasets = pytest.importorskip("sktime.datasets", reason="sktime ships Japanese Vowels")
    nested, y = datasets.load_japanese_vowels(split="train", return_X_y=True)
    assert isinstance(nested, pd.DataFrame) and nested.shape == (270, 12)
    rows = np.arange(0, 270, 9)
    lists = _from_nested(nested.iloc[rows])
    assert len({len(x) for x in lists}) > 1
    est = ROLLClassifier("rnn", **{**SMALL, "max_epochs": 1})
    from_lists = clone(est).fit(lists, y[rows])
    from_nested = clone(est).fit(nested.iloc[rows], y[rows])
    np.testing.assert_array_equal(
        from_nested.certified_margin(nested.iloc[rows]), from_lists.certified_margin(lists)
    )
    aeon_style = [x.T for x in lists]  # aeon's unequal-length format: (C, T_i) arrays
    np.testing.assert_array_equal(
        from_lists.set_params(sequence_layout="nct").predict_proba(aeon_style),
        from_nested.predict_proba(nested.iloc[rows]),
    )


# A sequence_layout that contradicts the data: an error that names the other layout.
def test_a_layout_that_contradicts_the_data_is_refused_with_a_hint(model):
    est, X, y = model
    with pytest.raises(
        ValueError, match=r"same number of channels.*other axis has 3.*sequence_layout='nct'"
    ):
        est.predict([x.T for x in X])
    est_nct = _copy(est).set_params(sequence_layout="nct")
    with pytest.raises(ValueError, match=r"same number of channels.*sequence_layout='ntc'"):
        est_nct.predict(X)
    with pytest.raises(ValueError, match=r"same number of channels.*sequence_layout='ntc'"):
        clone(est_nct).fit(X, y)
    equal = np.random.RandomState(0).randn(4, 7, CHANNELS)
    with pytest.raises(ValueError, match=r"expecting 3 channels.*sequence_layout='ntc'"):
        est_nct.predict(equal)
    with pytest.raises(ValueError, match=r"expecting 3 channels.*sequence_layout='nct'"):
        est.predict(equal.transpose(0, 2, 1))


def _cell(frame, i, j, value):
    frame = frame.copy()
    frame.iat[i, j] = value
    return frame


def _row(frame, i, change):
    frame = frame.copy()
    for j in range(frame.shape[1]):
        frame.iat[i, j] = change(frame.iat[i, j])
    return frame


# Bad nested DataFrames (the shared cases of every layout are in test_bad_input.py).
BAD_FRAMES = [
    ("not a series", lambda f: _cell(f, 1, 2, 0.5), r"a pd.Series per cell.*sample 1"),
    (
        "channels of unequal length",
        lambda f: _cell(f, 1, 2, f.iat[1, 2].iloc[:-1]),
        "sample 1 differ in length between channels",
    ),
    ("empty series", lambda f: _row(f, 1, lambda s: s.iloc[:0]), "Sequence 1 has zero length"),
    ("strings", lambda f: _cell(f, 0, 0, pd.Series(["a"] * len(f.iat[0, 0]))), "numeric"),
]


@pytest.mark.parametrize("case, make, message", BAD_FRAMES, ids=[c[0] for c in BAD_FRAMES])
def test_bad_nested_frames(model, case, make, message):
    est, X, y = model
    bad = make(_nested(X))
    with pytest.raises(ValueError, match=message):
        clone(est).fit(bad, y[: len(bad)])
    with pytest.raises(ValueError, match=message):
        est.certified_margin(bad)


def test_nested_frames_need_a_sequence_model(model, wine):
    est, X, y = model
    frame = _nested(X)
    with pytest.raises(ValueError, match="module='mlp' expects 2-D input.*nested DataFrame"):
        ROLLClassifier(**SMALL).fit(frame, y)
    tabular = ROLLClassifier(**SMALL).fit(*wine)
    with pytest.raises(ValueError, match="fitted on 2-D input.*nested DataFrame"):
        tabular.predict(frame)
