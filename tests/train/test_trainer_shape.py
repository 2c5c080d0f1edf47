"""The trainer shape (docs/architecture.md, "How to add a trainer"), exercised by a trainer
defined in this file: several named models in one state (two trained, one frozen),
several optimizer updates per step inside one jit, a hook of its own, checkpoint and
resume of the whole state (bit-exact), ExCP per trainable model."""
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from kyx import config as config_lib
from kyx.checkpoint.excp import ExcpChain
from kyx.data import pipeline
from kyx.errors import CheckpointError
from kyx.metrics import read_metrics
from kyx.model.config import ModelConfig
from kyx.model.reward import RewardModel
from kyx.model.transformer import Decoder
from kyx.objectives import lm
from kyx.train import loop, optim, pretrain, registry
from kyx.train.base import StepSpec, make_trainer
from kyx.train.forward import LossContext, forward_with_aux
from kyx.train.hooks import Hook
from kyx.train.state import ModelSpec
from kyx.train.step import apply_update, compute_grads, make_grad_fn, split_microbatches

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PRETRAIN = os.path.join(ROOT, "configs", "pretrain.py")
HOOK_STEPS: list[int] = []


# --------------------------------------------------------------------------- the trainer
# policy: LM loss + KL to the frozen `ref`; value: regresses the policy's per-token loss
# (a critic). Each step runs two minibatches, each with one policy and one value update.

def default_config():
    return pretrain.default_config()


def policy_loss(model):
    def loss_fn(params, batch, ctx):
        fwd = forward_with_aux(model, params, batch, ctx.rng, ctx.probes)
        ce, metrics = lm.lm_loss(fwd.out, batch["targets"], batch["loss_mask"], {"name": "ce"})
        ref = forward_with_aux(model, ctx.models["ref"], batch, ctx.rng).out
        logp, ref_logp = jax.nn.log_softmax(fwd.out), jax.nn.log_softmax(ref)
        kl_bt = jnp.sum(jnp.exp(logp) * (logp - ref_logp), axis=-1)
        kl = jnp.sum(kl_bt * batch["loss_mask"]) / jnp.maximum(jnp.sum(batch["loss_mask"]), 1)
        return ce + 0.1 * kl, {"ce": ce, "kl": kl}
    return loss_fn


def value_loss(model, policy_model):
    def loss_fn(params, batch, ctx):
        logits = forward_with_aux(policy_model, ctx.models["policy"], batch).out
        ce_bt, _ = lm.token_cross_entropy(logits, batch["targets"])
        values_bt = forward_with_aux(model, params, batch, ctx.rng).out
        err = jnp.square(values_bt - jax.lax.stop_gradient(ce_bt)) * batch["loss_mask"]
        loss = jnp.sum(err) / jnp.maximum(jnp.sum(batch["loss_mask"]), 1)
        return loss, {}
    return loss_fn


def build_step(cfg):
    mcfg = ModelConfig.from_config(cfg.model)
    policy, value = Decoder(mcfg), RewardModel(mcfg)
    tx, schedule = optim.make_optimizer(cfg.optim, cfg.train.steps)
    models = {"policy": ModelSpec(policy, tx), "value": ModelSpec(value, tx),
              "ref": ModelSpec(policy, None)}  # ref: fresh init of its own (frozen)
    grads = {"policy": make_grad_fn(policy, policy_loss(policy)),
             "value": make_grad_fn(value, value_loss(value, policy))}

    def step(state, batch, rng):
        def minibatch(state, xs):
            mb, i = xs
            metrics = {}
            for name in ("policy", "value"):
                others = {n: jax.lax.stop_gradient(m.params)
                          for n, m in state.models.items() if n != name}
                model = state.models[name]
                (loss, m), g = compute_grads(grads[name], model.params, mb,
                                             jax.random.fold_in(rng, i), others)
                model, upd = apply_update(model, g, loss, tx)
                state = state.replace(models={**state.models, name: model})
                metrics.update({f"{name}/loss": loss, f"{name}/l2_grads": upd["l2_grads"],
                                **{f"{name}/{k}": v for k, v in m.items()}})
                metrics[f"{name}/skipped"] = upd["skipped"]
            return state, metrics
        state, metrics = jax.lax.scan(minibatch, state, (split_microbatches(batch, 2),
                                                         jnp.arange(2)))
        out = jax.tree.map(jnp.mean, metrics)
        out.update(loss=out["policy/loss"], lr=schedule(state.step),
                   skipped=jnp.maximum(out["policy/skipped"], out["value/skipped"]))
        return state.replace(step=state.step + 1), out
    return StepSpec(models, step)


def build(cfg):
    corpus, tokenizer = pipeline.prepare(cfg.data)
    it = pipeline.make_iterator(cfg.data, corpus, tokenizer, "train")
    return make_trainer(cfg, build_step(cfg), train_iter=it, batch_axes=pretrain.BATCH_AXES,
                        tokenizer=tokenizer, hooks=[Hook("record", record_step, every=2)])


def record_step(run):
    HOOK_STEPS.append(run.step)


# --------------------------------------------------------------------------- tests

@pytest.fixture
def two_models(fast_overrides):
    registry.register("two_models", __name__)

    def run(workdir, steps, extra=()):
        cfg = config_lib.load(PRETRAIN + ":tiny", fast_overrides + [
            "trainer=two_models", f"train.steps={steps}", "checkpoint.every=3",
            "optim.schedule=constant",  # the learning rate does not depend on train.steps
            "train.eval_every=100", *extra])
        return loop.run(registry.build(cfg), str(workdir))
    return run


def _losses(workdir, key="train/policy/loss"):
    return {r["step"]: r[key] for r in read_metrics(workdir) if key in r}


@pytest.mark.slow
def test_several_models_updates_hooks_and_bit_exact_resume(two_models, tmp_path,
                                                           fast_overrides):
    HOOK_STEPS.clear()
    two_models(tmp_path / "full", 6)
    assert HOOK_STEPS == [2, 4, 6]
    rows = [r for r in read_metrics(tmp_path / "full") if "train/loss" in r]
    assert [r["step"] for r in rows] == list(range(1, 7))
    for r in rows:
        assert np.isfinite(r["train/policy/loss"]) and np.isfinite(r["train/value/loss"])
        assert r["train/policy/kl"] >= 0 and r["train/skipped"] == 0
    assert rows[-1]["train/value/loss"] < rows[0]["train/value/loss"]  # the critic learns
    # resume: 3 steps, then the same run continued to 6, equals the uninterrupted run
    two_models(tmp_path / "resumed", 3)
    two_models(tmp_path / "resumed", 6)
    for key in ("train/policy/loss", "train/value/loss"):
        assert _losses(tmp_path / "resumed", key) == _losses(tmp_path / "full", key)

    from kyx.checkpoint.workdir import load_params
    from kyx import sharding
    mesh, rules = sharding.single_device_mesh(), sharding.get_rules("dp")
    cfg = config_lib.load_json(tmp_path / "full" / "config.json")
    decoder = Decoder(ModelConfig.from_config(cfg.model))
    start = {n: load_params(str(tmp_path / "full"), decoder, mesh, rules, 3, n)
             for n in ("policy", "ref")}
    end = {n: load_params(str(tmp_path / "full"), decoder, mesh, rules, 6, n)
           for n in ("policy", "ref")}
    same = lambda a, b: all(np.array_equal(x, y) for x, y in  # noqa: E731
                            zip(jax.tree.leaves(a), jax.tree.leaves(b)))
    assert same(start["ref"], end["ref"]) and not same(start["policy"], end["policy"])
    # another trainer on this workdir: a clear error naming both model sets, nothing written
    before = sorted(os.listdir(tmp_path / "full" / "checkpoints"))
    cfg = config_lib.load(PRETRAIN + ":tiny", fast_overrides + ["train.steps=8"])
    with pytest.raises(CheckpointError, match=r"hold models \['policy', 'ref', 'value'\], "
                                              r"this run has \['policy'\]"):
        loop.run(pretrain.build(cfg), str(tmp_path / "full"))
    assert sorted(os.listdir(tmp_path / "full" / "checkpoints")) == before


@pytest.mark.slow
def test_excp_compresses_each_trainable_model_and_resumes(two_models, tmp_path):
    excp = ["checkpoint.excp.enabled=true", "checkpoint.async_save=true"]
    two_models(tmp_path / "run", 9, excp)
    chain = ExcpChain(str(tmp_path / "run" / "excp"))
    assert chain.steps() == [3, 6, 9]
    names = set(chain.reconstruct(3)[0])
    assert any(n.startswith("policy/") for n in names) and any(
        n.startswith("value/") for n in names)
    assert not any(n.startswith("ref/") for n in names)  # frozen: kept by full checkpoints
    two_models(tmp_path / "run", 9, excp + ["checkpoint.resume_step=3"])
    rows = _losses(tmp_path / "run")
    assert sorted(rows) == list(range(1, 10)) and all(np.isfinite(v) for v in rows.values())


def test_hooks_run_in_order_and_on_their_interval():
    from kyx.train.hooks import build_hooks

    class FakeRun:
        class cfg:  # noqa: N801
            class train:  # noqa: N801
                eval_every, log_every = 4, 2

            class checkpoint:  # noqa: N801
                every = 3
        eval_fn = None

    hooks = build_hooks(FakeRun(), [Hook("mine", lambda r: None, every=5, order=60)])
    assert [h.name for h in hooks] == ["mine", "log", "checkpoint", "plot"]  # no eval fn
    due = {h.name: [s for s in range(1, 11) if h.due(s, 10)] for h in hooks}
    assert due == {"mine": [5, 10], "log": [2, 4, 6, 8, 10], "checkpoint": [3, 6, 9, 10],
                   "plot": [10]}


def test_loss_context_defaults_are_deterministic():
    ctx = LossContext()
    assert ctx.rng is None and ctx.probes is None and dict(ctx.models) == {}
