"""HunYuan attention-weight reuse: a 2-layer hand check, p = 0 and inference are the baseline."""
import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from kyx.model import Decoder, ModelConfig

CFG = ModelConfig(vocab_size=40, d_model=16, num_layers=2, num_heads=4, num_kv_heads=2,
                  ffn_dim=24, init_std=0.3)
TOKENS = jnp.asarray([[3, 17, 5, 22, 9, 1, 30], [8, 8, 2, 39, 11, 4, 6]], jnp.int32)


def _rms(x, scale, eps=1e-6):
    return x / np.sqrt(np.mean(x * x, -1, keepdims=True) + eps) * scale


def _rope(x_thk, theta=10000.0):
    t, _, hd = x_thk.shape
    inv = 1.0 / theta ** (np.arange(0, hd, 2) / hd)
    ang = np.arange(t)[:, None] * inv[None]
    cos, sin = np.cos(ang)[:, None], np.sin(ang)[:, None]
    a, b = x_thk[..., : hd // 2], x_thk[..., hd // 2:]
    return np.concatenate([a * cos - b * sin, b * cos + a * sin], -1)


def reference_decoder(params, tokens, reuse_layers=()):
    """float64 numpy decoder, one row; layers in `reuse_layers` take the previous layer's
    attention probabilities instead of their own softmax(QK^T / sqrt(d))."""
    p = jax.tree.map(lambda a: np.asarray(a, np.float64), params)
    x = p["embed"]["embedding"][tokens]
    t, h = len(tokens), CFG.num_heads
    group = h // CFG.kv_heads
    causal = np.tril(np.ones((t, t), bool))
    prev = None
    for layer in range(CFG.num_layers):
        lp = jax.tree.map(lambda a: a[layer], p["layers"])
        a = lp["attn"]
        hn = _rms(x, lp["attn_norm"]["scale"])
        q = _rope(np.einsum("td,dhk->thk", hn, a["wq"]))
        k = _rope(np.einsum("td,dhk->thk", hn, a["wk"]))
        v = np.einsum("td,dhk->thk", hn, a["wv"])
        if layer in reuse_layers:
            probs = prev
        else:
            probs = np.zeros((h, t, t))
            for head in range(h):
                s = q[:, head] @ k[:, head // group].T / np.sqrt(q.shape[-1])
                s = np.where(causal, s, -np.inf)
                e = np.exp(s - s.max(-1, keepdims=True))
                probs[head] = e / e.sum(-1, keepdims=True)
        out = np.stack([probs[head] @ v[:, head // group] for head in range(h)], 1)
        x = x + np.einsum("thk,hkd->td", out, a["wo"])
        m = lp["mlp"]
        hn = _rms(x, lp["mlp_norm"]["scale"])
        g = hn @ m["wi_gate"]
        x = x + (g / (1 + np.exp(-g)) * (hn @ m["wi_up"])) @ m["wo"]
        prev = probs
    x = _rms(x, p["final_norm"]["scale"])
    return x @ p["head"]["kernel"].T


@jax.jit
def _run(params, key):
    """Logits for p = 0 / p = 1, with and without the 'reuse' stream, and p = 1 grads."""
    p0, p1 = Decoder(CFG), Decoder(dataclasses.replace(CFG, attn_reuse_prob=1.0))
    rngs = {"reuse": key}

    def train_loss(params):
        logits, _ = p1.apply({"params": params}, TOKENS, rngs=rngs)
        return jnp.mean(logits ** 2)
    return {
        "base": p0.apply({"params": params}, TOKENS)[0],
        "p0_train": p0.apply({"params": params}, TOKENS, rngs=rngs)[0],
        "p1_infer": p1.apply({"params": params}, TOKENS)[0],
        "p1_train": p1.apply({"params": params}, TOKENS, rngs=rngs)[0],
        "p1_grads": jax.grad(train_loss)(params),
    }


def test_attention_reuse_hand_check_and_baselines():
    params = nn.unbox(jax.jit(Decoder(CFG).init)(jax.random.key(0), TOKENS)["params"])
    out = _run(params, jax.random.key(1))
    for row in range(TOKENS.shape[0]):
        own = reference_decoder(params, np.asarray(TOKENS[row]))
        reused = reference_decoder(params, np.asarray(TOKENS[row]), reuse_layers=(1,))
        assert np.abs(own - reused).max() > 1e-2  # the check can tell them apart
        np.testing.assert_allclose(np.asarray(out["base"][row]), own, rtol=1e-4, atol=1e-4)
        np.testing.assert_allclose(np.asarray(out["p1_train"][row]), reused, rtol=1e-4, atol=1e-4)
    # p = 0 (even with the rng) and inference (no 'reuse' stream) are the plain model
    np.testing.assert_array_equal(np.asarray(out["p0_train"]), np.asarray(out["base"]))
    np.testing.assert_array_equal(np.asarray(out["p1_infer"]), np.asarray(out["base"]))
    # a reusing layer skips its own QK^T: its W_q and W_k get no gradient, layer 0's do
    wq, wk = out["p1_grads"]["layers"]["attn"]["wq"], out["p1_grads"]["layers"]["attn"]["wk"]
    assert float(jnp.abs(wq[1]).max()) == 0.0 and float(jnp.abs(wk[1]).max()) == 0.0
    assert float(jnp.abs(wq[0]).max()) > 0.0
