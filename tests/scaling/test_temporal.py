"""Temporal families and power-law baselines recover the curves they generate."""
import numpy as np
import pytest

from kyx.errors import ConfigError
from kyx.scaling import power_law, temporal

SCHEDULE = temporal.Schedule(n_sep=50, n_total=1000)
N = np.arange(60, 401, 20, dtype=np.float64)      # the first 40% after warmup
LATER = np.array([600.0, 800.0, 1000.0])


@pytest.mark.parametrize("family,c", [
    ("constant", np.array([0.3])),
    ("log", np.array([3.0, -0.2])),
    ("hyperbolic", np.array([0.5, np.log(0.01), 0.05])),
    ("power", np.array([np.log(2.0), np.log(0.4), 1.5])),
    ("cosine", np.array([3.5, 0.6])),
])
def test_family_recovers_and_extrapolates(family, c):
    fn = temporal.FAMILIES.get(family).fn
    rng = np.random.default_rng(1)
    y = fn(c, N, SCHEDULE)
    noisy = y + rng.normal(0, 1e-4 * np.std(y), len(N))
    fit = temporal.fit_family(family, N, noisy, SCHEDULE)
    np.testing.assert_allclose(fit(N), y, rtol=1e-3, atol=1e-6)
    np.testing.assert_allclose(fit(LATER), fn(c, LATER, SCHEDULE), rtol=1e-2)


def test_cosine_follows_the_schedule_phase():
    c = np.array([3.0, 0.5])
    fn = temporal.FAMILIES.get("cosine").fn
    assert fn(c, np.array([50.0]), SCHEDULE)[0] == pytest.approx(3.5)
    assert fn(c, np.array([525.0]), SCHEDULE)[0] == pytest.approx(3.0)
    assert fn(c, np.array([1000.0]), SCHEDULE)[0] == pytest.approx(2.5)


def test_unknown_family_suggests():
    with pytest.raises(ConfigError, match="did you mean hyperbolic"):
        temporal.fit_family("hyperbolik", N, N, SCHEDULE)


def test_kaplan_recovers_a_power_law():
    steps = np.arange(100, 1001, 50, dtype=np.float64)
    loss = 40.0 * steps ** -0.5 + 2.5
    fit = power_law.BASELINES.get("kaplan").fn(steps[:8], loss[:8])
    np.testing.assert_allclose(fit(steps), loss, rtol=1e-4)


def test_chinchilla_recovers_a_power_law():
    steps = np.arange(100, 1001, 50, dtype=np.float64)
    loss = np.exp(3.0) * steps ** -0.7 + 2.0
    fit = power_law.BASELINES.get("chinchilla").fn(steps[:10], loss[:10])
    np.testing.assert_allclose(fit(steps), loss, rtol=1e-3)
