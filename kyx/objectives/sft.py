"""SFT objectives: masked cross entropy and negative feedback (unlikelihood).

Pure functions, float32. Negative feedback is kyx's formulation (ALGORITHMS §11b; no
public KwaiYii method exists): for negative responses y⁻,

    L = CE(y⁺) + λ_neg · mean over negative tokens of [ −log(1 − p_θ(y⁻_t | x, y⁻_<t)) ]

where the negative tokens start at the first divergence from y⁺ and exclude formatting
tokens (the data pipeline builds that mask, kyx/data/preference.py). Both log p and
log(1 − p) come from the logits exactly: with L = logsumexp over the other tokens,
log p = −softplus(L − z_t) and log(1 − p) = −softplus(z_t − L), so a very confident
token (p ≈ 1, exactly the repetition negative feedback exists for) keeps its gradient
d[−log(1 − p)]/dz_t = p instead of being clamped to zero.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections

LOG_P_MAX = -1e-30  # log1m_exp's clamp: log p = 0 exactly would give -inf (margins > ~69)


def default_config() -> ml_collections.ConfigDict:
    return ml_collections.ConfigDict({
        "negative_feedback": False,  # add the unlikelihood term on negative responses
        "neg_weight": 1.0,           # λ_neg
    })


def _other_logsumexp(logits_btv, targets_bt):
    """(target logit z_t, logsumexp over every other vocabulary entry), float32."""
    logits = logits_btv.astype(jnp.float32)
    z_bt = jnp.take_along_axis(logits, targets_bt[..., None], axis=-1)[..., 0]
    hit = jax.nn.one_hot(targets_bt, logits.shape[-1], dtype=bool)
    return z_bt, jax.nn.logsumexp(jnp.where(hit, -jnp.inf, logits), axis=-1)


def token_logps(logits_btv, targets_bt):
    """log p(target) per token, float32; accurate for p close to 1 (see module docstring)."""
    z_bt, other_bt = _other_logsumexp(logits_btv, targets_bt)
    return -jax.nn.softplus(other_bt - z_bt)


def token_logps_and_log1m_ps(logits_btv, targets_bt):
    """(log p, log(1 − p)) of the target per token, float32, both with exact gradients
    even when p ≈ 1 (one pass over the vocabulary)."""
    z_bt, other_bt = _other_logsumexp(logits_btv, targets_bt)
    return -jax.nn.softplus(other_bt - z_bt), -jax.nn.softplus(z_bt - other_bt)


def log1m_exp(logp):
    """log(1 − exp(logp)) for logp < 0, accurate near 0 and for very negative logp.

    For a *token* probability use ``token_logps_and_log1m_ps`` (exact from the logits); this is for
    quantities that only exist as log-probabilities (ORPO's length-normalised P(y))."""
    x = jnp.minimum(logp, LOG_P_MAX)
    return jnp.where(x > -0.6931471805599453, jnp.log(-jnp.expm1(x)), jnp.log1p(-jnp.exp(x)))


def _masked_mean(x, mask):
    return jnp.sum(x * mask) / jnp.maximum(jnp.sum(mask), 1.0)


def masked_cross_entropy(logp_bt, mask_bt):
    """Mean −log p over masked tokens (response tokens only)."""
    return _masked_mean(-logp_bt, mask_bt.astype(jnp.float32))


def unlikelihood(log1m_p_bt, neg_mask_bt):
    """Mean −log(1 − p) over negative tokens, from log(1 − p) (token_logps_and_log1m_ps)."""
    return _masked_mean(-log1m_p_bt, neg_mask_bt.astype(jnp.float32))


def sft_loss(logp_bt, loss_mask_bt, neg_logp_bt=None, neg_mask_bt=None,
             neg_weight: float = 0.0, neg_log1m_p_bt=None):
    """(loss, metrics): CE on positive responses, plus λ_neg · unlikelihood on negatives.

    ``neg_logp_bt`` / ``neg_log1m_p_bt`` / ``neg_mask_bt``: token log p and log(1 − p)
    and the mask of the negative sequences (given, the negatives' mean token log-prob is
    reported even with ``neg_weight`` 0).
    """
    ce = masked_cross_entropy(logp_bt, loss_mask_bt)
    loss = ce
    metrics = {"ce": ce, "num_tokens": jnp.sum(loss_mask_bt.astype(jnp.float32))}
    if neg_mask_bt is not None:
        neg = neg_mask_bt.astype(jnp.float32)
        if neg_log1m_p_bt is None:
            raise ValueError("negatives need their log(1 - p) (token_logps_and_log1m_ps)")
        ul = unlikelihood(neg_log1m_p_bt, neg)
        if neg_weight:
            loss = loss + neg_weight * ul
        metrics.update({"neg_unlikelihood": ul, "neg_logp": _masked_mean(neg_logp_bt, neg),
                        "neg_tokens": jnp.sum(neg)})
    return loss, {**metrics, "loss": loss}
