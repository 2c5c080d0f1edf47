"""The per-position law of the temporal scaling law (Xiong et al., arXiv 2404.17785).

At one evaluation, the validation loss at context position i (1-based: the number of
tokens the model has seen, the target included) follows the hyperbola

    L_i = a0 / (1 + a1 * i) + a2,       a0, a1, a2 > 0,

a0 + a2 ~ the loss with almost no context, a2 the long-context asymptote, a1 the decay
rate. It is fitted to the **per-position sums** of the whole validation set (each
position weighted by its token count, never an average of per-batch averages) by
``scipy.optimize.least_squares`` over log a (positivity), warm-started from the previous
evaluation's fit and from a few fresh starts (the best is kept: a warm start alone can stay
in the basin of a degenerate fit), inside a box (``LOWER``/``UPPER``).
"""
from __future__ import annotations

import dataclasses

import numpy as np
from scipy import optimize, special

from kyx.errors import DataError

PARAMS = ("a0", "a1", "a2")
# Box for the fit. Early in training the curve is nearly flat or straight in i and the
# parameters are not identifiable: for large a1, a0/(1 + a1 i) ~ (a0/a1)/i; for a1 i << 1
# over the whole context the hyperbola is a line a0 + a2 - a0 a1 i, and any split of the
# intercept between a0 and a2 fits. So a1 >= 1/n (the decay reaches half within the n
# measured positions: a2 is an asymptote the data can see) and a1 <= 10.
LOWER = np.array([1e-4, 1e-4, 1e-3])
UPPER = np.array([1e2, 10.0, 1e2])


@dataclasses.dataclass(frozen=True)
class PositionFit:
    """(a0, a1, a2) of one evaluation and the count-weighted R^2 of the fit."""
    a: np.ndarray          # [3] a0, a1, a2
    r2: float

    def loss(self, i) -> np.ndarray:
        """L_i at 1-based positions ``i``."""
        return hyperbola(self.a, np.asarray(i, np.float64))


def hyperbola(a, i):
    a0, a1, a2 = a
    return a0 / (1.0 + a1 * i) + a2


def positions(n: int) -> np.ndarray:
    """1-based positions of a per-position array of length ``n`` (index 0 = position 1)."""
    return np.arange(1, n + 1, dtype=np.float64)


def initial_guess(loss_p: np.ndarray, count_p: np.ndarray) -> np.ndarray:
    """A start for the first fit: asymptote from the last quarter of the positions, the
    head's excess over it as a0, and a decay over ~a tenth of the context."""
    seen = count_p > 0
    loss, idx = loss_p[seen], np.flatnonzero(seen)
    tail = loss[idx >= idx[-1] * 3 // 4] if len(loss) > 3 else loss
    a2 = max(float(np.mean(tail)) * 0.9, 1e-3)
    a0 = max(float(loss[0]) - a2, 1e-2)
    return np.array([a0, 10.0 / max(len(loss_p), 1), a2])


def fit_positions(sum_p, count_p, init=None) -> PositionFit:
    """Fit the hyperbola to per-position loss sums and token counts (positions with no
    tokens are ignored); ``init``: a previous fit's ``a`` to start from."""
    sum_p, count_p = np.asarray(sum_p, np.float64), np.asarray(count_p, np.float64)
    if sum_p.shape != count_p.shape or sum_p.ndim != 1:
        raise DataError(f"per-position sums {sum_p.shape} and counts {count_p.shape} must be "
                        "1-D arrays of one length")
    seen = count_p > 0
    if seen.sum() < 4:
        raise DataError(f"only {int(seen.sum())} positions have validation tokens; the "
                        "per-position law needs at least 4")
    loss_p = np.where(seen, sum_p / np.maximum(count_p, 1.0), 0.0)
    i, y, w = positions(len(sum_p))[seen], loss_p[seen], np.sqrt(count_p[seen])
    guess = initial_guess(loss_p, count_p)
    starts = [np.asarray(init, np.float64)] if init is not None else []
    starts += [guess] + [np.array([guess[0], a1, guess[2]]) for a1 in (1e-2, 1e-1, 1.0)]

    def residuals(log_a):
        return w * (hyperbola(np.exp(log_a), i) - y)

    lower = LOWER.copy()
    lower[1] = max(LOWER[1], 1.0 / len(sum_p))
    result = None
    for start in starts:
        fit = optimize.least_squares(
            residuals, np.log(np.clip(start, lower * 1.001, UPPER * 0.999)), method="trf",
            x_scale="jac", bounds=(np.log(lower), np.log(UPPER)), max_nfev=2000)
        if result is None or fit.cost < result.cost * (1 - 1e-9):
            result = fit
    a = np.exp(result.x)
    weights = count_p[seen]
    mean = np.average(y, weights=weights)
    total = np.sum(weights * (y - mean) ** 2)
    r2 = 1.0 - float(np.sum(result.fun ** 2) / total) if total > 0 else 1.0
    return PositionFit(a=a, r2=r2)


def weighted_loss(a, count_p) -> float:
    """The aggregate loss the law implies for a validation set with ``count_p`` tokens at
    each position: the token-weighted mean of L_i (what ``eval/loss`` measures)."""
    count_p = np.asarray(count_p, np.float64)
    return float(np.sum(count_p * hyperbola(a, positions(len(count_p)))) / np.sum(count_p))


def context_mean_loss(a, n: int) -> float:
    """Mean of L_i over i = 1..n in closed form (the paper's aggregate over a context of
    n tokens): a2 + (a0/n) * (psi(n + 1 + 1/a1) - psi(1 + 1/a1)) / a1."""
    a0, a1, a2 = a
    return float(a2 + a0 / n * (special.digamma(n + 1 + 1 / a1) - special.digamma(1 + 1 / a1)) / a1)
