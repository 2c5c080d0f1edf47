"""SFT objectives: masked cross entropy and negative feedback (unlikelihood).

Pure functions, float32. Negative feedback is kyx's formulation (ALGORITHMS §11b; no
public KwaiYii method exists): for negative responses y⁻,

    L = CE(y⁺) + λ_neg · mean over negative tokens of [ −log(1 − p_θ(y⁻_t | x, y⁻_<t)) ]

where the negative tokens start at the first divergence from y⁺ and exclude formatting
tokens (the data pipeline builds that mask, kyx/data/preference.py). log(1 − p) is
computed as log1m_exp(log p) with log p clamped below 0.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections

LOG_P_MAX = -1e-6  # clamp for log(1 - p): p = 1 would give -inf


def default_config() -> ml_collections.ConfigDict:
    return ml_collections.ConfigDict({
        "negative_feedback": False,  # add the unlikelihood term on negative responses
        "neg_weight": 1.0,           # λ_neg
    })


def token_logps(logits_btv, targets_bt):
    """log p(target) per token, float32."""
    logits = logits_btv.astype(jnp.float32)
    target_bt = jnp.take_along_axis(logits, targets_bt[..., None], axis=-1)[..., 0]
    return target_bt - jax.nn.logsumexp(logits, axis=-1)


def log1m_exp(logp):
    """log(1 − exp(logp)) for logp < 0, accurate near 0 and for very negative logp."""
    x = jnp.minimum(logp, LOG_P_MAX)
    return jnp.where(x > -0.6931471805599453, jnp.log(-jnp.expm1(x)), jnp.log1p(-jnp.exp(x)))


def _masked_mean(x, mask):
    return jnp.sum(x * mask) / jnp.maximum(jnp.sum(mask), 1.0)


def masked_cross_entropy(logp_bt, mask_bt):
    """Mean −log p over masked tokens (response tokens only)."""
    return _masked_mean(-logp_bt, mask_bt.astype(jnp.float32))


def unlikelihood(logp_bt, neg_mask_bt):
    """Mean −log(1 − p) over negative tokens."""
    return _masked_mean(-log1m_exp(logp_bt), neg_mask_bt.astype(jnp.float32))


def sft_loss(logp_bt, loss_mask_bt, neg_logp_bt=None, neg_mask_bt=None,
             neg_weight: float = 0.0):
    """(loss, metrics): CE on positive responses, plus λ_neg · unlikelihood on negatives.

    ``neg_logp_bt`` / ``neg_mask_bt``: token log-probs and mask of the negative sequences
    (given, the negatives' mean token log-prob is reported even with ``neg_weight`` 0).
    """
    ce = masked_cross_entropy(logp_bt, loss_mask_bt)
    loss = ce
    metrics = {"ce": ce, "num_tokens": jnp.sum(loss_mask_bt.astype(jnp.float32))}
    if neg_mask_bt is not None:
        neg = neg_mask_bt.astype(jnp.float32)
        ul = unlikelihood(neg_logp_bt, neg)
        if neg_weight:
            loss = loss + neg_weight * ul
        metrics.update({"neg_unlikelihood": ul, "neg_logp": _masked_mean(neg_logp_bt, neg),
                        "neg_tokens": jnp.sum(neg)})
    return loss, {**metrics, "loss": loss}
