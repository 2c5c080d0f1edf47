"""Reward model: scalar head on a dense or MoE decoder, Bradley–Terry loss.

    kyx train --config configs/rm.py:tiny --workdir runs/rm --config.init_from=runs/tiny

The reward of (prompt, response) is the value head at the response's last token (its
end of turn; kyx/model/reward.py). Loss −log σ(r_c − r_r − m) with ``loss.margin`` =
``none`` | ``small`` | ``large`` picking Llama 2's margin m by the pair's ``strength``
(kyx/objectives/preference.py); with an MoE backbone (``model.moe_num_experts > 0``, the
KwaiYii-style MoE reward model) the router losses are added. ``init_from`` loads a
pretraining (or SFT) run into the backbone; the head starts fresh. Metrics: accuracy
(r_c > r_r) and mean margin r_c − r_r, on train batches and held-out pairs.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections

from kyx.data import preference as data_pref
from kyx.model.config import ModelConfig
from kyx.model.flops import train_flops_per_token
from kyx.model.params import init_params
from kyx.model.reward import RewardModel, last_token_values, with_backbone
from kyx.model.transformer import Decoder
from kyx.objectives import moe as moe_obj
from kyx.objectives import preference as pref
from kyx.train import optim, posttrain
from kyx.train.init_from import load_params
from kyx.train.loop import Trainer
from kyx.train.step import make_train_step


def default_config():
    cfg = posttrain.base_config("rm")
    cfg.loss = ml_collections.ConfigDict({"margin": "none"})  # none | small | large
    return cfg


def rewards(model, params, batch, rngs=None):
    """(r_chosen_b, r_rejected_b, aux)."""
    tokens = jnp.concatenate([batch["chosen_tokens"], batch["rejected_tokens"]], axis=0)
    segs = jnp.concatenate([batch["chosen_segment_ids"], batch["rejected_segment_ids"]], axis=0)
    values_bt, aux = model.apply({"params": params}, tokens, segs, None, rngs=rngs or {})
    r_b = last_token_values(values_bt, segs)
    b = batch["chosen_tokens"].shape[0]
    return r_b[:b], r_b[b:], aux


def make_loss_fn(model, loss_cfg):
    pref.strength_margin(jnp.zeros((1,), jnp.int32), loss_cfg.margin)  # validate the name
    layer_ids = model.cfg.moe_layer_ids

    def loss_fn(params, batch, rng):
        r_c, r_r, aux = rewards(model, params, batch, posttrain.model_rngs(model.cfg, rng))
        margin = pref.strength_margin(batch["strength"], loss_cfg.margin)
        loss, metrics = pref.bradley_terry(r_c, r_r, margin, batch["weight"])
        moe_loss, moe_metrics = moe_obj.moe_loss_and_metrics(aux, layer_ids)
        loss = loss + moe_loss
        return loss, {**metrics, **moe_metrics, "loss": loss}
    return loss_fn


def make_eval_fn(model, loss_cfg):
    def eval_fn(params, batch):
        r_c, r_r, _ = rewards(model, params, batch)
        w = batch["weight"]
        margin = pref.strength_margin(batch["strength"], loss_cfg.margin)
        correct = (r_c > r_r) * w
        by_level = [batch["strength"] == k for k in range(4)]  # Llama 2 reports these
        return {"n": jnp.sum(w), "correct": jnp.sum(correct), "margin": jnp.sum((r_c - r_r) * w),
                "loss": jnp.sum(-jax.nn.log_sigmoid(r_c - r_r - margin) * w),
                "n_level": jnp.stack([jnp.sum(w * m) for m in by_level]),
                "correct_level": jnp.stack([jnp.sum(correct * m) for m in by_level])}
    return eval_fn


def summarize_eval(sums):
    n = max(float(sums["n"]), 1.0)
    out = {"eval/accuracy": float(sums["correct"]) / n, "eval/margin": float(sums["margin"]) / n,
           "eval/loss": float(sums["loss"]) / n, "eval/pairs": float(sums["n"])}
    for k, (c, m) in enumerate(zip(sums["correct_level"], sums["n_level"])):
        if m > 0:
            out[f"eval/accuracy_strength{k}"] = float(c) / float(m)
    return out, {}


def build_step(cfg):
    model = RewardModel(ModelConfig.from_config(cfg.model))
    tx, schedule = optim.make_optimizer(cfg.optim, cfg.train.steps)
    step_fn = make_train_step(make_loss_fn(model, cfg.loss), tx, schedule, cfg.optim.grad_accum)
    return model, tx, step_fn


def params_loader(cfg, model):
    """Backbone from ``init_from`` plus the seeded fresh head, or None without init_from."""
    if not cfg.get("init_from"):
        return None

    def load():
        mesh, rules = posttrain.mesh_and_rules(cfg)
        backbone = load_params(cfg.init_from, Decoder(model.cfg), mesh, rules)
        init_key, _ = jax.random.split(jax.random.key(cfg.train.seed))
        fresh = init_params(model, init_key, mesh, rules)
        return with_backbone(fresh, backbone)
    return load


def build(cfg) -> Trainer:
    records, tokenizer, template = posttrain.prepare(cfg, "preference")
    model, tx, step_fn = build_step(cfg)
    split = posttrain.process_split()
    train_iter = data_pref.make_pair_iterator(cfg.data, records, template, "train", **split)
    eval_kwargs = {}
    if len(records.source("validation")):
        eval_kwargs = dict(
            eval_fn=make_eval_fn(model, cfg.loss), summarize_eval=summarize_eval,
            eval_batches=lambda: data_pref.make_pair_iterator(
                cfg.data, records, template, "validation", **split))
    return Trainer(
        config=cfg, model=model, tx=tx, step_fn=step_fn, train_iter=train_iter,
        batch_axes=data_pref.pair_axes("preference", with_ref=False),
        tokens_per_step=2 * cfg.data.batch_size * cfg.data.seq_len,
        flops_per_token=train_flops_per_token(model.cfg, cfg.data.seq_len),
        tokenizer=tokenizer, init_params=params_loader(cfg, model), **eval_kwargs)
