"""Did a paper's claim reproduce? A two-sided test of variant vs baseline over seeds.

Continuous metrics use Welch's t-test (unequal variances, scipy); 0/1 outcomes (e.g.
"diverged") use Fisher's exact test on the counts. The verdict is ``reproduced`` when the
difference has the claimed sign and p < ``alpha``, ``opposite`` when it has the other sign
and p < ``alpha``, else ``not at this scale`` (the difference is inside the seed spread).
One seed per side cannot tell: ``single seed``. A claim about a level ("at least 50x")
compares the seeds with that target instead (one-sample t-test, ``compare_to_target``).
"""
from __future__ import annotations

import math
import warnings

import numpy as np
from scipy import stats

ALPHA = 0.05
DIRECTIONS = ("lower", "higher")


def compare(baseline, variant, better: str, binary: bool = False,
            alpha: float = ALPHA) -> dict:
    """{diff (variant - baseline), se, p, verdict} for per-seed values of one metric."""
    if better not in DIRECTIONS:
        raise ValueError(f"better must be one of {DIRECTIONS}, got {better!r}")
    b = np.asarray([x for x in baseline if x is not None], np.float64)
    v = np.asarray([x for x in variant if x is not None], np.float64)
    if len(b) == 0 or len(v) == 0:
        return {"diff": None, "se": None, "p": None, "verdict": "no data"}
    diff = float(v.mean() - b.mean())
    se = math.sqrt((b.var(ddof=1) / len(b) if len(b) > 1 else 0.0)
                   + (v.var(ddof=1) / len(v) if len(v) > 1 else 0.0))
    if len(b) < 2 or len(v) < 2:
        return {"diff": diff, "se": se, "p": None, "verdict": "single seed"}
    if binary:
        table = [[int(v.sum()), len(v) - int(v.sum())], [int(b.sum()), len(b) - int(b.sum())]]
        p = float(stats.fisher_exact(table).pvalue)
    elif se == 0.0:
        p = 1.0 if diff == 0.0 else 0.0
    else:
        with warnings.catch_warnings():   # one side may be constant (e.g. all 1.0): fine
            warnings.simplefilter("ignore", RuntimeWarning)
            p = float(stats.ttest_ind(v, b, equal_var=False).pvalue)
    return {"diff": diff, "se": se, "p": p, "verdict": _verdict(diff, p, better, alpha)}


def compare_to_target(variant, target: float, better: str, alpha: float = ALPHA) -> dict:
    """{diff (mean - target), se, p, verdict}: is the metric better than ``target``?"""
    if better not in DIRECTIONS:
        raise ValueError(f"better must be one of {DIRECTIONS}, got {better!r}")
    v = np.asarray([x for x in variant if x is not None], np.float64)
    if len(v) == 0:
        return {"diff": None, "se": None, "p": None, "verdict": "no data"}
    diff = float(v.mean() - target)
    if len(v) < 2:
        return {"diff": diff, "se": None, "p": None, "verdict": "single seed"}
    se = float(v.std(ddof=1) / math.sqrt(len(v)))
    if se == 0.0:
        p = 1.0 if diff == 0.0 else 0.0
    else:
        p = float(stats.ttest_1samp(v, target).pvalue)
    return {"diff": diff, "se": se, "p": p, "verdict": _verdict(diff, p, better, alpha)}


def _verdict(diff: float, p: float, better: str, alpha: float) -> str:
    claimed = diff < 0 if better == "lower" else diff > 0
    if diff == 0.0 or p >= alpha:
        return "not at this scale"
    return "reproduced" if claimed else "opposite"
