"""Reward model: init_from a pretraining run, Llama 2 margins, eval accuracy, 8 devices = 1
under every rule preset (dense and MoE backbones; `ep` for MoE)."""
import math

import jax
import numpy as np
import pytest

import kyx
from kyx.metrics import read_metrics
from kyx.train import loop, registry


def test_rm_from_pretrained(post_overrides, pretrained, post_config, tmp_path):
    cfg = post_config("rm", post_overrides + [f"init_from={pretrained}", "loss.margin=small",
                                              "train.steps=4", "train.eval_every=4"])
    trainer = registry.build(cfg)
    start = trainer.models["reward"].init()
    src = kyx.load(pretrained).params
    for a, b in zip(jax.tree.leaves(src), jax.tree.leaves(start["backbone"])):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert set(start) == {"backbone", "value_kernel"}
    loop.run(trainer, str(tmp_path))
    rows = read_metrics(tmp_path)
    last = [r for r in rows if "eval/accuracy" in r][-1]
    assert 0.0 <= last["eval/accuracy"] <= 1.0 and last["eval/pairs"] > 0
    assert all(math.isfinite(r["train/loss"]) for r in rows if "train/loss" in r)


@pytest.mark.slow
@pytest.mark.parametrize("moe", [False, True])
def test_rm_eight_devices_equal_one(moe, post_overrides, post_config, eight_vs_one):
    extra = ["model.moe_num_experts=4", "model.moe_top_k=2"] if moe else []
    cfg = post_config("rm", post_overrides + extra + ["loss.margin=large"])
    trainer = registry.build(cfg)
    batches = [next(trainer.train_iter) for _ in range(2)]
    presets = ("dp", "fsdp", "fsdp_tp") + (("ep",) if moe else ())
    (m1, _), _ = eight_vs_one(trainer, batches, presets)
    assert ("moe/loss" in m1[0]) == moe
