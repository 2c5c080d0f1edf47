"""MoE objectives: load balancing, router z-loss and kyx's routing-error loss."""
import dataclasses
import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from kyx.model import ModelConfig
from kyx.model.moe import PROBE_COLLECTION, MoE
from kyx.objectives import moe as moe_obj


# ----------------------------------------------------------------------------- aux losses

@pytest.mark.parametrize("k", [1, 2])
def test_load_balance_is_one_under_uniform_routing(k):
    e, t = 4, 8
    probs = jnp.full((1, t, e), 1.0 / e)
    idx = (jnp.arange(t)[:, None] + jnp.arange(k)[None]) % e  # every expert equally often
    loss = moe_obj.load_balance_loss(probs, idx[None], jnp.ones((1, t)))
    np.testing.assert_allclose(float(loss), 1.0, rtol=1e-6)


def test_load_balance_hand_value_and_mask():
    # two real tokens, both top-1 on expert 0: f = (1, 0), P = (0.65, 0.35) -> 2 * 0.65
    probs = jnp.asarray([[[0.7, 0.3], [0.6, 0.4], [0.0, 1.0]]])
    idx = jnp.asarray([[[0], [0], [1]]])
    loss = moe_obj.load_balance_loss(probs, idx, jnp.asarray([[1.0, 1.0, 0.0]]))
    np.testing.assert_allclose(float(loss), 1.3, rtol=1e-6)
    # top-2 with E = 2: f = (1/2, 1/2) whatever the probabilities, so the loss is 1
    idx2 = jnp.asarray([[[0, 1], [0, 1], [1, 0]]])
    loss2 = moe_obj.load_balance_loss(probs, idx2, jnp.ones((1, 3)))
    np.testing.assert_allclose(float(loss2), 1.0, rtol=1e-6)


def test_router_z_loss_hand_value():
    logits = jnp.asarray([[[0.0, math.log(3.0)], [2.0, 2.0], [50.0, 50.0]]])
    mask = jnp.asarray([[1.0, 1.0, 0.0]])  # the padding token is ignored
    expected = (math.log(4.0) ** 2 + (2.0 + math.log(2.0)) ** 2) / 2
    np.testing.assert_allclose(float(moe_obj.router_z_loss(logits, mask)), expected, rtol=1e-6)


def test_route_error_flags_and_loss_hand_values():
    # expert 0 gets pressures 1, 1, 1, 1, 1, 1, 1, 9: mu = 2, sigma = sqrt(7); kappa = 2
    a = jnp.asarray([[1.0] * 7 + [9.0]])[..., None]
    idx = jnp.zeros((1, 8, 1), jnp.int32)
    routed = jnp.ones((1, 8, 1), bool)
    flags, stats = moe_obj.route_error_flags(a, idx, routed, 2, kappa=2.0)
    assert np.asarray(flags)[0, :, 0].tolist() == [False] * 7 + [True]
    np.testing.assert_array_equal(np.asarray(stats), [[1, 0], [8, 0]])
    flags_none, _ = moe_obj.route_error_flags(a, idx, routed, 2, kappa=math.sqrt(7.0) + 1e-3)
    assert not np.any(np.asarray(flags_none))
    # an unrouted pair is neither counted nor flagged
    flags_m, stats_m = moe_obj.route_error_flags(a, idx, routed.at[0, 7].set(False), 2, 2.0)
    assert not np.any(np.asarray(flags_m)) and float(stats_m[1, 0]) == 7
    # L_re = weight * mean over flagged of -log(1 - p): p = softmax([ln 3, 0])_0 = 3/4
    logits = jnp.zeros((1, 8, 2)).at[..., 0].set(math.log(3.0))
    loss = moe_obj.route_error_loss(logits, idx, flags, weight=0.5)
    np.testing.assert_allclose(float(loss), 0.5 * math.log(4.0), rtol=1e-6)


# ----------------------------------------------------------------------------- routing error

CFG = ModelConfig(d_model=8, num_heads=2, moe_num_experts=2, moe_top_k=1, moe_ffn_dim=16,
                  moe_norm_topk=False, moe_dispatch="dropless")


def _conflict_task(seed=0, b=4, t=16):
    """64 tokens in two clusters, all routed to expert 0. Cluster B (one token in eight)
    wants the opposite output from cluster A; two padding tokens have absurd targets."""
    rng = np.random.default_rng(seed)
    d, e, f = CFG.d_model, CFG.moe_num_experts, CFG.expert_dim
    minority = np.zeros((b, t), bool)
    minority[:, ::8] = True
    centre_a, centre_b = np.eye(d)[0] * 2.0, np.eye(d)[1] * 2.0
    x = np.where(minority[..., None], centre_b, centre_a) + rng.normal(0, 0.1, (b, t, d))
    valid = np.ones((b, t), bool)
    valid[0, -2:] = False
    w_router = np.zeros((d, e))
    w_router[:2, 0] = 1.0  # both cluster centres: logits (2, 0) -> p(expert 0) = 0.88
    params = {"router": {"kernel": w_router},
              "wi_gate": rng.normal(0, 0.5, (e, d, f)), "wi_up": rng.normal(0, 0.5, (e, d, f)),
              "wo": rng.normal(0, 0.5, (e, f, d))}
    params = jax.tree.map(lambda v: jnp.asarray(v, jnp.float32), params)
    x, valid, minority = jnp.asarray(x, jnp.float32), jnp.asarray(valid), jnp.asarray(minority)
    y0 = MoE(CFG).apply({"params": params}, x, x, valid)[0]
    target = y0 + rng.normal(0, 0.01, y0.shape) - 3.0 * minority[..., None]
    target = jnp.where(valid[..., None], target, 100.0)
    return params, x, valid, minority, target


@functools.partial(jax.jit, static_argnums=0)
def _grads(cfg, params, x, valid, target):
    """Loss value, grads for (params, x), router-logit grads (via flax perturbations) and the
    probe gradient [flagged_e, routed_e]."""
    model = MoE(cfg)
    extra = {"perturbations": {"router_logits": jnp.zeros(x.shape[:2] + (2,))}}
    if cfg.moe_route_error_weight:
        extra[PROBE_COLLECTION] = {"route_error": jnp.zeros((2, 2))}

    def loss(params, x, extra):
        y, _ = model.apply({"params": params, **extra}, x, x, valid)
        return 0.5 * jnp.mean(jnp.sum(jnp.square(y - target), -1)), y
    (value, y), g = jax.value_and_grad(loss, argnums=(0, 1, 2), has_aux=True)(params, x, extra)
    return value, y, g


@pytest.mark.parametrize("dispatch", ["dropless", "capacity"])
def test_route_error_with_infinite_kappa_is_plain_moe(dispatch):
    params, x, valid, _, target = _conflict_task()
    plain = dataclasses.replace(CFG, moe_dispatch=dispatch, moe_top_k=2, moe_norm_topk=True)
    guarded = dataclasses.replace(plain, moe_route_error_weight=1.0,
                                  moe_route_error_kappa=float("inf"))
    v0, y0, (gp0, gx0, _) = _grads(plain, params, x, valid, target)
    v1, y1, (gp1, gx1, extra) = _grads(guarded, params, x, valid, target)
    assert float(v0) == float(v1)
    np.testing.assert_array_equal(np.asarray(y1), np.asarray(y0))
    for a, b in zip(jax.tree.leaves((gp0, gx0)), jax.tree.leaves((gp1, gx1))):
        np.testing.assert_array_equal(np.asarray(b), np.asarray(a))
    stats = np.asarray(extra[PROBE_COLLECTION]["route_error"])
    assert stats[0].sum() == 0 and stats[1].sum() == 2 * np.asarray(valid).sum()


def test_route_error_flags_the_conflicting_cluster_and_moves_the_router():
    params, x, valid, minority, target = _conflict_task()
    on = dataclasses.replace(CFG, moe_route_error_weight=0.1)
    _, _, (g_off, _, extra_off) = _grads(CFG, params, x, valid, target)
    _, _, (g_on, _, extra_on) = _grads(on, params, x, valid, target)
    # flagged tokens are exactly those whose router-logit gradient changed
    d_logits = (extra_on["perturbations"]["router_logits"]
                - extra_off["perturbations"]["router_logits"])
    flagged = np.asarray(jnp.any(d_logits != 0, axis=-1))
    minority, valid = np.asarray(minority), np.asarray(valid)
    assert flagged[minority].mean() >= 0.75 and flagged[~minority].mean() == 0.0
    assert not np.any(flagged[~valid])
    stats = np.asarray(extra_on[PROBE_COLLECTION]["route_error"])
    np.testing.assert_array_equal(stats[:, 0], [flagged.sum(), valid.sum()])
    metrics = moe_obj.flagged_metrics({"route_error": stats[None]}, (0,))
    np.testing.assert_allclose(float(metrics["moe/layer0/flagged_frac"]),
                               flagged.sum() / valid.sum(), rtol=1e-6)

    def train(cfg, steps=5, lr=0.5):
        p = params
        for _ in range(steps):
            _, _, (g, _, _) = _grads(cfg, p, x, valid, target)
            p = {**p, "router": {"kernel": p["router"]["kernel"] - lr * g["router"]["kernel"]}}
        probs = jax.nn.softmax(x @ p["router"]["kernel"], axis=-1)[..., 0]
        return np.asarray(probs)
    before = np.asarray(jax.nn.softmax(x @ params["router"]["kernel"], axis=-1)[..., 0])
    p_on, p_off = train(on), train(CFG)
    real = valid & minority
    assert p_on[real].mean() < before[real].mean() - 0.1       # moved away from expert 0
    assert p_on[real].mean() < p_off[real].mean() - 0.1        # because of the routing loss
    np.testing.assert_allclose(p_on[valid & ~minority].mean(), p_off[valid & ~minority].mean(),
                               atol=0.05)                       # the majority is barely touched
