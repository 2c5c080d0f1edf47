"""Scaling-law fits of a run's validation loss (KwaiYii's temporal scaling law).

  curves.py        eval_stats.jsonl -> per-position loss sums by evaluation step
  position_law.py  L_i = a0 / (1 + a1 i) + a2 at one evaluation
  temporal.py      families for a_k(N) over training (log, hyperbolic, power, cosine)
  power_law.py     baselines on the aggregate loss (Kaplan, Chinchilla-style)
  forecast.py      the prediction protocol: fits up to a step, loss at any later step
  plot.py          predicted vs actual curves

``kyx scaling fit --workdir DIR`` (kyx/commands/scaling.py) and the training hook
``scaling`` (kyx/train/hooks.py) use them.
"""
from kyx.scaling.curves import Curve, curve_from_records, load_curve
from kyx.scaling.forecast import DEFAULT_FAMILIES, Forecast, forecast, relative_error
from kyx.scaling.temporal import FAMILIES, Schedule

__all__ = ["Curve", "curve_from_records", "load_curve", "DEFAULT_FAMILIES", "Forecast",
           "forecast", "relative_error", "FAMILIES", "Schedule"]
