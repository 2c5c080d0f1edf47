"""One writer per run: per-step scalars fanned out to the selected sinks, on process 0.

``open_writer`` is the one place that decides who writes: process 0 gets the sinks named
by the config (kyx/telemetry/sinks.py), every other process a writer with none, so a
multi-host run has exactly one metrics.jsonl, one TensorBoard stream, one console and one
W&B run. ``writes_here()`` answers the same question for other outputs (plots, traces).
"""
from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np

from kyx.fileio import as_path
from kyx.telemetry.sink import Sink, SinkContext
from kyx.telemetry.sinks import SINKS


def writes_here() -> bool:
    """Whether this process writes the run's metrics, plots and traces (process 0): the
    one gate of every writer in kyx, ``kyx.distributed.is_writer``."""
    from kyx.distributed import is_writer

    return is_writer()


class MetricsWriter:
    """Checks and converts a row once (numbers only, ``step`` reserved), then hands it to
    every sink. Closing is idempotent; writing after ``close`` is an error."""

    def __init__(self, sinks: Sequence[Sink]):
        self.sinks = list(sinks)
        self._closed = False

    def write(self, step: int, metrics: Mapping[str, Any]) -> None:
        """Record ``metrics`` (scalars: Python, numpy or jax) for ``step``."""
        if self._closed:
            raise RuntimeError("MetricsWriter.write called after close()")
        if "step" in metrics:
            raise ValueError("'step' is reserved; pass it as the step argument")
        row = {name: to_number(name, v) for name, v in metrics.items()}
        for sink in self.sinks:
            sink.write(int(step), row)

    def flush(self) -> None:
        for sink in self.sinks:
            sink.flush()

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        errors = []
        for sink in self.sinks:  # every sink gets closed even if one fails
            try:
                sink.close()
            except Exception as e:  # noqa: BLE001 - re-raised below
                errors.append(e)
        if errors:
            raise errors[0]

    def __enter__(self) -> "MetricsWriter":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def open_writer(workdir, sinks: Sequence[str] = ("jsonl", "tensorboard"), *,
                resume_step: int | None = None, total: int = 0, every: int = 0,
                settings: Mapping[str, Any] | None = None,
                config: Mapping[str, Any] | None = None) -> MetricsWriter:
    """The writer of a run in ``workdir`` with the named sinks (none off process 0).

    ``resume_step``: the step the run restarts from; rows written after it (by the run
    that was interrupted) are dropped. ``settings``: the ``metrics`` config section (sink
    options); ``config``: the resolved run config, logged as hyperparameters."""
    if not writes_here():
        return MetricsWriter([])
    ctx = SinkContext(as_path(workdir), resume_step, total, every, settings or {}, config)
    made: list[Sink] = []
    try:
        for name in sinks:
            made.append(SINKS.get(name).fn(ctx))
    except BaseException:
        MetricsWriter(made).close()
        raise
    return MetricsWriter(made)


def to_number(name: str, value: Any) -> int | float:
    """Python/numpy/jax scalar (or size-1 array) -> int (integers) or float (the rest)."""
    if isinstance(value, (bool, np.bool_)):
        return int(value)
    if isinstance(value, (int, float)):
        return value
    arr = np.asarray(value)  # also pulls a jax.Array to host
    if arr.size != 1 or arr.dtype.kind not in "biuf":
        raise TypeError(f"metric {name!r} must be a numeric scalar, got {type(value).__name__} "
                        f"with shape {arr.shape} and dtype {arr.dtype}")
    item = arr.reshape(()).item()
    return int(item) if arr.dtype.kind in "biu" else float(item)
