import numpy as np
import pytest
from scipy import stats

from fastbert.tasks.metrics import accuracy, pearson


@pytest.mark.parametrize("n, seed", [(2, 0), (7, 1), (1000, 2)])
def test_pearson_matches_scipy(n, seed):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=n)
    y = 0.3 * x + rng.normal(size=n) * 2 + 5
    assert pearson(x, y) == pytest.approx(stats.pearsonr(x, y)[0], abs=1e-12)
    assert pearson(x.astype(np.float32), y) == pytest.approx(stats.pearsonr(x, y)[0], abs=1e-6)
    assert pearson(x, x * 4 - 1) == pytest.approx(1.0) and pearson(x, -x) == pytest.approx(-1.0)


def test_pearson_constant_and_bad_shapes():
    assert pearson([1.0, 1.0, 1.0], [1.0, 2.0, 3.0]) == 0.0
    with pytest.raises(ValueError):
        pearson([1.0], [2.0])
    with pytest.raises(ValueError):
        pearson([1.0, 2.0], [1.0, 2.0, 3.0])


def test_accuracy_matches_numpy():
    rng = np.random.default_rng(0)
    p, g = rng.integers(0, 5, 777), rng.integers(0, 5, 777)
    assert accuracy(p, g) == pytest.approx(np.mean(p == g))
    assert accuracy([1, 0], [1, 0]) == 1.0
    with pytest.raises(ValueError):
        accuracy([], [])
    with pytest.raises(ValueError):
        accuracy([1, 2], [1])


def test_non_finite_predictions_make_the_metric_nan():
    assert np.isnan(pearson([0.1, float("nan"), 0.3], [1.0, 2.0, 3.0]))  # (a NaN prediction read as 0.0 before)
    assert np.isnan(pearson([float("nan")] * 3, [1.0, 2.0, 3.0]))
    assert np.isnan(pearson([0.1, 0.2, float("inf")], [1.0, 2.0, 3.0]))
    assert np.isnan(accuracy(np.array([1.0, float("nan")]), np.array([1, 0])))
