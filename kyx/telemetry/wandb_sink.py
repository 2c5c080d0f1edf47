"""Weights & Biases (optional extra: ``pip install 'kyx[wandb]'``).

On when ``metrics.wandb.project`` is set (or ``wandb`` is in ``metrics.sinks``); the
resolved config is the run's W&B config. ``metrics.wandb.mode`` "offline" writes the run
under ``<workdir>/wandb/`` (or ``$WANDB_DIR``) for a later ``wandb sync``; "" leaves it
to W&B (``WANDB_MODE``, else online). The W&B run id is kept in ``<workdir>/wandb_run_id``
so a resumed kyx run continues the same W&B run (W&B ignores steps it already has).
"""
from __future__ import annotations

import os
import secrets

from kyx.errors import ConfigError, KyxError
from kyx.fileio import as_path, is_local
from kyx.telemetry.sink import Sink, SinkContext

RUN_ID_FILE = "wandb_run_id"


class WandbSink(Sink):
    def __init__(self, ctx: SinkContext):
        try:
            import wandb
        except ImportError:
            raise ConfigError("metrics.wandb: the wandb package is not installed; install "
                              "kyx's extra with pip install 'kyx[wandb]' (or pip install "
                              "wandb), or unset metrics.wandb.project") from None
        opts = dict(ctx.settings.get("wandb") or {})
        workdir = as_path(ctx.workdir)
        # explicit, as W&B's process-wide settings keep the first run's directory
        run_dir = os.environ.get("WANDB_DIR") or (str(workdir) if is_local(workdir) else None)
        try:
            self._run = wandb.init(
                project=opts.get("project") or None, entity=opts.get("entity") or None,
                name=opts.get("name") or workdir.name, mode=opts.get("mode") or None,
                tags=list(opts.get("tags") or ()) or None, config=dict(ctx.config or {}),
                dir=run_dir, id=_run_id(workdir),
                resume="allow")
        except wandb.errors.Error as e:  # no login, unknown entity, no network ...
            raise KyxError(f"W&B could not start the run: {e} Log in with `wandb login` "
                           "(or set WANDB_API_KEY), or log offline with "
                           "--config.metrics.wandb.mode=offline and `wandb sync` later") from None

    def write(self, step, row) -> None:
        self._run.log(dict(row), step=step)

    def close(self) -> None:
        if self._run is not None:
            self._run.finish()
            self._run = None


def make_sink(ctx: SinkContext) -> WandbSink:
    return WandbSink(ctx)


def _run_id(workdir) -> str:
    """This workdir's W&B run id: read from ``wandb_run_id``, or made and written once."""
    path = workdir / RUN_ID_FILE
    if path.exists():
        return path.read_text().strip()
    workdir.mkdir(parents=True, exist_ok=True)
    run_id = secrets.token_hex(4)
    path.write_text(run_id + "\n")
    return run_id
