"""Supervised fine-tuning on chat-formatted records, with optional negative feedback.

    kyx train --config configs/sft.py:tiny --workdir runs/sft --config.init_from=runs/tiny

Rows are packed (kyx/data/preference.py); the loss is cross entropy on response tokens
only. With ``loss.negative_feedback`` each step also takes ``batch_size`` packed rows of
the records' negative responses (run in the same forward) and penalises them by
unlikelihood from their first divergence onward (kyx/objectives/sft.py, ALGORITHMS
§11b); the positive rows are exactly those of plain SFT with the same seed, so the two
compare cleanly. ``data.records.max_negatives`` caps the negatives used per record.
Evaluation always includes every negative, so plain SFT and SFT with negative feedback
report the same metrics: ``eval/loss`` (positive response CE), ``eval/neg_logp`` (mean
log-prob of negative tokens; ``eval/neg{k}_logp`` per negative slot), ``eval/neg_prob``
(their mean probability) and ``eval/neg_unlikelihood``.
"""
from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from kyx.data import pipeline
from kyx.data import preference as data_pref
from kyx.model.config import ModelConfig
from kyx.model.transformer import Decoder
from kyx.objectives import sft as sft_obj
from kyx.train import posttrain
from kyx.train.base import Trainer, make_trainer, single_model_step
from kyx.train.forward import forward_with_aux
from kyx.train.init_from import params_loader


def default_config():
    cfg = posttrain.base_config("sft")
    cfg.loss = sft_obj.default_config()
    return cfg


POS = ("tokens", "segment_ids", "positions", "targets")


def _logps(model, params, batch, with_negatives: bool, rng=None, probes=None):
    """Token log p of the positive rows and (log p, log(1 − p)) of the negative rows, in
    one forward."""
    get = lambda k: (jnp.concatenate([batch[k], batch["neg_" + k]], axis=0)  # noqa: E731
                     if with_negatives else batch[k])
    tokens, segs, pos, targets = (get(k) for k in POS)
    fwd = forward_with_aux(model, params, {"tokens": tokens, "segment_ids": segs,
                                           "positions": pos}, rng, probes)
    b = batch["tokens"].shape[0]
    if not with_negatives:
        return sft_obj.token_logps(fwd.out, targets), None, None, fwd
    logp_bt, log1m_bt = sft_obj.token_logps_and_log1m_ps(fwd.out, targets)
    return logp_bt[:b], logp_bt[b:], log1m_bt[b:], fwd


def make_loss_fn(model, loss_cfg):
    nf = bool(loss_cfg.negative_feedback)
    weight = float(loss_cfg.neg_weight) if nf else 0.0

    def loss_fn(params, batch, ctx):
        logp_bt, neg_bt, neg_log1m_bt, fwd = _logps(model, params, batch, nf, ctx.rng,
                                                    ctx.probes)
        loss, metrics = sft_obj.sft_loss(logp_bt, batch["loss_mask"], neg_bt,
                                         batch["neg_mask"] if nf else None, weight,
                                         neg_log1m_bt)
        loss = loss + fwd.aux_loss
        return loss, {**metrics, **fwd.metrics, "loss": loss}
    return loss_fn


def eval_fn_for(model):
    def eval_fn(params, batch):
        logp_bt, neg_bt, neg_log1m_bt, _ = _logps(model, params["policy"], batch, True)
        pos, neg = batch["loss_mask"], batch["neg_mask"]
        by_k = [neg * (batch["neg_index"] == k) for k in range(1, data_pref.MAX_NEGATIVES + 1)]
        return {"pos_nll": jnp.sum(-logp_bt * pos), "pos_tokens": jnp.sum(pos),
                "neg_logp": jnp.sum(neg_bt * neg), "neg_tokens": jnp.sum(neg),
                "neg_ul": jnp.sum(-neg_log1m_bt * neg),
                "neg_p": jnp.sum(jnp.exp(neg_bt) * neg),
                "neg_logp_k": jnp.stack([jnp.sum(neg_bt * m) for m in by_k]),
                "neg_tokens_k": jnp.stack([jnp.sum(m) for m in by_k])}
    return eval_fn


def summarize_eval(sums):
    pos = float(sums["pos_nll"]) / max(float(sums["pos_tokens"]), 1.0)
    neg = max(float(sums["neg_tokens"]), 1.0)
    out = {"eval/loss": pos, "eval/perplexity": float(np.exp(min(pos, 80.0))),
           "eval/neg_logp": float(sums["neg_logp"]) / neg,
           "eval/neg_unlikelihood": float(sums["neg_ul"]) / neg,
           "eval/neg_prob": float(sums["neg_p"]) / neg,
           "eval/tokens": float(sums["pos_tokens"])}
    for k, (s, n) in enumerate(zip(sums["neg_logp_k"], sums["neg_tokens_k"]), 1):
        if n > 0:  # per negative slot (mined data: 1 = repetition loop, 2 = foreign lines)
            out[f"eval/neg{k}_logp"] = float(s) / float(n)
    return out, {}


def build_step(cfg):
    model = Decoder(ModelConfig.from_config(cfg.model))
    return single_model_step(cfg, model, make_loss_fn(model, cfg.loss),
                             init=params_loader(cfg, model))


def build(cfg) -> Trainer:
    step = build_step(cfg)  # config errors before any data work
    records, tokenizer, template = posttrain.prepare(cfg, "sft")
    split = pipeline.process_split()
    train_iter = data_pref.make_sft_iterator(
        cfg.data, records, template, "train", negatives=bool(cfg.loss.negative_feedback),
        **split)
    evals = {}
    if len(records.source("validation")):
        evals = dict(
            eval_fn=eval_fn_for(step.models["policy"].module), summarize_eval=summarize_eval,
            eval_batches=lambda: data_pref.make_sft_iterator(
                cfg.data, records, template, "validation", negatives=True, max_negatives=0,
                **split))
    return make_trainer(cfg, step, train_iter=train_iter,
                        batch_axes=data_pref.SFT_AXES, tokenizer=tokenizer, **evals)
