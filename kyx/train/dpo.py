"""Preference optimisation: DPO (+ cDPO, Llama 3 options), IPO, SimPO, ORPO, NPO, KTO.

    kyx train --config configs/dpo.py:tiny --workdir runs/dpo --config.init_from=runs/sft

``loss.name`` picks the objective (kyx/objectives/preference.py); ``kto`` reads feedback
records, the others preference pairs. The reference policy is the initial policy
(``init_from`` params, else the seeded fresh init):

* ``reference="frozen"``: a copy in ``TrainState.extra["ref"]``, sharded like the policy,
  run forward (no gradient) in every step and saved with checkpoints;
* ``reference="precomputed"``: its log-probs computed in one ordered pass and cached next
  to the dataset (kyx/train/logprobs.py); batches carry ``ref_<seq>_logps``.

Both give the same loss. Validation always uses precomputed reference log-probs (the
eval function sees params only). SimPO and ORPO need no reference.
"""
from __future__ import annotations

import jax.numpy as jnp

from kyx.data import preference as data_pref
from kyx.errors import ConfigError
from kyx.model.config import ModelConfig
from kyx.model.flops import train_flops_per_token
from kyx.model.params import param_shardings
from kyx.model.transformer import Decoder
from kyx.objectives import preference as pref
from kyx.train import optim, posttrain
from kyx.train.logprobs import reference_table, sequence_logps
from kyx.train.loop import Trainer
from kyx.train.step import make_train_step

REFERENCES = ("frozen", "precomputed")


def default_config():
    cfg = posttrain.base_config("dpo")
    cfg.loss = pref.default_config()
    cfg.reference = "frozen"      # "frozen" | "precomputed"
    return cfg


def record_kind(cfg) -> str:
    return "feedback" if cfg.loss.name == "kto" else "preference"


def needs_reference(cfg) -> bool:
    return cfg.loss.name not in pref.REFERENCE_FREE


def _check(cfg) -> None:
    pref.check_config(cfg.loss)
    if cfg.reference not in REFERENCES:
        raise ConfigError(f"reference must be one of {REFERENCES}, got {cfg.reference!r}")


def objective(loss_cfg, kind, pol, ref, batch):
    """(loss, metrics) from policy / reference log-prob sums of a batch."""
    w = batch["weight"]
    if kind == "feedback":
        return pref.kto(pol["response"], ref["response"], pol["kl"], ref["kl"], batch["label"],
                        loss_cfg.beta, loss_cfg.kto_desirable_weight,
                        loss_cfg.kto_undesirable_weight, w)
    return pref.pair_loss(loss_cfg, pol, ref, w)


def make_loss_fn(model, cfg, use_frozen: bool, train: bool = True):
    """loss_fn(params, batch, rng, extra=None); ``train=False``: no training randomness."""
    kind, loss_cfg = record_kind(cfg), cfg.loss
    names = data_pref.SEQUENCES[kind]
    with_ref = needs_reference(cfg)

    def loss_fn(params, batch, rng, extra=None):
        rngs = posttrain.model_rngs(model.cfg, rng) if train else None
        pol, aux = sequence_logps(model, params, batch, names, loss_cfg.mask_format_tokens, rngs)
        ref = None
        if with_ref and use_frozen:
            ref, _ = sequence_logps(model, extra["ref"], batch, names,
                                    loss_cfg.mask_format_tokens)
        elif with_ref:
            ref = {n: batch[f"ref_{n}_logps"] for n in names}
        loss, metrics = objective(loss_cfg, kind, pol, ref, batch)
        w = batch["weight"]
        for n in names:
            metrics[f"logps/{n}"] = jnp.sum(pol[n] * w) / jnp.maximum(jnp.sum(w), 1.0)
        loss = loss + aux["moe_loss"]
        return loss, {**metrics, "loss": loss, "moe_loss": aux["moe_loss"]}
    return loss_fn


def make_eval_fn(model, cfg):
    """Weighted sums of the objective's metrics over a validation batch."""
    loss_fn = make_loss_fn(model, cfg, use_frozen=False, train=False)

    def eval_fn(params, batch):
        _, metrics = loss_fn(params, batch, None)
        n = jnp.sum(batch["weight"])
        return {"n": n, **{k: v * n for k, v in metrics.items()}}
    return eval_fn


def summarize_eval(sums):
    n = max(float(sums["n"]), 1.0)
    return {f"eval/{k}": float(v) / n for k, v in sums.items() if k != "n"}, {}


def build_step(cfg):
    """(model, optimizer, step_fn) from a config, without touching data."""
    _check(cfg)
    model = Decoder(ModelConfig.from_config(cfg.model))
    tx, schedule = optim.make_optimizer(cfg.optim, cfg.train.steps)
    frozen = needs_reference(cfg) and cfg.reference == "frozen"
    step_fn = make_train_step(make_loss_fn(model, cfg, frozen), tx, schedule,
                              cfg.optim.grad_accum, uses_extra=frozen)
    return model, tx, step_fn


def build(cfg) -> Trainer:
    _check(cfg)
    kind = record_kind(cfg)
    records, tokenizer, template = posttrain.prepare(cfg, kind)
    model, tx, step_fn = build_step(cfg)
    mesh, rules = posttrain.mesh_and_rules(cfg)
    params = posttrain.initial_params(cfg, model, mesh, rules)
    with_ref = needs_reference(cfg)
    frozen = with_ref and cfg.reference == "frozen"
    split = posttrain.process_split()

    def table(name):
        if not with_ref or not len(records.source(name)):
            return None
        return reference_table(cfg, model, lambda: params, records, template, tokenizer, name,
                               mesh, rules)

    train_table = None if frozen else table("train")
    val_table = table("validation")
    train_iter = data_pref.make_pair_iterator(cfg.data, records, template, "train",
                                              ref_table=train_table, ref_columns=with_ref,
                                              **split)
    eval_kwargs = {}
    if len(records.source("validation")):
        eval_kwargs = dict(
            eval_fn=make_eval_fn(model, cfg), summarize_eval=summarize_eval,
            eval_batches=lambda: data_pref.make_pair_iterator(
                cfg.data, records, template, "validation", ref_table=val_table,
                ref_columns=with_ref, **split))
    extra = extra_sh = None
    if frozen:
        extra = {"ref": posttrain.copy_params(params, model, mesh, rules)}
        extra_sh = {"ref": param_shardings(model, mesh, rules)[0]}
    seqs = len(data_pref.SEQUENCES[kind])
    flops = train_flops_per_token(model.cfg, cfg.data.seq_len) * (4 / 3 if frozen else 1)
    return Trainer(
        config=cfg, model=model, tx=tx, step_fn=step_fn, train_iter=train_iter,
        batch_axes=data_pref.pair_axes(kind, with_ref),
        tokens_per_step=seqs * cfg.data.batch_size * cfg.data.seq_len, flops_per_token=flops,
        tokenizer=tokenizer, init_params=lambda: params, extra=extra, extra_shardings=extra_sh,
        **eval_kwargs)
