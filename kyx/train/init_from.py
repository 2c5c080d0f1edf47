"""`init_from`: start a run from another workdir's params (optimizer state is fresh)."""
from __future__ import annotations

import os

import jax

from kyx import sharding
from kyx.checkpoint.manager import Checkpointer
from kyx.errors import CheckpointError
from kyx.model.params import param_shardings
from kyx.train.state import with_shardings


def load_params(workdir: str, model, mesh, rules, step: int = -1):
    """Params of `workdir`'s newest (or given) checkpoint, placed with the model's shardings."""
    directory = os.path.join(workdir, "checkpoints")
    if not os.path.isdir(directory):
        raise CheckpointError(f"init_from={workdir!r} has no checkpoints/ directory")
    ckpt = Checkpointer(directory, read_only=True)
    steps = ckpt.steps()
    if not steps:
        raise CheckpointError(f"init_from={workdir!r} contains no checkpoint")
    shardings, abstract = param_shardings(model, mesh, rules)
    target = with_shardings(abstract, shardings)
    candidates = [step] if step >= 0 else list(reversed(steps))
    last_error = None
    for s in candidates:
        try:
            return ckpt.restore_params(s, target)
        except CheckpointError as e:
            print(f"WARNING: {e}; trying an earlier checkpoint", flush=True)
            last_error = e
    raise last_error


def params_loader(cfg, model):
    """A zero-argument loader for the loop, or None when `init_from` is unset."""
    if not cfg.get("init_from"):
        return None

    def load():
        rules = sharding.get_rules(cfg.mesh.rules)
        mesh = sharding.make_mesh({a: cfg.mesh[a] for a in sharding.MESH_AXES})
        return load_params(cfg.init_from, model, mesh, rules)
    return load
