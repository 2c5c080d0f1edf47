"""The metrics sink interface: where a run's per-step scalars go.

A sink receives host rows ``write(step, {name: number})`` in increasing step order (a
resumed run starts again after its checkpoint's step), ``flush()`` at every log point and
``close()`` once. What it is given to set itself up is a ``SinkContext``. Sinks exist on
process 0 only (kyx/telemetry/writer.py decides that); a sink never needs to check.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Mapping


@dataclasses.dataclass(frozen=True)
class SinkContext:
    workdir: Any                       # etils.epath.Path of the run's workdir
    resume_step: int | None = None     # rows after this step are stale (None: keep all)
    total: int = 0                     # train.steps (progress, ETA)
    every: int = 0                     # train.log_every (console lines; 0: at the end)
    settings: Mapping[str, Any] = dataclasses.field(default_factory=dict)  # cfg.metrics
    config: Mapping[str, Any] | None = None  # the resolved run config (hyperparameters)


class Sink:
    """Base class: override ``write``; ``flush`` / ``close`` default to nothing."""

    def write(self, step: int, row: Mapping[str, int | float]) -> None:
        raise NotImplementedError

    def flush(self) -> None:
        pass

    def close(self) -> None:
        pass
