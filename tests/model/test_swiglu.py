"""kyx/model/swiglu.py: the hand-written VJP equals autodiff of the SwiGLU formula, in
float32 and bfloat16, under remat, and on the 8-device mesh under each rule preset."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from kyx import sharding
from kyx.model.swiglu import swiglu


def formula(x, wg, wu, wd):
    return jnp.einsum("btf,fd->btd", jax.nn.silu(x @ wg) * (x @ wu), wd)


def inputs(dtype=jnp.float32, b=4, t=6, d=16, f=40):
    k = jax.random.split(jax.random.key(0), 5)
    x = jax.random.normal(k[0], (b, t, d))
    ws = [jax.random.normal(kk, shape) * 0.3 for kk, shape in
          zip(k[1:4], [(d, f), (d, f), (f, d)])]
    cot = jax.random.normal(k[4], (b, t, d))
    return [a.astype(dtype) for a in (x, *ws)], cot.astype(dtype)


def vjp(fn, args, cot):
    out, pull = jax.vjp(fn, *args)
    return out, pull(cot)


def assert_close(got, want, rtol):
    for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
        assert g.dtype == w.dtype and g.shape == w.shape
        g, w = np.asarray(g, np.float32), np.asarray(w, np.float32)
        np.testing.assert_allclose(g, w, rtol=rtol, atol=rtol * np.abs(w).max())


def test_values_and_gradients_equal_autodiff_f32():
    args, cot = inputs()
    got = jax.jit(lambda *a: vjp(swiglu, a, cot))(*args)
    want = jax.jit(lambda *a: vjp(formula, a, cot))(*args)
    assert_close(got, want, 1e-5)
    # the gate's derivative is really exercised: negative and positive pre-activations
    gate = args[0] @ args[1]
    assert float(jnp.min(gate)) < -1 and float(jnp.max(gate)) > 1


def test_bfloat16_keeps_dtypes_and_matches_autodiff():
    args, cot = inputs(jnp.bfloat16)
    got = vjp(swiglu, args, cot)
    want = vjp(formula, args, cot)
    assert_close(got, want, 3e-2)   # bf16: 8 mantissa bits, different rounding order


@pytest.mark.parametrize("policy", [jax.checkpoint_policies.nothing_saveable,
                                    jax.checkpoint_policies.checkpoint_dots])
def test_under_remat(policy):
    args, cot = inputs()
    loss = lambda fn: lambda *a: jnp.sum(fn(*a) * cot)  # noqa: E731
    got = jax.jit(jax.grad(jax.checkpoint(loss(swiglu), policy=policy), argnums=(0, 1, 2, 3)))(*args)
    want = jax.grad(loss(formula), argnums=(0, 1, 2, 3))(*args)
    assert_close(got, want, 1e-5)


@pytest.mark.parametrize("preset", sorted(sharding.RULE_PRESETS))
def test_eight_devices_equal_one(preset):
    args, cot = inputs(b=8, f=64)
    want = jax.jit(lambda *a: vjp(swiglu, a, cot))(*args)
    axes = {"dp": {"data": 8}, "fsdp": {"data": 2, "fsdp": 4},
            "fsdp_tp": {"data": 2, "fsdp": 2, "tensor": 2}, "ep": {"data": 2, "expert": 4}}
    mesh = sharding.make_mesh(axes.get(preset, {"data": 8}))
    with sharding.use_mesh(mesh, preset):
        got = jax.jit(lambda *a: vjp(swiglu, a, cot))(*args)
    assert_close(got, want, 1e-5)
