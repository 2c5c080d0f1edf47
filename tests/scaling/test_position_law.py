"""The per-position hyperbola: recovery of known parameters and the aggregate forms."""
import numpy as np
import pytest

from kyx.errors import DataError
from kyx.scaling import position_law as pl


def _synthetic(a, n=128, tokens=400, noise=0.02, seed=0):
    """Per-position sums/counts of a validation set whose mean loss at position i is the
    law plus Gaussian noise on each token's mean (a finite sample)."""
    rng = np.random.default_rng(seed)
    count_p = np.full(n, float(tokens))
    count_p[-10:] = tokens // 4             # fewer tokens at late positions, as in packed rows
    loss_p = pl.hyperbola(a, pl.positions(n)) + rng.normal(0, noise, n) / np.sqrt(count_p / tokens)
    return loss_p * count_p, count_p


@pytest.mark.parametrize("a", [(2.0, 0.05, 3.0), (0.8, 0.5, 4.5), (4.0, 0.01, 2.0)])
def test_fit_recovers_known_parameters(a):
    sum_p, count_p = _synthetic(np.array(a))
    fit = pl.fit_positions(sum_p, count_p)
    np.testing.assert_allclose(fit.a, a, rtol=0.08)
    assert fit.r2 > 0.9


def test_fit_without_noise_is_exact_and_warm_start_agrees():
    a = np.array([1.5, 0.2, 3.3])
    sum_p, count_p = _synthetic(a, noise=0.0)
    cold = pl.fit_positions(sum_p, count_p)
    warm = pl.fit_positions(sum_p, count_p, init=a * 1.3)
    np.testing.assert_allclose(cold.a, a, rtol=1e-5)
    np.testing.assert_allclose(warm.a, a, rtol=1e-5)
    assert cold.r2 == pytest.approx(1.0, abs=1e-9)


def test_positions_without_tokens_are_ignored():
    a = np.array([1.5, 0.2, 3.3])
    sum_p, count_p = _synthetic(a, noise=0.0)
    sum_p[5:9], count_p[5:9] = 0.0, 0.0
    sum_p[20] = 1e6  # garbage where the count is zero must not matter
    count_p[20] = 0.0
    np.testing.assert_allclose(pl.fit_positions(sum_p, count_p).a, a, rtol=1e-5)


def test_aggregates():
    a = np.array([2.0, 0.05, 3.0])
    n = 64
    direct = np.mean(pl.hyperbola(a, np.arange(1, n + 1)))
    assert pl.context_mean_loss(a, n) == pytest.approx(direct, rel=1e-10)
    counts = np.arange(n, 0, -1.0)
    expected = np.sum(counts * pl.hyperbola(a, np.arange(1, n + 1))) / counts.sum()
    assert pl.weighted_loss(a, counts) == pytest.approx(expected, rel=1e-12)


def test_bad_input_is_a_clear_error():
    with pytest.raises(DataError, match="at least 4"):
        pl.fit_positions([1.0, 2.0, 3.0], [1.0, 1.0, 1.0])
    with pytest.raises(DataError, match="1-D arrays of one length"):
        pl.fit_positions(np.ones(8), np.ones(9))
