"""Certificates of real tables: ColumnTransformers, and balls in the subspace of some columns.

Every certificate is checked against an independent float64 computation: per-unit
autograd of the network at the pipeline's own transform, with the raw-unit Jacobian of
that transform measured by differences of its outputs; and by sampling points inside
the certified balls, in raw units, through the pipeline's transform.
"""

import copy

import numpy as np
import pandas as pd
import pytest
from sklearn.compose import ColumnTransformer
from sklearn.datasets import load_wine
from sklearn.decomposition import PCA
from sklearn.model_selection import GridSearchCV
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import (
    MinMaxScaler,
    OneHotEncoder,
    QuantileTransformer,
    StandardScaler,
)

from reference import ball_points, margins, output_gradients, pattern, unit_gradients
from sklearn_roll import ROLLClassifier, ROLLRegressor, certified_margin, explain
from sklearn_roll._affine import affine_map
from sklearn_roll.metrics import margin_scorer
from sklearn_roll.regions import (
    FLOAT32_RTOL,
    activation_patterns,
    certified_radius,
    count_linear_regions,
    directional_margin,
    stability_bounds,
)

pytestmark = pytest.mark.usefixtures("one_thread")

P_AND_Q = [(1, np.inf), (2, 2), (np.inf, 1)]
SMALL = dict(hidden_layer_sizes=(16,), lam=0.5, max_epochs=5, random_state=0, n_threads=1)
NUMERIC = ["alcohol", "malic_acid", "ash", "magnesium", "hue", "proline"]


@pytest.fixture(scope="module")
def table():
    """Wine with two categorical columns: strings, and integer codes."""
    data = load_wine(as_frame=True)
    frame = data.frame[NUMERIC].copy()
    rng = np.random.RandomState(0)
    frame["region"] = np.array(["north", "south", "east"])[
        (data.target + rng.randint(0, 2, 178)) % 3
    ]
    frame["grade"] = rng.randint(1, 5, 178)
    frame["notes"] = "none"
    return frame, data.target.to_numpy()


def _encoder():
    return ColumnTransformer(
        [
            ("num", StandardScaler(), ["alcohol", "malic_acid", "ash", "hue"]),
            ("big", MinMaxScaler(), ["magnesium", "proline"]),
            ("cat", OneHotEncoder(), ["region", "grade"]),
            ("skip", "drop", ["notes"]),
        ]
    )


@pytest.fixture(scope="module", params=["classifier", "regressor"])
def encoded(request, table):
    frame, y = table
    est = ROLLClassifier(**SMALL) if request.param == "classifier" else ROLLRegressor(**SMALL)
    target = y if request.param == "classifier" else frame["proline"].to_numpy() / 100 + y
    return make_pipeline(_encoder(), est).fit(frame, target)


def _network64(pipe):
    return copy.deepcopy(pipe[-1].module_).double().eval()


def _jacobian(pipe, frame, columns):
    """d transform / d columns, by unit differences of the pipeline's own transform."""
    base = pipe[:-1].transform(frame.iloc[:1])
    rows = []
    for column in columns:
        moved = frame.iloc[:1].copy()
        moved[column] = moved[column] + 1.0
        rows.append(pipe[:-1].transform(moved)[0] - base[0])
    return np.stack(rows, axis=1)  # (inner features, moving columns)


def _reference(pipe, frame, columns):
    """z_u and their raw-unit gradients with respect to the moving columns."""
    z, g = unit_gradients(_network64(pipe), pipe[:-1].transform(frame))
    return z, g @ _jacobian(pipe, frame, columns)


@pytest.mark.parametrize("p, q", P_AND_Q)
def test_margins_over_the_numeric_columns_match_a_hand_computation(encoded, table, p, q):
    frame = table[0].iloc[::20]
    z, g = _reference(encoded, frame, NUMERIC)
    expected = margins(z, g, q)
    got = certified_margin(encoded, frame, p, features=NUMERIC, precision="float64")
    np.testing.assert_allclose(got, expected, rtol=1e-9)
    got32 = certified_margin(encoded, frame, p, features=NUMERIC)
    assert np.all(got32 <= expected * (1 + 1e-12))
    assert np.all(got32 >= expected * (1 - 10 * FLOAT32_RTOL))
    # Indices name the same columns; a subset gives larger balls.
    indices = [list(frame.columns).index(c) for c in NUMERIC]
    np.testing.assert_array_equal(
        certified_margin(encoded, frame, p, features=indices, precision="float64"), got
    )
    two = certified_margin(encoded, frame, p, features=["alcohol", "hue"], precision="float64")
    z2, g2 = _reference(encoded, frame, ["alcohol", "hue"])
    np.testing.assert_allclose(two, margins(z2, g2, q), rtol=1e-9)
    assert np.all(two >= got * (1 - 1e-12))


@pytest.mark.parametrize("p, q", P_AND_Q)
def test_points_inside_the_raw_ball_keep_the_pattern(encoded, table, p, q, rng):
    frame = table[0].iloc[::30]
    network = _network64(encoded)
    z, g = _reference(encoded, frame, NUMERIC)
    radius = certified_margin(encoded, frame, p, features=NUMERIC, precision="float64")

    def pattern_of(row, points):
        moved = pd.concat([row] * len(points), ignore_index=True)
        moved[NUMERIC] = points
        return pattern(network, encoded[:-1].transform(moved))

    for i in range(len(frame)):
        row = frame.iloc[i : i + 1]
        x = row[NUMERIC].to_numpy(dtype=float)[0]
        assert np.isfinite(radius[i]) and radius[i] > 0
        inside = pattern_of(row, ball_points(x, radius[i], p, z[i], g[i], rng))
        assert (inside == pattern_of(row, x[None])).all(), f"sample {i}, p={p}"
        if p == 2:
            norms = np.linalg.norm(g[i], axis=1)
            u = np.argmin(np.where(norms > 0, np.abs(z[i]) / norms, np.inf))
            step = -np.sign(z[i, u]) * g[i, u] / norms[u]
            beyond = pattern_of(row, np.stack([x, x + 1.01 * radius[i] * step]))
            assert (beyond[0] != beyond[1]).any(), f"sample {i}"


def test_every_certificate_takes_features(encoded, table):
    frame = table[0].iloc[:8]
    moving = [list(frame.columns).index(c) for c in NUMERIC]
    fixed = np.setdiff1d(np.arange(frame.shape[1]), moving)
    network = _network64(encoded)
    inner = encoded[:-1].transform(frame)
    J = _jacobian(encoded, frame, NUMERIC)
    out, og = output_gradients(network, inner)
    classifier = isinstance(encoded[-1], ROLLClassifier)
    picked = out.argmax(axis=1) if classifier else np.zeros(len(frame), dtype=int)
    scale = 1.0 if classifier else encoded[-1].y_scale_[0]
    grads = explain(encoded, frame, features=NUMERIC, precision="float64")
    assert grads.shape == frame.shape and np.isnan(grads[:, fixed]).all()
    np.testing.assert_allclose(
        grads[:, moving], og[np.arange(len(frame)), picked] @ J * scale, rtol=1e-9
    )
    z, g = _reference(encoded, frame, NUMERIC)
    direction = np.linspace(-1, 1, len(NUMERIC))
    t = directional_margin(encoded, frame, direction, features=NUMERIC)
    gd = g @ (direction / np.linalg.norm(direction))
    expected = np.where(z * gd < 0, np.abs(z) / np.abs(gd), np.inf).min(axis=1)
    np.testing.assert_allclose(t, expected, rtol=1e-9)
    lower, upper = stability_bounds(encoded, frame, features=NUMERIC)
    assert np.isnan(lower[:, fixed]).all() and np.isnan(upper[:, fixed]).all()
    axis = np.eye(len(NUMERIC))[2]
    np.testing.assert_allclose(
        upper[:, moving[2]], directional_margin(encoded, frame, axis, features=NUMERIC)
    )
    assert np.all(lower[:, moving] <= 0) and np.all(upper[:, moving] >= 0)
    np.testing.assert_array_equal(
        activation_patterns(encoded, frame, features=NUMERIC, precision="float64"),
        pattern(network, inner),
    )
    n_patterns, n_jacobians = count_linear_regions(encoded, frame, features=NUMERIC)
    assert n_patterns == len(np.unique(pattern(network, inner), axis=0)) >= n_jacobians >= 1
    if classifier:
        radius = certified_radius(encoded, frame, features=NUMERIC, precision="float64")
        full = certified_margin(encoded, frame, features=NUMERIC, precision="float64")
        assert np.all(radius <= full)
        np.testing.assert_array_equal(encoded[-1].predict(inner), encoded.predict(frame))


def test_a_column_transformer_of_affine_parts_folds(table):
    frame, y = table
    numeric = frame[NUMERIC].to_numpy()
    ct = ColumnTransformer(
        [
            ("scale", StandardScaler(), [0, 1]),
            ("pca", PCA(n_components=2, whiten=True), [2, 3, 4]),
            ("skip", "drop", [5]),
        ],
        remainder="passthrough",
    ).fit(numeric)
    np.testing.assert_allclose(affine_map(ct, "ct")(numeric[:20]), ct.transform(numeric[:20]))
    ct = ColumnTransformer(
        [("scale", StandardScaler(), [0, 1, 3]), ("keep", "passthrough", [4, 5])]
    )
    pipe = make_pipeline(ct, StandardScaler(), ROLLClassifier(**SMALL)).fit(numeric, y)
    A = np.stack(
        [
            pipe[:-1].transform(np.eye(6)[[j]]) - pipe[:-1].transform(np.zeros((1, 6)))
            for j in range(6)
        ]
    )[:, 0].T
    X = numeric[::25]
    z, g = unit_gradients(_network64(pipe), pipe[:-1].transform(X))
    for p, q in P_AND_Q:
        np.testing.assert_allclose(
            certified_margin(pipe, X, p, precision="float64"), margins(z, g @ A, q), rtol=1e-9
        )
    # Column 2 is dropped: its margin is unbounded in its own subspace.
    assert np.isinf(certified_margin(pipe, X, features=[2])).all()


def test_scorers_take_features(table):
    frame, y = table
    search = GridSearchCV(
        make_pipeline(_encoder(), ROLLClassifier(**SMALL)),
        {"rollclassifier__lam": [0.0, 1.0]},
        scoring={"accuracy": "accuracy", "margin": margin_scorer(features=NUMERIC)},
        refit=False,
        cv=2,
    ).fit(frame, y)
    assert np.all(search.cv_results_["mean_test_margin"] > 0)
    assert "features=['alcohol'" in repr(margin_scorer(features=NUMERIC))


def test_bare_estimators_take_features(wine, rng):
    X, y = wine
    frame = pd.DataFrame(X, columns=[f"f{i}" for i in range(X.shape[1])])
    clf = ROLLClassifier(**SMALL).fit(frame, y)
    z, g = unit_gradients(_network64(make_pipeline(clf)), X[:10])
    features = [1, 4, 7]
    for p, q in P_AND_Q:
        expected = margins(z, g[:, :, features], q)
        np.testing.assert_allclose(
            certified_margin(
                clf, frame.iloc[:10], p, features=["f4", "f1", "f7"], precision="float64"
            ),
            expected,
            rtol=1e-9,
        )
        got = clf.certified_margin(frame.iloc[:10], p, features=features)
        assert np.all(got <= expected * (1 + 1e-12))
    grads = clf.explain(frame.iloc[:10], features=features, precision="float64")
    full = clf.explain(frame.iloc[:10], precision="float64")
    np.testing.assert_array_equal(grads[:, features], full[:, features])
    assert np.isnan(np.delete(grads, features, axis=1)).all()


NOT_AFFINE = r"features= moves \['{}'\], which step 'columntransformer__cat' \(OneHotEncoder\)"


@pytest.mark.parametrize(
    "features, error, message",
    [
        (["region"], ValueError, NOT_AFFINE.format("region")),
        (["alcohol", "grade"], ValueError, NOT_AFFINE.format("grade")),
        (["notes"], ValueError, r"features names 'notes', which is not a numeric column"),
        (["colour"], ValueError, r"unknown column 'colour'; the columns are 'alcohol', "),
        ([12], ValueError, r"column index 12, outside \[0, 9\)"),
        ([], ValueError, "features is empty"),
        (["hue", "hue"], ValueError, "more than once"),
        ([1.5], ValueError, r"names \(str\) or indices \(int\), got 1.5"),
    ],
)
def test_bad_features_are_named(encoded, table, features, error, message):
    frame = table[0].iloc[:3]
    for call in (certified_margin, explain, stability_bounds):
        with pytest.raises(error, match=message):
            call(encoded, frame, features=features)


def test_a_table_with_categories_needs_features(encoded, table):
    frame = table[0].iloc[:3]
    with pytest.raises(ValueError, match=r"'columntransformer__cat' \(OneHotEncoder\).*features="):
        certified_margin(encoded, frame)


def test_a_moving_column_through_a_step_that_is_not_affine_is_named(table):
    frame, y = table
    ct = ColumnTransformer(
        [
            ("q", QuantileTransformer(n_quantiles=20), ["alcohol"]),
            ("cat", OneHotEncoder(), ["region"]),
        ]
    )
    pipe = make_pipeline(ct, ROLLClassifier(**SMALL)).fit(frame, y)
    with pytest.raises(ValueError, match=r"step 'columntransformer__q' \(QuantileTransformer\)"):
        certified_margin(pipe, frame.iloc[:3], features=["alcohol"])


def test_names_need_an_estimator_fitted_with_names(wine):
    X, y = wine
    clf = ROLLClassifier(**SMALL).fit(X, y)
    with pytest.raises(ValueError, match="fitted without column names"):
        certified_margin(clf, X[:3], features=["alcohol"])
    rnn = ROLLClassifier("rnn", hidden_layer_sizes=(4,), max_epochs=1).fit(
        X[::9].reshape(-1, 13, 1), y[::9]
    )
    with pytest.raises(ValueError, match="does not apply to sequences"):
        certified_margin(rnn, X[:3].reshape(3, 13, 1), features=[0])
