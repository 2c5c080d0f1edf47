"""PNG of AND-OR interaction strength by order over a run's checkpoints (the two-phase
picture of Ren et al. 2407.19198): one line per order, x = training step, y = that
order's share of the salient interaction strength (positive − negative normalised sums,
interactions_order), plus the mean order."""
from __future__ import annotations

import numpy as np

from kyx.fileio import as_path


def order_matrix(result: dict) -> tuple[list[int], np.ndarray]:
    """(steps, [steps, n + 1] strength share of each order) of an interactions.json dict."""
    steps = sorted(int(s) for s in result["steps"])
    rows = [np.asarray(result["steps"][str(s)]["orders"]["positive"])
            - np.asarray(result["steps"][str(s)]["orders"]["negative"]) for s in steps]
    return steps, np.stack(rows)


def plot_orders(result: dict, out: str) -> str:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure  # no pyplot: never touches the global backend

    steps, share = order_matrix(result)
    n = share.shape[1] - 1
    fig = Figure(figsize=(10, 4.2))
    FigureCanvasAgg(fig)
    ax, ax2 = fig.add_subplot(1, 2, 1), fig.add_subplot(1, 2, 2)
    colors = [f"C{i % 10}" for i in range(n + 1)]
    for m in range(1, n + 1):
        ax.plot(steps, share[:, m], "-o", ms=3, color=colors[m], label=f"order {m}")
    ax.set_xlabel("training step")
    ax.set_ylabel("share of salient |I| (AND + OR)")
    ax.set_title("interaction strength by order")
    ax.legend(fontsize=7, ncol=2)
    mean_order = share[:, 1:] @ np.arange(1, n + 1) / np.maximum(share[:, 1:].sum(1), 1e-30)
    ax2.plot(steps, mean_order, "-o", ms=3, color="k", label="mean order")
    high = share[:, (n + 1) // 2:].sum(1)
    ax3 = ax2.twinx()
    ax3.plot(steps, high, "--s", ms=3, color="C3", label=f"orders ≥ {(n + 1) // 2}")
    ax2.set_xlabel("training step")
    ax2.set_ylabel("strength-weighted mean order")
    ax3.set_ylabel(f"share of orders ≥ {(n + 1) // 2}", color="C3")
    opts = result["options"]
    ax2.set_title(f"{len(result['samples'])} inputs, n = {opts['players']}, "
                  f"seed {opts['seed']}")
    fig.tight_layout()
    path = as_path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(str(path), dpi=110)
    return str(path)
