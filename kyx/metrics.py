"""Training telemetry: metrics.jsonl + TensorBoard, a progress bar, loss plots, MFU.

`<workdir>/metrics.jsonl` holds one JSON object per line: {"step": N, "<name>": value, ...}.
JSON has no NaN/Inf, so non-finite floats are written as the strings "nan", "inf" and
"-inf"; `read_metrics` turns them back into floats. Every line is flushed as it is
written, so a killed run loses at most its last (partial) line, which readers skip.
"""
from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from kyx.errors import DataError
from kyx.fileio import atomic_write

METRICS_FILE = "metrics.jsonl"
_NONFINITE = {"nan": math.nan, "inf": math.inf, "-inf": -math.inf}


# ----------------------------------------------------------------------------- jsonl + TB
class MetricsWriter:
    """Append per-step scalars to `<workdir>/metrics.jsonl` and TensorBoard (`<workdir>/tb`).

    With `resume_step=N`, rows with step > N (written after the checkpoint being resumed)
    are dropped first, and TensorBoard is told to purge its events past N, so a resumed
    run has no duplicate steps.
    """

    def __init__(self, workdir: str | os.PathLike, use_tensorboard: bool = True,
                 resume_step: int | None = None):
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.path = self.workdir / METRICS_FILE
        if resume_step is not None:
            _rewrite_upto(self.path, resume_step)
        else:
            _drop_partial_last_line(self.path)
        self._file = open(self.path, "a", encoding="utf-8")
        self._tb = None
        if use_tensorboard:
            from tensorboardX import SummaryWriter  # imported lazily: slow-ish import
            purge = None if resume_step is None else resume_step + 1
            self._tb = SummaryWriter(logdir=str(self.workdir / "tb"), purge_step=purge,
                                     flush_secs=30)

    def write(self, step: int, metrics: Mapping[str, Any]) -> None:
        """Record `metrics` (scalars: Python, numpy or jax) for `step`."""
        if self._file is None:
            raise RuntimeError("MetricsWriter.write called after close()")
        if "step" in metrics:
            raise ValueError("'step' is reserved; pass it as the step argument")
        values = {name: _to_number(name, v) for name, v in metrics.items()}
        row = {"step": int(step), **{k: _encode(v) for k, v in values.items()}}
        self._file.write(json.dumps(row, allow_nan=False) + "\n")
        self._file.flush()
        if self._tb is not None:
            for name, value in values.items():
                self._tb.add_scalar(name, value, int(step))

    def flush(self) -> None:
        if self._file is not None:
            self._file.flush()
        if self._tb is not None:
            self._tb.flush()

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
        if self._tb is not None:
            self._tb.close()
            self._tb = None

    def __enter__(self) -> "MetricsWriter":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _to_number(name: str, value: Any) -> int | float:
    """Python/numpy/jax scalar (or size-1 array) -> int (integers) or float (everything else)."""
    if isinstance(value, (bool, np.bool_)):
        return int(value)
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        return value
    arr = np.asarray(value)  # also pulls a jax.Array to host
    if arr.size != 1 or arr.dtype.kind not in "biuf":
        raise TypeError(f"metric {name!r} must be a numeric scalar, got {type(value).__name__} "
                        f"with shape {arr.shape} and dtype {arr.dtype}")
    item = arr.reshape(()).item()
    return int(item) if arr.dtype.kind in "biu" else float(item)


def _encode(value: int | float) -> int | float | str:
    if isinstance(value, float) and not math.isfinite(value):
        return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")
    return value


def _decode(row: dict) -> dict:
    return {k: _NONFINITE.get(v, v) if isinstance(v, str) else v for k, v in row.items()}


def read_metrics(workdir: str | os.PathLike) -> list[dict]:
    """Rows of `<workdir>/metrics.jsonl` ([] if absent). A truncated last line is skipped;
    a corrupt line elsewhere is a DataError."""
    path = Path(workdir) / METRICS_FILE
    if not path.exists():
        return []
    lines = path.read_text(encoding="utf-8").split("\n")
    rows = []
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            if i == len(lines) - 1:  # no trailing newline: the writer died mid-line
                break
            raise DataError(f"{path}:{i + 1} is not valid JSON ({e}); delete or fix that "
                            "line") from None
        rows.append(_decode(row))
    return rows


def _rewrite_upto(path: Path, step: int) -> None:
    """Atomically keep only rows with row['step'] <= step."""
    if not path.exists():
        return
    kept = [r for r in read_metrics(path.parent) if r.get("step", -1) <= step]
    text = "".join(json.dumps({k: _encode(v) for k, v in r.items()}, allow_nan=False) + "\n"
                   for r in kept)
    atomic_write(path, text)


def _drop_partial_last_line(path: Path) -> None:
    """Cut a trailing line without '\\n' so the next append starts on a fresh line."""
    if not path.exists() or path.stat().st_size == 0:
        return
    data = path.read_bytes()
    if not data.endswith(b"\n"):
        atomic_write(path, data[: data.rfind(b"\n") + 1].decode("utf-8"))


# ----------------------------------------------------------------------------- progress bar
def format_stats(loss: float | None = None, tokens_per_s: float | None = None,
                 mfu: float | None = None) -> str:
    """'loss 2.3456 | 12.3k tok/s | MFU 41.2%' (missing parts omitted; mfu is a fraction)."""
    parts = []
    if loss is not None:
        parts.append(f"loss {float(loss):.4f}")
    if tokens_per_s is not None:
        parts.append(f"{_si(float(tokens_per_s))} tok/s")
    if mfu is not None:
        parts.append(f"MFU {100.0 * float(mfu):.1f}%")
    return " | ".join(parts)


def _si(x: float) -> str:
    for unit, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(x) >= scale:
            return f"{x / scale:.1f}{unit}"
    return f"{x:.0f}"


class ProgressBar:
    """tqdm bar over training steps with loss, tokens/s, MFU and ETA.

    `disable=None` (default) turns the bar off when stderr is not a TTY (e.g. in log files).
    """

    def __init__(self, total_steps: int, initial: int = 0, disable: bool | None = None,
                 desc: str = "train"):
        from tqdm.auto import tqdm

        self._bar = tqdm(total=total_steps, initial=initial, desc=desc, unit="step",
                         dynamic_ncols=True, mininterval=1.0, smoothing=0.1, disable=disable)

    def update(self, step: int, loss: float | None = None, tokens_per_s: float | None = None,
               mfu: float | None = None) -> None:
        """Move the bar to absolute `step` and show the latest stats."""
        self._bar.set_postfix_str(format_stats(loss, tokens_per_s, mfu), refresh=False)
        self._bar.update(max(0, int(step) - self._bar.n))

    def write(self, message: str) -> None:
        """Print a line without garbling the bar."""
        self._bar.write(message)

    def close(self) -> None:
        self._bar.close()

    def __enter__(self) -> "ProgressBar":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


# ----------------------------------------------------------------------------- plotting
def plot_loss_curve(workdir: str | os.PathLike, out: str | os.PathLike | None = None) -> Path:
    """Plot train/loss (line) and eval/loss (points) vs step into `out`
    (default `<workdir>/loss_curve.png`); returns the path written."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure  # no pyplot: never touches the global backend

    rows = read_metrics(workdir)
    series = {key: [(r["step"], r[key]) for r in rows if key in r]
              for key in ("train/loss", "eval/loss")}
    if not any(series.values()):
        raise DataError(f"no train/loss or eval/loss rows in {Path(workdir) / METRICS_FILE}; "
                        "nothing to plot")
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
    out = Path(out) if out is not None else Path(workdir) / "loss_curve.png"
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out)
    return out


# ----------------------------------------------------------------------------- FLOPs / MFU
def matmul_peak_flops(n: int = 1024, dtype: Any = "float32", repeats: int = 5,
                      iters: int = 4) -> float:
    """Measured dense-matmul FLOP/s of this process's default JAX device.

    Times `iters` back-to-back (n x n) @ (n x n) matmuls per repeat, so dispatch overhead is
    amortised, and returns 2 n^3 / (best time per matmul). A practical stand-in for the
    datasheet peak when computing MFU on unknown hardware.
    """
    import jax
    import jax.numpy as jnp

    key_a, key_b = jax.random.split(jax.random.PRNGKey(0))
    a = jax.random.normal(key_a, (n, n), dtype=jnp.dtype(dtype))
    b = jax.random.normal(key_b, (n, n), dtype=jnp.dtype(dtype))
    matmul = jax.jit(jnp.matmul)
    matmul(a, b).block_until_ready()  # compile + warm up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        outs = [matmul(a, b) for _ in range(iters)]
        jax.block_until_ready(outs)
        times.append((time.perf_counter() - start) / iters)
    return 2.0 * n**3 / min(times)


def mfu(model_flops_per_s: float, peak_flops_per_s: float) -> float:
    """Model FLOPs utilisation as a fraction (0.41 = 41%) of `peak_flops_per_s`."""
    if not peak_flops_per_s > 0:
        raise ValueError(f"peak FLOP/s must be positive, got {peak_flops_per_s}")
    return float(model_flops_per_s) / float(peak_flops_per_s)


__all__ = ["MetricsWriter", "read_metrics", "ProgressBar", "format_stats", "plot_loss_curve",
           "matmul_peak_flops", "mfu", "METRICS_FILE"]
