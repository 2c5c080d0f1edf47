"""How the per-position parameters a0, a1, a2 move over training: pluggable families.

The paper models a0, a1, a2 against training progress N with a logarithmic, a hyperbolic
and a piecewise-cosine function respectively (ALGORITHMS.md §3; the exact forms were not
retrieved, so each is a registered family and any a_k can use any of them):

    constant     c0                        (e.g. a1: positions learned at one rate)
    log          c0 + c1 * ln N
    hyperbolic   c0 / (1 + c1 * N) + c2                    (c1 > 0)
    power        c0 * N^(-c1) + c2                         (c0, c1 > 0: decreasing)
    cosine       c0 + c1 * cos(pi * u),  u = (N - N_sep) / (N_total - N_sep) in [0, 1]

``cosine`` follows the learning-rate schedule's cosine piece: N_sep is the end of warmup
(the schedule's breakpoint) and N_total the last step; evaluations before N_sep are not
fitted (the law is fitted after warmup only). A new family is a function plus its
``@FAMILIES.register`` line: ``fn(c, n, schedule)`` and ``init(n, y, schedule)``.
"""
from __future__ import annotations

import dataclasses

import numpy as np
from scipy import optimize

from kyx.registry import Registry

FAMILIES = Registry("temporal family", init=None)


@dataclasses.dataclass(frozen=True)
class Schedule:
    """The run's breakpoints: end of warmup and the last step."""
    n_sep: int
    n_total: int

    @classmethod
    def from_config(cls, cfg) -> "Schedule":
        """A run's breakpoints from its config (optim.warmup_steps, train.steps)."""
        return cls(n_sep=int(cfg.optim.get("warmup_steps", 0)), n_total=int(cfg.train.steps))


@dataclasses.dataclass(frozen=True)
class TemporalFit:
    """A family fitted to one parameter's trajectory."""
    family: str
    c: np.ndarray
    schedule: Schedule

    def __call__(self, n) -> np.ndarray:
        return FAMILIES.get(self.family).fn(self.c, np.asarray(n, np.float64), self.schedule)


def _linear(columns, y):
    """Least-squares coefficients of y on the given columns."""
    return np.linalg.lstsq(np.stack(columns, axis=1), y, rcond=None)[0]


def _constant_init(n, y, schedule):
    return np.array([float(np.mean(y))])


@FAMILIES.register("constant", init=_constant_init)
def constant_family(c, n, schedule):
    return np.full(np.shape(n), c[0])


def _log_init(n, y, schedule):
    return _linear([np.ones_like(n), np.log(n)], y)


@FAMILIES.register("log", init=_log_init)
def log_family(c, n, schedule):
    return c[0] + c[1] * np.log(np.maximum(n, 1.0))


def _hyperbolic_init(n, y, schedule):
    rate = 1.0 / max(float(np.median(n)), 1.0)
    c0, c2 = _linear([1.0 / (1.0 + rate * n), np.ones_like(n)], y)
    return np.array([c0, np.log(rate), c2])


@FAMILIES.register("hyperbolic", init=_hyperbolic_init)
def hyperbolic_family(c, n, schedule):
    return c[0] / (1.0 + np.exp(c[1]) * n) + c[2]


def _power_init(n, y, schedule):
    c0, c2 = _linear([n ** -0.5, np.ones_like(n)], y)
    return np.array([np.log(max(c0, 1e-6)), np.log(0.5), c2])


@FAMILIES.register("power", init=_power_init)
def power_family(c, n, schedule):
    return np.exp(c[0]) * np.maximum(n, 1.0) ** -np.exp(c[1]) + c[2]


def cosine_phase(n, schedule: Schedule):
    span = max(schedule.n_total - schedule.n_sep, 1)
    return np.clip((n - schedule.n_sep) / span, 0.0, 1.0)


def _cosine_init(n, y, schedule):
    return _linear([np.ones_like(n), np.cos(np.pi * cosine_phase(n, schedule))], y)


@FAMILIES.register("cosine", init=_cosine_init)
def cosine_family(c, n, schedule):
    return c[0] + c[1] * np.cos(np.pi * cosine_phase(n, schedule))


def fit_family(name: str, n, y, schedule: Schedule) -> TemporalFit:
    """Least-squares fit (scipy) of family ``name`` to points (n, y), started from the
    family's closed-form or linearised initial guess."""
    entry = FAMILIES.get(name)
    n, y = np.asarray(n, np.float64), np.asarray(y, np.float64)
    start = np.asarray(entry.init(n, y, schedule), np.float64)
    scale = max(float(np.std(y)), 1e-12)

    def residuals(c):
        return (entry.fn(c, n, schedule) - y) / scale

    result = optimize.least_squares(residuals, start, method="lm" if len(n) > len(start)
                                    else "trf", max_nfev=5000)
    return TemporalFit(name, result.x, schedule)
