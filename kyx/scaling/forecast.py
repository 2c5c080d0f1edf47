"""Predict a run's future validation loss from its evaluations so far.

The temporal scaling law's protocol (ALGORITHMS.md §3): fit (a0, a1, a2) of the
per-position hyperbola at every evaluation after warmup up to ``until_step`` (each fit
warm-started from the previous one), fit a temporal family to each parameter's
trajectory, extrapolate the parameters to any step and average L_i over the validation
set's positions with its token counts. The power-law baselines fit the aggregate loss of
the same evaluations.
"""
from __future__ import annotations

import dataclasses

import numpy as np

from kyx.errors import DataError
from kyx.scaling import position_law, power_law, temporal
from kyx.scaling.curves import Curve

# The digest's trio is log / hyperbolic / cosine (kyx/scaling/temporal.py); on kyx's runs
# the cosine piece, fitted before the schedule has decayed, extrapolates a2 far below the
# truth and a1 per evaluation is too noisy to extrapolate (docs/scaling.md), so the
# defaults are the combination chosen on one held-in run and checked on the others.
DEFAULT_FAMILIES = {"a0": "log", "a1": "constant", "a2": "power"}
MIN_EVALS = 4
A_FLOOR = 1e-6  # extrapolated parameters are kept positive


@dataclasses.dataclass(frozen=True)
class Forecast:
    schedule: temporal.Schedule
    until_step: int
    fit_steps: np.ndarray                      # evaluations used
    position_fits: list                        # PositionFit per used evaluation
    temporal_fits: dict                        # "a0" -> TemporalFit ...
    baselines: dict                            # name -> callable(steps) -> loss
    count_p: np.ndarray                        # validation tokens per position

    def params_at(self, steps) -> np.ndarray:
        """[S, 3] extrapolated (a0, a1, a2)."""
        steps = np.atleast_1d(np.asarray(steps, np.float64))
        cols = [self.temporal_fits[k](steps) for k in position_law.PARAMS]
        return np.maximum(np.stack(cols, axis=1), A_FLOOR)

    def loss_at(self, steps) -> np.ndarray:
        """The temporal law's aggregate validation loss at ``steps``."""
        return np.array([position_law.weighted_loss(a, self.count_p)
                         for a in self.params_at(steps)])

    def baseline_at(self, name: str, steps) -> np.ndarray:
        return np.asarray(self.baselines[name](np.atleast_1d(np.asarray(steps, np.float64))))

    def predictions(self, step: int | None = None) -> dict:
        """{'temporal': L, <baseline>: L ...} at ``step`` (default: the run's last)."""
        step = self.schedule.n_total if step is None else step
        out = {"temporal": float(self.loss_at(step)[0])}
        out.update({name: float(self.baseline_at(name, step)[0]) for name in self.baselines})
        return out


def forecast(curve: Curve, schedule: temporal.Schedule, until_step: int | None = None,
             families: dict | None = None, baselines=None) -> Forecast:
    """Fit the evaluations with n_sep < step <= until_step (default: all) of ``curve``."""
    families = {**DEFAULT_FAMILIES, **(families or {})}
    for name in families.values():
        temporal.FAMILIES.get(name)  # a clear error for an unknown family
    until = int(curve.steps.max() if until_step is None else until_step)
    used = curve.until(until)
    keep = used.steps > schedule.n_sep
    steps, sum_ep, count_ep = used.steps[keep], used.sum_ep[keep], used.count_ep[keep]
    if len(steps) < MIN_EVALS:
        raise DataError(
            f"{len(steps)} evaluation(s) after warmup (step > {schedule.n_sep}) up to step "
            f"{until}; the forecast needs at least {MIN_EVALS}. Evaluate more often "
            f"(train.eval_every) or fit later (--until-step).")
    fits, init = [], None
    for s_p, c_p in zip(sum_ep, count_ep):
        fit = position_law.fit_positions(s_p, c_p, init)
        fits.append(fit)
        init = fit.a
    a_e3 = np.stack([f.a for f in fits])
    temporal_fits = {k: temporal.fit_family(families[k], steps, a_e3[:, j], schedule)
                     for j, k in enumerate(position_law.PARAMS)}
    loss_e = sum_ep.sum(1) / np.maximum(count_ep.sum(1), 1.0)
    names = power_law.BASELINES.names() if baselines is None else baselines
    fitted = {name: power_law.BASELINES.get(name).fn(steps, loss_e) for name in names}
    return Forecast(schedule, until, steps, fits, temporal_fits, fitted, count_ep[-1])


def relative_error(predicted: float, actual: float) -> float:
    return abs(predicted - actual) / abs(actual)
