"""Progress bars: skorch's over the batches of an epoch, tqdm's over certificate batches."""

import numpy as np
import pytest
from skorch.callbacks import ProgressBar

from sklearn_roll import ROLLClassifier, certified_margin
from sklearn_roll.regions import (
    certified_radius,
    count_linear_regions,
    directional_margin,
    explain,
    stability_bounds,
)

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def clf(iris):
    X, y = iris
    return ROLLClassifier(hidden_layer_sizes=(16,), max_epochs=2, random_state=0).fit(X, y)


def test_certificates_show_a_bar_over_batches_only_when_asked(clf, iris, capsys):
    X, _ = iris
    quiet = certified_margin(clf, X, batch_size=50)
    assert capsys.readouterr().err == ""
    loud = certified_margin(clf, X, batch_size=50, progress=True)
    err = capsys.readouterr().err
    assert "3/3" in err and "batch" in err
    np.testing.assert_array_equal(quiet, loud)
    calls = [
        lambda: certified_radius(clf, X, batch_size=50, progress=True),
        lambda: directional_margin(clf, X, np.ones(X.shape[1]), batch_size=50, progress=True),
        lambda: stability_bounds(clf, X, batch_size=50, progress=True),
        lambda: explain(clf, X, batch_size=50, progress=True),
        lambda: count_linear_regions(clf, X, progress=True),
        lambda: clf.certified_margin(X, batch_size=50, progress=True),
    ]
    for call in calls:
        call()
        assert "batch" in capsys.readouterr().err


def test_verbose_2_adds_skorch_progress_bar(iris, capsys):
    X, y = iris
    small = dict(hidden_layer_sizes=(8,), max_epochs=1, random_state=0)
    loud = ROLLClassifier(verbose=2, **small).fit(X, y)
    assert isinstance(dict(loud.callbacks_)["progress_bar"], ProgressBar)
    assert "0/3" in capsys.readouterr().err  # 150 samples in batches of 64
    for verbose in (0, 1):
        net = ROLLClassifier(verbose=verbose, **small).fit(X, y)
        assert "progress_bar" not in dict(net.callbacks_)
        assert "/3" not in capsys.readouterr().err
