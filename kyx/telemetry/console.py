"""The console: a progress bar where someone watches, plain log lines where output is kept.

* a terminal (stdout is a tty): a tqdm bar with loss, lr, tokens/s, MFU and ETA;
* a notebook: tqdm's notebook bar when ipywidgets is installed, else the same text bar
  (no ``TqdmWarning: IProgress not found``);
* anything else (SLURM, nohup, ``> log``): one line every ``train.log_every`` steps and
  after the last step::

      step  10/30 | loss 5.4321 | lr 3.0e-03 | 9.1k tok/s | MFU 1.2% | ETA 0:00:42

Evaluation results are printed as they arrive in every mode (above the bar, through its
``write``, so the bar is not broken): ``eval  12/30 | loss 5.3012 | perplexity 200.53``.
"""
from __future__ import annotations

import datetime
import importlib.util
import sys
import time
from typing import Mapping

from kyx.telemetry.sink import Sink, SinkContext

LINES, TERMINAL, NOTEBOOK = "lines", "terminal", "notebook"


def display_mode() -> str:
    """Where this process's output goes: NOTEBOOK, TERMINAL or LINES (not a tty)."""
    if _in_notebook():
        return NOTEBOOK
    isatty = getattr(sys.stdout, "isatty", None)
    return TERMINAL if isatty is not None and isatty() else LINES


def _in_notebook() -> bool:
    shell = getattr(sys.modules.get("IPython"), "get_ipython", lambda: None)()
    return shell is not None and "IPKernelApp" in getattr(shell, "config", {})


class ConsoleSink(Sink):
    """``mode`` None: ``display_mode()``. Lines go to the ``sys.stdout`` of the moment
    (pytest's capture and notebooks see them), the bar to stderr as tqdm does."""

    def __init__(self, total: int, every: int = 0, initial: int = 0, mode: str | None = None):
        self.total, self.every = total, every
        self.mode = mode or display_mode()
        self._bar = None if self.mode == LINES else _bar(self.mode, total, initial)
        self._mark = (time.perf_counter(), initial)  # (time, step) of the last line: ETA
        self._latest = None                           # (step, row) for the bar's next flush

    def write(self, step, row) -> None:
        if any(k.startswith("train/") for k in row):
            if self._bar is not None:
                self._latest = (step, row)  # shown at the flush that ends this batch of rows
            elif (self.every and step % self.every == 0) or step == self.total:
                self._print(train_line(step, self.total, row, self._eta(step)))
        evals = {k[len("eval/"):]: v for k, v in row.items() if k.startswith("eval/")}
        if evals:
            self._print(eval_line(step, self.total, evals))

    def flush(self) -> None:
        """Move the bar to the newest train row (the end of a log window: it has the
        window's tokens/s and MFU)."""
        if self._bar is None or self._latest is None:
            return
        (step, row), self._latest = self._latest, None
        self._bar.set_postfix_str(format_stats(**_stats(row)), refresh=False)
        self._bar.update(max(0, step - self._bar.n))
        if self._bar.last_print_n != self._bar.n:  # update() drew only if mininterval passed
            self._bar.refresh()

    def _eta(self, step: int) -> float | None:
        now = time.perf_counter()
        (then, before), self._mark = self._mark, (now, step)
        if step <= before or step >= self.total:
            return None
        return (self.total - step) * (now - then) / (step - before)

    def _print(self, line: str) -> None:
        if self._bar is not None:
            self._bar.write(line)
        else:
            print(line, file=sys.stdout, flush=True)

    def close(self) -> None:
        if self._bar is not None:
            self.flush()
            self._bar.close()
            self._bar = None


def make_sink(ctx: SinkContext) -> ConsoleSink:
    return ConsoleSink(ctx.total, ctx.every, initial=ctx.resume_step or 0)


def _bar(mode: str, total: int, initial: int):
    if mode == NOTEBOOK and importlib.util.find_spec("ipywidgets") is not None:
        from tqdm.notebook import tqdm
    else:
        from tqdm.std import tqdm  # tqdm.auto would warn when ipywidgets is missing
    return tqdm(total=total, initial=initial, desc="train", unit="step", dynamic_ncols=True,
                mininterval=1.0, smoothing=0.1)


def _stats(row: Mapping[str, float]) -> dict:
    return {"loss": row.get("train/loss"), "lr": row.get("train/lr"),
            "tokens_per_s": row.get("perf/tokens_per_s"), "mfu": row.get("perf/mfu")}


def format_stats(loss: float | None = None, tokens_per_s: float | None = None,
                 mfu: float | None = None, lr: float | None = None) -> str:
    """'loss 2.3456 | lr 3.0e-03 | 12.3k tok/s | MFU 41.2%' (missing parts omitted; mfu
    is a fraction)."""
    parts = []
    if loss is not None:
        parts.append(f"loss {float(loss):.4f}")
    if lr is not None:
        parts.append(f"lr {float(lr):.1e}")
    if tokens_per_s is not None:
        parts.append(f"{_si(float(tokens_per_s))} tok/s")
    if mfu is not None:
        parts.append(f"MFU {100.0 * float(mfu):.1f}%")
    return " | ".join(parts)


def train_line(step: int, total: int, row: Mapping[str, float], eta_s: float | None) -> str:
    """The plain log line of a train row (see the module docstring)."""
    parts = [f"step {step:>{len(str(total))}d}/{total}", format_stats(**_stats(row))]
    if eta_s is not None:
        parts.append(f"ETA {datetime.timedelta(seconds=round(eta_s))}")
    return " | ".join(p for p in parts if p)


def eval_line(step: int, total: int, values: Mapping[str, float]) -> str:
    """``eval  12/30 | loss 5.3012 | perplexity 200.53`` (names without ``eval/``)."""
    parts = [f"eval {step:>{len(str(total))}d}/{total}"]
    parts += [f"{name} {float(v):.5g}" for name, v in values.items()]
    return " | ".join(parts)


def _si(x: float) -> str:
    for unit, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(x) >= scale:
            return f"{x / scale:.1f}{unit}"
    return f"{x:.0f}"
