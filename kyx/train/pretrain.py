"""Pretraining: packed next-token prediction with CE or MiLe (+ max-z / z-loss)."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from kyx.data import pipeline
from kyx.errors import ConfigError
from kyx.model import config as model_config
from kyx.model.config import ModelConfig
from kyx.model.flops import train_flops_per_token
from kyx.model.transformer import Decoder
from kyx.model.moe import PROBE_COLLECTION, zero_probes
from kyx.objectives import lm
from kyx.objectives import moe as moe_objectives
from kyx.train import optim
from kyx.train.init_from import params_loader
from kyx.train.loop import Trainer
from kyx.train.step import make_train_step

BATCH_AXES = {k: ("act_batch", "act_length")
              for k in ("tokens", "targets", "segment_ids", "positions", "loss_mask")}


def default_config():
    """Every section a pretraining run has, with component defaults (no preset applied)."""
    from kyx.train import defaults

    cfg = defaults.base_config()
    cfg.trainer = "pretrain"
    cfg.model = model_config.default_config()
    cfg.data = pipeline.default_config()
    cfg.loss = lm.default_config()
    return cfg


def make_loss_fn(model: Decoder, loss_cfg):
    """loss_fn(params, batch, rng=None, probes=None) -> (loss, metrics).

    Next-token loss on packed rows plus the MoE auxiliary losses. With an `rng` the
    training-only randomness (router jitter, attention-weight reuse) is on; `probes` are
    the zero routing-error probes whose gradient carries the flagged-pair counts.
    """
    loss_cfg = dict(loss_cfg)
    layer_ids = model.cfg.moe_layer_ids

    def loss_fn(params, batch, rng=None, probes=None):
        variables = {"params": params}
        if probes:
            variables[PROBE_COLLECTION] = probes
        rngs = None if rng is None else {"jitter": jax.random.fold_in(rng, 0),
                                         "reuse": jax.random.fold_in(rng, 1)}
        logits_btv, aux = model.apply(variables, batch["tokens"], batch["segment_ids"],
                                      batch["positions"], rngs=rngs)
        loss, metrics = lm.lm_loss(logits_btv, batch["targets"], batch["loss_mask"], loss_cfg)
        moe_loss, moe_metrics = moe_objectives.moe_loss_and_metrics(aux, layer_ids)
        return loss + moe_loss, {**metrics, **moe_metrics, "loss": loss + moe_loss}
    return loss_fn


def make_grad_fn(model: Decoder, loss_fn):
    """value_and_grad that also reports the routing-error flagged fraction (MoE only)."""
    probes = zero_probes(model)
    if not probes:
        return None
    layer_ids = model.cfg.moe_layer_ids

    def grad_fn(params, batch, rng):
        (loss, metrics), (grads, probe_grads) = jax.value_and_grad(
            lambda p, pr: loss_fn(p, batch, rng, pr), argnums=(0, 1), has_aux=True)(
            params, probes)
        return (loss, {**metrics, **moe_objectives.flagged_metrics(probe_grads, layer_ids)}), grads
    return grad_fn


def make_eval_fn(model: Decoder, max_len: int):
    """Sums over a validation batch: CE, token count and per-position CE statistics."""
    def eval_fn(params, batch):
        logits_btv, _ = model.apply({"params": params}, batch["tokens"], batch["segment_ids"],
                                    batch["positions"])
        mask = batch["loss_mask"].astype(jnp.float32)
        ce_bt, _ = lm.token_cross_entropy(logits_btv, batch["targets"])
        pos_sum, pos_count = lm.per_position_loss(logits_btv, batch["targets"], mask,
                                                  batch["positions"], max_len)
        return {"loss_sum": jnp.sum(ce_bt * mask), "tokens": jnp.sum(mask),
                "pos_sum": pos_sum, "pos_count": pos_count}
    return eval_fn


def summarize_eval(sums):
    loss = float(sums["loss_sum"] / max(float(sums["tokens"]), 1.0))
    metrics = {"eval/loss": loss, "eval/perplexity": float(np.exp(min(loss, 80.0))),
               "eval/tokens": float(sums["tokens"])}
    artifacts = {"per_position_loss_sum": np.asarray(sums["pos_sum"]).tolist(),
                 "per_position_count": np.asarray(sums["pos_count"]).tolist()}
    return metrics, artifacts


def build_step(cfg):
    """(model, optimizer, step_fn) from a config, without touching data."""
    model = Decoder(ModelConfig.from_config(cfg.model))
    tx, schedule = optim.make_optimizer(cfg.optim, cfg.train.steps)
    loss_fn = make_loss_fn(model, cfg.loss)
    step_fn = make_train_step(loss_fn, tx, schedule, cfg.optim.grad_accum,
                              grad_fn=make_grad_fn(model, loss_fn))
    return model, tx, step_fn


def build(cfg) -> Trainer:
    corpus, tokenizer = pipeline.prepare(cfg.data)
    if cfg.model.vocab_size < tokenizer.vocab_size:
        raise ConfigError(f"model.vocab_size={cfg.model.vocab_size} is smaller than the "
                          f"tokenizer's {tokenizer.vocab_size}; raise model.vocab_size")
    model, tx, step_fn = build_step(cfg)
    model_cfg = model.cfg
    pc, pi = jax.process_count(), jax.process_index()
    train_iter = pipeline.make_iterator(cfg.data, corpus, tokenizer, "train",
                                        process_index=pi, process_count=pc)

    def eval_batches():
        return pipeline.make_iterator(cfg.data, corpus, tokenizer, "validation",
                                      process_index=pi, process_count=pc)

    return Trainer(
        config=cfg, model=model, tx=tx, step_fn=step_fn, train_iter=train_iter,
        batch_axes=BATCH_AXES, tokens_per_step=cfg.data.batch_size * cfg.data.seq_len,
        flops_per_token=train_flops_per_token(model_cfg, cfg.data.seq_len),
        eval_fn=make_eval_fn(model, cfg.data.seq_len), eval_batches=eval_batches,
        summarize_eval=summarize_eval, tokenizer=tokenizer,
        init_params=params_loader(cfg, model))
