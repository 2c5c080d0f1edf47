"""RL objectives against independent references: GAE against a plain reverse Python loop
(with padding and rows ending at different tokens), the clipped policy and value losses,
KL estimators and GRPO advantages against hand-written numpy, the adaptive KL controller
against its recurrence, running reward moments against numpy."""
import math

import jax.numpy as jnp
import numpy as np
import pytest

from kyx.objectives import rl

RNG = np.random.default_rng(0)
B, T = 4, 9
# response (action) positions: contiguous, rows of different lengths, one row with none
MASK = np.zeros((B, T), np.float32)
for row, (start, end) in enumerate([(2, 7), (0, 9), (4, 5), (3, 3)]):
    MASK[row, start:end] = 1.0


def _gae_loop(rewards, values, mask, gamma, lam):
    """Textbook GAE per row over its response tokens, written as a reverse loop."""
    adv, ret = np.zeros_like(rewards), np.zeros_like(rewards)
    for b in range(rewards.shape[0]):
        idx = [t for t in range(rewards.shape[1]) if mask[b, t] > 0]
        last_adv = 0.0
        for j in reversed(range(len(idx))):
            t = idx[j]
            done = j == len(idx) - 1
            next_v = 0.0 if done else values[b, idx[j + 1]]
            delta = rewards[b, t] + gamma * next_v - values[b, t]
            last_adv = delta + (0.0 if done else gamma * lam * last_adv)
            adv[b, t] = last_adv
            ret[b, t] = last_adv + values[b, t]
    return adv, ret


@pytest.mark.parametrize("gamma,lam", [(1.0, 0.95), (0.9, 0.8), (1.0, 1.0)])
def test_gae_equals_reverse_loop(gamma, lam):
    rewards = RNG.normal(size=(B, T)).astype(np.float32) * MASK
    values = RNG.normal(size=(B, T)).astype(np.float32)
    adv, ret = rl.gae(jnp.asarray(rewards), jnp.asarray(values * MASK), jnp.asarray(MASK),
                      gamma, lam)
    want_adv, want_ret = _gae_loop(rewards, values, MASK, gamma, lam)
    np.testing.assert_allclose(np.asarray(adv), want_adv, atol=1e-5)
    np.testing.assert_allclose(np.asarray(ret), want_ret, atol=1e-5)


def test_shaped_rewards_put_the_score_at_the_last_token():
    kl = RNG.normal(size=(B, T)).astype(np.float32)
    score = np.asarray([1.0, -2.0, 0.5, 3.0], np.float32)
    got = np.asarray(rl.shaped_rewards(jnp.asarray(score), jnp.asarray(kl), jnp.asarray(MASK),
                                       0.1))
    want = -0.1 * kl * MASK
    for b, last in enumerate([6, 8, 4]):
        want[b, last] += score[b]          # row 3 has no response: no score lands
    np.testing.assert_allclose(got, want, atol=1e-6)


def test_kl_estimators():
    logp = np.log(np.asarray([0.5, 0.2, 0.9], np.float32))
    ref = np.log(np.asarray([0.4, 0.3, 0.9], np.float32))
    np.testing.assert_allclose(np.asarray(rl.kl_k1(jnp.asarray(logp), jnp.asarray(ref))),
                               logp - ref, rtol=1e-6)
    r = np.exp(ref - logp)
    np.testing.assert_allclose(np.asarray(rl.kl_k3(jnp.asarray(logp), jnp.asarray(ref))),
                               r - 1 - np.log(r), atol=1e-7)
    assert np.all(np.asarray(rl.kl_k3(jnp.asarray(logp), jnp.asarray(ref))) >= 0)


def test_ppo_policy_loss_hand_values():
    old = np.log(np.asarray([[0.5, 0.5, 0.5, 0.5]], np.float32))
    ratio = np.asarray([[1.5, 0.7, 1.1, 0.5]], np.float32)
    new = old + np.log(ratio)
    adv = np.asarray([[1.0, 1.0, -2.0, -1.0]], np.float32)
    mask = np.asarray([[1, 1, 1, 0]], np.float32)
    loss, m = rl.ppo_policy_loss(jnp.asarray(new), jnp.asarray(old), jnp.asarray(adv),
                                 jnp.asarray(mask), 0.2)
    terms = [min(1.5 * 1.0, 1.2 * 1.0), min(0.7 * 1.0, 0.8 * 1.0), min(1.1 * -2.0, 1.1 * -2.0)]
    np.testing.assert_allclose(float(loss), -sum(terms) / 3, rtol=1e-6)
    np.testing.assert_allclose(float(m["clip_frac"]), 1 / 3, rtol=1e-6)  # only token 0
    approx = [(r - 1) - math.log(r) for r in (1.5, 0.7, 1.1)]
    np.testing.assert_allclose(float(m["approx_kl"]), sum(approx) / 3, rtol=1e-5)


def test_ppo_value_loss_hand_values():
    v = np.asarray([[1.0, 0.0, 2.0]], np.float32)
    v_old = np.asarray([[0.5, 0.5, 0.5]], np.float32)
    ret = np.asarray([[2.0, 1.0, 0.0]], np.float32)
    mask = np.ones((1, 3), np.float32)
    loss, m = rl.ppo_value_loss(jnp.asarray(v), jnp.asarray(v_old), jnp.asarray(ret),
                                jnp.asarray(mask), 0.2)
    v_clip = v_old + np.clip(v - v_old, -0.2, 0.2)          # [0.7, 0.3, 0.7]
    per = np.maximum((v - ret) ** 2, (v_clip - ret) ** 2)    # [1.69, 1.0, 4.0]
    np.testing.assert_allclose(float(loss), 0.5 * per.mean(), rtol=1e-6)
    np.testing.assert_allclose(float(m["value_clip_frac"]), 1 / 3, rtol=1e-6)


def test_group_advantages_hand_values():
    scores = np.asarray([1.0, 0.0, 0.0, 1.0, 3.0, 3.0, 3.0, 3.0], np.float32)
    got = np.asarray(rl.group_advantages(jnp.asarray(scores), 4))
    g1 = scores[:4]
    want1 = (g1 - g1.mean()) / (g1.std(ddof=1) + 1e-4)
    np.testing.assert_allclose(got[:4], want1, rtol=1e-5)
    np.testing.assert_allclose(got[4:], 0.0, atol=1e-7)    # equal scores: no signal


def test_whiten_over_masked_entries():
    x = RNG.normal(size=(B, T)).astype(np.float32)
    got = np.asarray(rl.whiten(jnp.asarray(x), jnp.asarray(MASK)))
    sel = x[MASK > 0]
    want = (x - sel.mean()) / np.sqrt(sel.var() + 1e-8) * MASK
    np.testing.assert_allclose(got, want, atol=1e-5)


def test_adaptive_kl_follows_its_recurrence():
    beta, target, horizon, n = 0.2, 6.0, 10000.0, 64
    kls = [12.0, 3.0, 6.0, 0.5, 100.0]
    b = jnp.float32(beta)
    for kl in kls:
        b = rl.adaptive_kl(b, jnp.float32(kl), target, n, horizon)
        beta *= 1 + min(max(kl / target - 1, -0.2), 0.2) * n / horizon
        np.testing.assert_allclose(float(b), beta, rtol=1e-6)
    assert float(rl.adaptive_kl(jnp.float32(0.3), jnp.float32(50.0), 0.0, n)) == \
        pytest.approx(0.3)  # target 0: fixed


def test_running_moments_equal_numpy():
    batches = [RNG.normal(2.0, 3.0, size=8).astype(np.float32) for _ in range(4)]
    weights = [np.ones(8, np.float32), np.r_[np.ones(5), np.zeros(3)].astype(np.float32),
               np.ones(8, np.float32), np.ones(8, np.float32)]
    count, mean, m2 = jnp.float32(0), jnp.float32(0), jnp.float32(0)
    seen = []
    for x, w in zip(batches, weights):
        count, mean, m2 = rl.update_moments(count, mean, m2, jnp.asarray(x), jnp.asarray(w))
        seen += list(x[w > 0])
        np.testing.assert_allclose(float(count), len(seen))
        np.testing.assert_allclose(float(mean), np.mean(seen), rtol=1e-5)
        np.testing.assert_allclose(float(m2) / float(count), np.var(seen), rtol=1e-4)
