"""Live forecast of a run's final validation loss (the temporal scaling law, kyx/scaling).

From ``scaling.predict_from`` x ``train.steps`` on, after every evaluation the hook fits
the evaluations so far and logs, in a row of that step (metrics.jsonl, TensorBoard):

  scaling/predicted_final_loss    the temporal law's validation loss at the last step
  scaling/kaplan_final_loss       the power-law baselines' (aggregate loss) predictions
  scaling/chinchilla_final_loss

and at the end writes ``scaling.png`` (predicted vs actual). A fit that cannot be made yet
(too few evaluations after warmup) is skipped; a failed fit never stops training.
"""
from __future__ import annotations

import ml_collections

from kyx import telemetry
from kyx.errors import DataError
from kyx.logs import get_logger
from kyx.train import hooks as hooks_lib

log = get_logger(__name__)


def default_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.predict_from = 0.2       # fraction of train.steps after which to forecast; 0 = off
    c.kind = "context"         # 'context' (all segments) | 'document' (document starts)
    c.a0 = "log"               # temporal families (kyx/scaling/temporal.py); defaults
    c.a1 = "constant"          # as kyx.scaling.DEFAULT_FAMILIES (docs/scaling.md)
    c.a2 = "power"
    return c


def forecast_metrics(workdir, cfg) -> dict:
    """The scaling/* metrics from the workdir's evaluations so far."""
    from kyx.scaling import Schedule, forecast, load_curve

    sc = cfg.scaling
    curve = load_curve(workdir, kind=sc.kind)
    fc = forecast(curve, Schedule.from_config(cfg), families={"a0": sc.a0, "a1": sc.a1, "a2": sc.a2})
    preds = fc.predictions()
    out = {"scaling/predicted_final_loss": preds.pop("temporal")}
    out.update({f"scaling/{name}_final_loss": v for name, v in preds.items()})
    return out, curve, fc


@hooks_lib.DEFAULT_HOOKS.register("scaling")
def scaling_hook(run) -> hooks_lib.Hook | None:
    sc = getattr(run.cfg, "scaling", None)  # configs without a scaling section: off
    if (sc is None or not sc.predict_from or run.eval_fn is None
            or not telemetry.writes_here() or not run.cfg.train.eval_every):
        return None
    first = int(sc.predict_from * run.cfg.train.steps)

    def predict(r) -> None:
        if r.step < first and r.step != r.cfg.train.steps:
            return
        try:
            with r.untimed():
                metrics, curve, fc = forecast_metrics(r.workdir, r.cfg)
        except DataError as e:
            log.info("scaling forecast skipped at step %d: %s", r.step, e)
            return
        except (ValueError, FloatingPointError, ArithmeticError) as e:
            log.warning("scaling forecast failed at step %d: %s", r.step, e)
            return
        r.add_metrics(r.step, metrics)
        r.flush()
        log.info("step %d: predicted final eval/loss %.4f (kaplan %.4f)", r.step,
                 metrics["scaling/predicted_final_loss"],
                 metrics.get("scaling/kaplan_final_loss", float("nan")))
        if r.step == r.cfg.train.steps:
            from kyx.scaling.plot import plot_forecast

            with r.untimed():
                plot_forecast(curve, fc, f"{r.workdir}/scaling.png")

    return hooks_lib.Hook("scaling", predict, every=run.cfg.train.eval_every,
                          order=hooks_lib.EVAL + 1)
