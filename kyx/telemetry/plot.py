"""The loss curve of a workdir: train/loss (line) and eval/loss (points) vs step."""
from __future__ import annotations

import io

from etils import epath

from kyx.errors import DataError
from kyx.fileio import as_path
from kyx.telemetry.jsonl import METRICS_FILE, read_metrics


def plot_loss_curve(workdir, out=None) -> epath.Path:
    """Plot ``<workdir>/metrics.jsonl`` into ``out`` (default ``<workdir>/loss_curve.png``;
    either may be a remote epath URL); returns the path written."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure  # no pyplot: never touches the global backend

    rows = read_metrics(workdir)
    series = {key: [(r["step"], r[key]) for r in rows if key in r]
              for key in ("train/loss", "eval/loss")}
    if not any(series.values()):
        raise DataError(f"no train/loss or eval/loss rows in "
                        f"{as_path(workdir) / METRICS_FILE}; nothing to plot")
    fig = Figure(figsize=(7, 4.5), dpi=120)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    if series["train/loss"]:
        ax.plot(*zip(*series["train/loss"]), lw=1.2, label="train/loss")
    if series["eval/loss"]:
        ax.plot(*zip(*series["eval/loss"]), "o", ms=4, label="eval/loss")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    out = as_path(out) if out is not None else as_path(workdir) / "loss_curve.png"
    out.parent.mkdir(parents=True, exist_ok=True)
    png = io.BytesIO()
    fig.savefig(png, format="png")
    out.write_bytes(png.getvalue())
    return out
