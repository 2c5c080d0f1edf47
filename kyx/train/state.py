"""The train state: a tree of named models, each with params and (if trained) optimizer state.

A trainer declares its models as ``{name: ModelSpec}`` (e.g. ``policy``; DPO adds a frozen
``ref``; PPO adds a ``value`` critic). ``TrainState`` holds one ``ModelState`` per name
and ``stats``, small running statistics a step carries forward (PPO's adaptive KL
coefficient, reward mean / variance); everything (step, every model, stats, the RNG key)
is checkpointed and restored together, placed with the shardings its module's logical
axes give under the rule preset (stats replicated). Optimizer moments are sharded like
their params.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, Mapping

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from kyx import sharding
from kyx.model.params import param_shardings


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    """One model of a trainer: its flax module, optimizer (None: frozen) and initial params.

    ``init`` is a zero-argument function returning params (e.g. loaded by ``init_from``);
    None means a seeded fresh init (``train.seed``). Models may share one ``init``: each
    gets its own on-device copy (the state is donated to the step).
    """
    module: nn.Module
    tx: optax.GradientTransformation | None = None
    init: Callable[[], Any] | None = None

    @property
    def trainable(self) -> bool:
        return self.tx is not None


@flax.struct.dataclass
class ModelState:
    params: Any
    opt_state: Any = None       # None for a frozen model


@flax.struct.dataclass
class TrainState:
    step: jax.Array
    models: dict                # name -> ModelState
    rng: jax.Array              # raw uint32 key data (checkpoint friendly)
    stats: dict = flax.struct.field(default_factory=dict)  # name -> float32 array

    def params(self, name: str):
        return self.models[name].params


Specs = Mapping[str, ModelSpec]


def state_shardings(specs: Specs, mesh: Mesh, rules, stats: Mapping | None = None
                    ) -> tuple[TrainState, TrainState]:
    """(shardings, abstract state) of the TrainState for ``specs`` (and initial ``stats``)
    on ``mesh``."""
    replicated = NamedSharding(mesh, P())
    shard_models, abstract_models = {}, {}
    for name, spec in specs.items():
        p_shard, p_abstract = param_shardings(spec.module, mesh, rules)
        opt_shard = opt_abstract = None
        if spec.trainable:
            opt_abstract = jax.eval_shape(spec.tx.init, p_abstract)
            opt_shard = _opt_shardings(spec.tx, opt_abstract, p_shard, replicated)
        shard_models[name] = ModelState(p_shard, opt_shard)
        abstract_models[name] = ModelState(p_abstract, opt_abstract)
    stats = _stats(stats)
    shard = TrainState(step=replicated, models=shard_models, rng=replicated,
                       stats={k: replicated for k in stats})
    abstract = TrainState(step=jax.ShapeDtypeStruct((), jnp.int32), models=abstract_models,
                          rng=jax.ShapeDtypeStruct((2,), jnp.uint32),
                          stats={k: jax.ShapeDtypeStruct(v.shape, v.dtype)
                                 for k, v in stats.items()})
    return shard, abstract


def _stats(stats: Mapping | None) -> dict:
    return {k: np.asarray(v, np.float32) for k, v in (stats or {}).items()}


def _opt_shardings(tx, opt_abstract, p_shard, replicated):
    """Moments mirror their params' shardings; scalars (counts) stay replicated."""
    opt_shard = optax.tree_map_params(tx, lambda _, s: s, opt_abstract, p_shard,
                                      transform_non_params=lambda _: replicated)
    return jax.tree.map(
        lambda a, s: s if isinstance(s, NamedSharding) else replicated, opt_abstract, opt_shard,
        is_leaf=lambda x: isinstance(x, NamedSharding))


def init_keys(seed: int) -> tuple[jax.Array, jax.Array]:
    """(key of the first model's fresh init, key of the step RNG stream) for ``seed``."""
    init_key, step_key = jax.random.split(jax.random.key(seed))
    return init_key, step_key


def model_init_key(seed: int, index: int) -> jax.Array:
    """Fresh-init key of the ``index``-th model of a trainer (0: the first model)."""
    init_key, _ = init_keys(seed)
    return init_key if index == 0 else jax.random.fold_in(init_key, index)


def create(specs: Specs, mesh: Mesh, rules, seed: int, stats: Mapping | None = None
           ) -> TrainState:
    """Initialise every model (its ``init`` or a seeded fresh init) and its optimizer
    state, and the ``stats``, placed with their shardings. Params from an ``init`` (e.g.
    a float32 source of ``init_from``) are stored in the module's ``param_dtype``."""
    shard, abstract = state_shardings(specs, mesh, rules, stats)
    _, step_key = init_keys(seed)
    placed: set[int] = set()
    models = {}
    with sharding.use_mesh(mesh, rules):
        for index, (name, spec) in enumerate(specs.items()):
            p_shard = shard.models[name].params
            if spec.init is None:
                init = jax.jit(lambda k, m=spec.module: nn.unbox(
                    m.init(k, jnp.zeros((1, 8), jnp.int32))["params"]), out_shardings=p_shard)
                params = init(model_init_key(seed, index))
            else:
                params = _place(spec.init(), p_shard, placed,
                                abstract.models[name].params)
            placed.update(id(x) for x in jax.tree.leaves(params))
            opt_state = None
            if spec.trainable:
                opt_state = jax.jit(spec.tx.init, out_shardings=shard.models[name].opt_state)(
                    params)
            models[name] = ModelState(params, opt_state)
    return TrainState(step=jax.device_put(jnp.zeros((), jnp.int32), shard.step), models=models,
                      rng=jax.device_put(jax.random.key_data(step_key), shard.rng),
                      stats=jax.device_put(_stats(stats), shard.stats))


def _place(params, shardings, placed: set[int], abstract):
    """``params`` on ``shardings`` in the dtypes of ``abstract``; a fresh copy when another
    model already holds these buffers (the donated state must not alias itself)."""
    same_dtypes = all(x.dtype == a.dtype for x, a in
                      zip(jax.tree.leaves(params), jax.tree.leaves(abstract)))
    if same_dtypes and not any(id(x) in placed for x in jax.tree.leaves(params)):
        return jax.device_put(params, shardings)
    return jax.jit(lambda p: jax.tree.map(lambda x, a: (x + 0).astype(a.dtype), p, abstract),
                   out_shardings=shardings)(params)


def trainable(state_or_specs) -> list[str]:
    """Names of the trainable models of a TrainState (opt_state set) or of specs."""
    items = state_or_specs.models if isinstance(state_or_specs, TrainState) else state_or_specs
    return [n for n, m in items.items()
            if (m.trainable if isinstance(m, ModelSpec) else m.opt_state is not None)]
