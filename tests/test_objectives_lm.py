"""LM objectives against hand-derived values."""
import jax
import jax.numpy as jnp
import numpy as np

from kyx.objectives import lm

LOGITS = np.array([[[2.0, 0.5, -1.0], [0.1, 0.2, 0.3], [3.0, -2.0, 0.0]]], np.float32)
TARGETS = np.array([[0, 2, 1]], np.int32)
MASK = np.array([[1.0, 1.0, 0.0]], np.float32)


def _np_ce(logits, t):
    lse = np.log(np.sum(np.exp(logits), -1))
    return lse - np.take_along_axis(logits, t[..., None], -1)[..., 0]


def test_cross_entropy_hand_value():
    ce = _np_ce(LOGITS, TARGETS)
    loss, metrics = lm.cross_entropy(LOGITS, TARGETS, MASK)
    np.testing.assert_allclose(float(loss), (ce[0, 0] + ce[0, 1]) / 2, rtol=1e-6)
    assert float(metrics["num_tokens"]) == 2


def test_mile_hand_value_and_gamma_zero():
    p = np.exp(LOGITS) / np.exp(LOGITS).sum(-1, keepdims=True)
    h = -(p * np.log(p)).sum(-1)
    ce = _np_ce(LOGITS, TARGETS)
    gamma = 1.5
    w = (1.0 + h) ** gamma
    alpha = 1.0 / ((w[0, 0] + w[0, 1]) / 2)
    expected = (alpha * w[0, 0] * ce[0, 0] + alpha * w[0, 1] * ce[0, 1]) / 2
    loss, metrics = lm.mile_loss(LOGITS, TARGETS, MASK, gamma=gamma)
    np.testing.assert_allclose(float(loss), expected, rtol=1e-6)
    np.testing.assert_allclose(float(metrics["mile/entropy"]), (h[0, 0] + h[0, 1]) / 2, rtol=1e-6)
    ce_loss, _ = lm.cross_entropy(LOGITS, TARGETS, MASK)
    mile0, _ = lm.mile_loss(LOGITS, TARGETS, MASK, gamma=0.0)
    assert float(mile0) == float(ce_loss)
    g_ce = jax.grad(lambda z: lm.cross_entropy(z, TARGETS, MASK)[0])(jnp.asarray(LOGITS))
    g_m0 = jax.grad(lambda z: lm.mile_loss(z, TARGETS, MASK, gamma=0.0)[0])(jnp.asarray(LOGITS))
    np.testing.assert_array_equal(np.asarray(g_ce), np.asarray(g_m0))


def test_mile_gradient_is_weighted_ce_gradient():
    """Entropy is detached: grad = alpha w_t grad CE_t."""
    p = np.exp(LOGITS) / np.exp(LOGITS).sum(-1, keepdims=True)
    h = -(p * np.log(p)).sum(-1)
    w = (1.0 + h)
    alpha = 1.0 / ((w[0, 0] + w[0, 1]) / 2)
    onehot = np.eye(3)[TARGETS]
    expected = (alpha * w[..., None] * (p - onehot) * MASK[..., None]) / 2
    g = jax.grad(lambda z: lm.mile_loss(z, TARGETS, MASK, gamma=1.0)[0])(jnp.asarray(LOGITS))
    np.testing.assert_allclose(np.asarray(g), expected, rtol=1e-5, atol=1e-7)


def test_max_z_and_z_loss_hand_values():
    loss, _ = lm.max_z_loss(LOGITS, MASK, weight=2e-4)
    np.testing.assert_allclose(float(loss), 2e-4 * (2.0 ** 2 + 0.3 ** 2) / 2, rtol=1e-6)
    lse = np.log(np.sum(np.exp(LOGITS), -1))
    zl, _ = lm.z_loss(LOGITS, MASK, weight=1e-4)
    np.testing.assert_allclose(float(zl), 1e-4 * (lse[0, 0] ** 2 + lse[0, 1] ** 2) / 2, rtol=1e-6)


def test_lm_loss_combines_terms():
    cfg = {"name": "ce", "mile_gamma": 1.0, "max_z_weight": 2e-4, "z_loss_weight": 1e-4}
    total, metrics = lm.lm_loss(LOGITS, TARGETS, MASK, cfg)
    parts = (lm.cross_entropy(LOGITS, TARGETS, MASK)[0] + lm.max_z_loss(LOGITS, MASK)[0]
             + lm.z_loss(LOGITS, MASK)[0])
    np.testing.assert_allclose(float(total), float(parts), rtol=1e-6)
    assert {"ce", "max_z", "z_loss", "loss"} <= set(metrics)


def test_logit_stats_over_real_tokens_only():
    # real tokens: rows 0, 1 (max 2.0, 0.3); the masked row's max 3.0 must not count
    stats = lm.logit_stats(LOGITS, MASK)
    lse = np.log(np.sum(np.exp(LOGITS[0, :2]), -1))
    np.testing.assert_allclose(float(stats["logits/max_mean"]), (2.0 + 0.3) / 2, rtol=1e-6)
    np.testing.assert_allclose(float(stats["logits/max_peak"]), 2.0, rtol=1e-6)
    np.testing.assert_allclose(float(stats["logits/lse_mean"]), lse.mean(), rtol=1e-6)
    _, metrics = lm.lm_loss(LOGITS, TARGETS, MASK, {"name": "ce"})
    assert float(metrics["logits/max_peak"]) == float(stats["logits/max_peak"])


def test_per_position_loss_sums_and_counts():
    ce = _np_ce(LOGITS, TARGETS)
    positions = np.array([[0, 1, 0]])
    mask = np.array([[1.0, 1.0, 1.0]], np.float32)
    sums, counts = lm.per_position_loss(LOGITS, TARGETS, mask, positions, max_len=4)
    np.testing.assert_allclose(np.asarray(sums), [ce[0, 0] + ce[0, 2], ce[0, 1], 0, 0], rtol=1e-6)
    np.testing.assert_array_equal(np.asarray(counts), [2, 1, 0, 0])


def test_mile_is_finite_with_masked_logits():
    """A -inf logit (a masked vocabulary entry) has p = 0: MiLe's entropy must not be
    0 * -inf = NaN."""
    logits = np.array(LOGITS, np.float32)
    logits[0, 1:, 0] = -np.inf  # not a target there
    loss, metrics = lm.mile_loss(jnp.asarray(logits), TARGETS, MASK, gamma=1.0)
    assert np.isfinite(float(loss)) and np.isfinite(float(metrics["mile/entropy"]))
    g = jax.grad(lambda z: lm.mile_loss(z, TARGETS, MASK, gamma=1.0)[0])(jnp.asarray(logits))
    assert np.all(np.isfinite(np.asarray(g)))
