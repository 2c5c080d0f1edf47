"""TrainState pytree and its placement on the mesh."""
from __future__ import annotations

from typing import Any

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from kyx import sharding
from kyx.model.params import param_shardings


@flax.struct.dataclass
class TrainState:
    step: jax.Array
    params: Any
    opt_state: Any
    rng: jax.Array          # raw uint32 key data (checkpoint friendly)
    extra: Any = None       # trainer-specific state (e.g. a frozen reference model)


def state_shardings(model: nn.Module, tx: optax.GradientTransformation, mesh: Mesh, rules,
                    extra_shardings=None, abstract_extra=None):
    """(shardings, abstract state): optimizer moments are sharded like their params."""
    p_shard, p_abstract = param_shardings(model, mesh, rules)
    opt_abstract = jax.eval_shape(tx.init, p_abstract)
    replicated = NamedSharding(mesh, P())
    opt_shard = optax.tree_map_params(
        tx, lambda _, s: s, opt_abstract, p_shard,
        transform_non_params=lambda _: replicated)
    # tree_map_params mirrors params into moments; scalars (counts) stay replicated
    opt_shard = jax.tree.map(
        lambda a, s: s if isinstance(s, NamedSharding) else replicated, opt_abstract, opt_shard,
        is_leaf=lambda x: isinstance(x, NamedSharding))
    rng_abstract = jax.ShapeDtypeStruct((2,), jnp.uint32)
    shard = TrainState(step=replicated, params=p_shard, opt_state=opt_shard, rng=replicated,
                       extra=extra_shardings)
    abstract = TrainState(step=jax.ShapeDtypeStruct((), jnp.int32), params=p_abstract,
                          opt_state=opt_abstract, rng=rng_abstract, extra=abstract_extra)
    return shard, abstract


def with_shardings(abstract, shardings):
    """ShapeDtypeStructs carrying shardings, as targets for restoring checkpoints."""
    return jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                        abstract, shardings)


def create(model: nn.Module, tx: optax.GradientTransformation, mesh: Mesh, rules,
           seed: int, params=None, extra=None, extra_shardings=None) -> tuple[TrainState, Any]:
    """Initialise (or adopt `params`) and place the full state with its shardings."""
    shard, _ = state_shardings(model, tx, mesh, rules, extra_shardings)
    init_key, step_key = jax.random.split(jax.random.key(seed))

    def init(key):
        p = nn.unbox(model.init(key, jnp.zeros((1, 8), jnp.int32))["params"])
        return p

    with sharding.use_mesh(mesh, rules):
        if params is None:
            params = jax.jit(init, out_shardings=shard.params)(init_key)
        else:
            params = jax.device_put(params, shard.params)
        opt_state = jax.jit(tx.init, out_shardings=shard.opt_state)(params)
    state = TrainState(step=jax.device_put(jnp.zeros((), jnp.int32), shard.step), params=params,
                       opt_state=opt_state,
                       rng=jax.device_put(jax.random.key_data(step_key), shard.rng),
                       extra=extra)
    return state, shard
