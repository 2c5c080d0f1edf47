"""A train state through the ExCP chain: everything a resume needs comes back."""
import jax
import jax.numpy as jnp
import numpy as np
import optax

from kyx.checkpoint import excp_archive
from kyx.checkpoint.excp import ExcpChain, ExcpOptions
from kyx.train.state import ModelState, TrainState


def _state():
    params = {"dense": {"kernel": jnp.arange(12.0).reshape(4, 3) / 10}}
    tx = optax.adamw(1e-2)
    opt_state = tx.init(params)
    for _ in range(3):
        updates, opt_state = tx.update(jax.tree.map(jnp.ones_like, params), opt_state, params)
        params = optax.apply_updates(params, updates)
    host = lambda t: jax.tree.map(np.asarray, t)
    return TrainState(step=np.asarray(3, np.int32),
                      models={"policy": ModelState(host(params), host(opt_state))},
                      rng=np.arange(2, dtype=np.uint32),
                      stats={"kl_coef": np.asarray(0.25, np.float32),
                             "reward_moments": np.asarray([1.5, 2.0], np.float32)})


def test_state_round_trip_keeps_counts_rng_and_stats(tmp_path):
    state = _state()
    chain = ExcpChain(str(tmp_path), ExcpOptions(prune=False, quantize=False))
    excp_archive.append_state(chain, state, {"pos": 7})
    abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), state)
    got, data_state = excp_archive.state_from_chain(ExcpChain(str(tmp_path)), 3, abstract)
    assert data_state == {"pos": 7}
    assert jax.tree.structure(got) == jax.tree.structure(state)
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(state)):   # PPO's KL coefficient too
        assert a.dtype == b.dtype and np.array_equal(a, b)
