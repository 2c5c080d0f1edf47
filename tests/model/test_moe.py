"""MoE layer against a naive per-expert loop; word-embedding routing; MoE decoder plumbing."""
import dataclasses
import functools
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from kyx.errors import ConfigError
from kyx.model import Decoder, ModelConfig
from kyx.model.decode import generate_padded, pad_prompts
from kyx.model.moe import MoE, Router

BASE = ModelConfig(vocab_size=64, d_model=16, num_layers=2, num_heads=2, ffn_dim=32,
                   moe_num_experts=4, moe_top_k=2, moe_ffn_dim=8)


def _layer_setup(cfg, seed=0, b=2, t=8):
    """Random layer parameters (built by hand, so no init compile), inputs and a mask."""
    rng = np.random.default_rng(seed)
    d, e, f = cfg.d_model, cfg.moe_num_experts, cfg.expert_dim

    def normal(*shape, scale=0.3):
        return jnp.asarray(rng.normal(size=shape).astype(np.float32) * scale)
    params = {"router": {"kernel": normal(d, e)}, "wi_gate": normal(e, d, f),
              "wi_up": normal(e, d, f), "wo": normal(e, f, d)}
    if cfg.moe_shared_experts:
        fs = cfg.moe_shared_experts * f
        params["shared"] = {"wi_gate": normal(d, fs), "wi_up": normal(d, fs), "wo": normal(fs, d)}
    x = normal(b, t, d, scale=1.0)
    valid = np.ones((b, t), bool)
    valid[1, -2:] = False  # padding is never dispatched
    return params, x, jnp.asarray(valid)


def _silu(v):
    return v / (1.0 + jnp.exp(-v))


def _swiglu(x_d, wg, wu, wo):
    return (_silu(x_d @ wg) * (x_d @ wu)) @ wo


def reference_routing(cfg, params, router_in, valid):
    """Routing decisions in numpy (float64): chosen experts [B, T, k] and kept pairs.

    Capacity priority (per batch row): all first choices in token order, then all second
    choices, ...; an expert accepts a pair while it holds fewer than C tokens."""
    e_count, k = cfg.moe_num_experts, cfg.moe_top_k
    b, t, _ = router_in.shape
    logits = np.asarray(router_in, np.float64) @ np.asarray(params["router"]["kernel"], np.float64)
    cap = min(t, math.ceil(k * t * cfg.moe_capacity_factor / e_count))
    choice = np.argsort(-logits, axis=-1, kind="stable")[..., :k]
    keep = np.zeros((b, t, k), bool)
    for bi in range(b):
        if cfg.moe_dispatch == "capacity":
            load = np.zeros(e_count, int)
            for j in range(k):
                for ti in range(t):
                    e = choice[bi, ti, j]
                    if valid[bi, ti] and load[e] < cap:
                        keep[bi, ti, j] = True
                        load[e] += 1
        else:
            keep[bi] = np.asarray(valid[bi])[:, None]
    dropped = np.sum(np.asarray(valid)[..., None] & ~keep) / (k * np.sum(valid))
    return choice, keep, dropped


def reference_moe(cfg, params, x, router_in, routing):
    """Loop over experts: each expert runs on every token; a token keeps expert e's output
    weighted by its gate when e is among its kept choices (differentiable in params, x)."""
    choice, keep, _ = routing
    probs = jax.nn.softmax(router_in @ params["router"]["kernel"], axis=-1)
    sel = jnp.take_along_axis(probs, jnp.asarray(choice), axis=-1)
    gates = sel / jnp.sum(sel, axis=-1, keepdims=True) if cfg.moe_norm_topk else sel
    y = jnp.zeros_like(x)
    for e in range(cfg.moe_num_experts):
        weight_bt = jnp.sum(gates * ((choice == e) & keep), axis=-1)
        y = y + weight_bt[..., None] * _swiglu(x, params["wi_gate"][e], params["wi_up"][e],
                                               params["wo"][e])
    if cfg.moe_shared_experts:
        s = params["shared"]
        y = y + _swiglu(x, s["wi_gate"], s["wi_up"], s["wo"])
    return y


CASES = {
    "capacity": dict(moe_dispatch="capacity", moe_capacity_factor=2.0),
    "capacity_drops": dict(moe_dispatch="capacity", moe_capacity_factor=0.5),
    "dropless": dict(moe_dispatch="dropless", moe_shared_experts=2),
    "top1_unnormalised": dict(moe_dispatch="capacity", moe_capacity_factor=1.0, moe_top_k=1,
                              moe_norm_topk=False, moe_shared_experts=1),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_moe_layer_equals_naive_loop(case):
    cfg = dataclasses.replace(BASE, **CASES[case])
    params, x, valid = _layer_setup(cfg)
    routing = reference_routing(cfg, params, x, np.asarray(valid))

    def layer(p, x):
        return MoE(cfg).apply({"params": p}, x, x, valid)

    def reference(p, x):
        return reference_moe(cfg, p, x, x, routing), None
    (y, stats), g = _value_and_grad(layer, params, x)
    (ref, _), g_ref = _value_and_grad(reference, params, x)
    np.testing.assert_allclose(np.asarray(y), np.asarray(ref), rtol=1e-5, atol=1e-5)
    for a, r in zip(jax.tree.leaves(g), jax.tree.leaves(g_ref)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(r), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(float(stats["dropped_frac"]), routing[2], atol=1e-6)
    if case == "capacity_drops":
        assert routing[2] > 0.2
    elif case != "top1_unnormalised":
        assert routing[2] == 0


@functools.partial(jax.jit, static_argnums=0)
def _value_and_grad(fn, params, x):
    def loss(p, x):
        out, aux = fn(p, x)
        return jnp.sum(jnp.sin(out)), (out, aux)
    (_, out), grads = jax.value_and_grad(loss, argnums=(0, 1), has_aux=True)(params, x)
    return out, grads


def test_router_jitter_only_with_rng():
    router = Router(4, 0.02, jitter=0.1)
    r = jnp.ones((1, 3, 8))
    params = router.init(jax.random.key(0), r)
    plain = router.apply(params, r)
    np.testing.assert_array_equal(np.asarray(plain), np.asarray(router.apply(params, r)))
    noisy = router.apply(params, r, rngs={"jitter": jax.random.key(1)})
    assert not np.allclose(np.asarray(noisy), np.asarray(plain))
    # jitter is multiplicative U(1-eps, 1+eps) on the input, so it is bounded
    w = np.asarray(nn.unbox(params)["params"]["kernel"])
    assert np.all(np.abs(np.asarray(noisy) - np.asarray(plain)) <= 0.1 * np.abs(w).sum(0) + 1e-6)


@functools.partial(jax.jit, static_argnums=0)
def _router_logits(cfg, params, tokens):
    _, state = Decoder(cfg).apply({"params": params}, tokens, capture_intermediates=(
        lambda mdl, _: isinstance(mdl, Router)))
    (logits,) = jax.tree.leaves(state["intermediates"])
    return logits  # [moe layers, B, T, E]


def test_word_embedding_routing_depends_only_on_token():
    cfg = dataclasses.replace(BASE, moe_router_input="embedding")
    tokens = jnp.asarray([[5, 9, 5, 3, 9, 5], [3, 3, 9, 5, 1, 2]], jnp.int32)
    params = jax.jit(Decoder(cfg).init)(jax.random.key(0), tokens)["params"]
    logits = np.asarray(_router_logits(cfg, params, tokens))
    flat_tok, flat = np.asarray(tokens).reshape(-1), logits.reshape(logits.shape[0], -1, 4)
    for tok in (3, 5, 9):
        rows = flat[:, flat_tok == tok]
        np.testing.assert_array_equal(rows, np.broadcast_to(rows[:, :1], rows.shape))
    # contrast: hidden-state routing depends on context
    hidden = np.asarray(_router_logits(BASE, params, tokens)).reshape(logits.shape[0], -1, 4)
    rows = hidden[:, flat_tok == 5]
    assert not np.allclose(rows, rows[:, :1])


def test_moe_layout_dense_prefix_and_every_n():
    cfg = dataclasses.replace(BASE, num_layers=5, moe_first_dense=1, moe_every=2)
    assert cfg.moe_layer_ids == (2, 4)
    params = jax.eval_shape(Decoder(cfg).init, jax.random.key(0), jnp.ones((1, 4), jnp.int32))
    params = nn.unbox(params["params"])
    assert params["dense_layers"]["mlp"]["wo"].shape == (1, 32, 16)
    blocks = params["moe_layers"]
    assert blocks["dense_0"]["mlp"]["wo"].shape == (2, 32, 16)
    assert blocks["sparse"]["moe"]["wi_gate"].shape == (2, 4, 16, 8)
    with pytest.raises(ConfigError, match="multiple of moe_every"):
        dataclasses.replace(cfg, num_layers=4).validate()
    with pytest.raises(ConfigError, match="moe_dispatch"):
        dataclasses.replace(cfg, moe_dispatch="sorted").validate()
    dense = Decoder(dataclasses.replace(BASE, moe_num_experts=0))
    tokens = jnp.ones((1, 4), jnp.int32)
    _, aux = jax.eval_shape(lambda: dense.apply(dense.init(jax.random.key(0), tokens), tokens))
    assert aux["moe_loss"].shape == () and aux["moe_metrics"] == {}


def test_cached_decoding_with_moe_equals_full_forward():
    cfg = dataclasses.replace(BASE, num_layers=3, moe_first_dense=1, moe_dispatch="dropless",
                              moe_shared_experts=1, attn_reuse_prob=0.5)
    model = Decoder(cfg)
    params = jax.jit(model.init)(jax.random.key(0), jnp.ones((1, 8), jnp.int32))["params"]
    prompts = [[1, 2, 3, 4, 5], [9, 8]]
    tokens, lengths, _ = pad_prompts(prompts)
    out = generate_padded(model, params, jnp.asarray(tokens), jnp.asarray(lengths),
                          jax.random.key(1), max_new_tokens=4, return_logits=True)
    # one full forward over both rows, right-padded (causal: padding cannot affect them)
    rows = [p + np.asarray(out["tokens"][i]).tolist() for i, p in enumerate(prompts)]
    full = np.zeros((len(rows), max(map(len, rows))), np.int32)
    for i, r in enumerate(rows):
        full[i, : len(r)] = r
    logits, _ = jax.jit(model.apply)({"params": params}, jnp.asarray(full))
    for i, p in enumerate(prompts):
        ref = np.asarray(logits[i, len(p) - 1: len(p) - 1 + 4])
        np.testing.assert_allclose(np.asarray(out["logits"][i]), ref, atol=1e-4, rtol=1e-4)
