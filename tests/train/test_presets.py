"""Every pretrain preset builds; 1b and 7b shard and lower on the 8-device mesh abstractly."""
import os

import jax
import pytest

from kyx import config as config_lib
from kyx import sharding
from kyx.model.params import count_params
from kyx.train import pretrain
from kyx.train import state as state_lib

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PRETRAIN = os.path.join(ROOT, "configs", "pretrain.py")


@pytest.mark.parametrize("preset,expected_params", [
    ("tiny", 1.6e6), ("small", 33e6), ("1b", 0.97e9), ("7b", 7.0e9)])
def test_preset_shards_and_lowers_on_simulated_mesh(preset, expected_params,
                                                    lower_pretrain_step):
    cfg = config_lib.load(f"{PRETRAIN}:{preset}", ["mesh.data=1", "mesh.fsdp=-1"])
    step = pretrain.build_step(cfg)
    mesh = sharding.make_mesh({a: cfg.mesh[a] for a in sharding.MESH_AXES})
    rules = sharding.get_rules(cfg.mesh.rules)
    shardings, abstract = state_lib.state_shardings(step.models, mesh, rules)
    policy_sh, policy = shardings.models["policy"].params, abstract.models["policy"].params
    n = sum(x.size for x in jax.tree.leaves(policy))
    assert abs(n - expected_params) / expected_params < 0.15, n
    frac = sharding.check_replication(policy_sh, policy, mesh, cfg.mesh.rules)
    assert frac <= 0.02
    if preset in ("1b", "7b"):  # lowering proves shardings and shapes line up, no memory
        text = lower_pretrain_step(cfg, step.fn, shardings, abstract, mesh, rules)
        assert "sharding" in text[:200000]


def test_mesh_that_does_not_divide_batch_is_rejected():
    cfg = config_lib.load(f"{PRETRAIN}:tiny", ["data.batch_size=12"])
    mesh = sharding.make_mesh({"data": 8})
    with pytest.raises(Exception, match="not divisible by the 8 batch shards"):
        sharding.check_batch(cfg.data.batch_size, mesh, sharding.get_rules(cfg.mesh.rules))
