"""Prefix linear attention math on packed rows: the segment-aware chunked form = an O(T^2)
float64 reference = token-by-token recurrence per document."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from kyx.model import linear_attention as la

# two rows of 2-3 packed documents and padding; M = 5 spans the blocks of 4 and one
# document (length 3) is shorter than M
SEGMENTS = np.array([[1] * 9 + [2] * 3 + [3] * 6 + [0] * 2,
                     [4] * 13 + [7] * 7])
M = 5


def _positions(segs):
    pos = np.zeros_like(segs)
    for b in range(segs.shape[0]):
        for t in range(1, segs.shape[1]):
            pos[b, t] = pos[b, t - 1] + 1 if segs[b, t] == segs[b, t - 1] else 0
    return pos


def _reference(q, k, v, k_enc, v_enc, segs, prefix_len, eps=la.EPS):
    """float64 loops: kernel e(q, k) = 1 + s + s^2 / 2 with s = q.k / sqrt(F) (the Taylor
    expansion of exp, written without the feature map); causal keys j <= i of i's document,
    encoder keys: every j of i's document at position < prefix_len; padding is 0."""
    q, k, v, k_enc, v_enc = (np.asarray(a, np.float64) for a in (q, k, v, k_enc, v_enc))
    b, t, h, f = q.shape
    pos = _positions(segs)
    y = np.zeros(v.shape)
    kern = lambda a, c: 1 + a @ c / np.sqrt(f) + (a @ c / np.sqrt(f)) ** 2 / 2  # noqa: E731
    for bi in range(b):
        for hi in range(h):
            for i in range(t):
                if segs[bi, i] == 0:
                    continue
                num, den = np.zeros(v.shape[-1]), 0.0
                for j in range(t):
                    if segs[bi, j] != segs[bi, i]:
                        continue
                    if pos[bi, j] < prefix_len:
                        w = kern(q[bi, i, hi], k_enc[bi, j, hi])
                        num, den = num + w * v_enc[bi, j, hi], den + w
                    if j <= i:
                        w = kern(q[bi, i, hi], k[bi, j, hi])
                        num, den = num + w * v[bi, j, hi], den + w
                y[bi, i, hi] = num / (den + eps)
    return y


def _inputs(b=2, t=20, h=3, f=4, d=5, seed=0):
    ks = jax.random.split(jax.random.PRNGKey(seed), 5)
    q, k, k_enc = (jax.random.normal(x, (b, t, h, f)) for x in ks[:3])
    v, v_enc = (jax.random.normal(x, (b, t, h, d)) for x in ks[3:])
    return q, k, v, k_enc, v_enc


def _pla(q, k, v, k_enc, v_enc, segs, prefix_len, chunk):
    """The PLA output as kyx/model/pla.py composes it (pads and non-prefix keys zeroed)."""
    valid = (segs > 0)[:, :, None, None]
    prefix = valid & (_positions(segs) < prefix_len)[:, :, None, None]
    segs = jnp.asarray(segs)
    phi = la.taylor_features
    encoder = (phi(k_enc) * prefix, v_enc) if prefix_len else None
    return la.attend(phi(q), phi(k) * valid, v, segs, chunk, encoder)


def test_feature_count_and_kernel():
    assert la.num_features(16) == 273
    x, y = jax.random.normal(jax.random.PRNGKey(0), (2, 16))
    s = float(x @ y) / 4.0
    got = float(la.taylor_features(x) @ la.taylor_features(y))
    assert abs(got - (1 + s + s * s / 2)) < 1e-5 * max(1, abs(got))


@pytest.mark.parametrize("chunk", [1, 4, 7, 32])
def test_packed_chunked_equals_reference(chunk):
    inputs = _inputs()
    y = jax.jit(lambda *a: _pla(*a, SEGMENTS, M, chunk))(*inputs)
    np.testing.assert_allclose(y, _reference(*inputs, SEGMENTS, M), atol=1e-5, rtol=1e-5)


def test_plain_causal_linear_attention_on_packed_rows():
    inputs = _inputs(seed=1)
    y = _pla(*inputs, SEGMENTS, 0, 4)
    np.testing.assert_allclose(y, _reference(*inputs, SEGMENTS, 0), atol=1e-5, rtol=1e-5)


def test_recurrence_per_document_equals_chunked():
    """Each document alone: its whole-prefix state, then one `step` per token."""
    q, k, v, k_enc, v_enc = _inputs(seed=2)
    want = _pla(q, k, v, k_enc, v_enc, SEGMENTS, M, 4)
    pos = _positions(SEGMENTS)
    step = jax.jit(la.step)
    for b in range(SEGMENTS.shape[0]):
        for seg in set(SEGMENTS[b].tolist()) - {0}:
            idx = np.flatnonzero(SEGMENTS[b] == seg)
            prefix = idx[pos[b, idx] < M]
            state = la.prefix_state(k_enc[b:b + 1, prefix], v_enc[b:b + 1, prefix],
                                    jnp.ones((1, len(prefix)), bool))
            for i in idx:
                y, state = step(q[b:b + 1, i], k[b:b + 1, i], v[b:b + 1, i], state)
                np.testing.assert_allclose(y[0], want[b, i], atol=1e-5, rtol=1e-5)


def test_carried_state_is_read_by_its_segment_only():
    """A state carried into the row reaches the queries of `state_segment_b` only, and
    prefilling a document in two parts equals one pass."""
    q, k, v, _, _ = _inputs(b=1, t=12, seed=3)

    @jax.jit
    def outputs(q, k, v):
        phi = la.taylor_features
        segs = jnp.ones((1, 12), jnp.int32)
        whole = la.attend(phi(q), phi(k), v, segs, 4)
        first = la.attend(phi(q[:, :5]), phi(k[:, :5]), v[:, :5], segs[:, :5], 4)
        state = la.key_state(phi(k[:, :5]), v[:, :5], jnp.ones((1, 5), bool))
        rest = [la.attend(phi(q[:, 5:]), phi(k[:, 5:]), v[:, 5:], segs[:, 5:], 4, None,
                          state, jnp.full((1,), seg, jnp.int32)) for seg in (1, 2)]
        alone = la.attend(phi(q[:, 5:]), phi(k[:, 5:]), v[:, 5:], segs[:, 5:], 4)
        return whole, jnp.concatenate([first, rest[0]], 1), rest[1], alone

    whole, parts, other, alone = outputs(q, k, v)
    np.testing.assert_allclose(parts, whole, atol=1e-5, rtol=1e-5)
    np.testing.assert_allclose(other, alone, atol=1e-6)
