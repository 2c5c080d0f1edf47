"""How well does a run's beginning predict its end? The temporal scaling law vs power laws.

For every finished workdir under ``--root`` (e.g. the ``scaling`` sweep of
configs/pretrain.py, run with seeds: ``python experiments/sweep.py --config
configs/pretrain.py:tiny --sweep scaling --seeds 3 --root R``), fits its evaluations up to
each ``--fractions`` of the run (kyx/scaling: per-position law -> temporal families, and
the Kaplan / Chinchilla-style power laws of the aggregate loss) and compares the
predictions with what the run then measured:

- ``final``: relative error of the predicted final validation loss;
- ``curve``: mean relative error over all later evaluations (the held-out curve).

Prints one JSON line per (run, fraction, method), writes ``results.json`` and
``results.md`` (per run, and mean ± std over runs) into ``--root``, and a PNG of the first
run's forecasts (``--plot``). ``--grid`` also scores every combination of temporal
families (a0 x a1 x a2), to show how much the law's prediction depends on that choice.
"""
from __future__ import annotations

import argparse
import itertools
import json
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from kyx.checkpoint.workdir import read_config  # noqa: E402
from kyx.errors import DataError  # noqa: E402
from kyx.scaling import Schedule, forecast, load_curve, relative_error  # noqa: E402

GRID = {"a0": ("log", "power"), "a1": ("hyperbolic", "log", "constant"),
        "a2": ("cosine", "power", "log", "hyperbolic")}


def find_runs(root: str) -> list[str]:
    runs = []
    for path, _, files in os.walk(root):
        if "eval_stats.jsonl" in files and "config.json" in files:
            runs.append(path)
    return sorted(runs)


def score(curve, fc, final_step: int) -> dict:
    """{method: {'final': rel. error at the last step, 'curve': mean rel. error after
    until_step}} for the temporal law and each baseline."""
    later = curve.steps > fc.until_step
    steps, actual = curve.steps[later], curve.loss_e[later]
    final = float(curve.loss_e[curve.steps == final_step][0])
    predicted = {"temporal": fc.loss_at(steps)}
    predicted.update({name: fc.baseline_at(name, steps) for name in fc.baselines})
    return {m: {"final": relative_error(float(p[-1]), final),
                "curve": float(np.mean(np.abs(p - actual) / actual)),
                "predicted_final": float(p[-1]), "actual_final": final}
            for m, p in predicted.items()}


def study(runs: list[str], fractions: list[float], grid: bool) -> list[dict]:
    rows = []
    for run in runs:
        cfg = read_config(run)
        schedule = Schedule.from_config(cfg)
        curve = load_curve(run)
        if curve.steps[-1] < schedule.n_total:
            print(f"{run}: not finished (last evaluation {curve.steps[-1]}), skipped",
                  file=sys.stderr)
            continue
        for fraction in fractions:
            until = int(fraction * schedule.n_total)
            try:
                fc = forecast(curve, schedule, until)
            except DataError as e:
                print(f"{run} @ {fraction}: {e}", file=sys.stderr)
                continue
            for method, s in score(curve, fc, schedule.n_total).items():
                rows.append({"run": run, "fraction": fraction, "method": method,
                             "families": "default", **s})
                print(json.dumps(rows[-1]), flush=True)
            if not grid:
                continue
            for combo in itertools.product(*GRID.values()):
                families = dict(zip(GRID, combo))
                fc = forecast(curve, schedule, until, families, baselines=())
                s = score(curve, fc, schedule.n_total)["temporal"]
                rows.append({"run": run, "fraction": fraction, "method": "temporal",
                             "families": "/".join(combo), **s})
    return rows


def _mean_std(values) -> str:
    values = np.asarray(values, np.float64) * 100
    std = np.std(values, ddof=1) if len(values) > 1 else 0.0
    return f"{values.mean():.2f} ± {std:.2f}"


def markdown(rows: list[dict], root: str) -> str:
    default = [r for r in rows if r["families"] == "default"]
    methods = list(dict.fromkeys(r["method"] for r in default))
    fractions = sorted({r["fraction"] for r in default})
    runs = sorted({r["run"] for r in default})
    out = [f"Relative error (%) of the predicted final validation loss ('final') and mean "
           f"relative error over the held-out evaluations ('curve'), {len(runs)} runs, "
           "mean ± std (ddof 1).", ""]
    out.append("| fitted on | " + " | ".join(f"{m} final | {m} curve" for m in methods) + " |")
    out.append("|---" * (1 + 2 * len(methods)) + "|")
    for f in fractions:
        cells = []
        for m in methods:
            sel = [r for r in default if r["fraction"] == f and r["method"] == m]
            cells += [_mean_std([r["final"] for r in sel]), _mean_std([r["curve"] for r in sel])]
        out.append(f"| first {f:.0%} | " + " | ".join(cells) + " |")
    out += ["", "Per run (final-loss relative error, %; actual final loss):", "",
            "| run | fitted on | actual | " + " | ".join(methods) + " |",
            "|---|---|---|" + "---|" * len(methods)]
    for run in runs:
        for f in fractions:
            sel = {r["method"]: r for r in default if r["run"] == run and r["fraction"] == f}
            if not sel:
                continue
            actual = next(iter(sel.values()))["actual_final"]
            out.append(f"| {os.path.relpath(run, root)} | {f:.0%} | {actual:.4f} | " +
                       " | ".join(f"{sel[m]['final'] * 100:.2f}" for m in methods) + " |")
    combos = sorted({r["families"] for r in rows} - {"default"})
    if combos:
        out += ["", "Temporal families a0/a1/a2 (final-loss relative error %, mean ± std over "
                "runs):", "", "| families | " + " | ".join(f"first {f:.0%}" for f in fractions)
                + " |", "|---|" + "---|" * len(fractions)]
        for combo in combos:
            cells = [_mean_std([r["final"] for r in rows if r["families"] == combo
                                and r["fraction"] == f]) for f in fractions]
            out.append(f"| {combo} | " + " | ".join(cells) + " |")
    return "\n".join(out) + "\n"


def plot(run: str, fractions: list[float], out: str) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    cfg = read_config(run)
    schedule, curve = Schedule.from_config(cfg), load_curve(run)
    fig = Figure(figsize=(5.5 * len(fractions), 4.2), dpi=110)
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, len(fractions), squeeze=False)[0]
    grid = np.linspace(schedule.n_sep + 1, schedule.n_total, 200)
    for ax, fraction in zip(axes, fractions):
        try:
            fc = forecast(curve, schedule, int(fraction * schedule.n_total))
        except DataError as e:   # too few evaluations by then: an empty panel that says so
            ax.set_title(f"first {fraction:.0%}: {str(e).split(';')[0]}", fontsize=8)
            ax.set_axis_off()
            continue
        seen = curve.steps <= fc.until_step
        ax.plot(curve.steps[seen], curve.loss_e[seen], "o", ms=3, color="C0", label="fitted")
        ax.plot(curve.steps[~seen], curve.loss_e[~seen], "o", ms=3, mfc="none", color="C0",
                label="held out")
        ax.plot(grid, fc.loss_at(grid), color="C3", label="temporal law")
        for k, name in enumerate(fc.baselines):
            ax.plot(grid, fc.baseline_at(name, grid), "--", color=f"C{k + 4}", label=name)
        ax.axvline(fc.until_step, color="grey", lw=0.8)
        after = curve.loss_e[curve.steps > schedule.n_sep]
        ax.set_ylim(after.min() - 0.3, after.max() + 0.1)
        ax.set_title(f"fitted on the first {fraction:.0%}", fontsize=10)
        ax.set_xlabel("step")
        ax.set_ylabel("validation loss")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--root", required=True)
    parser.add_argument("--fractions", type=float, nargs="+", default=[0.2, 0.4])
    parser.add_argument("--grid", action="store_true", help="also score family combinations")
    parser.add_argument("--plot", default=None, help="PNG of the first run's forecasts")
    args = parser.parse_args(argv)
    runs = find_runs(args.root)
    if not runs:
        print(f"no workdirs with eval_stats.jsonl under {args.root}", file=sys.stderr)
        return 2
    rows = study(runs, args.fractions, args.grid)
    with open(os.path.join(args.root, "results.json"), "w") as f:
        json.dump(rows, f, indent=1)
    table = markdown(rows, args.root)
    with open(os.path.join(args.root, "results.md"), "w") as f:
        f.write(table)
    print(table)
    if args.plot:
        plot(runs[0], args.fractions, args.plot)
    return 0


if __name__ == "__main__":
    sys.exit(main())
