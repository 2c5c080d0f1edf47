"""Predicted vs actual validation loss, and the per-position parameters over training."""
from __future__ import annotations

import io

import numpy as np

from kyx.fileio import as_path
from kyx.scaling import position_law
from kyx.scaling.curves import Curve
from kyx.scaling.forecast import Forecast


def plot_forecast(curve: Curve, fc: Forecast, out, title: str = "") -> None:
    """Four panels: the aggregate loss (actual evaluations, the temporal law's and the
    baselines' predictions from the fitted evaluations on) and a0, a1, a2 per evaluation
    with their temporal fits. Evaluations after ``until_step`` are fitted alone (hollow
    markers) to show where the extrapolated trajectories should have gone."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(11, 7.5), dpi=110)
    FigureCanvasAgg(fig)
    axes = fig.subplots(2, 2)
    grid = np.linspace(max(fc.schedule.n_sep, 1), fc.schedule.n_total, 200)
    ax = axes[0, 0]
    seen = curve.steps <= fc.until_step
    ax.plot(curve.steps[seen], curve.loss_e[seen], "o", ms=3.5, color="C0",
            label="eval/loss (fitted)")
    ax.plot(curve.steps[~seen], curve.loss_e[~seen], "o", ms=3.5, mfc="none", color="C0",
            label="eval/loss (held out)")
    ax.plot(grid, fc.loss_at(grid), "-", color="C3", label="temporal law")
    for k, name in enumerate(fc.baselines):
        ax.plot(grid, fc.baseline_at(name, grid), "--", color=f"C{k + 4}", label=name)
    ax.axvline(fc.until_step, color="grey", lw=0.8)
    low, high = np.min(curve.loss_e[curve.steps > fc.schedule.n_sep]), np.max(curve.loss_e)
    ax.set_ylim(low - 0.15 * (high - low), high + 0.05 * (high - low))
    ax.set_xlabel("step")
    ax.set_ylabel("validation loss")
    ax.legend(fontsize=8)
    ax.set_title(title or f"fitted up to step {fc.until_step}", fontsize=10)
    later = curve.steps > fc.until_step
    held, init = [], fc.position_fits[-1].a
    for s_p, c_p in zip(curve.sum_ep[later], curve.count_ep[later]):
        fit = position_law.fit_positions(s_p, c_p, init)
        held.append(fit.a)
        init = fit.a
    fitted = np.stack([f.a for f in fc.position_fits])
    for j, (name, ax) in enumerate(zip(position_law.PARAMS, [axes[0, 1], axes[1, 0], axes[1, 1]])):
        ax.plot(fc.fit_steps, fitted[:, j], "o", ms=3.5, color="C0", label="fitted")
        if held:
            ax.plot(curve.steps[later], np.stack(held)[:, j], "o", ms=3.5, mfc="none",
                    color="C0", label="held out")
        ax.plot(grid, fc.params_at(grid)[:, j], "-", color="C3",
                label=fc.temporal_fits[name].family)
        ax.axvline(fc.until_step, color="grey", lw=0.8)
        ax.set_xlabel("step")
        ax.set_ylabel(name)
        ax.legend(fontsize=8)
    for ax in axes.flat:
        ax.grid(alpha=0.3)
    fig.tight_layout()
    out = as_path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    png = io.BytesIO()
    fig.savefig(png, format="png")
    out.write_bytes(png.getvalue())
