"""PPO and GRPO (kyx/train/ppo.py): sampled log-probs equal a full forward, critic warm-up
leaves the policy bit-identical, 8 devices equal 1 for a PPO and a GRPO step, a critic
initialised from a reward model, ExCP, and kill -9 mid-PPO resumes exactly."""
import json
import math

import jax
import numpy as np
import pytest

from kyx import sharding
from kyx.metrics import read_metrics
from kyx.train import loop, registry
from kyx.train import state as state_lib

RL = ["data.seq_len=48", "rl.max_new_tokens=16", "data.batch_size=8", "train.eval_every=2",
      "optim.lr=1e-3", "value_optim.lr=1e-3", "optim.warmup_steps=0",
      "value_optim.warmup_steps=0"]


@pytest.fixture(scope="module")
def rl_config(post_overrides, pretrained, post_config):
    """rl_config(name, extra) -> configs/<name>.py:tiny on the tiny pretrained model."""
    return lambda name, extra=(): post_config(name, post_overrides + RL + [
        f"init_from={pretrained}", *extra])


def _host(tree):
    return jax.tree.map(np.asarray, jax.device_get(tree))


def experience(trainer, n: int, seed: int = 0):
    """n experience batches from the trainer's rollout of its initial state (host numpy)."""
    cfg = trainer.config
    mesh, rules = sharding.mesh_from_config(cfg.mesh)
    state = state_lib.create(trainer.models, mesh, rules, cfg.train.seed, trainer.stats)
    p_sh = {k: sharding.named_sharding(v, mesh, rules) for k, v in trainer.rollout_axes.items()}
    out = []
    with sharding.use_mesh(mesh, rules):
        for i in range(n):
            prompts = {k: jax.device_put(v, p_sh[k]) for k, v in next(trainer.train_iter).items()}
            out.append(_host(trainer.rollout(state, prompts, jax.random.key(seed + i))))
    return out


def test_sampled_logprobs_equal_full_forward_and_rewards_are_recorded(rl_config):
    trainer = registry.build(rl_config("ppo"))
    exp, = experience(trainer, 1)
    mask = exp["mask"] > 0
    assert mask.sum() > 0 and set(exp) >= {"score", "score/parses", "values", "ref_logp"}
    np.testing.assert_allclose(exp["sample_logp"][mask], exp["old_logp"][mask], atol=1e-5)
    np.testing.assert_array_equal(exp["old_logp"], exp["ref_logp"])  # policy == ref at start
    # the mask covers exactly the sampled response tokens (end of turn when sampled)
    np.testing.assert_array_equal(mask.sum(1), exp["response_len"])
    assert set(np.unique(exp["score"])) <= {0.0, 1.0}


# GRPO: Adam's eps = 1e-6 here, because a few embedding rows of tokens the tiny policy
# almost never emits get gradients ~1e-8, which eps = 1e-8 turns into full-size steps
# whose sign is rounding noise of the layout; the comparison is of the step, not of that
@pytest.mark.parametrize("name,extra", [("ppo", []), ("grpo", ["optim.eps=1e-6"]),
                                        ("ppo", ["rl.value=head"])],
                         ids=["ppo", "grpo", "ppo_value_head"])
def test_rl_step_eight_devices_equal_one(name, extra, rl_config, eight_vs_one):
    # a reward that varies with the response (a fresh tiny policy never writes valid code,
    # and all-equal scores leave only rounding noise for Adam to amplify)
    trainer = registry.build(rl_config(name, ["rl.epochs=2", "rl.minibatches=2",
                                              "reward.terms=length", "reward.max_chars=8",
                                              *extra]))
    batches = experience(trainer, 2)
    (m1, _), _ = eight_vs_one(trainer, batches, ("dp", "fsdp", "fsdp_tp"))
    assert all(math.isfinite(m["loss"]) for m in m1)
    head = "rl.value=head" in extra
    assert ("value/loss" in m1[0]) == (name == "ppo" and not head)
    assert ("policy/value_loss" in m1[0]) == head


def test_critic_warmup_leaves_the_policy_bit_identical(rl_config):
    """...and the adaptive KL coefficient follows its recurrence across steps."""
    from kyx.objectives.rl import adaptive_kl
    trainer = registry.build(rl_config("ppo", ["rl.critic_warmup_steps=2", "rl.kl_target=0.01",
                                               "rl.kl_horizon=100"]))
    batches = experience(trainer, 3)
    mesh, rules = sharding.mesh_from_config(trainer.config.mesh)
    state = state_lib.create(trainer.models, mesh, rules, 0, trainer.stats)
    start = _host(state.models)
    ax = {k: sharding.named_sharding(v, mesh, rules) for k, v in trainer.batch_axes.items()}
    step = jax.jit(trainer.step_fn)
    seen = []
    with sharding.use_mesh(mesh, rules):
        for i, b in enumerate(batches):
            beta = float(state.stats["kl_coef"])
            state, m = step(state, {k: jax.device_put(v, ax[k]) for k, v in b.items()},
                            jax.random.key(i))
            seen.append((_host(state.models), _host(m)))
            assert float(m["kl_coef"]) == beta
            want = adaptive_kl(beta, float(m["kl"]), 0.01, float(b["weight"].sum()), 100.0)
            np.testing.assert_allclose(float(state.stats["kl_coef"]), want, rtol=1e-6)
    same = lambda a, b: all(np.array_equal(x, y)  # noqa: E731
                            for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))
    for models, m in seen[:2]:
        assert m["critic_warmup"] == 1.0
        assert same(models["policy"], start["policy"])      # params and Adam state
        assert not same(models["value"].params, start["value"].params)
    assert seen[2][1]["critic_warmup"] == 0.0
    assert not same(seen[2][0]["policy"].params, start["policy"].params)


def test_critic_from_a_reward_model_and_rm_reward(rl_config, reward_model):
    from kyx.checkpoint.workdir import load_params
    from kyx.rewards.reward_model import RewardModelScorer

    cfg = rl_config("ppo", ["rl.value_init=reward", f"reward.model_workdir={reward_model}",
                            "reward.terms=rm:1,parses:0.5"])
    trainer = registry.build(cfg)
    mesh, rules = sharding.single_device_mesh(), sharding.get_rules("dp")
    value = trainer.models["value"]
    rm = load_params(reward_model, value.module, mesh, rules, name="reward")
    for a, b in zip(jax.tree.leaves(_host(value.init())), jax.tree.leaves(_host(rm))):
        np.testing.assert_array_equal(a, b)
    exp, = experience(trainer, 1)
    np.testing.assert_allclose(exp["score"], exp["score/rm"] + 0.5 * exp["score/parses"],
                               rtol=1e-6)
    # the rm term equals the reward model run directly on the same texts
    scorer = RewardModelScorer(reward_model, mesh, rules, batch_size=3)
    one = scorer(["def f(x):\n    \"\"\"Add one.\"\"\""], ["    return x + 1"])
    alone = RewardModelScorer(reward_model, mesh, rules, batch_size=1)(
        ["def f(x):\n    \"\"\"Add one.\"\"\""], ["    return x + 1"])
    np.testing.assert_allclose(one, alone, atol=1e-5)


def _rows(workdir):
    return {r["step"]: {k: v for k, v in r.items() if k.startswith("train/")}
            for r in read_metrics(workdir) if "train/loss" in r}


@pytest.mark.slow
def test_ppo_sigkill_resume_reproduces_uninterrupted_metrics(post_overrides, pretrained,
                                                             tmp_path, kill_and_resume):
    args = post_overrides + RL + [f"init_from={pretrained}", "train.steps=6",
                                  "checkpoint.every=2", "train.eval_every=100",
                                  "rl.critic_warmup_steps=1"]
    ref, killed = kill_and_resume("ppo", tmp_path, args, 5)  # checkpoint 4 is committed
    got, want = _rows(killed), _rows(ref)
    assert sorted(got) == list(range(1, 7))
    for s in want:
        assert got[s] == want[s], s  # every train metric, bit-exact


@pytest.mark.slow
def test_grpo_with_excp_resumes_from_a_compressed_step(rl_config, tmp_path):
    excp = ["checkpoint.excp.enabled=true", "checkpoint.every=2", "train.eval_every=100",
            "optim.schedule=constant"]
    loop.run(registry.build(rl_config("grpo", excp + ["train.steps=6"])), str(tmp_path))
    from kyx.checkpoint.excp import ExcpChain
    chain = ExcpChain(str(tmp_path / "excp"))
    assert chain.steps() == [2, 4, 6]
    names = set(chain.reconstruct(2)[0])
    assert names and all(n.startswith("policy/") for n in names)  # ref is frozen
    loop.run(registry.build(rl_config("grpo", excp + ["train.steps=6",
                                                      "checkpoint.resume_step=2"])),
             str(tmp_path))
    rows = _rows(tmp_path)
    assert sorted(rows) == list(range(1, 7))
    assert all(math.isfinite(r["train/loss"]) for r in rows.values())
    stats = json.loads(open(tmp_path / "config.json").read())["rl"]
    assert stats["algorithm"] == "grpo"


def test_bad_rl_configs_fail_clearly(rl_config):
    from kyx.errors import ConfigError
    for bad, match in [(["rl.algorithm=ppg"], "did you mean ppo"),
                       (["rl.kl_estimator=k2"], "k1, k3"),
                       (["rl.minibatches=3"], "do not split"),
                       (["reward.terms=parse"], "did you mean parses"),
                       (["rl.algorithm=grpo", "rl.group_size=1"], "group_size")]:
        with pytest.raises(ConfigError, match=match):
            registry.build(rl_config("ppo", bad))


def test_ai_judge_scores_by_the_answer_probability(pretrained):
    """p(Yes) / (p(Yes) + p(No)) at the token after the rubric, from the judge's own
    forward pass (here a kyx workdir; HF directories load the same way)."""
    import kyx
    from kyx.rewards.judge import AIJudge

    judge = AIJudge(pretrained, "Q: {prompt} A: {response} OK?", "Yes", "No", batch_size=2)
    prompts, responses = ["def f():", "def g(x):", "def h():"], ["  return 1", "x", ""]
    got = judge(prompts, responses)
    model = kyx.load(pretrained)
    yes, no = (judge._answer_id(a) for a in ("Yes", "No"))
    for p, r, g in zip(prompts, responses, got):
        z = model.logits(judge.ids(p, r))[0, -1]
        np.testing.assert_allclose(g, 1 / (1 + np.exp(z[no] - z[yes])), atol=1e-5)
    assert np.all((got > 0) & (got < 1))


@pytest.mark.slow
def test_value_head_warmup_freezes_the_backbone_and_kyx_load_reads_the_policy(rl_config,
                                                                            tmp_path):
    """rl.value=head: the values come from the policy's own backbone; during the warm-up
    only the head moves; kyx.load of the run gives the policy (the backbone) as a Decoder."""
    import kyx
    cfg = rl_config("ppo", ["rl.value=head", "rl.critic_warmup_steps=2", "train.steps=3",
                            "checkpoint.every=1", "reward.terms=length",
                            "reward.max_chars=8", "train.eval_every=100"])
    loop.run(registry.build(cfg), str(tmp_path))
    from kyx.checkpoint.manager import Checkpointer
    from kyx.model.reward import PolicyWithValue
    from kyx.checkpoint.workdir import load_params
    mesh, rules = sharding.single_device_mesh(), sharding.get_rules("dp")
    module = PolicyWithValue(kyx.load(str(tmp_path)).model.cfg)
    params = {s: _host(load_params(str(tmp_path), module, mesh, rules, s))
              for s in Checkpointer(str(tmp_path / "checkpoints"), read_only=True).steps()}
    steps = sorted(params)
    assert steps[-1] == 3
    first, warm_end, last = params[steps[0]], params[2], params[3]
    same = lambda a, b: all(np.array_equal(x, y)  # noqa: E731
                            for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))
    assert same(first["backbone"], warm_end["backbone"])          # frozen in the warm-up
    assert not np.array_equal(first["value_kernel"], warm_end["value_kernel"])
    assert not same(warm_end["backbone"], last["backbone"])       # then the policy moves
    loaded = kyx.load(str(tmp_path))
    assert same(_host(loaded.params), last["backbone"])
    assert isinstance(loaded.generate("def f(", max_tokens=4, temperature=0.0), str)
