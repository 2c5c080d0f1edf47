"""TensorBoard (tensorboardX, no TensorFlow): scalars under ``<workdir>/tb``, and the
resolved config as hyperparameters (HParams dashboard) and as a JSON text summary.

A resumed run tells TensorBoard to purge the events past the step it resumes from
(``purge_step``), so curves have no duplicate steps. A remote workdir gets the event files
written locally and copied every ``flush_secs`` and at close (kyx/telemetry/staging.py).
"""
from __future__ import annotations

import json
import time
from typing import Any, Mapping

from kyx.telemetry.sink import Sink, SinkContext
from kyx.telemetry.staging import StagedDir

TB_DIR = "tb"
HPARAM_METRICS = ("train/loss", "eval/loss")  # shown next to the hparams in the dashboard


class TensorBoardSink(Sink):
    def __init__(self, workdir, resume_step: int | None = None,
                 config: Mapping[str, Any] | None = None, flush_secs: float = 30.0):
        from tensorboardX import SummaryWriter  # imported lazily: slow-ish import

        self._dir = StagedDir(f"{str(workdir).rstrip('/')}/{TB_DIR}")
        purge = None if resume_step is None else resume_step + 1
        self._tb = SummaryWriter(logdir=str(self._dir.local), purge_step=purge,
                                 flush_secs=flush_secs)
        self._flush_secs, self._synced = flush_secs, time.monotonic()
        if config is not None:
            self._write_config(config)

    def _write_config(self, config: Mapping[str, Any]) -> None:
        from tensorboardX.summary import hparams

        experiment, start, _ = hparams(flatten(config), dict.fromkeys(HPARAM_METRICS, 0.0))
        self._tb.file_writer.add_summary(experiment)
        self._tb.file_writer.add_summary(start)
        self._tb.add_text("config", "```json\n" + json.dumps(config, indent=2) + "\n```", 0)

    def write(self, step, row) -> None:
        for name, value in row.items():
            self._tb.add_scalar(name, value, step)

    def flush(self) -> None:
        if time.monotonic() - self._synced >= self._flush_secs:
            self._tb.flush()
            self._dir.sync()
            self._synced = time.monotonic()

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()
            self._tb = None
            self._dir.close()


def make_sink(ctx: SinkContext) -> TensorBoardSink:
    return TensorBoardSink(ctx.workdir, ctx.resume_step, ctx.config)


def flatten(config: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested config -> {"a.b": value}; values TensorBoard's hparams cannot hold (lists,
    None) become their JSON text."""
    out: dict[str, Any] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(flatten(value, name + "."))
        elif isinstance(value, (bool, int, float, str)):
            out[name] = value
        else:
            out[name] = json.dumps(value)
    return out
