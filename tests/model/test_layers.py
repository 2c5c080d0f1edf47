"""Hand-derived checks for ALiBi, RoPE, NormHead, SwiGLU sizing and document masking."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from kyx.model import Decoder, ModelConfig, swiglu_hidden_dim
from kyx.model.attention import Attention, alibi_slopes, apply_rope, rope_frequencies
from kyx.model.layers import OutputHead, RMSNorm


def test_swiglu_sizing_matches_baichuan2():
    assert swiglu_hidden_dim(4096) == 11008
    assert swiglu_hidden_dim(5120) == 13696
    assert swiglu_hidden_dim(5120, 256) == 13824  # LLaMA's rounding, for contrast
    assert ModelConfig(d_model=4096, num_heads=32).hidden_dim == 11008
    assert ModelConfig(d_model=4096, num_heads=32, ffn_dim=1000).hidden_dim == 1000


def test_alibi_slopes_hand_values():
    np.testing.assert_allclose(alibi_slopes(8), [2.0 ** -(i + 1) for i in range(8)])
    # 6 heads: 4 from the power of two below, then every other slope of the 8-head set
    expected = [2 ** -2, 2 ** -4, 2 ** -6, 2 ** -8, 2 ** -1, 2 ** -3]
    np.testing.assert_allclose(alibi_slopes(6), expected)


def _attention_params(rng, d, h, k, hd):
    r = np.random.default_rng(rng)
    return {"wq": r.normal(size=(d, h, hd)).astype(np.float32) * 0.3,
            "wk": r.normal(size=(d, k, hd)).astype(np.float32) * 0.3,
            "wv": r.normal(size=(d, k, hd)).astype(np.float32) * 0.3,
            "wo": r.normal(size=(h, hd, d)).astype(np.float32) * 0.3}


def _reference_attention(x, p, bias_fn):
    """Plain numpy attention, one head at a time, causal, additive bias_fn(head, i, j)."""
    t, _ = x.shape
    h, hd = p["wq"].shape[1:]
    k_heads = p["wk"].shape[1]
    out = np.zeros((t, h, hd))
    for head in range(h):
        kv = head // (h // k_heads)
        q = x @ p["wq"][:, head]
        kk = x @ p["wk"][:, kv]
        v = x @ p["wv"][:, kv]
        for i in range(t):
            s = np.array([q[i] @ kk[j] / np.sqrt(hd) + bias_fn(head, i, j) for j in range(i + 1)])
            w = np.exp(s - s.max()); w /= w.sum()
            out[i, head] = w @ v[: i + 1]
    return np.einsum("thk,hkd->td", out, p["wo"])


def test_alibi_attention_matches_hand_computation():
    d, h, k, hd, t = 16, 4, 2, 4, 7
    p = _attention_params(0, d, h, k, hd)
    x = np.random.default_rng(1).normal(size=(1, t, d)).astype(np.float32)
    slopes = [2 ** -2, 2 ** -4, 2 ** -6, 2 ** -8]
    ref = _reference_attention(x[0], p, lambda hh, i, j: -slopes[hh] * (i - j))
    out, cache, probs = Attention(h, k, hd, position="alibi").apply(
        {"params": p}, jnp.asarray(x), jnp.ones((1, t), jnp.int32),
        jnp.arange(t)[None])
    assert cache is None and probs is None  # always (out, cache, probs)
    np.testing.assert_allclose(np.asarray(out)[0], ref, atol=1e-5, rtol=1e-5)


def test_rope_rotates_pairs_half_split():
    hd = 8
    inv = rope_frequencies(hd, 10000.0)
    x = np.random.default_rng(0).normal(size=(1, 1, 1, hd)).astype(np.float32)
    pos = 5
    out = np.asarray(apply_rope(jnp.asarray(x), jnp.array([[pos]]), inv))[0, 0, 0]
    v = x[0, 0, 0]
    for i in range(hd // 2):
        c, s = np.cos(pos * inv[i]), np.sin(pos * inv[i])
        a, b = v[i], v[i + hd // 2]
        np.testing.assert_allclose([out[i], out[i + hd // 2]], [a * c - b * s, b * c + a * s],
                                   atol=1e-5)


def test_rope_attention_is_relative():
    """Shifting every position by a constant leaves RoPE attention unchanged."""
    d, h, hd, t = 16, 2, 8, 6
    p = _attention_params(3, d, h, h, hd)
    x = jnp.asarray(np.random.default_rng(4).normal(size=(1, t, d)).astype(np.float32))
    attn = Attention(h, h, hd)
    seg = jnp.ones((1, t), jnp.int32)
    a, _, _ = attn.apply({"params": p}, x, seg, jnp.arange(t)[None])
    b, _, _ = attn.apply({"params": p}, x, seg, jnp.arange(t)[None] + 11)
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-5)


def test_norm_head_normalises_rows():
    w = np.random.default_rng(0).normal(size=(10, 6)).astype(np.float32) * 3
    x = np.random.default_rng(1).normal(size=(1, 2, 6)).astype(np.float32)
    out = OutputHead(10, 0.02, norm_head=True).apply({"params": {"kernel": w}}, jnp.asarray(x))
    expected = x @ (w / np.linalg.norm(w, axis=1, keepdims=True)).T
    np.testing.assert_allclose(np.asarray(out), expected, atol=1e-5, rtol=1e-5)
    # gradient flows through the normalisation: scaling a row does not change logits
    w2 = w.copy(); w2[3] *= 7.0
    out2 = OutputHead(10, 0.02, norm_head=True).apply({"params": {"kernel": w2}}, jnp.asarray(x))
    np.testing.assert_allclose(np.asarray(out2), np.asarray(out), atol=1e-5)


def test_rmsnorm_hand_value():
    x = np.array([[[1.0, 2.0, 3.0, 4.0]]], np.float32)
    scale = np.array([1.0, 0.5, 2.0, 1.0], np.float32)
    out = RMSNorm(eps=0.0).apply({"params": {"scale": scale}}, jnp.asarray(x))
    np.testing.assert_allclose(np.asarray(out), x / np.sqrt(np.mean(x ** 2)) * scale, rtol=1e-6)


@pytest.mark.parametrize("position", ["rope", "alibi"])
def test_packed_documents_do_not_attend_across(position):
    cfg = ModelConfig(vocab_size=50, d_model=32, num_layers=2, num_heads=4, num_kv_heads=2,
                      position=position)
    model = Decoder(cfg)
    params = model.init(jax.random.key(0), jnp.ones((1, 8), jnp.int32))["params"]
    rng = np.random.default_rng(0)
    a, b = rng.integers(0, 50, 5), rng.integers(0, 50, 7)
    packed = jnp.asarray(np.concatenate([a, b])[None], jnp.int32)
    seg = jnp.asarray([[1] * 5 + [2] * 7])
    pos = jnp.asarray([list(range(5)) + list(range(7))])
    logits, _ = model.apply({"params": params}, packed, seg, pos)
    la, _ = model.apply({"params": params}, jnp.asarray(a[None], jnp.int32))
    lb, _ = model.apply({"params": params}, jnp.asarray(b[None], jnp.int32))
    np.testing.assert_allclose(np.asarray(logits[0, :5]), np.asarray(la[0]), atol=1e-5)
    np.testing.assert_allclose(np.asarray(logits[0, 5:]), np.asarray(lb[0]), atol=1e-5)


def test_bf16_compute_keeps_f32_params_and_close_logits():
    cfg = ModelConfig(vocab_size=50, d_model=32, num_layers=2, num_heads=4)
    bf = ModelConfig(**{**cfg.__dict__, "dtype": "bfloat16"})
    params = Decoder(cfg).init(jax.random.key(0), jnp.ones((1, 8), jnp.int32))["params"]
    assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(params))
    tokens = jnp.arange(16)[None] % 50
    l32, _ = Decoder(cfg).apply({"params": params}, tokens)
    l16, _ = Decoder(bf).apply({"params": params}, tokens)
    assert l16.dtype == jnp.bfloat16
    np.testing.assert_allclose(np.asarray(l16, np.float32), np.asarray(l32), atol=0.05)


@pytest.mark.parametrize("remat", ["full", "dots"])
def test_remat_gives_same_gradients(remat):
    cfg = ModelConfig(vocab_size=50, d_model=32, num_layers=2, num_heads=4)
    rcfg = ModelConfig(**{**cfg.__dict__, "remat": remat})
    tokens = jnp.arange(16)[None] % 50
    params = Decoder(cfg).init(jax.random.key(0), tokens)["params"]

    def loss(p, c):
        return jnp.mean(Decoder(c).apply({"params": p}, tokens)[0] ** 2)
    g1 = jax.grad(loss)(params, cfg)
    g2 = jax.grad(loss)(params, rcfg)
    for x, y in zip(jax.tree.leaves(g1), jax.tree.leaves(g2)):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), atol=1e-6)
