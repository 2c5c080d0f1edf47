"""Prefix linear attention: chunked form = token-by-token recurrence = an O(T^2) reference."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from kyx.model import linear_attention as pla


def _reference(q, k, v, k_enc, v_enc, prefix_len, eps=pla.EPS):
    """float64 loops: kernel e(q, k) = 1 + s + s^2 / 2 with s = q.k / sqrt(F) (the Taylor
    expansion of exp, written without the feature map); encoder keys j < prefix_len[b]."""
    q, k, v, k_enc, v_enc = (np.asarray(a, np.float64) for a in (q, k, v, k_enc, v_enc))
    b, t, h, f = q.shape
    y = np.zeros(v.shape)
    kern = lambda a, c: 1 + a @ c / np.sqrt(f) + (a @ c / np.sqrt(f)) ** 2 / 2  # noqa: E731
    for bi in range(b):
        for hi in range(h):
            for i in range(t):
                num, den = np.zeros(v.shape[-1]), 0.0
                for j in range(prefix_len[bi]):
                    w = kern(q[bi, i, hi], k_enc[bi, j, hi])
                    num, den = num + w * v_enc[bi, j, hi], den + w
                for j in range(i + 1):
                    w = kern(q[bi, i, hi], k[bi, j, hi])
                    num, den = num + w * v[bi, j, hi], den + w
                y[bi, i, hi] = num / (den + eps)
    return y


def _inputs(b=2, t=11, h=3, f=4, d=5, seed=0):
    ks = jax.random.split(jax.random.PRNGKey(seed), 5)
    q, k, k_enc = (jax.random.normal(x, (b, t, h, f)) for x in ks[:3])
    v, v_enc = (jax.random.normal(x, (b, t, h, d)) for x in ks[3:])
    return q, k, v, k_enc, v_enc


def test_feature_count_and_kernel():
    assert pla.num_features(16) == 273
    x, y = jax.random.normal(jax.random.PRNGKey(0), (2, 16))
    s = float(x @ y) / 4.0
    got = float(pla.taylor_features(x) @ pla.taylor_features(y))
    assert abs(got - (1 + s + s * s / 2)) < 1e-5 * max(1, abs(got))


@pytest.mark.parametrize("chunk", [1, 4, 11, 16])
def test_chunked_equals_reference_with_per_row_prefixes(chunk):
    q, k, v, k_enc, v_enc = _inputs()
    prefix_len = [4, 7]
    mask_bt = jnp.arange(q.shape[1])[None] < jnp.asarray(prefix_len)[:, None]
    state = pla.prefix_state(k_enc, v_enc, mask_bt)
    y, _ = jax.jit(pla.chunked, static_argnames="chunk")(q, k, v, state, chunk=chunk)
    np.testing.assert_allclose(y, _reference(q, k, v, k_enc, v_enc, prefix_len),
                               atol=1e-5, rtol=1e-5)


def test_plain_causal_linear_attention_from_zero_state():
    q, k, v, k_enc, v_enc = _inputs(seed=1)
    y, _ = pla.chunked(q, k, v, pla.zero_state(2, 3, 4, 5), chunk=4)
    np.testing.assert_allclose(y, _reference(q, k, v, k_enc, v_enc, [0, 0]),
                               atol=1e-5, rtol=1e-5)


def test_recurrent_decoding_equals_chunked_and_its_final_state():
    """Prefill the first 6 tokens with `chunked`, decode the rest one `step` at a time."""
    q, k, v, k_enc, v_enc = _inputs(seed=2)
    mask_bt = jnp.arange(q.shape[1])[None] < 5
    state0 = pla.prefix_state(k_enc, v_enc, jnp.broadcast_to(mask_bt, q.shape[:2]))
    want, final = pla.chunked(q, k, v, state0, chunk=4)
    got, state = pla.chunked(q[:, :6], k[:, :6], v[:, :6], state0, chunk=4)
    outs = [got]
    step = jax.jit(pla.step)
    for i in range(6, q.shape[1]):
        y, state = step(q[:, i], k[:, i], v[:, i], state)
        outs.append(y[:, None])
    np.testing.assert_allclose(jnp.concatenate(outs, 1), want, atol=1e-5, rtol=1e-5)
    for a, b in zip(state, final):
        np.testing.assert_allclose(a, b, atol=1e-4, rtol=1e-5)
