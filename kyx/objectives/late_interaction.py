"""ColBERT late interaction (Khattab & Zaharia 2020; ColBERTv2): scores and the contrastive loss.

Pure functions of arrays; the model (kyx/model/colbert.py) gives the projected token
vectors ``proj_btk`` (a bias-free linear map of a decoder's final hidden states to k = 128
dimensions), the data (kyx/data/retrieval.py) the masks.

* ``token_embeddings``: masked, then L2-normalised token vectors. The mask is applied
  *before* normalisation (ALGORITHMS.md §10d pitfall), so a masked token (padding; a
  punctuation token of a document) is exactly the zero vector. Queries are augmented with
  mask tokens up to N_q; those are *not* masked: they take part in MaxSim (ColBERT's query
  augmentation).
* Scorings (``SCORINGS``, config ``colbert.scoring``), each ``(q_bqk, q_mask_bq, d_btk,
  d_mask_bt) -> scores [B_q, B_d]`` for every query x document pair:

  - ``maxsim``: s(q, d) = sum_{i in q} max_{j in d} E_q_i . E_d_j. Masked document tokens
    take no part in the max: their similarities are set to -inf before it (a zero vector
    would still offer similarity 0, which wins whenever every real token's is negative).
    A document with no unmasked token scores 0; masked query tokens add 0.
  - ``mean_pool``: the single-vector baseline, cosine of the mean of the unmasked token
    embeddings of each side.

  Each scoring carries ``scale``, the factor on its scores inside the softmax: MaxSim
  sums N_q cosines (range +-N_q) and is used as is, as in ColBERT; a single cosine needs
  a temperature (0.05, i.e. scale 20, as in DPR / SimCSE-style bi-encoders).
* ``contrastive_loss``: softmax cross-entropy of each query over the documents of the
  batch (its positive at the same index, the other queries' positives as in-batch
  negatives, then optional extra hard negatives in columns B_q..), with accuracy.
* ``gold_ranks`` / ``ranking_sums``: the rank of each query's gold document among the
  candidates (ties counted against it, so a constant scorer ranks last), MRR@10 and
  recall@k sums.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from kyx.registry import Registry

EMBED_DIM = 128   # ColBERT's projection width
_EPS = 1e-12      # norm floor: a zero (masked) vector stays zero, with finite gradients
_HIGHEST = jax.lax.Precision.HIGHEST

SCORINGS = Registry("colbert.scoring", scale=1.0)


def token_embeddings(proj_btk, mask_bt):
    """Masked, L2-normalised token vectors (float32): masked tokens are exactly 0."""
    x_btk = proj_btk.astype(jnp.float32) * mask_bt[..., None].astype(jnp.float32)
    sq_bt = jnp.sum(x_btk * x_btk, axis=-1, keepdims=True)
    return x_btk * jax.lax.rsqrt(jnp.maximum(sq_bt, _EPS * _EPS))


@SCORINGS.register("maxsim", scale=1.0)
def maxsim_scores(q_bqk, q_mask_bq, d_btk, d_mask_bt):
    """[B_q, B_d]: sum over unmasked query tokens of the max over unmasked document tokens
    of E_q_i . E_d_j (0 for a document without unmasked tokens)."""
    sims_qdij = jnp.einsum("aik,bjk->abij", q_bqk.astype(jnp.float32),
                           d_btk.astype(jnp.float32), precision=_HIGHEST)
    d_ok = d_mask_bt.astype(bool)[None, :, None, :]
    best_qdi = jnp.max(jnp.where(d_ok, sims_qdij, -jnp.inf), axis=-1)
    any_d = jnp.any(d_mask_bt.astype(bool), axis=-1)[None, :, None]
    best_qdi = jnp.where(any_d, best_qdi, 0.0)
    q_ok = q_mask_bq.astype(bool)[:, None, :]
    return jnp.sum(jnp.where(q_ok, best_qdi, 0.0), axis=-1)


def mean_pooled(emb_btk, mask_bt):
    """[B, k]: the L2-normalised mean of the unmasked token embeddings (0 if none)."""
    m_bt = mask_bt.astype(jnp.float32)
    mean_bk = jnp.sum(emb_btk * m_bt[..., None], axis=1) / jnp.maximum(
        jnp.sum(m_bt, axis=1, keepdims=True), 1.0)
    return token_embeddings(mean_bk, jnp.ones(mean_bk.shape[:1], jnp.float32))


@SCORINGS.register("mean_pool", scale=20.0)
def mean_pool_scores(q_bqk, q_mask_bq, d_btk, d_mask_bt):
    """[B_q, B_d]: cosine of the mean-pooled query and document vectors."""
    return jnp.einsum("ak,bk->ab", mean_pooled(q_bqk, q_mask_bq),
                      mean_pooled(d_btk, d_mask_bt), precision=_HIGHEST)


def contrastive_loss(scores_qd, scale: float = 1.0, weight_q=None):
    """(loss, metrics): mean softmax CE of query i over the documents with its positive
    at column i (B_d >= B_q; columns past B_q are extra hard negatives). ``weight_q``:
    1 for real queries, 0 for padding rows (which are also no query's negative)."""
    bq, bd = scores_qd.shape
    if bd < bq:
        raise ValueError(f"need a positive document per query: {bq} queries, {bd} documents")
    w_q = jnp.ones((bq,), jnp.float32) if weight_q is None else weight_q.astype(jnp.float32)
    col_ok = jnp.concatenate([w_q > 0, jnp.ones((bd - bq,), bool)])
    own_qd = jnp.arange(bd)[None, :] == jnp.arange(bq)[:, None]  # keeps every row finite
    logits_qd = jnp.where(col_ok[None, :] | own_qd, scale * scores_qd.astype(jnp.float32),
                          -jnp.inf)
    pos_q = jnp.diagonal(logits_qd[:, :bq])
    nll_q = jax.nn.logsumexp(logits_qd, axis=-1) - pos_q
    n = jnp.maximum(jnp.sum(w_q), 1.0)
    correct_q = (jnp.argmax(logits_qd, axis=-1) == jnp.arange(bq)).astype(jnp.float32)
    loss = jnp.sum(nll_q * w_q) / n
    return loss, {"loss": loss, "accuracy": jnp.sum(correct_q * w_q) / n,
                  "positive_score": jnp.sum(jnp.diagonal(scores_qd[:, :bq]) * w_q) / n}


def gold_ranks(scores_qd, valid_d=None):
    """[B_q] int32: 1-based rank of document i for query i among the valid documents;
    documents scoring the same as the gold one rank ahead of it (pessimistic ties)."""
    bq, bd = scores_qd.shape
    ok_d = jnp.ones((bd,), bool) if valid_d is None else valid_d.astype(bool)
    gold_q = jnp.diagonal(scores_qd[:, :bq])[:, None]
    other_qd = (jnp.arange(bd)[None, :] != jnp.arange(bq)[:, None]) & ok_d[None, :]
    ahead = (scores_qd > gold_q) | ((scores_qd == gold_q) & other_qd)
    return 1 + jnp.sum(ahead & ok_d[None, :], axis=-1).astype(jnp.int32)


def ranking_sums(ranks_q, weight_q, ks=(1, 10), mrr_at: int = 10) -> dict:
    """Sums over weighted queries: ``n``, ``rr@{mrr_at}`` (reciprocal rank, 0 past the
    cutoff) and ``hits@k``; divide by ``n`` for MRR / recall@k."""
    w = weight_q.astype(jnp.float32)
    r = ranks_q.astype(jnp.float32)
    out = {"n": jnp.sum(w), f"rr@{mrr_at}": jnp.sum(jnp.where(r <= mrr_at, 1.0 / r, 0.0) * w)}
    for k in ks:
        out[f"hits@{k}"] = jnp.sum((r <= k) * w)
    return out
