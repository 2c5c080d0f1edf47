"""kyx.objectives.jrt: the JRT-RNN loss against a numpy reference written from the
definition (next-token CE at positions >= M, + w x CE of the original token at the masked
prefix positions, from the same position's logits), and the prefix masking."""
import jax
import jax.numpy as jnp
import numpy as np

from kyx.objectives import jrt


def _log_softmax(z):
    z = z - z.max(-1, keepdims=True)
    return z - np.log(np.exp(z).sum(-1, keepdims=True))


def test_loss_matches_hand_derived_reference():
    rng = np.random.default_rng(0)
    b, t, v, m, w = 2, 6, 5, 3, 0.25
    logits = rng.normal(size=(b, t, v)).astype(np.float32)
    tokens = rng.integers(0, v, (b, t)).astype(np.int32)
    targets = np.roll(tokens, -1, axis=1)
    # row 1 holds two documents: positions restart at 0 at index 4
    positions = np.array([[0, 1, 2, 3, 4, 5], [0, 1, 2, 3, 0, 1]], np.int32)
    loss_mask = np.ones((b, t), np.float32)
    loss_mask[:, -1] = 0
    mlm_mask = np.array([[1, 0, 1, 0, 0, 0], [0, 1, 0, 0, 1, 0]], np.float32)
    logp = _log_softmax(logits.astype(np.float64))
    ntp_terms, mlm_terms = [], []
    for i in range(b):
        for j in range(t):
            if positions[i, j] >= m and loss_mask[i, j]:
                ntp_terms.append(-logp[i, j, targets[i, j]])
            if mlm_mask[i, j]:
                mlm_terms.append(-logp[i, j, tokens[i, j]])     # same position, original token
    # positions >= 3 with a target: row 0 indices 3, 4 (5 has none); row 1 index 3
    assert len(ntp_terms) == 3 and len(mlm_terms) == 4
    want = np.mean(ntp_terms) + w * np.mean(mlm_terms)
    loss, metrics = jrt.jrt_loss(jnp.asarray(logits), targets, loss_mask, positions, tokens,
                                 mlm_mask, prefix_len=m, mlm_weight=w)
    np.testing.assert_allclose(float(loss), want, rtol=1e-5)
    np.testing.assert_allclose(float(metrics["jrt/ntp"]), np.mean(ntp_terms), rtol=1e-5)
    np.testing.assert_allclose(float(metrics["jrt/mlm"]), np.mean(mlm_terms), rtol=1e-5)
    assert float(metrics["jrt/masked_tokens"]) == 4
    # with a pretraining loss section the next-token term is lm.lm_loss (CE here): same value
    cfg = {"name": "ce", "mile_gamma": 1.0, "max_z_weight": 0.0, "z_loss_weight": 0.0}
    loss_cfg, _ = jrt.jrt_loss(jnp.asarray(logits), targets, loss_mask, positions, tokens,
                               mlm_mask, prefix_len=m, mlm_weight=w, lm_cfg=cfg)
    np.testing.assert_allclose(float(loss_cfg), want, rtol=1e-5)
    # weight 0: only the next-token term
    loss0, _ = jrt.jrt_loss(jnp.asarray(logits), targets, loss_mask, positions, tokens,
                            mlm_mask, prefix_len=m, mlm_weight=0.0)
    np.testing.assert_allclose(float(loss0), np.mean(ntp_terms), rtol=1e-5)


def test_mask_stays_in_the_prefix_and_is_deterministic_in_the_key():
    b, t, m, mask_id = 8, 64, 10, 7
    tokens = np.arange(100, 100 + b * t, dtype=np.int32).reshape(b, t)
    positions = np.tile(np.arange(t, dtype=np.int32), (b, 1))
    positions[:, 30:] = np.arange(t - 30)          # a second document from index 30
    segments = np.ones((b, t), np.int32)
    segments[:, 30:] = 2
    segments[:, 50:] = 0                           # padding (position 0 like kyx batches)
    positions[:, 50:] = 0
    key = jax.random.key(3)
    masked, mlm = jrt.mask_prefix(key, tokens, positions, segments, m, mask_id, rate=0.5)
    masked, mlm = np.asarray(masked), np.asarray(mlm)
    prefix = (positions < m) & (segments > 0)
    assert mlm.dtype == np.float32
    assert not mlm[~prefix].any()                          # never at positions >= M or padding
    np.testing.assert_array_equal(masked[mlm == 0], tokens[mlm == 0])
    assert (masked[mlm == 1] == mask_id).all()
    assert 0.3 < mlm[prefix].mean() < 0.7                  # both documents' prefixes, rate 0.5
    assert mlm[:, 30:40].any() and mlm[:, :10].any()
    again, mlm2 = jrt.mask_prefix(key, tokens, positions, segments, m, mask_id, rate=0.5)
    np.testing.assert_array_equal(np.asarray(again), masked)
    np.testing.assert_array_equal(np.asarray(mlm2), mlm)
    _, other = jrt.mask_prefix(jax.random.key(4), tokens, positions, segments, m, mask_id, 0.5)
    assert (np.asarray(other) != mlm).any()
    _, none = jrt.mask_prefix(key, tokens, positions, segments, m, mask_id, rate=0.0)
    assert not np.asarray(none).any()
