"""Reading a kyx workdir: its resolved config and one model's params from its checkpoints."""
from __future__ import annotations

import os

from kyx import config as config_lib
from kyx import sharding
from kyx.checkpoint.manager import Checkpointer
from kyx.errors import CheckpointError
from kyx.fileio import as_path
from kyx.model.params import param_shardings


def read_config(workdir: str):
    """The workdir's resolved config (config.json), local or at a storage URL."""
    path = as_path(workdir) / "config.json"
    if not path.exists():
        raise CheckpointError(f"{workdir!r} is not a kyx workdir (no config.json)")
    return config_lib.load_json(path)


def checkpoint_steps(workdir: str) -> list[int]:
    directory = as_path(workdir) / "checkpoints"
    if not directory.is_dir():
        return []
    return Checkpointer(directory, read_only=True).steps()


def load_params(workdir: str, module, mesh, rules, step: int = -1, name: str | None = None):
    """One model's params (``name``: default ``policy``, or the only model) from the
    newest checkpoint (or exactly ``step``), placed with ``module``'s shardings and
    verified against the digests saved with them.

    A damaged checkpoint is an error naming the other steps, not a silent fallback: the
    caller asked for these weights and must choose another step knowingly."""
    directory = os.path.join(workdir, "checkpoints")
    steps = checkpoint_steps(workdir)
    if not steps:
        raise CheckpointError(
            f"{workdir!r} holds no checkpoint yet (nothing under {directory}); train it "
            "first, or wait for its first checkpoint.every save")
    if step >= 0 and step not in steps:
        raise CheckpointError(f"no checkpoint for step {step} in {directory}; available: {steps}")
    step = step if step >= 0 else steps[-1]
    shardings, abstract = param_shardings(module, mesh, rules)
    target = sharding.with_shardings(abstract, shardings)
    try:
        return Checkpointer(directory, read_only=True).restore_params(step, target, name)
    except CheckpointError as e:
        others = [s for s in steps if s != step]
        hint = (f"; load another step explicitly (step=N in kyx.load, --step N in kyx "
                f"sample); steps: {others}" if others else "")
        raise CheckpointError(f"{e}{hint}") from e
