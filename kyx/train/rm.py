"""Reward model: scalar head on a dense or MoE decoder, Bradley–Terry loss.

    kyx train --config configs/rm.py:tiny --workdir runs/rm --config.init_from=runs/tiny

The reward of (prompt, response) is the value head at the response's last token (its
end of turn; kyx/model/reward.py). Loss −log σ(r_c − r_r − m) with ``loss.margin`` =
``none`` | ``small`` | ``large`` picking Llama 2's margin m by the pair's ``strength``
(kyx/objectives/preference.py); with an MoE backbone (``model.moe_num_experts > 0``, the
KwaiYii-style MoE reward model) the router losses are added. ``init_from`` loads a
pretraining (or SFT) run into the backbone; the head starts fresh. Metrics: accuracy
(r_c > r_r) and mean margin r_c − r_r, on train batches and held-out pairs. The trained
model is named ``reward`` in the train state.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections

from kyx import sharding
from kyx.data import pipeline
from kyx.data import preference as data_pref
from kyx.model.config import ModelConfig
from kyx.model.params import init_params
from kyx.model.reward import RewardModel, last_token_values, with_backbone
from kyx.model.transformer import Decoder
from kyx.objectives import preference as pref
from kyx.train import posttrain
from kyx.train.base import Trainer, make_trainer, single_model_step
from kyx.train.forward import forward_with_aux
from kyx.train.init_from import load_params
from kyx.train.state import model_init_key

NAME = "reward"


def default_config():
    cfg = posttrain.base_config("rm")
    cfg.loss = ml_collections.ConfigDict({"margin": "none"})  # none | small | large
    return cfg


def rewards(model, params, batch, rng=None, probes=None):
    """(r_chosen_b, r_rejected_b, Forward)."""
    inputs = {k: jnp.concatenate([batch[f"chosen_{k}"], batch[f"rejected_{k}"]], axis=0)
              for k in ("tokens", "segment_ids")}
    fwd = forward_with_aux(model, params, inputs, rng, probes)
    r_b = last_token_values(fwd.out, inputs["segment_ids"])
    b = batch["chosen_tokens"].shape[0]
    return r_b[:b], r_b[b:], fwd


def make_loss_fn(model, loss_cfg):
    pref.strength_margin(jnp.zeros((1,), jnp.int32), loss_cfg.margin)  # validate the name

    def loss_fn(params, batch, ctx):
        r_c, r_r, fwd = rewards(model, params, batch, ctx.rng, ctx.probes)
        margin = pref.strength_margin(batch["strength"], loss_cfg.margin)
        loss, metrics = pref.bradley_terry(r_c, r_r, margin, batch["weight"])
        loss = loss + fwd.aux_loss
        return loss, {**metrics, **fwd.metrics, "loss": loss}
    return loss_fn


def make_eval_fn(model, loss_cfg):
    def eval_fn(params, batch):
        r_c, r_r, _ = rewards(model, params[NAME], batch)
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


def params_loader(cfg, model):
    """Backbone from ``init_from`` plus the seeded fresh head, or None without init_from."""
    if not cfg.get("init_from"):
        return None

    def load():
        mesh, rules = sharding.mesh_from_config(cfg.mesh)
        backbone = load_params(cfg, Decoder(model.cfg))
        fresh = init_params(model, model_init_key(cfg.train.seed, 0), mesh, rules)
        return with_backbone(fresh, backbone)
    return load


def build_step(cfg):
    model = RewardModel(ModelConfig.from_config(cfg.model))
    return single_model_step(cfg, model, make_loss_fn(model, cfg.loss), name=NAME,
                             init=params_loader(cfg, model))


def build(cfg) -> Trainer:
    step = build_step(cfg)  # config errors before any data work
    records, tokenizer, template = posttrain.prepare(cfg, "preference")
    split = pipeline.process_split()
    train_iter = data_pref.make_pair_iterator(cfg.data, records, template, "train", **split)
    evals = {}
    if len(records.source("validation")):
        evals = dict(
            eval_fn=make_eval_fn(step.models[NAME].module, cfg.loss),
            summarize_eval=summarize_eval,
            eval_batches=lambda: data_pref.make_pair_iterator(
                cfg.data, records, template, "validation", **split))
    return make_trainer(cfg, step, train_iter=train_iter,
                        batch_axes=data_pref.pair_axes("preference", with_ref=False),
                        sequences_per_row=2, tokenizer=tokenizer, **evals)
