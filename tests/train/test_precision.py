"""Mixed precision: model.param_dtype, optim.state_dtype and the float32 update
(kyx/train/precision.py): stored dtypes, the bf16-moment step against the f32 one, the
default path equal to optax's AdamW bit for bit, 8 devices = 1, bytes per parameter."""
import os
import types

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from kyx import config as config_lib
from kyx import sharding
from kyx.train import optim, pretrain
from kyx.train import state as state_lib
from kyx.train.forward import LossContext
from kyx.train.precision import scale_by_adam_stored

PRETRAIN = os.path.join(os.path.dirname(__file__), "..", "..", "configs", "pretrain.py")
TINY = ["model.vocab_size=64", "model.d_model=32", "model.num_layers=2", "model.num_heads=4",
        "model.num_kv_heads=2", "model.max_seq_len=16", "data.seq_len=16",
        "data.batch_size=8", "train.steps=10", "optim.warmup_steps=0"]
BF16_U = float(jnp.finfo(jnp.bfloat16).eps) / 2   # unit roundoff 2^-8 of round-to-nearest


def _cfg(*overrides):
    return config_lib.load(PRETRAIN + ":tiny", TINY + list(overrides))


def _trainer(cfg):
    """What tests/train/conftest.py's run_steps needs of a trainer (no data pipeline)."""
    step = pretrain.build_step(cfg)
    return types.SimpleNamespace(models=step.models, stats=step.stats, step_fn=step.fn,
                                 batch_axes=pretrain.BATCH_AXES)


def _one_step(cfg, batch):
    """(state after init, state after one step) on one device."""
    trainer = _trainer(cfg)
    mesh = sharding.make_mesh({"data": 1}, devices=jax.devices()[:1])
    rules = sharding.get_rules("dp")
    with sharding.use_mesh(mesh, rules):
        state = state_lib.create(trainer.models, mesh, rules, seed=0)
        first = jax.device_get(state)
        new, _ = jax.jit(trainer.step_fn)(state, batch, jax.random.key(1))
    return first, jax.device_get(new)


def _dtypes(tree):
    return {np.dtype(x.dtype).name for x in jax.tree.leaves(tree)}


def test_a_step_keeps_params_and_moments_in_their_dtypes(packed_batch):
    """bf16 weights, float32 moments (allowed), bf16 compute: one real training step."""
    cfg = _cfg("model.param_dtype=bfloat16", "optim.state_dtype=float32", "model.dtype=bfloat16")
    first, after = _one_step(cfg, packed_batch(64))
    for state in (first, after):
        model = state.models["policy"]
        adam = model.opt_state[1][0]
        assert _dtypes(model.params) == {"bfloat16"}
        assert _dtypes(adam.mu) == _dtypes(adam.nu) == {"float32"}
    before, now = (jax.tree.leaves(s.models["policy"].params) for s in (first, after))
    assert all(not np.array_equal(a, b) for a, b in zip(before, now))  # 16-bit weights move


@pytest.mark.parametrize("module", ["moe", "reward", "policy_with_value"])
def test_every_module_creates_its_params_in_param_dtype(module):
    """MoE (router, experts, shared experts, dense prefix) and the value heads too."""
    from kyx.model import ModelConfig
    from kyx.model.params import abstract_params
    from kyx.model.reward import PolicyWithValue, RewardModel
    from kyx.model.transformer import Decoder

    cfg = ModelConfig(vocab_size=64, d_model=16, num_layers=3, num_heads=2, ffn_dim=32,
                      moe_num_experts=4, moe_shared_experts=1, moe_first_dense=1,
                      param_dtype="bfloat16")
    cls = {"moe": Decoder, "reward": RewardModel, "policy_with_value": PolicyWithValue}[module]
    params, _ = abstract_params(cls(cfg))
    assert _dtypes(params) == {"bfloat16"}
    names = {jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_flatten_with_path(params)[0]}
    assert any("router" in n for n in names) and any("shared" in n for n in names)


@pytest.fixture(scope="module")
def tiny_grads(packed_batch):
    """(config, initial params, real gradients of 3 batches at those params) of the tiny
    float32 model."""
    cfg = _cfg()
    model = pretrain.build_step(cfg).models["policy"].module
    params = jax.jit(model.init)(jax.random.key(0), jnp.zeros((1, 8), jnp.int32))["params"]
    loss_fn = pretrain.make_loss_fn(model, cfg.loss)
    grad = jax.jit(jax.grad(lambda p, b: loss_fn(p, b, LossContext())[0]))
    return cfg, params, [grad(params, packed_batch(64, seed=s)) for s in range(3)]


def _run_tx(tx, params, grads):
    """[(updates, state)] of ``tx`` applied to the gradients in turn."""
    state, out = tx.init(params), []
    update = jax.jit(tx.update)
    for g in grads:
        updates, state = update(g, state, params)
        params = optax.apply_updates(params, updates)
        out.append((updates, state))
    return out


def test_default_optimizer_is_optax_adamw_bit_for_bit(tiny_grads):
    """The default policy (float32 params, state_dtype "") is the AdamW kyx had before:
    optax.adamw after global-norm clipping, same state tree, same bits."""
    cfg, params, grads = tiny_grads
    tx, schedule = optim.make_optimizer(cfg.optim, cfg.train.steps)
    o = cfg.optim
    reference = optax.chain(optax.clip_by_global_norm(o.clip_norm), optax.adamw(
        schedule, b1=o.b1, b2=o.b2, eps=o.eps, weight_decay=o.weight_decay,
        mask=optim.decay_mask))
    for (u, s), (u_ref, s_ref) in zip(_run_tx(tx, params, grads),
                                      _run_tx(reference, params, grads)):
        assert jax.tree.structure(s) == jax.tree.structure(s_ref)
        for a, b in zip(jax.tree.leaves((u, s)), jax.tree.leaves((u_ref, s_ref))):
            assert a.dtype == b.dtype
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_bf16_moments_step_matches_f32_moments_within_bf16_rounding(tiny_grads):
    """Adam with moments stored in bf16 vs float32, float32 params, the same real grads.

    Step 1 starts from zero moments, so its update is computed from exact float32 moments
    either way: equal bit for bit. What differs is what is stored: each moment rounded to
    nearest bf16, relative error <= u = eps_bf16 / 2 = 2^-8. Step 2 reads them back:
    m2 = b1 m1' + (1 - b1) g2 is off by at most b1 u |m1|, v2 by at most u v2, so the
    update lr m2^ / (sqrt(v2^) + eps) (^: bias-corrected by c1, c2) is off by at most
    lr / c1 * u (b1 |m1| + |m2|) / ((1 - u) sqrt(v2 / c2) + eps) (first order; the factor
    2 below covers float32 rounding of both runs)."""
    cfg, params, grads = tiny_grads
    grads = grads[:2]
    b1, b2, eps = cfg.optim.b1, cfg.optim.b2, cfg.optim.eps
    f32 = _run_tx(scale_by_adam_stored(b1, b2, eps, "float32"), params, grads)
    bf16 = _run_tx(scale_by_adam_stored(b1, b2, eps, "bfloat16"), params, grads)
    (u1, s1), (u2, s2) = f32
    (w1, t1), (w2, t2) = bf16
    assert _dtypes((t1.mu, t1.nu)) == {"bfloat16"} and _dtypes((s1.mu, s1.nu)) == {"float32"}
    for a, b in zip(jax.tree.leaves(u1), jax.tree.leaves(w1)):
        np.testing.assert_array_equal(np.asarray(b), np.asarray(a))
    for stored, exact in zip(jax.tree.leaves((t1.mu, t1.nu)), jax.tree.leaves((s1.mu, s1.nu))):
        err = np.abs(np.asarray(stored, np.float32) - np.asarray(exact))
        assert np.all(err <= BF16_U * np.abs(np.asarray(exact)))
    c1, c2 = 1 - b1 ** 2, 1 - b2 ** 2     # (the learning rate is applied later: lr = 1)
    leaves = [jax.tree.leaves(t) for t in (u2, w2, s1.mu, s2.mu, s2.nu)]
    differed = 0
    for a, b, m1, m2, v2 in zip(*leaves):
        a, b, m1, m2, v2 = (np.asarray(x, np.float64) for x in (a, b, m1, m2, v2))
        bound = BF16_U * (b1 * np.abs(m1) + np.abs(m2)) / c1 / (
            (1 - BF16_U) * np.sqrt(v2 / c2) + eps)
        assert np.all(np.abs(b - a) <= 2 * bound)
        differed += int(np.sum(a != b))
    assert differed  # the bf16 moments did change the second update


@pytest.mark.slow  # the step compiled 4 times (1 device, 3 presets): 35-45 s on 2 cores
def test_eight_devices_equal_one_with_bf16_params_and_moments(packed_batch, eight_vs_one):
    """bf16 weights and Adam moments, float32 compute: every dense preset's 8-device run
    equals the 1-device run; the metrics to the conftest's float32 tolerance.

    The weights to what bf16 storage allows each step: the two layouts' float32 sums
    differ in their last bits (reduction order), and rounding a value next to a midpoint
    lands on neighbouring bf16 values: a weight one bf16 spacing apart, and a moment one
    spacing (relative eps_bf16) apart, which moves the next Adam step (|step| <~ lr) by
    <~ eps_bf16 * lr. Per step: spacing(|w|) + eps_bf16 * lr (measured: at most 0.46 of it, in the
    embedding, whose gradient is a scatter-add)."""
    cfg = _cfg("model.param_dtype=bfloat16", "optim.state_dtype=bfloat16")
    batches = [packed_batch(64, seed=s) for s in range(2)]
    eps = float(jnp.finfo(jnp.bfloat16).eps)

    def within_bf16_rounding(x1, x8):
        assert x1.dtype == x8.dtype == jnp.bfloat16
        a, b = np.asarray(x1, np.float32), np.asarray(x8, np.float32)
        spacing = np.spacing(np.maximum(np.abs(a), np.abs(b)).astype(jnp.bfloat16))
        bound = len(batches) * (spacing.astype(np.float32) + eps * cfg.optim.lr)
        assert np.all(np.abs(a - b) <= bound)

    (m1, _), _ = eight_vs_one(_trainer(cfg), batches, same_params=within_bf16_rounding)
    assert all(np.isfinite(m["loss"]) and m["skipped"] == 0 for m in m1)


@pytest.mark.parametrize("param_dtype,dtype,state_dtype,bytes_per_param", [
    ("float32", "float32", "", 12),               # f32 weights + f32 mu, nu
    ("float32", "bfloat16", "bfloat16", 8),       # f32 master weights, bf16 compute and moments
    ("bfloat16", "bfloat16", "", 6),              # all bf16
    ("bfloat16", "bfloat16", "float32", 10),      # bf16 weights, f32 moments
])
def test_state_bytes_per_parameter(param_dtype, dtype, state_dtype, bytes_per_param):
    cfg = _cfg(f"model.param_dtype={param_dtype}", f"model.dtype={dtype}",
               f"optim.state_dtype={state_dtype}")
    mesh = sharding.make_mesh({"data": 1}, devices=jax.devices()[:1])
    _, abstract = state_lib.state_shardings(_trainer(cfg).models, mesh, "dp")
    model = abstract.models["policy"]
    n = sum(x.size for x in jax.tree.leaves(model.params))
    nbytes = sum(x.size * np.dtype(x.dtype).itemsize for x in jax.tree.leaves(model)
                 if x.ndim)  # the step count (a scalar) aside
    assert nbytes == bytes_per_param * n
