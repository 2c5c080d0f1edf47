"""``train.profile_steps="START:END"``: a ``jax.profiler`` trace of the steps with index
START <= i < END (``state.step`` before the step; rows START+1 .. END of metrics.jsonl)
into ``<workdir>/tb/plugins/profile/<time>/<host>.xplane.pb``, which TensorBoard's profile
plugin (``pip install tensorboard tensorboard-plugin-profile``) shows next to the scalars.

Every step runs under ``jax.profiler.StepTraceAnnotation("train", step_num=i)`` (whether
tracing or not: a profiler attached from outside also sees the steps). The trace starts
before step START and stops after step END-1 once its work is done (``sync``); a run that
ends or fails earlier stops it in ``close``. Only the writing process (process 0) traces.
"""
from __future__ import annotations

import contextlib
import re
from typing import Any, Callable

from kyx.errors import ConfigError
from kyx.logs import get_logger
from kyx.telemetry.staging import StagedDir
from kyx.telemetry.tensorboard import TB_DIR

log = get_logger(__name__)
_SPEC = re.compile(r"\s*(\d+)\s*:\s*(\d+)\s*")


def parse_steps(spec: str) -> tuple[int, int] | None:
    """'10:15' -> (10, 15); '' -> None (no trace)."""
    if not isinstance(spec, str):
        raise ConfigError("must be a string 'START:END', e.g. '10:15'")
    if not spec.strip():
        return None
    m = _SPEC.fullmatch(spec)
    if not m or int(m.group(1)) >= int(m.group(2)):
        raise ConfigError("must be 'START:END' with whole numbers START < END (the steps "
                          "START .. END-1 are traced, e.g. '10:15'), or '' for no trace")
    return int(m.group(1)), int(m.group(2))


class StepProfiler:
    """``with profiler.step(i): <run step i>`` around every step of the loop; ``sync()``
    waits for the work of the steps run so far (the loop blocks on its state)."""

    def __init__(self, spec: str, workdir, sync: Callable[[], Any] = lambda: None,
                 enabled: bool = True):
        self.steps = parse_steps(spec) if enabled else None
        self.logdir, self._sync = f"{str(workdir).rstrip('/')}/{TB_DIR}", sync
        self._dir: StagedDir | None = None
        self.traced: list[int] = []

    @contextlib.contextmanager
    def step(self, step: int):
        import jax

        if self.steps and self._dir is None and self.steps[0] <= step < self.steps[1]:
            self._start()
        with jax.profiler.StepTraceAnnotation("train", step_num=step):
            yield
        if self._dir is not None:
            self.traced.append(step)
            if step + 1 >= self.steps[1]:
                self.close()

    def _start(self) -> None:
        import jax

        self._dir = StagedDir(self.logdir)
        jax.profiler.start_trace(str(self._dir.local))

    def close(self) -> None:
        """Stop a trace in progress (after its steps' work is done) and write it out."""
        if self._dir is None:
            return
        import jax

        try:
            self._sync()
        finally:
            jax.profiler.stop_trace()
            self._dir.close()
            self._dir = None
        if self.traced:
            log.info("profile of steps %d..%d written to %s/plugins/profile",
                     self.traced[0], self.traced[-1], self.logdir)
