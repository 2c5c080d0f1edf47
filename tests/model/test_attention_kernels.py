"""The training-path attention kernels (kyx/model/attention_kernels.py) against a plain
numpy loop: values and gradients, document masks, GQA, ALiBi, uneven query blocks."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from kyx.errors import ConfigError
from kyx.model import ModelConfig
from kyx.model.attention_kernels import KERNELS, alibi_slopes

B, T, H, KV, D = 2, 24, 4, 2, 8


def reference(q, k, v, seg, positions, slopes):
    """softmax(q.k / sqrt(d) + slope * (key position - query position)) v over keys j <= i
    of the same document, one query row at a time, in float64."""
    q, k, v = (np.asarray(a, np.float64) for a in (q, k, v))
    out = np.zeros_like(q)
    g = H // KV
    for b in range(B):
        for h in range(H):
            for i in range(T):
                keys = [j for j in range(i + 1) if seg[b, j] == seg[b, i]]
                s = np.array([q[b, i, h] @ k[b, j, h // g] for j in keys]) / np.sqrt(D)
                if slopes is not None:
                    s = s + slopes[h] * (positions[b, keys] - positions[b, i])
                p = np.exp(s - s.max())
                out[b, i, h] = (p / p.sum()) @ v[b, keys, h // g]
    return out


def inputs(seed=0):
    ks = jax.random.split(jax.random.key(seed), 3)
    q = jax.random.normal(ks[0], (B, T, H, D))
    k = jax.random.normal(ks[1], (B, T, KV, D))
    v = jax.random.normal(ks[2], (B, T, KV, D))
    seg = np.array([[1] * 10 + [2] * 9 + [3] * 5, [1] * 24], np.int32)   # packed documents
    pos = np.concatenate([np.arange(10), np.arange(9), np.arange(5)])
    positions = np.stack([pos, np.arange(T)]).astype(np.int32)
    return q, k, v, seg, positions


@pytest.mark.parametrize("impl,chunks", [("dense", 1), ("chunked", 1), ("chunked", 5),
                                         ("chunked", 8), ("chunked", 24), ("jax", 1)])
@pytest.mark.parametrize("alibi", [False, True])
def test_kernel_equals_numpy_loop(impl, chunks, alibi):
    q, k, v, seg, positions = inputs()
    slopes = alibi_slopes(H) if alibi else None
    kernel = jax.jit(lambda *a: KERNELS.get(impl)(*a, slopes, chunks))
    out = kernel(q, k, v, jnp.asarray(seg), jnp.asarray(positions))
    want = reference(q, k, v, seg, positions, slopes)
    np.testing.assert_allclose(np.asarray(out), want, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("impl,chunks", [("chunked", 5), ("chunked", 8), ("jax", 1)])
def test_kernel_gradients_equal_dense(impl, chunks):
    q, k, v, seg, positions = inputs(1)
    w = jax.random.normal(jax.random.key(9), (B, T, H, D))

    def loss(name, n):
        return lambda q, k, v: jnp.sum(KERNELS.get(name)(
            q, k, v, jnp.asarray(seg), jnp.asarray(positions), None, n) * w)
    want = jax.jit(jax.grad(loss("dense", 1), argnums=(0, 1, 2)))(q, k, v)
    got = jax.jit(jax.grad(loss(impl, chunks), argnums=(0, 1, 2)))(q, k, v)
    for g, r in zip(got, want):
        np.testing.assert_allclose(np.asarray(g), np.asarray(r), atol=1e-5, rtol=1e-5)


def test_model_logits_do_not_depend_on_the_kernel():
    from kyx.model import Decoder
    tokens = jax.random.randint(jax.random.key(0), (2, 24), 0, 64)
    seg = jnp.asarray(inputs()[3])
    logits = {}
    for impl, chunks in [("dense", 1), ("chunked", 3), ("jax", 1)]:
        cfg = ModelConfig(vocab_size=64, d_model=32, num_layers=2, num_heads=4, num_kv_heads=2,
                          attention_impl=impl, attention_chunks=chunks).validate()
        model = Decoder(cfg)
        params = jax.jit(model.init)(jax.random.key(1), tokens)["params"]
        logits[impl] = jax.jit(model.apply)({"params": params}, tokens, seg)[0]
    np.testing.assert_allclose(logits["chunked"], logits["dense"], atol=1e-5, rtol=1e-5)
    np.testing.assert_allclose(logits["jax"], logits["dense"], atol=1e-5, rtol=1e-5)


def test_config_errors_name_the_choices():
    with pytest.raises(ConfigError, match="did you mean chunked"):
        ModelConfig(attention_impl="chunk").validate()
    with pytest.raises(ConfigError, match="attention_chunks must be >= 1"):
        ModelConfig(attention_chunks=0).validate()
