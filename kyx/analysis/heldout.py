"""Held-out evaluation of a finished pretraining run beyond its training eval: loss per
token-frequency bucket (MiLe's claim is about rare tokens) and loss at a longer context
than it was trained on (RoPE vs ALiBi extrapolation).

Frequency buckets follow the statistic MiLe's paper motivates itself with: token types
sorted by their count in the run's *training* split (its token cache), the most frequent
types covering the first 80% of training-token occurrences are ``frequent``, the next 15%
``medium``, the last 5% ``rare`` (types never seen in training are rare too). Losses are
sums over the validation pass divided by counts (never a mean of batch means).
"""
from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np

from kyx.errors import ConfigError
from kyx.objectives import lm
from kyx.train.forward import forward_with_aux

BUCKETS = ("frequent", "medium", "rare")
BUCKET_STARTS = (0.80, 0.95)   # cumulative share of training tokens where medium, rare begin


def frequency_buckets(counts_v: np.ndarray) -> np.ndarray:
    """int32 [V] bucket index (0 frequent, 1 medium, 2 rare) from training counts per id."""
    counts = np.asarray(counts_v, np.float64)
    order = np.argsort(-counts, kind="stable")
    total = max(counts.sum(), 1.0)
    # the cumulative share *before* a type decides its bucket: the type that crosses 80%
    # still belongs to the frequent ones
    before = np.concatenate([[0.0], np.cumsum(counts[order])[:-1]]) / total
    bucket = np.searchsorted(BUCKET_STARTS, before, side="right").astype(np.int32)
    bucket[counts[order] == 0] = len(BUCKETS) - 1
    out = np.empty_like(bucket)
    out[order] = bucket
    return out


def train_token_counts(cfg, corpus, tokenizer, vocab_size: int) -> np.ndarray:
    """Occurrences of every id in the training split's token cache (built if missing)."""
    from kyx.data import mixture, token_cache

    if isinstance(corpus, mixture.Mixture):
        raise ConfigError("frequency buckets read one corpus's token cache; a data.mixture "
                          "run has several (evaluate each source's run instead)")
    cache = token_cache.load(corpus, cfg.train_split, tokenizer, cfg.data_dir,
                             workers=cfg.cache_workers)
    counts = np.zeros(vocab_size, np.int64)
    step = 1 << 24
    for start in range(0, cache.num_tokens, step):
        chunk = cache.read(start, min(step, cache.num_tokens - start))
        counts += np.bincount(chunk, minlength=vocab_size)[:vocab_size]
    return counts


@functools.partial(jax.jit, static_argnums=(0, 4))
def _sums(model, params, batch, bucket_v, boundary: int):
    """CE sums and counts per bucket, and before / from ``boundary`` (a position)."""
    logits_btv = forward_with_aux(model, params, batch).out
    ce_bt, _ = lm.token_cross_entropy(logits_btv, batch["targets"])
    mask_bt = batch["loss_mask"].astype(jnp.float32)
    bucket_bt = jnp.take(bucket_v, batch["targets"], mode="clip")
    onehot_btk = jax.nn.one_hot(bucket_bt, len(BUCKETS), dtype=jnp.float32) * mask_bt[..., None]
    late_bt = (batch["positions"] >= boundary).astype(jnp.float32) * mask_bt
    return {"loss_sum": jnp.sum(ce_bt * mask_bt), "tokens": jnp.sum(mask_bt),
            "bucket_sum": jnp.einsum("bt,btk->k", ce_bt, onehot_btk),
            "bucket_count": jnp.sum(onehot_btk, axis=(0, 1)),
            "late_sum": jnp.sum(ce_bt * late_bt), "late_count": jnp.sum(late_bt)}


def evaluate(workdir: str, *, seq_len: int = 0, frequency: bool = True,
             max_batches: int = 0) -> dict:
    """Validation loss of ``workdir``'s final params (``loss``, ``tokens``), per frequency
    bucket (``loss_<bucket>``, ``share_<bucket>`` of the tokens) and, with ``seq_len`` above
    the training length, at that context with the loss from the training length on apart
    (``loss_beyond`` / ``share_beyond``: positions the model never saw; ``loss_within``
    the rest). The validation pass is the
    run's own (``data.eval_batches`` batches, or ``max_batches``); at a longer
    ``seq_len`` the batch keeps the same token count."""
    from kyx import api
    from kyx.data import pipeline

    loaded = api.load(workdir)
    cfg = loaded.config
    train_len = int(cfg.data.seq_len)
    seq_len = seq_len or train_len
    data_cfg = cfg.data.copy_and_resolve_references()
    with data_cfg.unlocked():
        data_cfg.seq_len = seq_len
        data_cfg.batch_size = max(1, cfg.data.batch_size * train_len // seq_len)
        if max_batches:
            data_cfg.eval_batches = max_batches
    model = loaded.model
    if seq_len > model.cfg.max_seq_len:
        model = type(model)(dataclasses.replace(model.cfg, max_seq_len=seq_len))
    corpus, tokenizer = pipeline.prepare(data_cfg)
    vocab = model.cfg.vocab_size
    bucket_v = (frequency_buckets(train_token_counts(data_cfg, corpus, tokenizer, vocab))
                if frequency else np.zeros(vocab, np.int32))
    bucket_v = jnp.asarray(bucket_v)
    total = None
    for batch in pipeline.make_iterator(data_cfg, corpus, tokenizer, "validation"):
        sums = _sums(model, loaded.params, {k: jnp.asarray(v) for k, v in batch.items()},
                     bucket_v, train_len)
        total = sums if total is None else jax.tree.map(jnp.add, total, sums)
    if total is None:
        raise ConfigError(f"{workdir}: the validation split gave no batch")
    total = jax.tree.map(lambda x: np.asarray(x, np.float64), total)
    tokens = float(total["tokens"])
    out = {"loss": float(total["loss_sum"] / max(tokens, 1.0)), "tokens": int(tokens),
           "seq_len": seq_len}
    if frequency:
        for k, name in enumerate(BUCKETS):
            count = float(total["bucket_count"][k])
            out[f"loss_{name}"] = float(total["bucket_sum"][k] / count) if count else None
            out[f"share_{name}"] = count / max(tokens, 1.0)
    if seq_len > train_len:
        count = float(total["late_count"])
        out["loss_beyond"] = float(total["late_sum"] / count) if count else None
        out["loss_within"] = float((total["loss_sum"] - total["late_sum"])
                                   / max(tokens - count, 1.0))
        out["share_beyond"] = count / max(tokens, 1.0)
    return out
