"""DPO family: log 2 at step 0, frozen vs precomputed reference (and resume), 8 devices =
1, and each objective's value at policy = reference on real batches."""
import math
import os

import jax.numpy as jnp
import pytest

from kyx.metrics import read_metrics
from kyx.objectives import preference as pref
from kyx.train import loop, registry


def _losses(workdir):
    return {r["step"]: r["train/loss"] for r in read_metrics(workdir) if "train/loss" in r}


@pytest.mark.slow
def test_dpo_log2_and_reference_paths_agree(post_overrides, pretrained, post_config, tmp_path):
    base = post_overrides + [f"init_from={pretrained}", "train.eval_every=3",
                             "optim.lr=1e-3"]
    pre = post_config("dpo", base + ["reference=precomputed", "train.steps=6"])
    loop.run(registry.build(pre), str(tmp_path / "pre"))
    tables = os.listdir(os.path.join(pre.data.data_dir, "reference_logps"))
    assert tables, "precomputed reference log-probs are cached with the dataset"
    frozen = base + ["reference=frozen", "checkpoint.every=3"]
    loop.run(registry.build(post_config("dpo", frozen + ["train.steps=3"])),
             str(tmp_path / "frozen"))
    # resume restores the frozen reference from the checkpoint (TrainState.models['ref'])
    loop.run(registry.build(post_config("dpo", frozen + ["train.steps=6"])),
             str(tmp_path / "frozen"))
    a, b = _losses(tmp_path / "pre"), _losses(tmp_path / "frozen")
    assert sorted(a) == sorted(b) == list(range(1, 7))
    assert abs(a[1] - math.log(2.0)) < 1e-5  # policy == reference at step 0
    for s in a:
        assert abs(a[s] - b[s]) < 1e-5, (s, a[s], b[s])
    evals = [r for r in read_metrics(tmp_path / "pre") if "eval/rewards/margin" in r]
    assert evals and all(math.isfinite(r["eval/loss"]) for r in evals)


def test_dpo_eight_devices_equal_one(post_overrides, pretrained, post_config, eight_vs_one):
    cfg = post_config("dpo", post_overrides + [
        f"init_from={pretrained}", "loss.nll_coef=0.2", "loss.mask_format_tokens=true",
        "optim.lr=1e-3"])
    trainer = registry.build(cfg)
    assert trainer.models["ref"].tx is None  # frozen reference in the train state
    batches = [next(trainer.train_iter) for _ in range(2)]
    # step 1: policy == reference, every reward margin is 0 up to rounding, so the
    # accuracy (share of margins > 0) is compared through the margins only
    (m1, _), _ = eight_vs_one(trainer, batches, step_functions={"rewards/accuracy"})
    assert abs(m1[0]["loss"] - math.log(2.0) - 0.2 * m1[0]["nll_chosen"]) < 1e-5
    assert abs(m1[0]["rewards/margin"]) < 1e-5


# value of each objective when the policy equals the reference (β = τ = 0.1)
AT_REFERENCE = {
    "ipo": 25.0,                        # (0 − 1/(2τ))²
    "npo": 2 / 0.1 * math.log(2.0),     # (2/β) log(1 + 1)
    "kto": 0.5,                         # 1 − σ(0), z0 = 0
    "dpo": math.log(2.0),               # cDPO too: −(1−ε) log ½ − ε log ½
}


@pytest.mark.slow
@pytest.mark.parametrize("name,extra", [
    ("ipo", []), ("npo", []), ("kto", []), ("dpo", ["loss.label_smoothing=0.1"]),
    ("simpo", []), ("orpo", [])])
def test_objectives_on_real_batches(name, extra, post_overrides, pretrained, post_config,
                                    steps_on_mesh):
    cfg = post_config("dpo", post_overrides + [f"init_from={pretrained}", f"loss.name={name}",
                                               "optim.lr=1e-3"] + extra)
    trainer = registry.build(cfg)
    assert ("ref" not in trainer.models) == (name in ("simpo", "orpo"))
    metrics, _ = steps_on_mesh(trainer, [next(trainer.train_iter) for _ in range(2)])
    assert all(math.isfinite(m["loss"]) for m in metrics)
    if name in AT_REFERENCE:
        assert abs(metrics[0]["loss"] - AT_REFERENCE[name]) < 1e-4, metrics[0]["loss"]


@pytest.mark.parametrize("name", ["sft", "rm", "dpo"])
def test_presets_load_and_bad_configs_fail_clearly(name):
    import importlib.util

    from kyx import config as config_lib
    from kyx.errors import ConfigError

    path = os.path.join(os.path.dirname(__file__), "..", "..", "configs", f"{name}.py")
    spec = importlib.util.spec_from_file_location(f"cfg_{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    for preset in module.PRESETS:
        cfg = config_lib.load(f"{path}:{preset}")
        assert cfg.trainer == name
        registry.build_step(cfg)  # model, optimizer and step build without data
    bad = {"sft": "data.records.source=nope", "rm": "loss.margin=huge",
           "dpo": "loss.name=nope"}[name]
    cfg = config_lib.load(f"{path}:tiny", [bad])
    with pytest.raises(ConfigError):
        if name == "sft":
            from kyx.data.preference_corpus import load_records
            load_records(cfg.data, "sft")
        else:
            registry.build_step(cfg)


@pytest.mark.parametrize("extra", [
    ["model.attn_reuse_prob=0.5"],
    ["model.moe_num_experts=4", "model.moe_top_k=2", "model.moe_router_jitter=0.2",
     "model.attn_reuse_prob=0.5"]], ids=["attn_reuse", "moe_jitter_reuse"])
def test_dpo_starts_at_log2_with_training_randomness(extra, post_overrides, post_config,
                                                     steps_on_mesh):
    """The frozen reference runs with the policy's RNG streams: at step 0 both forwards
    take the same reuse / jitter draws, so Δ = 0 and DPO = log 2 (plus the MoE aux loss,
    whose per-layer metrics DPO now reports like pretraining)."""
    cfg = post_config("dpo", post_overrides + extra + ["optim.lr=1e-3"])
    trainer = registry.build(cfg)
    metrics, _ = steps_on_mesh(trainer, [next(trainer.train_iter)])
    m = metrics[0]
    assert abs(m["rewards/margin"]) < 1e-5 and abs(m["rewards/chosen"]) < 1e-5
    assert abs(m["loss"] - m.get("moe/loss", 0.0) - math.log(2.0)) < 1e-5
    if "model.moe_num_experts=4" in extra:
        assert {"moe/layer0/load_max", "moe/layer1/router_entropy", "moe/loss"} <= set(m)


def test_new_preference_loss_is_one_registration(post_overrides, pretrained, post_config,
                                                 steps_on_mesh, monkeypatch):
    """docs/architecture.md, "How to add a loss": a function and its registry line; the
    DPO trainer reads its metadata (records, needs_reference) and its config defaults."""
    monkeypatch.setattr(pref.PREFERENCE_LOSSES, "_entries",
                        dict(pref.PREFERENCE_LOSSES._entries))

    @pref.PREFERENCE_LOSSES.register("slic", defaults={"slic_delta": 1.0})
    def slic(cfg, pol, ref, batch):
        """SLiC-HF calibration loss max(0, δ − βΔ)."""
        z = cfg.beta * ((pol["chosen"] - ref["chosen"]) - (pol["rejected"] - ref["rejected"]))
        loss = pref._mean(jnp.maximum(0.0, cfg.slic_delta - z), batch["weight"])
        return loss, {"loss": loss}

    cfg = post_config("dpo", post_overrides + [f"init_from={pretrained}", "loss.name=slic",
                                               "loss.slic_delta=0.5", "optim.lr=1e-3"])
    trainer = registry.build(cfg)
    assert "ref" in trainer.models
    metrics, _ = steps_on_mesh(trainer, [next(trainer.train_iter) for _ in range(2)])
    assert abs(metrics[0]["loss"] - 0.5) < 1e-5  # Δ = 0 at the reference
    assert metrics[0]["l2_grads"] > 0  # the hinge is active at Δ = 0


@pytest.mark.slow
def test_dpo_sigkill_resume_is_bit_exact(post_overrides, pretrained, tmp_path, kill_and_resume,
                                         losses):
    """A post-training run with a frozen reference in its state: kill -9 after step 6
    (checkpoint 4 committed), resume, and the per-step losses equal an uninterrupted run."""
    args = post_overrides + [f"init_from={pretrained}", "train.steps=8", "checkpoint.every=4",
                             "train.eval_every=100", "optim.lr=1e-3"]
    ref, killed = kill_and_resume("dpo", tmp_path, args, 6)
    got = losses(killed)
    assert sorted(got) == list(range(1, 9))
    assert got == losses(ref)
