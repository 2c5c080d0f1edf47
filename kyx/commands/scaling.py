"""`kyx scaling fit --workdir DIR [--until-step N] [--at-step S ...] [--plot PNG] [--json]`.

Fits the temporal scaling law (kyx/scaling) to a workdir's evaluations up to
``--until-step`` (default: all so far; a running workdir works) and prints the per-position
parameters of the last fitted evaluation, the temporal families' coefficients, and the
predicted validation loss at the run's final step (and any ``--at-step``) by the temporal
law and the power-law baselines, with the actual loss where that step was evaluated.
Writes the plot (default ``DIR/scaling.png``).
"""
from __future__ import annotations

import argparse
import json

import numpy as np


def _parse(argv):
    from kyx.scaling import DEFAULT_FAMILIES, FAMILIES

    parser = argparse.ArgumentParser(prog="kyx scaling")
    parser.add_argument("action", choices=("fit",))
    parser.add_argument("--workdir", required=True)
    parser.add_argument("--until-step", type=int, default=None,
                        help="fit the evaluations up to this step (default: all)")
    parser.add_argument("--at-step", type=int, action="append", default=[],
                        help="also predict at this step (repeatable)")
    parser.add_argument("--source", default=None, help="a data.mixture source's label")
    parser.add_argument("--kind", default="context", choices=("context", "document"),
                        help="positions of all segments (default) or document starts only")
    for name, family in DEFAULT_FAMILIES.items():
        parser.add_argument(f"--{name}", default=family, choices=FAMILIES.names(),
                            help=f"temporal family of {name} (default {family})")
    parser.add_argument("--plot", default=None, help="PNG path (default DIR/scaling.png)")
    parser.add_argument("--no-plot", action="store_true")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    return parser.parse_args(argv)


def fit_workdir(workdir, until_step=None, source=None, kind="context", families=None):
    """(curve, forecast) of a workdir."""
    from kyx.checkpoint.workdir import read_config
    from kyx.scaling import Schedule, forecast, load_curve

    cfg = read_config(workdir)
    curve = load_curve(workdir, source, kind)
    return curve, forecast(curve, Schedule.from_config(cfg), until_step, families)


def report(curve, fc, at_steps) -> dict:
    from kyx.scaling import relative_error

    a = fc.position_fits[-1]
    out = {"until_step": fc.until_step, "fitted_evaluations": len(fc.fit_steps),
           "last_fit": {"step": int(fc.fit_steps[-1]), "a0": float(a.a[0]),
                        "a1": float(a.a[1]), "a2": float(a.a[2]), "r2": a.r2},
           "temporal": {k: {"family": t.family, "c": [float(x) for x in t.c]}
                        for k, t in fc.temporal_fits.items()},
           "predictions": {}}
    actual = dict(zip(curve.steps.tolist(), curve.loss_e.tolist()))
    for step in sorted({fc.schedule.n_total, *at_steps}):
        row = fc.predictions(step)
        if step in actual:
            row["actual"] = actual[step]
            row["relative_error"] = {k: relative_error(v, actual[step])
                                     for k, v in fc.predictions(step).items()}
        out["predictions"][str(step)] = row
    return out


def main(argv) -> int:
    args = _parse(argv)
    families = {name: getattr(args, name) for name in ("a0", "a1", "a2")}
    curve, fc = fit_workdir(args.workdir, args.until_step, args.source, args.kind, families)
    out = report(curve, fc, args.at_step)
    if not args.no_plot:
        from kyx.fileio import as_path
        from kyx.scaling.plot import plot_forecast

        path = args.plot or str(as_path(args.workdir) / "scaling.png")
        plot_forecast(curve, fc, path)
        out["plot"] = path
    if args.json:
        print(json.dumps(out))
        return 0
    last = out["last_fit"]
    print(f"fitted {out['fitted_evaluations']} evaluations up to step {out['until_step']}; "
          f"last (step {last['step']}): a0={last['a0']:.4g} a1={last['a1']:.4g} "
          f"a2={last['a2']:.4g} R^2={last['r2']:.3f}")
    for k, t in out["temporal"].items():
        print(f"  {k}(N): {t['family']} c={np.round(t['c'], 5).tolist()}")
    for step, row in out["predictions"].items():
        preds = "  ".join(f"{k}={row[k]:.4f}" for k in fc.predictions(int(step)))
        actual = f"  actual={row['actual']:.4f}" if "actual" in row else ""
        print(f"step {step}: {preds}{actual}")
    if "plot" in out:
        print(f"plot: {out['plot']}")
    return 0
