"""RL objectives for language models (ALGORITHMS §9): KL estimators and penalties, GAE,
advantage whitening, group-relative advantages, PPO's clipped policy and value losses,
the adaptive KL controller, running reward statistics.

Pure functions of float32 arrays. Token arrays are ``[B, T]`` over *action positions*: a
position t where ``mask_bt[t] = 1`` is one sampled response token (the logit at t
predicts it), and each row's response positions are contiguous.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from kyx.registry import Registry

# kl estimator name -> fn(logp_bt, ref_logp_bt) -> per-token estimate of KL(pi || ref)
KL_ESTIMATORS = Registry("rl.kl_estimator")


@KL_ESTIMATORS.register("k1")
def kl_k1(logp_bt, ref_logp_bt):
    """log pi − log ref: unbiased, can be negative per token."""
    return logp_bt - ref_logp_bt


@KL_ESTIMATORS.register("k3")
def kl_k3(logp_bt, ref_logp_bt):
    """exp(ref − log pi) − 1 − (ref − log pi) >= 0 (Schulman's k3; GRPO's KL term)."""
    d = ref_logp_bt - logp_bt
    return jnp.expm1(d) - d


def _masked_mean(x, mask):
    return jnp.sum(x * mask) / jnp.maximum(jnp.sum(mask), 1.0)


def last_positions(mask_bt):
    """Index of each row's last action position (0 for rows without one)."""
    t = mask_bt.shape[-1]
    idx_t = jnp.arange(t)
    return jnp.max(jnp.where(mask_bt > 0, idx_t, 0), axis=-1)


def shaped_rewards(score_b, kl_bt, mask_bt, kl_coef):
    """r_t = −β·kl_t on response tokens, plus the sequence score at its last token (the
    end-of-turn token, or the last sampled one when truncated)."""
    mask = mask_bt.astype(jnp.float32)
    end_bt = jax.nn.one_hot(last_positions(mask), mask.shape[-1]) * mask
    return -kl_coef * kl_bt * mask + score_b[:, None] * end_bt


def gae(rewards_bt, values_bt, mask_bt, gamma: float = 1.0, lam: float = 0.95):
    """(advantages_bt, returns_bt) by generalised advantage estimation.

    δ_t = r_t + γ V_{t+1} − V_t, A_t = δ_t + γλ A_{t+1}, where t + 1 beyond the row's last
    response token is terminal (V = 0, A = 0). Returns R_t = A_t + V_t. Both are 0 off the
    mask."""
    mask = mask_bt.astype(jnp.float32)
    next_mask = jnp.concatenate([mask[:, 1:], jnp.zeros_like(mask[:, :1])], axis=1)
    next_values = jnp.concatenate([values_bt[:, 1:], jnp.zeros_like(values_bt[:, :1])],
                                  axis=1) * next_mask
    delta_bt = (rewards_bt + gamma * next_values - values_bt) * mask

    def back(carry_b, xs):
        d_b, m_next_b = xs
        adv_b = d_b + gamma * lam * m_next_b * carry_b
        return adv_b, adv_b

    _, adv_tb = jax.lax.scan(back, jnp.zeros_like(delta_bt[:, 0]),
                             (delta_bt.T, next_mask.T), reverse=True)
    adv_bt = adv_tb.T * mask
    return adv_bt, (adv_bt + values_bt) * mask


def whiten(x_bt, mask_bt, eps: float = 1e-8):
    """(x − mean) / std over the masked entries (population std); 0 off the mask."""
    mask = mask_bt.astype(jnp.float32)
    mean = _masked_mean(x_bt, mask)
    var = _masked_mean(jnp.square(x_bt - mean), mask)
    return (x_bt - mean) * jax.lax.rsqrt(var + eps) * mask


def group_advantages(score_b, group_size: int, eps: float = 1e-4):
    """GRPO: (s − mean_group) / (std_group + eps) over the G samples of each prompt (rows
    ``g * G .. g * G + G − 1``), std with Bessel's correction (as TRL)."""
    s = score_b.reshape(-1, group_size)
    mean = jnp.mean(s, axis=1, keepdims=True)
    std = jnp.std(s, axis=1, keepdims=True, ddof=1) if group_size > 1 else jnp.zeros_like(mean)
    return ((s - mean) / (std + eps)).reshape(-1)


def ppo_policy_loss(logp_bt, old_logp_bt, adv_bt, mask_bt, clip_eps: float = 0.2):
    """Clipped surrogate −E[min(ρA, clip(ρ, 1 ± ε)A)], ρ = exp(log pi − log pi_old), as a
    mean over response tokens; metrics: clip fraction and approx KL(pi_old || pi)."""
    mask = mask_bt.astype(jnp.float32)
    log_ratio = logp_bt - old_logp_bt
    ratio = jnp.exp(log_ratio)
    unclipped = ratio * adv_bt
    clipped = jnp.clip(ratio, 1.0 - clip_eps, 1.0 + clip_eps) * adv_bt
    loss = _masked_mean(-jnp.minimum(unclipped, clipped), mask)
    return loss, {"policy_loss": loss,
                  "clip_frac": _masked_mean((clipped < unclipped).astype(jnp.float32), mask),
                  "approx_kl": _masked_mean(jnp.expm1(log_ratio) - log_ratio, mask)}


def ppo_value_loss(values_bt, old_values_bt, returns_bt, mask_bt, clip: float = 0.2):
    """½ E max((V − R)², (V_old + clip(V − V_old, ±ε_v) − R)²) over response tokens."""
    mask = mask_bt.astype(jnp.float32)
    v_clip = old_values_bt + jnp.clip(values_bt - old_values_bt, -clip, clip)
    a, b = jnp.square(values_bt - returns_bt), jnp.square(v_clip - returns_bt)
    loss = 0.5 * _masked_mean(jnp.maximum(a, b), mask)
    # clipped = outside the trust region and the clipped error chosen (ties are not clips)
    clipped = (jnp.abs(values_bt - old_values_bt) > clip) & (b > a)
    return loss, {"value_loss": loss,
                  "value_clip_frac": _masked_mean(clipped.astype(jnp.float32), mask)}


def adaptive_kl(kl_coef, observed_kl, target: float, n: float, horizon: float = 10000.0):
    """Ziegler et al.'s controller: β ← β (1 + clip(KL / target − 1, ±0.2) · n / horizon),
    with ``n`` the samples in the batch. ``target`` <= 0 keeps β fixed."""
    if target <= 0:
        return kl_coef
    error = jnp.clip(observed_kl / target - 1.0, -0.2, 0.2)
    return kl_coef * (1.0 + error * n / horizon)


def update_moments(count, mean, m2, x_b, w_b):
    """Running (count, mean, M2) after the weighted batch ``x_b`` (Chan et al.'s merge)."""
    n = jnp.sum(w_b)
    batch_mean = jnp.sum(x_b * w_b) / jnp.maximum(n, 1.0)
    batch_m2 = jnp.sum(jnp.square(x_b - batch_mean) * w_b)
    total = count + n
    delta = batch_mean - mean
    new_mean = mean + delta * n / jnp.maximum(total, 1.0)
    new_m2 = m2 + batch_m2 + jnp.square(delta) * count * n / jnp.maximum(total, 1.0)
    return total, new_mean, new_m2
