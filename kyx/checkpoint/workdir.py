"""Reading a kyx workdir: its resolved config and one model's params from its checkpoints."""
from __future__ import annotations

import os

from kyx import config as config_lib
from kyx import sharding
from kyx.checkpoint.manager import Checkpointer
from kyx.errors import CheckpointError
from kyx.logs import get_logger
from kyx.model.params import param_shardings

log = get_logger(__name__)


def read_config(workdir: str):
    """The workdir's resolved config (config.json)."""
    path = os.path.join(workdir, "config.json")
    if not os.path.exists(path):
        raise CheckpointError(f"{workdir!r} is not a kyx workdir (no config.json)")
    return config_lib.load_json(path)


def checkpoint_steps(workdir: str) -> list[int]:
    directory = os.path.join(workdir, "checkpoints")
    if not os.path.isdir(directory):
        return []
    return Checkpointer(directory, read_only=True).steps()


def load_params(workdir: str, module, mesh, rules, step: int = -1, name: str | None = None):
    """One model's params (``name``: default ``policy``, or the only model) from the
    newest readable checkpoint (or exactly ``step``), placed with ``module``'s shardings.

    A corrupted newest checkpoint is reported and the previous one is used."""
    directory = os.path.join(workdir, "checkpoints")
    if not os.path.isdir(directory):
        raise CheckpointError(f"{workdir!r} has no checkpoints/ directory")
    ckpt = Checkpointer(directory, read_only=True)
    steps = ckpt.steps()
    if not steps:
        raise CheckpointError(f"{workdir!r} contains no checkpoint")
    if step >= 0 and step not in steps:
        raise CheckpointError(f"no checkpoint for step {step} in {directory}; available: {steps}")
    shardings, abstract = param_shardings(module, mesh, rules)
    target = sharding.with_shardings(abstract, shardings)
    last_error = None
    for s in ([step] if step >= 0 else list(reversed(steps))):
        try:
            return ckpt.restore_params(s, target, name)
        except CheckpointError as e:
            log.warning("%s; trying an earlier checkpoint", e)
            last_error = e
    raise last_error
