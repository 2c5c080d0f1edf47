"""Preference optimisation: DPO (+ cDPO, Llama 3 options), IPO, SimPO, ORPO, NPO, KTO.

    kyx train --config configs/dpo.py:tiny --workdir runs/dpo --config.init_from=runs/sft

``loss.name`` picks the objective from ``PREFERENCE_LOSSES`` (kyx/objectives/
preference.py); its metadata says which records it reads (pairs, or KTO feedback) and
whether it needs a reference. The reference policy is the initial policy (``init_from``
params, else the seeded fresh init):

* ``reference="frozen"``: a frozen model ``ref`` in the train state, sharded like the
  policy, run forward (no gradient) in every step with the policy's RNG streams (so with
  attention reuse or router jitter on it sees the same draws, and DPO = log 2 at step 0),
  and saved with checkpoints;
* ``reference="precomputed"``: its log-probs computed in one ordered, deterministic pass
  and cached next to the dataset (kyx/train/logprobs.py); batches carry
  ``ref_<seq>_logps``.

Both give the same loss when the model has no training-time randomness. Validation
always uses precomputed reference log-probs.
"""
from __future__ import annotations

import jax.numpy as jnp

from kyx import sharding
from kyx.data import pipeline
from kyx.data import preference as data_pref
from kyx.errors import ConfigError
from kyx.logs import get_logger
from kyx.model.config import ModelConfig
from kyx.model.transformer import Decoder
from kyx.objectives import preference as pref
from kyx.train import posttrain
from kyx.train.base import Trainer, make_trainer, single_model_step
from kyx.train.forward import LossContext
from kyx.train.logprobs import reference_table, sequence_logps
from kyx.train.state import ModelSpec

log = get_logger(__name__)
REFERENCES = ("frozen", "precomputed")


def default_config():
    cfg = posttrain.base_config("dpo")
    cfg.loss = pref.default_config()
    cfg.reference = "frozen"      # "frozen" | "precomputed"
    return cfg


def objective(cfg):
    """The registry entry of ``loss.name`` (validated with the rest of the loss config)."""
    pref.check_config(cfg.loss)
    if cfg.reference not in REFERENCES:
        raise ConfigError(f"reference must be one of {REFERENCES}, got {cfg.reference!r}")
    return pref.PREFERENCE_LOSSES.get(cfg.loss.name)


def uses_frozen_reference(cfg) -> bool:
    return objective(cfg).needs_reference and cfg.reference == "frozen"


def make_loss_fn(model, cfg, use_frozen: bool):
    """loss_fn(params, batch, ctx). The frozen reference is ``ctx.models["ref"]``; without
    it, reference log-probs come from the batch."""
    entry, loss_cfg = objective(cfg), cfg.loss
    names = data_pref.SEQUENCES[entry.records]

    def loss_fn(params, batch, ctx):
        pol, fwd = sequence_logps(model, params, batch, names, loss_cfg.mask_format_tokens,
                                  ctx.rng, ctx.probes)
        ref = None
        if entry.needs_reference and use_frozen:
            ref, _ = sequence_logps(model, ctx.models["ref"], batch, names,
                                    loss_cfg.mask_format_tokens, ctx.rng)
        elif entry.needs_reference:
            ref = {n: batch[f"ref_{n}_logps"] for n in names}
        loss, metrics = pref.preference_loss(loss_cfg, pol, ref, batch)
        w = batch["weight"]
        for n in names:
            metrics[f"logps/{n}"] = jnp.sum(pol[n] * w) / jnp.maximum(jnp.sum(w), 1.0)
        loss = loss + fwd.aux_loss
        return loss, {**metrics, **fwd.metrics, "loss": loss}
    return loss_fn


def make_eval_fn(model, cfg):
    """Weighted sums of the objective's metrics over a validation batch (deterministic,
    precomputed reference)."""
    loss_fn = make_loss_fn(model, cfg, use_frozen=False)

    def eval_fn(params, batch):
        _, metrics = loss_fn(params["policy"], batch, LossContext())
        n = jnp.sum(batch["weight"])
        return {"n": n, **{k: v * n for k, v in metrics.items()}}
    return eval_fn


def summarize_eval(sums):
    n = max(float(sums["n"]), 1.0)
    return {f"eval/{k}": float(v) / n for k, v in sums.items() if k != "n"}, {}


def build_step(cfg):
    """The StepSpec from a config, without touching data."""
    model = Decoder(ModelConfig.from_config(cfg.model))
    frozen = uses_frozen_reference(cfg)
    init = posttrain.initial_params_loader(cfg, model)
    ref = {"ref": ModelSpec(model, None, init)} if frozen else {}
    return single_model_step(cfg, model, make_loss_fn(model, cfg, frozen), init=init,
                             frozen=ref)


def build(cfg) -> Trainer:
    entry = objective(cfg)
    step = build_step(cfg)
    records, tokenizer, template = posttrain.prepare(cfg, entry.records)
    policy = step.models["policy"]
    frozen = "ref" in step.models
    if entry.needs_reference and not frozen and _stochastic(policy.module.cfg):
        log.warning("reference=precomputed: the reference log-probs are computed without "
                    "the training-time randomness (attention reuse / router jitter) that the "
                    "policy forward uses, so the loss does not start at its reference value; "
                    "use reference=frozen for matching draws")
    mesh, rules = sharding.mesh_from_config(cfg.mesh)
    split = pipeline.process_split()

    def table(name):
        if not entry.needs_reference or not len(records.source(name)):
            return None
        return reference_table(cfg, policy.module, policy.init, records, template, tokenizer,
                               name, mesh, rules)

    train_table = None if frozen else table("train")
    val_table = table("validation")
    pairs = lambda name, ref_table: data_pref.make_pair_iterator(  # noqa: E731
        cfg.data, records, template, name, ref_table=ref_table,
        ref_columns=entry.needs_reference, **split)
    evals = {}
    if len(records.source("validation")):
        evals = dict(eval_fn=make_eval_fn(policy.module, cfg), summarize_eval=summarize_eval,
                     eval_batches=lambda: pairs("validation", val_table))
    return make_trainer(
        cfg, step, train_iter=pairs("train", train_table),
        batch_axes=data_pref.pair_axes(entry.records, entry.needs_reference),
        sequences_per_row=len(data_pref.SEQUENCES[entry.records]),
        flops_factor=4 / 3 if frozen else 1.0, tokenizer=tokenizer, **evals)


def _stochastic(model_cfg) -> bool:
    return model_cfg.attn_reuse_prob > 0 or (model_cfg.is_moe and model_cfg.moe_router_jitter > 0)
