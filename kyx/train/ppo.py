"""RL from rewards: PPO (InstructGPT / Baichuan 2, with critic warm-up) and GRPO.

    kyx train --config configs/ppo.py:tiny --workdir runs/ppo --config.init_from=runs/sft
    kyx train --config configs/grpo.py:tiny --workdir runs/grpo --config.init_from=runs/sft

Each step takes ``data.batch_size`` prompts (x ``rl.group_size`` samples), rolls them out
with the current policy (kyx/train/rollout.py: KV-cache sampling inside one jit, then the
reward on the host) and, inside one jitted step, runs ``rl.epochs`` x ``rl.minibatches``
updates (ALGORITHMS §9):

* ``ppo``: per-token reward −β·KL(pi_old || ref) + the score at the last token, GAE(γ, λ)
  against value estimates, whitened advantages, the clipped policy objective and the
  clipped value loss; β fixed or adaptive (Ziegler et al., ``rl.kl_target`` > 0). The
  values come from a separate critic ``value`` (``rl.value=critic``: a value-head model
  initialised from the policy or from a reward-model workdir) or from a value head on the
  policy's own backbone (``rl.value=head``: one model, loss + ``rl.value_coef`` x value
  loss). The first ``rl.critic_warmup_steps`` steps update only the value estimate
  (Baichuan 2): the critic alone, or the head alone with the backbone frozen.
* ``grpo``: G samples per prompt, advantages (s − mean) / std within each group, no
  critic, the KL (k3) to the reference added to the loss.

Scores can be normalised by a running mean / std (``rl.reward_norm``) and clipped. The
train state holds ``policy``, the frozen ``ref`` (the initial policy) and, for PPO,
``value``; ``stats`` carries β and the reward moments, so a resumed run continues exactly.
Held-out prompts are evaluated every ``train.eval_every`` steps (and before the first
with ``train.eval_at_start``): ``eval/reward`` (the mean score of one sampled response per
prompt, fixed seed; ``data.eval_batches`` batches of batch_size x group_size prompts), each
reward term, response length and stop rate.
"""
from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from kyx import rewards as rewards_lib
from kyx import sharding
from kyx.checkpoint import workdir as workdir_lib
from kyx.data import pipeline
from kyx.data.prompts import PROMPT_AXES, make_prompt_iterator
from kyx.errors import ConfigError
from kyx.model.config import ModelConfig
from kyx.model.params import init_params
from kyx.model.reward import PolicyWithValue, RewardModel, with_backbone
from kyx.model.transformer import Decoder
from kyx.objectives import lm
from kyx.objectives import rl as rl_obj
from kyx.registry import Registry
from kyx.train import optim, posttrain
from kyx.train.base import StepSpec, Trainer, make_trainer
from kyx.train.forward import forward_with_aux
from kyx.train.hooks import eval_hook
from kyx.train.rollout import EXPERIENCE_AXES, Rollout, policy_logps
from kyx.train.sampling import local_rows
from kyx.train import state as state_lib
from kyx.train.state import ModelSpec, model_init_key
from kyx.train.step import apply_update, compute_grads, keep_subtree, make_grad_fn


@dataclasses.dataclass(frozen=True)
class Algorithm:
    values: bool          # advantages by GAE against value estimates (a critic or a head)
    kl_in_loss: bool      # KL to the reference in the loss (GRPO) instead of the reward


# rl.algorithm -> Algorithm: how advantages are estimated and where the KL goes
ALGORITHMS = Registry("rl.algorithm")
ALGORITHMS.register("ppo")(Algorithm(values=True, kl_in_loss=False))
ALGORITHMS.register("grpo")(Algorithm(values=False, kl_in_loss=True))
VALUES = ("critic", "head")
VALUE_INITS = ("policy", "reward")


def rl_config() -> ml_collections.ConfigDict:
    return ml_collections.ConfigDict({
        "algorithm": "ppo",          # ppo | grpo
        "group_size": 1,             # samples per prompt (GRPO: G >= 2)
        "max_new_tokens": 48,        # response budget (prompts: data.seq_len tokens)
        "temperature": 1.0,          # sampling; log-probs are taken at this temperature
        "top_k": 0,
        "top_p": 1.0,
        "kl_coef": 0.05,             # β: InstructGPT 0.02, Llama 2 0.01; GRPO 0.04
        "kl_estimator": "k1",        # k1 | k3 (kyx/objectives/rl.py)
        "kl_target": 0.0,            # > 0: adaptive β toward this KL per sequence (TRL: 6)
        "kl_horizon": 10000.0,
        "gamma": 1.0,
        "lam": 0.95,
        "whiten_advantages": True,
        "clip_eps": 0.2,             # Baichuan 2: 0.1
        "value_clip": 0.2,
        "entropy_coef": 0.0,
        "epochs": 2,                 # passes over each rollout batch
        "minibatches": 2,            # updates per pass
        "reward_norm": True,         # running mean / std of the scores
        "reward_clip": 5.0,          # |normalised score| cap (0: none)
        "critic_warmup_steps": 0,    # Baichuan 2: value-only updates first (~20)
        "value": "critic",           # critic: a separate model; head: on the policy's backbone
        "value_coef": 0.1,           # value=head: weight of the value loss (TRL: 0.1)
        "value_init": "policy",      # critic from: policy (its backbone + a fresh head) | reward
        "value_workdir": "",         # value_init=reward: RM workdir ('' = reward.model_workdir)
        "eval_seed": 1234,           # sampling seed of the held-out evaluation
    })


def default_config():
    cfg = posttrain.base_config("ppo")
    cfg.rl = rl_config()
    cfg.reward = rewards_lib.default_config()
    cfg.value_optim = optim.default_config()
    return cfg


def algorithm(cfg) -> Algorithm:
    spec = ALGORITHMS.get(cfg.rl.algorithm).fn
    rl = cfg.rl
    rl_obj.KL_ESTIMATORS.get(rl.kl_estimator)
    if rl.group_size < 1 or (not spec.values and rl.group_size < 2):
        raise ConfigError(f"rl.group_size must be >= 1 (GRPO: >= 2), got {rl.group_size}")
    rows = cfg.data.batch_size * rl.group_size
    if rl.minibatches < 1 or rows % rl.minibatches:
        raise ConfigError(f"{rows} rollout rows (data.batch_size x rl.group_size) do not split "
                          f"into rl.minibatches={rl.minibatches}")
    if rl.value_init not in VALUE_INITS:
        raise ConfigError(f"rl.value_init must be one of {VALUE_INITS}, got {rl.value_init!r}")
    if rl.value not in VALUES:
        raise ConfigError(f"rl.value must be one of {VALUES}, got {rl.value!r}")
    if rl.critic_warmup_steps and not spec.values:
        raise ConfigError(f"rl.critic_warmup_steps needs value estimates; "
                          f"rl.algorithm={rl.algorithm!r} has none")
    if rl.max_new_tokens < 1 or rl.epochs < 1:
        raise ConfigError("rl.max_new_tokens and rl.epochs must be >= 1")
    return spec


# ----------------------------------------------------------------------------- models

def _critic(cfg, policy: Decoder, policy_init):
    """(value module, init) per ``rl.value_init``."""
    mesh_rules = lambda: sharding.mesh_from_config(cfg.mesh)  # noqa: E731
    if cfg.rl.value_init == "policy":
        value = RewardModel(policy.cfg)

        def init():
            mesh, rules = mesh_rules()
            fresh = init_params(value, model_init_key(cfg.train.seed, 2), mesh, rules)
            return with_backbone(fresh, policy_init())
        return value, init
    workdir = cfg.rl.value_workdir or cfg.reward.model_workdir
    if not workdir:
        raise ConfigError("rl.value_init=reward needs rl.value_workdir or reward.model_workdir "
                          "(a reward-model workdir)")
    rm_cfg = ModelConfig.from_config(workdir_lib.read_config(workdir).model)
    if rm_cfg.vocab_size != policy.cfg.vocab_size:
        raise ConfigError(f"the critic reads the policy's tokens: {workdir!r} has vocab "
                          f"{rm_cfg.vocab_size}, the policy {policy.cfg.vocab_size}; use "
                          "rl.value_init=policy or a reward model on the policy's tokenizer")
    value = RewardModel(rm_cfg)

    def init():
        mesh, rules = mesh_rules()
        return workdir_lib.load_params(workdir, value, mesh, rules, name="reward")
    return value, init


def _with_head(cfg, policy: PolicyWithValue, init):
    """The initial policy's params under ``backbone`` plus a seeded fresh value head."""
    mesh, rules = sharding.mesh_from_config(cfg.mesh)
    fresh = init_params(policy, model_init_key(cfg.train.seed, 0), mesh, rules)
    return with_backbone(fresh, init())


def build_step(cfg) -> StepSpec:
    spec = algorithm(cfg)
    mcfg = ModelConfig.from_config(cfg.model)
    decoder = Decoder(mcfg)
    init = posttrain.initial_params_loader(cfg, decoder)
    policy, policy_init = decoder, init
    if spec.values and cfg.rl.value == "head":
        policy = PolicyWithValue(mcfg)
        policy_init = functools.partial(_with_head, cfg, policy, init)
    tx, schedule = optim.make_optimizer(cfg.optim, cfg.train.steps)
    models = {"policy": ModelSpec(policy, tx, policy_init), "ref": ModelSpec(decoder, None, init)}
    if spec.values and cfg.rl.value == "critic":
        value, value_init = _critic(cfg, decoder, init)
        value_tx, _ = optim.make_optimizer(cfg.value_optim, cfg.train.steps)
        models["value"] = ModelSpec(value, value_tx, value_init)
    stats = {"kl_coef": cfg.rl.kl_coef, "reward_count": 0.0, "reward_mean": 0.0,
             "reward_m2": 0.0}
    return StepSpec(models, make_step(cfg, spec, models, schedule), stats)


# ----------------------------------------------------------------------------- the step

def _masked_mean(x, mask):
    return jnp.sum(x * mask) / jnp.maximum(jnp.sum(mask), 1.0)


def make_step(cfg, spec: Algorithm, models: dict, schedule):
    """step(state, experience, rng) -> (state, metrics): advantages, then
    ``epochs x minibatches`` updates of the policy (and critic) in one lax.scan."""
    rl = cfg.rl
    kl_fn = rl_obj.KL_ESTIMATORS.get(rl.kl_estimator).fn
    policy, temp = models["policy"].module, float(rl.temperature)
    critic, head = "value" in models, spec.values and "value" not in models

    def policy_loss(params, mb, ctx):
        logp, fwd = policy_logps(policy, params, mb, temp, ctx.rng, ctx.probes)
        loss, m = rl_obj.ppo_policy_loss(logp, mb["old_logp"], mb["adv"], mb["mask"],
                                         rl.clip_eps)
        if spec.kl_in_loss:
            kl = _masked_mean(kl_fn(logp, mb["ref_logp"]), mb["mask"])
            loss, m = loss + mb["kl_coef"] * kl, {**m, "kl_loss": kl}
        if rl.entropy_coef:
            ent = _masked_mean(lm.entropy(fwd.out.astype(jnp.float32) / (temp or 1.0)),
                               mb["mask"])
            loss, m = loss - rl.entropy_coef * ent, {**m, "entropy": ent}
        if head:  # during the warm-up only the value loss trains (the backbone is frozen)
            vloss, vm = rl_obj.ppo_value_loss(fwd.aux["values_bt"] * mb["mask"], mb["values"],
                                              mb["returns"], mb["mask"], rl.value_clip)
            loss = jnp.where(mb["warm"], 0.0, loss) + rl.value_coef * vloss
            m = {**m, **vm}
        return loss + fwd.aux_loss, {**m, **fwd.metrics}

    grads = {"policy": make_grad_fn(policy, policy_loss)}
    if critic:
        value = models["value"].module

        def value_loss(params, mb, ctx):
            fwd = forward_with_aux(value, params, mb, ctx.rng, ctx.probes)
            loss, m = rl_obj.ppo_value_loss(fwd.out * mb["mask"], mb["values"], mb["returns"],
                                            mb["mask"], rl.value_clip)
            return loss + fwd.aux_loss, {**m, **fwd.metrics}
        grads["value"] = make_grad_fn(value, value_loss)
    txs = {name: models[name].tx for name in grads}

    def update(name, model, mb, key):
        (loss, m), g = compute_grads(grads[name], model.params, mb, key, {})
        new, upd = apply_update(model, g, loss, txs[name])
        return new, {f"{name}/{k}": v for k, v in {**m, "loss": loss, **upd}.items()}

    def step(state, exp, rng):
        w_b = exp["weight"]
        mask = exp["mask"] * w_b[:, None]
        stats = dict(state.stats)
        score = exp["score"]
        if rl.reward_norm:
            count, mean, m2 = rl_obj.update_moments(stats["reward_count"], stats["reward_mean"],
                                                    stats["reward_m2"], score, w_b)
            stats.update(reward_count=count, reward_mean=mean, reward_m2=m2)
            score = (score - mean) * jax.lax.rsqrt(m2 / jnp.maximum(count, 1.0) + 1e-8)
        if rl.reward_clip:
            score = jnp.clip(score, -rl.reward_clip, rl.reward_clip)
        kl_coef = stats["kl_coef"]
        kl_bt = kl_fn(exp["old_logp"], exp["ref_logp"]) * mask
        if spec.values:
            rewards = rl_obj.shaped_rewards(score, kl_bt, mask, 0.0 if spec.kl_in_loss
                                            else kl_coef)
            adv, returns = rl_obj.gae(rewards, exp["values"], mask, rl.gamma, rl.lam)
        else:
            adv = rl_obj.group_advantages(score, rl.group_size)[:, None] * mask
            returns = jnp.zeros_like(adv)
        if rl.whiten_advantages and spec.values:
            adv = rl_obj.whiten(adv, mask)
        data = {k: exp[k] for k in ("tokens", "targets", "segment_ids", "positions",
                                    "old_logp", "ref_logp", "values")}
        data.update(mask=mask, adv=adv, returns=returns)
        rows = mask.shape[0]
        order = jnp.concatenate([jax.random.permutation(jax.random.fold_in(rng, e), rows)
                                 for e in range(rl.epochs)])
        order = order.reshape(rl.epochs * rl.minibatches, rows // rl.minibatches)
        warm = state.step < rl.critic_warmup_steps

        def minibatch(models_, xs):
            idx, i = xs
            mb = {**jax.tree.map(lambda x: x[idx], data), "kl_coef": kl_coef, "warm": warm}
            key = jax.random.fold_in(rng, 1000 + i)
            out, metrics = dict(models_), {}
            if critic:  # warm-up: the policy update is skipped altogether
                skip = lambda m: (m, jax.tree.map(jnp.zeros_like, jax.eval_shape(  # noqa: E731
                    lambda: update("policy", m, mb, key)[1])))
                out["policy"], metrics["policy"] = jax.lax.cond(
                    warm, skip, lambda m: update("policy", m, mb, key), models_["policy"])
                out["value"], metrics["value"] = update("value", models_["value"], mb,
                                                        jax.random.fold_in(key, 1))
            else:
                out["policy"], metrics["policy"] = update("policy", models_["policy"], mb, key)
                if head:  # warm-up: the head moves, the backbone (the policy) does not
                    out["policy"] = keep_subtree(out["policy"], models_["policy"], "backbone",
                                                 warm)
            return out, {k: v for part in metrics.values() for k, v in part.items()}

        trained = {n: state.models[n] for n in grads}
        trained, per_update = jax.lax.scan(minibatch, trained,
                                           (order, jnp.arange(order.shape[0])))
        metrics = jax.tree.map(jnp.mean, per_update)
        n_rows = jnp.maximum(jnp.sum(w_b), 1.0)
        seq_kl = jnp.sum(jnp.sum(kl_bt, axis=1) * w_b) / n_rows
        stats["kl_coef"] = rl_obj.adaptive_kl(kl_coef, seq_kl, rl.kl_target, n_rows,
                                              rl.kl_horizon)
        wmean = lambda x: jnp.sum(x * w_b) / n_rows  # noqa: E731
        metrics.update({
            "loss": metrics["policy/loss"], "lr": schedule(state.step),
            "skipped": jnp.maximum(metrics["policy/skipped"],
                                   metrics.get("value/skipped", 0.0)),
            "kl": seq_kl, "kl_coef": kl_coef, "critic_warmup": warm.astype(jnp.float32),
            "reward/score": wmean(exp["score"]), "reward/normalized": wmean(score),
            "response_len": wmean(exp["response_len"]), "stopped": wmean(exp["stopped"]),
            "advantage/std": jnp.sqrt(_masked_mean(jnp.square(adv), mask)),
            **{k.replace("score/", "reward/"): wmean(v) for k, v in exp.items()
               if k.startswith("score/")}})
        return state.replace(step=state.step + 1, models={**state.models, **trained},
                             stats=stats), metrics
    return step


# ----------------------------------------------------------------------------- build

def evaluate_policy(rollout: Rollout, params, batches, seed: int) -> dict:
    """Mean score (and each term, response length, stop rate) of sampled responses on
    held-out prompt batches, with a fixed sampling seed."""
    sums: dict[str, float] = {}
    for i, prompts in enumerate(batches):
        _, total, parts, lengths = rollout.sample(params, prompts, jax.random.fold_in(
            jax.random.key(seed), i), "validation")
        w = local_rows(prompts["weight"])
        values = {"reward": total, "response_len": lengths,
                  "stopped": (lengths < rollout.sampler.max_new_tokens).astype(np.float32),
                  **{f"reward/{k}": v for k, v in parts.items()}}
        for k, v in {**values, "n": np.ones_like(w)}.items():
            sums[k] = sums.get(k, 0.0) + float(np.sum(np.asarray(v, np.float64) * w))
    sums = _process_sum(sums)
    n = max(sums.pop("n", 0.0), 1.0)
    return {f"eval/{k}": v / n for k, v in sums.items()}


def _process_sum(sums: dict) -> dict:
    if jax.process_count() == 1:
        return sums
    from jax.experimental import multihost_utils
    keys = sorted(sums)
    total = multihost_utils.process_allgather(np.asarray([sums[k] for k in keys])).sum(0)
    return dict(zip(keys, total.tolist()))


def build(cfg) -> Trainer:
    step = build_step(cfg)
    records, tokenizer, template = posttrain.prepare(cfg, "sft")
    mesh, rules = sharding.mesh_from_config(cfg.mesh)
    reward = rewards_lib.build(cfg.reward, mesh, rules)
    shardings, _ = state_lib.state_shardings(step.models, mesh, rules, step.stats)
    prompt_text = functools.lru_cache(maxsize=None)(
        lambda split, i: records.source(split)[i]["prompt"])
    rollout = Rollout(cfg.rl, step.models, shardings, mesh, rules, tokenizer,
                      template.stop_id, reward, prompt_text)
    split = pipeline.process_split()
    rows = cfg.data.batch_size * cfg.rl.group_size
    eval_data = cfg.data.copy_and_resolve_references()
    eval_data.batch_size = rows  # evaluation: one sample for each of `rows` prompts a batch
    hooks = []
    if len(records.source("validation")):
        prompt_sh = {k: sharding.named_sharding(v, mesh, rules) for k, v in PROMPT_AXES.items()}

        def evaluate(run):
            batches = (run.global_batch(b, prompt_sh) for b in make_prompt_iterator(
                eval_data, records, template, "validation", **split))
            return evaluate_policy(rollout, run.state.params("policy"), batches,
                                   cfg.rl.eval_seed)
        hooks.append(eval_hook(evaluate, cfg.train.eval_every,
                               at_start=cfg.train.eval_at_start))
    terms = [name for name, _ in rewards_lib.parse_terms(cfg.reward.terms)]
    axes = {**EXPERIENCE_AXES, **{f"score/{t}": EXPERIENCE_AXES["score"] for t in terms}}
    seq = cfg.data.seq_len + cfg.rl.max_new_tokens
    return make_trainer(
        cfg, step, train_iter=make_prompt_iterator(cfg.data, records, template, "train",
                                                   group_size=cfg.rl.group_size, **split),
        batch_axes=axes,
        sequences_per_row=cfg.rl.group_size * seq / cfg.data.seq_len,
        flops_factor=(2.0 if "value" in step.models else 1.0) * cfg.rl.epochs,
        tokenizer=tokenizer,
        hooks=hooks, rollout=rollout, rollout_axes=PROMPT_AXES,
        batch_rows=rows)
