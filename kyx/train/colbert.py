"""ColBERT late-interaction retrieval on a kyx decoder: contrastive training and ranking eval.

    kyx train --config configs/colbert.py:tiny --workdir runs/colbert --config.init_from=runs/tiny

The model (kyx/model/colbert.py) is a Decoder backbone plus a bias-free projection to
``colbert.dim`` (128) dimensions; the data (kyx/data/retrieval.py) are docstring -> code
pairs mined from the corpus, queries augmented with mask tokens to ``colbert.query_len``,
punctuation masked out of documents. Each step scores every query of the batch against
every document (``colbert.scoring``: ``maxsim``, ColBERT's late interaction, or
``mean_pool``, the single-vector cosine baseline of the same backbone; SCORINGS in
kyx/objectives/late_interaction.py) and takes the softmax cross-entropy with the
positives on the diagonal (in-batch negatives). ``colbert.scale`` multiplies the scores
in the softmax (0: the scoring's own, 1 for MaxSim, 20 for the cosine).

Evaluation ranks, for each held-out query, all held-out documents (one batch, so the
candidates are the whole held-out set): ``eval/mrr@10``, ``eval/recall@1``,
``eval/recall@10``. ``init_from`` loads a pretraining (or SFT) run into the backbone; the
projection starts fresh. The trained model is named ``encoder`` in the train state.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections

from kyx.data import pipeline, retrieval
from kyx.data.corpus import load_corpus
from kyx.errors import ConfigError
from kyx.model.colbert import ColbertEncoder
from kyx.model.config import ModelConfig
from kyx.objectives import late_interaction as li
from kyx.train import posttrain
from kyx.train.base import Trainer, make_trainer, single_model_step
from kyx.train.forward import forward_with_aux
from kyx.train.rm import params_loader

NAME = "encoder"
EVAL_QUERY_BLOCK = 16   # queries scored at once in evaluation (bounds the [q, d, i, j] sims)


def colbert_config() -> ml_collections.ConfigDict:
    return ml_collections.ConfigDict({
        "scoring": "maxsim",           # maxsim | mean_pool (li.SCORINGS)
        "dim": li.EMBED_DIM,           # projection width
        "query_len": 32,               # N_q: queries padded with mask_token to this length
        "scale": 0.0,                  # factor on scores in the softmax; 0 = the scoring's
        "mask_punctuation": True,      # punctuation tokens take no part in documents
        "query_marker": "<|user|>",    # [Q]
        "doc_marker": "<|assistant|>",  # [D]
        "mask_token": "<|ph|>",        # query augmentation
    })


def default_config():
    cfg = posttrain.base_config("colbert")
    cfg.colbert = colbert_config()
    return cfg


def score_scale(colbert_cfg) -> float:
    return float(colbert_cfg.scale) or li.SCORINGS.get(colbert_cfg.scoring).scale


def encode(model, params, batch, rng=None, probes=None):
    """(q_bqk, q_mask_bq, d_btk, d_mask_bt, aux_loss, metrics): masked, normalised token
    embeddings of the batch's queries and documents."""
    q_tokens = batch["q_tokens"]
    q_seg = jnp.ones_like(q_tokens)
    fq = forward_with_aux(model, params, {"tokens": q_tokens, "segment_ids": q_seg}, rng, probes)
    fd = forward_with_aux(model, params, {"tokens": batch["d_tokens"],
                                          "segment_ids": batch["d_segment_ids"]}, rng, probes)
    q_mask = q_seg.astype(jnp.float32)
    d_mask = batch["d_mask"]
    metrics = {**{f"query/{k}": v for k, v in fq.metrics.items()},
               **{f"doc/{k}": v for k, v in fd.metrics.items()}}
    return (li.token_embeddings(fq.out, q_mask), q_mask, li.token_embeddings(fd.out, d_mask),
            d_mask, fq.aux_loss + fd.aux_loss, metrics)


def make_loss_fn(model, colbert_cfg):
    scoring, scale = li.SCORINGS.get(colbert_cfg.scoring), score_scale(colbert_cfg)

    def loss_fn(params, batch, ctx):
        q, q_mask, d, d_mask, aux_loss, aux_metrics = encode(model, params, batch, ctx.rng,
                                                             ctx.probes)
        loss, metrics = li.contrastive_loss(scoring(q, q_mask, d, d_mask), scale,
                                            batch["weight"])
        loss = loss + aux_loss
        return loss, {**metrics, **aux_metrics, "loss": loss}
    return loss_fn


def make_eval_fn(model, colbert_cfg):
    """Ranking sums of every query of the (one, whole held-out set) batch against every
    valid document of it."""
    scoring = li.SCORINGS.get(colbert_cfg.scoring)

    def eval_fn(params, batch):
        q, q_mask, d, d_mask, _, _ = encode(model, params[NAME], batch)
        scores_qd = jax.lax.map(lambda qm: scoring(qm[0][None], qm[1][None], d, d_mask)[0],
                                (q, q_mask), batch_size=EVAL_QUERY_BLOCK)
        w = batch["weight"]
        return li.ranking_sums(li.gold_ranks(scores_qd, w), w)
    return eval_fn


def summarize_eval(sums):
    n = max(float(sums["n"]), 1.0)
    return {"eval/mrr@10": float(sums["rr@10"]) / n,
            "eval/recall@1": float(sums["hits@1"]) / n,
            "eval/recall@10": float(sums["hits@10"]) / n,
            "eval/queries": float(sums["n"])}, {}


def build_step(cfg):
    li.SCORINGS.get(cfg.colbert.scoring)   # unknown name: ConfigError before anything runs
    model = ColbertEncoder(ModelConfig.from_config(cfg.model), cfg.colbert.dim)
    return single_model_step(cfg, model, make_loss_fn(model, cfg.colbert), name=NAME,
                             init=params_loader(cfg, model))


def build(cfg) -> Trainer:
    step = build_step(cfg)  # config errors before any data work
    if cfg.data.records.source != "mined":
        raise ConfigError("colbert trains on pairs mined from the corpus: "
                          "data.records.source must be 'mined'")
    corpus = load_corpus(cfg.data)
    tok_cfg = cfg.data.tokenizer
    tokenizer = pipeline.make_tokenizer(cfg.data, None if tok_cfg.model_path else corpus)
    if cfg.model.vocab_size < tokenizer.vocab_size:
        raise ConfigError(f"model.vocab_size={cfg.model.vocab_size} is smaller than the "
                          f"tokenizer's {tokenizer.vocab_size}; raise model.vocab_size")
    encoder = retrieval.make_encoder(tokenizer, cfg.data, cfg.colbert, cfg.model.vocab_size)
    pairs = retrieval.mine_pairs(corpus, cfg.data.records)
    split = pipeline.process_split()
    train_iter = retrieval.PairIterator(encoder, pairs["train"], cfg.data.batch_size,
                                        cfg.data.seed, **split)
    held_out = pairs["validation"]
    return make_trainer(
        cfg, step, train_iter=train_iter, batch_axes=retrieval.BATCH_AXES,
        eval_fn=make_eval_fn(step.models[NAME].module, cfg.colbert),
        summarize_eval=summarize_eval,
        eval_batches=lambda: [retrieval.eval_batch(encoder, held_out, cfg.data.batch_size,
                                                   **split)],
        sequences_per_row=1 + cfg.colbert.query_len / cfg.data.seq_len, tokenizer=tokenizer)
