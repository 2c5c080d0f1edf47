"""A trainer's evaluation at given params: its eval_fn over its eval batches, reduced on
device, then summarised. Used by the loop's eval hook and by drivers that evaluate a
policy without training it (the iterative alignment driver, experiments)."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from kyx import sharding


def trainer_eval(trainer, params: dict, mesh=None, rules=None, eval_fn=None) -> tuple[dict, dict]:
    """(metrics, artifacts) of ``trainer.summarize_eval`` over ``trainer.eval_batches()``.

    ``params``: {model name: params}; ``eval_fn``: the jitted eval function (default: jit
    ``trainer.eval_fn``; pass the loop's to reuse its compilation)."""
    if mesh is None:
        mesh, rules = sharding.mesh_from_config(trainer.config.mesh)
    batch_sh = {k: sharding.named_sharding(v, mesh, rules) for k, v in trainer.batch_axes.items()}
    fn = eval_fn or jax.jit(trainer.eval_fn)
    sums = None
    with sharding.use_mesh(mesh, rules):
        for batch in trainer.eval_batches():
            dev = {k: jax.make_array_from_process_local_data(batch_sh[k], np.asarray(v))
                   for k, v in batch.items()}
            out = fn(params, dev)
            sums = out if sums is None else jax.tree.map(jnp.add, sums, out)
    if sums is None:
        return {}, {}
    return trainer.summarize_eval(jax.device_get(sums))
