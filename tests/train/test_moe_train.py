"""configs/moe.py presets (64e shards and lowers on the 8-device mesh), the ablation sweep
runner, and per-layer MoE metrics in metrics.jsonl and TensorBoard."""
import glob
import importlib.util
import json
import os
import struct

import jax
import numpy as np
import pytest

from kyx import config as config_lib
from kyx import sharding
from kyx.metrics import read_metrics
from kyx.model import ModelConfig
from kyx.model.flops import matmul_params
from kyx.train import pretrain
from kyx.train import state as state_lib

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
MOE = os.path.join(ROOT, "configs", "moe.py")
STATS = ("load_max", "load_min", "dropped_frac", "router_entropy", "lb_loss", "z_loss",
         "flagged_frac")


def _tb_tags(logdir) -> set[str]:
    """Scalar tags in TensorBoard event files (TFRecord framing, tensorboardX protos)."""
    from tensorboardX.proto import event_pb2

    tags = set()
    for path in glob.glob(os.path.join(logdir, "**", "events.out.tfevents.*"), recursive=True):
        data = open(path, "rb").read()
        pos = 0
        while pos + 12 <= len(data):
            (n,) = struct.unpack("<Q", data[pos:pos + 8])
            event = event_pb2.Event.FromString(data[pos + 12:pos + 12 + n])
            tags.update(v.tag for v in event.summary.value)
            pos += 12 + n + 4
    return tags


def test_presets_build_and_small_matches_dense_active_params():
    dense = ModelConfig.from_config(config_lib.load(
        os.path.join(ROOT, "configs", "pretrain.py:small")).model)
    counts = {}
    for preset in ("tiny", "small", "64e"):
        cfg = config_lib.load(f"{MOE}:{preset}")
        counts[preset] = ModelConfig.from_config(cfg.model)
        assert cfg.model.moe_num_experts in (8, 64)
    small = counts["small"]
    # active matmul parameters: equal FFN width, plus the 512 x 8 routers
    assert matmul_params(small) - matmul_params(dense) == 8 * 512 * 8
    big = counts["64e"]
    assert abs(matmul_params(big) / 1e9 - 0.92) < 0.02 and big.moe_shared_experts == 2


def test_64e_shards_and_lowers_on_simulated_mesh(lower_pretrain_step):
    cfg = config_lib.load(f"{MOE}:64e", ["mesh.expert=4", "mesh.fsdp=-1"])
    step = pretrain.build_step(cfg)
    mesh = sharding.make_mesh({a: cfg.mesh[a] for a in sharding.MESH_AXES})
    assert dict(mesh.shape)["fsdp"] == 2 and dict(mesh.shape)["expert"] == 4
    rules = sharding.get_rules(cfg.mesh.rules)
    shardings, abstract = state_lib.state_shardings(step.models, mesh, rules)
    policy_sh, policy = shardings.models["policy"].params, abstract.models["policy"].params
    n = sum(x.size for x in jax.tree.leaves(policy))
    assert abs(n / 10.1e9 - 1) < 0.02, n
    frac = sharding.check_replication(policy_sh, policy, mesh, cfg.mesh.rules)
    assert frac <= 0.02
    experts = policy_sh["moe_layers"]["sparse"]["moe"]["wi_gate"]
    assert experts.spec[1] == "expert"
    text = lower_pretrain_step(cfg, step.fn, shardings, abstract, mesh, rules)
    assert "sharding" in text[:200000]


def _sweep_module():
    spec = importlib.util.spec_from_file_location("sweep_runner", os.path.join(
        ROOT, "experiments", "sweep.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_ablation_sweep_differs_only_in_the_routing_error_loss():
    variants = _sweep_module().load_sweep(MOE + ":tiny", "sweep")
    assert [v["name"] for v in variants] == ["lb", "lb_re"]
    cfgs = [config_lib.to_dict(config_lib.load(MOE + ":tiny", v["overrides"])) for v in variants]
    assert cfgs[0]["model"]["moe_route_error_weight"] == 0.0
    assert cfgs[1]["model"]["moe_route_error_weight"] == 0.01
    cfgs[1]["model"]["moe_route_error_weight"] = 0.0
    assert cfgs[0] == cfgs[1]


@pytest.mark.slow
def test_sweep_runner_and_per_layer_moe_metrics(fast_overrides, tmp_path):
    """The ablation runner on a 3-step run; its routing-error variant shows the per-layer
    MoE metrics in metrics.jsonl and TensorBoard."""
    sweep = _sweep_module()
    args = ["--config", MOE + ":tiny", "--sweep", "sweep", "--root", str(tmp_path),
            "--steps", "3", *[f"--config.{o}" for o in fast_overrides]]
    assert sweep.main(args) == 0
    results = json.loads((tmp_path / "results.json").read_text())["results"]
    assert set(results) == {"lb", "lb_re"}
    for r in results.values():
        assert r["steps"] == 3 and np.isfinite(r["eval_loss"]) and r["tokens_per_s"] > 0
        assert 1.0 <= r["load_max_x_e"] <= 8.0
    assert results["lb"]["flagged_frac_mean"] is None
    assert 0.0 <= results["lb_re"]["flagged_frac_mean"] < 0.5
    table = (tmp_path / "results.md").read_text()
    assert "| lb_re |" in table and "flagged frac" in table
    assert (tmp_path / "loss_curves.png").stat().st_size > 1000
    assert sweep.main(args) == 0  # finished variants are reused, not retrained

    rows = [r for r in read_metrics(tmp_path / "lb_re") if "train/loss" in r]
    assert [r["step"] for r in rows] == [1, 2, 3]
    for r in rows:
        for layer in (0, 1):
            for s in STATS:
                assert np.isfinite(r[f"train/moe/layer{layer}/{s}"]), s
            assert 0.0 <= r[f"train/moe/layer{layer}/flagged_frac"] < 0.5
            assert 1 / 8 <= r[f"train/moe/layer{layer}/load_max"] <= 1.0
    tags = _tb_tags(tmp_path / "lb_re" / "tb")
    assert {f"train/moe/layer{i}/{s}" for i in (0, 1) for s in STATS} <= tags
    assert "train/moe/loss" in tags
    assert "train/moe/layer0/flagged_frac" not in read_metrics(tmp_path / "lb")[-1]
