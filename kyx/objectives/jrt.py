"""JRT-RNN training objective (Arora et al. 2024, "Just read twice", arXiv 2407.05483).

The first M tokens of each document (``positions_bt < prefix_len``) are the prefix a
prefix-linear-attention model reads non-causally; the rest is decoded causally. Loss:

    next-token CE over the targets at positions >= M
    + mlm_weight (paper: 0.25) x masked-LM CE over the masked prefix tokens

as in the reference code (github.com/HazyResearch/prefix-linear-attention,
``train/src/tasks/seq.py`` and ``train/src/datamodules/language_modeling_neox.py``),
whose choices kyx follows:

* masking: each prefix position independently with probability ``mask_rate`` (reference:
  ``mlm_probability = 0.15``, Bernoulli per position); every masked input becomes the mask
  token (no BERT 80/10/10 split);
* the masked token is predicted by the logits *at its own position* (the reference's
  encoder labels are the unshifted prefix tokens), not by the next position's;
* the two terms are separate means (CE over decoder targets, CE over masked tokens),
  the second scaled by ``mlm_weight``; the reference's next-token part starts at position M
  (the token at M is nobody's target), so does kyx's.

Differences: the prefix is per document (``positions_bt``) rather than per row, and
padding (``segment_ids_bt == 0``) is never masked; the reference also drops masked tokens
whose id is 0 (its ``y > 0`` filter), kyx keeps every masked token as a target.
"""
from __future__ import annotations

from typing import Mapping

import jax
import jax.numpy as jnp

from kyx.objectives import lm

MLM_WEIGHT = 0.25   # the reference's mlm_weight
MASK_RATE = 0.15    # the reference's mlm_probability


def prefix_mask(positions_bt, segment_ids_bt, prefix_len: int):
    """bool [B, T]: the non-causal prefix, document positions < ``prefix_len`` (no padding)."""
    return (positions_bt < prefix_len) & (segment_ids_bt > 0)


def mask_prefix(key: jax.Array, tokens_bt, positions_bt, segment_ids_bt, prefix_len: int,
                mask_id: int, rate: float = MASK_RATE):
    """(masked tokens_bt, mlm_mask_bt float32): each prefix token (``prefix_mask``) is
    replaced by ``mask_id`` with probability ``rate``, drawn from ``key`` (same key, same
    mask); positions >= ``prefix_len`` and padding are never touched."""
    draw_bt = jax.random.bernoulli(key, rate, tokens_bt.shape)
    hit_bt = draw_bt & prefix_mask(positions_bt, segment_ids_bt, prefix_len)
    return (jnp.where(hit_bt, jnp.asarray(mask_id, tokens_bt.dtype), tokens_bt),
            hit_bt.astype(jnp.float32))


def jrt_loss(logits_btv, targets_bt, loss_mask_bt, positions_bt, tokens_bt, mlm_mask_bt, *,
             prefix_len: int, mlm_weight: float = MLM_WEIGHT, lm_cfg: Mapping | None = None):
    """(loss, metrics) of a forward on the masked inputs.

    ``targets_bt`` / ``loss_mask_bt``: the usual next-token targets; only positions >=
    ``prefix_len`` count. ``tokens_bt``: the *unmasked* tokens, the MLM targets at the
    positions where ``mlm_mask_bt`` is 1 (same-position logits). ``lm_cfg``: a pretraining
    loss section (kyx/objectives/lm.py ``lm_loss``: CE or MiLe, + max-z / z-loss) for the
    next-token term; None is plain cross entropy (the reference).
    """
    ntp_mask_bt = loss_mask_bt.astype(jnp.float32) * (positions_bt >= prefix_len)
    if lm_cfg is None:
        ntp, ntp_metrics = lm.cross_entropy(logits_btv, targets_bt, ntp_mask_bt)
    else:
        ntp, ntp_metrics = lm.lm_loss(logits_btv, targets_bt, ntp_mask_bt, lm_cfg)
    mlm, _ = lm.cross_entropy(logits_btv, tokens_bt, mlm_mask_bt)
    loss = ntp + mlm_weight * mlm
    return loss, {**ntp_metrics, "jrt/ntp": ntp, "jrt/mlm": mlm,
                  "jrt/masked_tokens": jnp.sum(mlm_mask_bt), "loss": loss}
