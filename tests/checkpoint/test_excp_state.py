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


def _bf16_states():
    """Host states after steps 3 and 4 of bf16 params with bf16 Adam moments
    (kyx/train/precision.py), gradients of different scales per row."""
    from kyx.train.precision import scale_by_adam_stored

    params = {"dense": {"kernel": (jnp.arange(48.0).reshape(8, 6) / 50 - 0.4).astype(jnp.bfloat16),
                        "bias": jnp.linspace(-1, 1, 6).astype(jnp.bfloat16)}}
    tx = optax.chain(scale_by_adam_stored(0.9, 0.95, 1e-8, "bfloat16"),
                     optax.scale_by_learning_rate(1e-2))
    opt_state, out = tx.init(params), {}
    for step in range(1, 5):
        key = jax.random.key(step)
        grads = jax.tree.map(lambda p: jax.random.normal(key, p.shape).astype(p.dtype)
                             * jnp.logspace(-4, 0, p.shape[-1]).astype(p.dtype), params)
        updates, opt_state = tx.update(grads, opt_state, params)
        params = optax.apply_updates(params, updates)
        host = lambda t: jax.tree.map(np.asarray, t)  # noqa: E731
        out[step] = TrainState(step=np.asarray(step, np.int32),
                               models={"policy": ModelState(host(params), host(opt_state))},
                               rng=np.arange(2, dtype=np.uint32))
    return out[3], out[4]


def test_bf16_state_compresses_as_its_float32_values(tmp_path):
    """ExCP reads bf16 params and moments as float32 (exact) and writes its reconstruction
    back in the state's dtypes: lossless, the bf16 state comes back bit for bit; with the
    default (lossy) options the reconstruction is the one of the same values held in
    float32, rounded to bf16 (nothing is lost or garbled by the 16-bit storage)."""
    states = _bf16_states()
    assert {x.dtype for x in jax.tree.leaves(states[0].models)} == {np.dtype(jnp.bfloat16),
                                                                    np.dtype(np.int32)}
    abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), states[1])
    lossless = ExcpChain(str(tmp_path / "lossless"), ExcpOptions(prune=False, quantize=False))
    for s in states:
        excp_archive.append_state(lossless, s, {})
    got, _ = excp_archive.state_from_chain(ExcpChain(str(tmp_path / "lossless")), 4, abstract)
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(states[1])):
        assert a.dtype == b.dtype and np.array_equal(a, b)

    as_f32 = lambda s: jax.tree.map(  # noqa: E731
        lambda x: x.astype(np.float32) if x.dtype == jnp.bfloat16 else x, s)
    abstract32 = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), as_f32(states[1]))
    for name, variant in (("bf16", lambda s: s), ("f32", as_f32)):
        chain = ExcpChain(str(tmp_path / name), ExcpOptions())
        for s in states:
            excp_archive.append_state(chain, variant(s), {})
    got16, _ = excp_archive.state_from_chain(ExcpChain(str(tmp_path / "bf16")), 4, abstract)
    got32, _ = excp_archive.state_from_chain(ExcpChain(str(tmp_path / "f32")), 4, abstract32)
    for a, b in zip(jax.tree.leaves(got16), jax.tree.leaves(got32)):
        assert a.dtype == (jnp.bfloat16 if b.dtype == np.float32 else b.dtype)
        assert np.all(np.isfinite(a.astype(np.float32)))
        np.testing.assert_array_equal(a, b.astype(a.dtype))
