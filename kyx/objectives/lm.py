"""Language-model objectives: cross entropy, MiLe, max-z, PaLM z-loss, per-position stats.

All functions are pure: arrays in, ``(loss, metrics)`` out, computed in float32.

Mask convention (documented choice for MiLe and max-z): every mean runs over *real*
target tokens only (``mask_bt > 0``). The MiLe reference code averages over all positions
including ignored ones; averaging over real tokens keeps the loss scale independent of
padding. Under jit the means are global over the sharded batch, so MiLe's normaliser
alpha = 1 / mean(w) uses the global mean (the reference code averages per-rank
reciprocals instead; the two agree when ranks see equal mean weights).
"""
from __future__ import annotations

from typing import Mapping

import jax
import jax.numpy as jnp
import ml_collections

from kyx.registry import Registry

# loss.name -> fn(logits_btv, targets_bt, mask_bt, cfg) -> (loss, metrics)
LM_LOSSES = Registry("loss.name")
# terms added to the main loss when cfg[entry.weight] != 0:
# fn(logits_btv, targets_bt, mask_bt, weight) -> (loss, metrics)
LM_TERMS = Registry("lm loss term", weight="")


def default_config() -> ml_collections.ConfigDict:
    return ml_collections.ConfigDict({
        "name": "ce",            # a name in LM_LOSSES: "ce" | "mile"
        "mile_gamma": 1.0,       # MiLe exponent; 0 gives exactly cross entropy
        "max_z_weight": 0.0,     # Baichuan 2 max-z loss coefficient (paper: 2e-4)
        "z_loss_weight": 0.0,    # PaLM z-loss coefficient (PaLM: 1e-4)
    })


def _masked_mean(x_bt, mask_bt):
    return jnp.sum(x_bt * mask_bt) / jnp.maximum(jnp.sum(mask_bt), 1.0)


def token_cross_entropy(logits_btv, targets_bt):
    """(-log p(target), logsumexp) per token, in float32."""
    logits = logits_btv.astype(jnp.float32)
    lse_bt = jax.nn.logsumexp(logits, axis=-1)
    target_logit_bt = jnp.take_along_axis(logits, targets_bt[..., None], axis=-1)[..., 0]
    return lse_bt - target_logit_bt, lse_bt


def cross_entropy(logits_btv, targets_bt, mask_bt):
    """Mean token cross entropy over real targets."""
    mask = mask_bt.astype(jnp.float32)
    ce_bt, _ = token_cross_entropy(logits_btv, targets_bt)
    loss = _masked_mean(ce_bt, mask)
    return loss, {"ce": loss, "num_tokens": jnp.sum(mask)}


def entropy(logits_btv):
    """Predictive entropy H = logsumexp(z) - sum p z (no second V-sized log)."""
    z = logits_btv.astype(jnp.float32)
    p = jax.nn.softmax(z, axis=-1)
    # 0 * -inf is NaN: a masked (-inf) logit has p = 0 and contributes nothing
    return jax.nn.logsumexp(z, axis=-1) - jnp.sum(jnp.where(p > 0, p * z, 0.0), axis=-1)


def mile_loss(logits_btv, targets_bt, mask_bt, gamma: float = 1.0, sigma: float = 1.0):
    """MiLe loss (Su et al. 2023): CE re-weighted by (sigma + H)^gamma, H detached.

    w_t = (sigma + H_t)^gamma, alpha = 1 / mean_t(w_t) (no gradient), loss =
    mean_t(alpha w_t CE_t). With gamma = 0, w = alpha = 1 and the loss is exactly CE.
    """
    mask = mask_bt.astype(jnp.float32)
    ce_bt, _ = token_cross_entropy(logits_btv, targets_bt)
    h_bt = jax.lax.stop_gradient(entropy(logits_btv))
    w_bt = (sigma + h_bt) ** gamma
    alpha = jax.lax.stop_gradient(1.0 / jnp.maximum(_masked_mean(w_bt, mask), 1e-12))
    loss = _masked_mean(alpha * w_bt * ce_bt, mask)
    return loss, {"ce": _masked_mean(ce_bt, mask), "mile/entropy": _masked_mean(h_bt, mask),
                  "mile/alpha": alpha, "num_tokens": jnp.sum(mask)}


def max_z_loss(logits_btv, mask_bt, weight: float = 2e-4):
    """Baichuan 2 max-z loss: weight * mean over real tokens of (max_v z)^2."""
    zmax_bt = jnp.max(logits_btv.astype(jnp.float32), axis=-1)
    loss = weight * _masked_mean(jnp.square(zmax_bt), mask_bt.astype(jnp.float32))
    return loss, {"max_z": loss}


def z_loss(logits_btv, mask_bt, weight: float = 1e-4):
    """PaLM z-loss: weight * mean over real tokens of logsumexp(z)^2."""
    lse_bt = jax.nn.logsumexp(logits_btv.astype(jnp.float32), axis=-1)
    loss = weight * _masked_mean(jnp.square(lse_bt), mask_bt.astype(jnp.float32))
    return loss, {"z_loss": loss}


def logit_stats(logits_btv, mask_bt):
    """Logit-scale statistics over real tokens (what max-z and z-loss act on): the mean
    and the largest per-token max logit, and the mean logsumexp (log Z)."""
    z = logits_btv.astype(jnp.float32)
    mask = mask_bt.astype(jnp.float32)
    zmax_bt = jnp.max(z, axis=-1)
    return {"logits/max_mean": _masked_mean(zmax_bt, mask),
            "logits/max_peak": jnp.max(jnp.where(mask > 0, zmax_bt, -jnp.inf)),
            "logits/lse_mean": _masked_mean(jax.nn.logsumexp(z, axis=-1), mask)}


def per_position_loss(logits_btv, targets_bt, mask_bt, positions_bt, max_len: int):
    """Sum and count of CE per position-within-document (temporal scaling law input).

    Returns ``sum_l`` and ``count_l`` of shape [max_len]; accumulate sums across the
    validation set and divide at the end (never average per batch first).
    """
    mask = mask_bt.astype(jnp.float32)
    ce_bt, _ = token_cross_entropy(logits_btv, targets_bt)
    pos = jnp.clip(positions_bt, 0, max_len - 1).reshape(-1)
    sums = jnp.zeros((max_len,), jnp.float32).at[pos].add((ce_bt * mask).reshape(-1))
    counts = jnp.zeros((max_len,), jnp.float32).at[pos].add(mask.reshape(-1))
    return sums, counts


@LM_LOSSES.register("ce")
def _ce_entry(logits_btv, targets_bt, mask_bt, cfg):
    return cross_entropy(logits_btv, targets_bt, mask_bt)


@LM_LOSSES.register("mile")
def _mile_entry(logits_btv, targets_bt, mask_bt, cfg):
    return mile_loss(logits_btv, targets_bt, mask_bt, cfg["mile_gamma"])


@LM_TERMS.register("max_z", weight="max_z_weight")
def _max_z_entry(logits_btv, targets_bt, mask_bt, weight):
    return max_z_loss(logits_btv, mask_bt, weight)


@LM_TERMS.register("z_loss", weight="z_loss_weight")
def _z_loss_entry(logits_btv, targets_bt, mask_bt, weight):
    return z_loss(logits_btv, mask_bt, weight)


def check_config(cfg: Mapping) -> None:
    """Fail before training on an unknown loss name."""
    LM_LOSSES.get(cfg["name"])


def lm_loss(logits_btv, targets_bt, mask_bt, cfg: Mapping):
    """The pretraining objective chosen in config (LM_LOSSES) plus every LM_TERMS entry
    whose weight is non-zero (max-z, z-loss); metrics include ``logit_stats``."""
    loss, metrics = LM_LOSSES.get(cfg["name"]).fn(logits_btv, targets_bt, mask_bt, cfg)
    for term in LM_TERMS.entries():
        weight = cfg.get(term.weight, 0.0)
        if weight:
            extra, m = term.fn(logits_btv, targets_bt, mask_bt, weight)
            loss, metrics = loss + extra, {**metrics, **m}
    return loss, {**metrics, **logit_stats(logits_btv, mask_bt), "loss": loss}
