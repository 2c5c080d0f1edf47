"""Baselines: power laws of the aggregate validation loss against training steps.

    kaplan       L(N) = A * N^(-alpha) + L_inf     least squares on L (Kaplan et al. 2020)
    chinchilla   L(D) = E + B * D^(-beta)          Huber loss (delta 1e-3) on log L with
                                                   log L = LSE(log B - beta log D, log E),
                                                   best of a grid of starts (Hoffmann et
                                                   al. 2022, with the model size fixed)

N and D are both the step count here (one run: tokens = steps x tokens per step, a
rescaling absorbed by A and B). Parameters are log-parametrised (all positive). A new
baseline is a function ``fit(n, loss) -> callable(n)`` plus its ``@BASELINES.register``.
"""
from __future__ import annotations

import itertools

import numpy as np
from scipy import optimize, special

from kyx.registry import Registry

BASELINES = Registry("scaling baseline")


@BASELINES.register("kaplan")
def fit_kaplan(n, loss):
    n, loss = np.asarray(n, np.float64), np.asarray(loss, np.float64)

    def model(p, n):
        return np.exp(p[0]) * n ** -np.exp(p[1]) + np.exp(p[2])

    floor = max(float(loss.min()) * 0.5, 1e-3)
    alpha = 0.3
    amp = max(float(loss[0] - floor) * n[0] ** alpha, 1e-6)
    result = optimize.least_squares(lambda p: model(p, n) - loss,
                                    np.log([amp, alpha, floor]), max_nfev=5000)
    return lambda m: model(result.x, np.asarray(m, np.float64))


@BASELINES.register("chinchilla")
def fit_chinchilla(n, loss):
    log_n, log_loss = np.log(np.asarray(n, np.float64)), np.log(np.asarray(loss, np.float64))

    def log_model(p, log_n):  # p = (log B, beta, log E)
        return special.logsumexp(np.stack([p[0] - p[1] * log_n,
                                           np.full_like(log_n, p[2])]), axis=0)

    best = None
    for log_b, beta, log_e in itertools.product((0.0, 5.0, 10.0), (0.1, 0.5, 1.0),
                                                (-1.0, 0.5, 1.5)):
        result = optimize.least_squares(lambda p: log_model(p, log_n) - log_loss,
                                        [log_b, beta, log_e], loss="huber", f_scale=1e-3,
                                        max_nfev=2000)
        if best is None or result.cost < best.cost:
            best = result
    return lambda m: np.exp(log_model(best.x, np.log(np.asarray(m, np.float64))))
