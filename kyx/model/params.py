"""Parameter creation placed directly with its target shardings (no host round trip)."""
from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.sharding import Mesh

from kyx import sharding


def _dummy_inputs(batch: int = 1, length: int = 8):
    return jnp.zeros((batch, length), jnp.int32)


def abstract_params(model: nn.Module):
    """(abstract unboxed params, logical PartitionSpec tree) without allocating memory."""
    boxed = jax.eval_shape(lambda: model.init(jax.random.key(0), _dummy_inputs())["params"])
    specs = nn.get_partition_spec(boxed)
    return nn.unbox(boxed), specs


def param_shardings(model: nn.Module, mesh: Mesh, rules):
    abstract, specs = abstract_params(model)
    return sharding.tree_shardings(specs, abstract, mesh, sharding.get_rules(rules)), abstract


def init_params(model: nn.Module, rng: jax.Array, mesh: Mesh, rules):
    """Initialise params on the mesh: each shard is created on its own device."""
    shardings, _ = param_shardings(model, mesh, rules)
    init = jax.jit(lambda r: nn.unbox(model.init(r, _dummy_inputs())["params"]),
                   out_shardings=shardings)
    with sharding.use_mesh(mesh, rules):
        return init(rng)


def count_params(params) -> int:
    return sum(int(x.size) for x in jax.tree.leaves(params))
