"""Mesh construction, rule presets, replication check and 1-vs-8-device equality."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from kyx import sharding
from kyx.errors import ConfigError
from kyx.model import Decoder, ModelConfig
from kyx.model.params import init_params, param_shardings
from kyx.objectives.lm import default_config as loss_defaults
from kyx.train.forward import LossContext
from kyx.train.pretrain import make_loss_fn

CFG = ModelConfig(vocab_size=128, d_model=64, num_layers=2, num_heads=4, num_kv_heads=2,
                  ffn_dim=128)


def test_mesh_infers_axis_and_rejects_bad_sizes():
    mesh = sharding.make_mesh({"data": -1, "fsdp": 2})
    assert dict(mesh.shape) == {"data": 4, "fsdp": 2, "tensor": 1, "expert": 1}
    with pytest.raises(ConfigError, match="multiply to 6 but 8 devices"):
        sharding.make_mesh({"data": 3, "fsdp": 2})
    with pytest.raises(ConfigError, match="cannot infer"):
        sharding.make_mesh({"data": -1, "fsdp": 3})
    with pytest.raises(ConfigError, match="unknown mesh axes"):
        sharding.make_mesh({"dta": 8})


def test_batch_must_divide_batch_shards():
    mesh = sharding.make_mesh({"data": 2, "fsdp": 4})
    sharding.check_batch(16, mesh, sharding.get_rules("fsdp"))
    with pytest.raises(ConfigError, match="not divisible by the 8 batch shards"):
        sharding.check_batch(12, mesh, sharding.get_rules("fsdp"))


def test_unknown_preset_lists_choices():
    with pytest.raises(ConfigError, match="fsdp_tp"):
        sharding.get_rules("zero3")


def test_constraint_drops_axes_that_do_not_divide():
    mesh = sharding.make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
    rules = sharding.get_rules("fsdp_tp")
    spec = sharding.logical_to_spec(("vocab", "embed"), mesh, rules, shape=(7, 64))
    assert spec == jax.sharding.PartitionSpec(None, "fsdp")
    spec = sharding.logical_to_spec(("act_batch", "act_length"), mesh, rules, shape=(8, 16))
    assert spec == jax.sharding.PartitionSpec(("data", "fsdp"), None)


def test_replication_check_passes_fsdp_and_names_offenders_under_dp():
    mesh = sharding.make_mesh({"data": 2, "fsdp": 4})
    model = Decoder(CFG)
    shardings, abstract = param_shardings(model, mesh, "fsdp")
    assert sharding.check_replication(shardings, abstract, mesh, "fsdp") <= 0.02
    dp_shardings, _ = param_shardings(model, mesh, "dp")
    frac, _, offenders = sharding.replication_report(dp_shardings, abstract)
    assert frac > 0.5
    assert [o[1] for o in offenders] == sorted((o[1] for o in offenders), reverse=True)
    assert "['layers']" in offenders[0][0]
    with pytest.raises(ConfigError, match="replicated under preset 'fsdp'"):
        sharding.check_replication(dp_shardings, abstract, mesh, "fsdp")


def _loss_and_grads(mesh, preset, loss_cfg, batch_np, cfg=CFG):
    model = Decoder(cfg)
    rules = sharding.get_rules(preset)
    params = init_params(model, jax.random.key(0), mesh, rules)
    shardings, _ = param_shardings(model, mesh, rules)
    batch_sh = sharding.named_sharding(("act_batch", "act_length"), mesh, rules)
    batch = jax.device_put(batch_np, batch_sh)
    loss_fn = make_loss_fn(model, loss_cfg)
    fn = jax.value_and_grad(lambda p, b: loss_fn(p, b, LossContext()), has_aux=True)
    step = jax.jit(fn, in_shardings=(shardings, batch_sh),
                   out_shardings=((None, None), shardings))
    with sharding.use_mesh(mesh, rules):
        (loss, _), grads = step(params, batch)
    return float(loss), jax.device_get(grads), grads


MESHES = {
    "dp": {"data": 8},
    "fsdp": {"data": 2, "fsdp": 4},
    "fsdp_tp": {"data": 2, "fsdp": 2, "tensor": 2},
}


@pytest.fixture(scope="module")
def one_device_run(packed_batch):
    """one_device_run(loss_name) -> (loss config, batch, loss, grads) on 1 device, computed
    once per loss (every preset maps to no mesh axis there)."""
    runs = {}

    def run(loss_name):
        if loss_name not in runs:
            loss_cfg = loss_defaults().to_dict()
            loss_cfg.update(name=loss_name, max_z_weight=2e-4)
            batch = packed_batch(CFG.vocab_size)
            one = sharding.make_mesh({"data": 1}, devices=jax.devices()[:1])
            runs[loss_name] = (loss_cfg, batch, *_loss_and_grads(one, "dp", loss_cfg, batch)[:2])
        return runs[loss_name]
    return run


# CE under every preset; MiLe (per-token weights summed over the sharded batch) under the
# preset that splits the most axes
@pytest.mark.parametrize("preset,loss_name", [(p, "ce") for p in sorted(MESHES)]
                         + [("fsdp_tp", "mile")])
def test_eight_devices_equal_one_device(preset, loss_name, one_device_run):
    loss_cfg, batch, loss1, grads1 = one_device_run(loss_name)
    eight = sharding.make_mesh(MESHES[preset])
    loss8, grads8, sharded = _loss_and_grads(eight, preset, loss_cfg, batch)
    np.testing.assert_allclose(loss8, loss1, rtol=1e-5, atol=1e-5)
    for a, b in zip(jax.tree.leaves(grads1), jax.tree.leaves(grads8)):
        np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-5)
    if preset != "dp":  # parameters (and so gradients) really are split over devices
        wq = sharded["layers"]["attn"]["wq"]
        assert not wq.sharding.is_fully_replicated


# a pla,swa hybrid: 2 documents of 8 tokens per row, prefix 5 and window 3 inside them,
# linear-attention blocks of 4 (so state is carried across blocks and reset per document)
HYBRID = ModelConfig(vocab_size=128, d_model=64, num_layers=2, num_heads=4, ffn_dim=128,
                     attention="pla,swa", pla_prefix_len=5, attention_window=3, pla_chunk=4,
                     pla_feature_dim=4)


@pytest.fixture(scope="module")
def hybrid_one_device(packed_batch):
    """Loss and gradients of the hybrid on 1 device (every preset maps to no axis there)."""
    one = sharding.make_mesh({"data": 1}, devices=jax.devices()[:1])
    loss, grads, _ = _loss_and_grads(one, "dp", loss_defaults().to_dict(),
                                     packed_batch(HYBRID.vocab_size), HYBRID)
    return loss, grads


@pytest.mark.parametrize("preset", sorted(MESHES))
def test_hybrid_linear_attention_eight_devices_equal_one(preset, packed_batch,
                                                         hybrid_one_device):
    loss1, grads1 = hybrid_one_device
    loss8, grads8, sharded = _loss_and_grads(sharding.make_mesh(MESHES[preset]), preset,
                                             loss_defaults().to_dict(),
                                             packed_batch(HYBRID.vocab_size), HYBRID)
    np.testing.assert_allclose(loss8, loss1, rtol=1e-5, atol=1e-5)
    for a, b in zip(jax.tree.leaves(grads1), jax.tree.leaves(grads8)):
        np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-5)
    if preset != "dp":
        wk_enc = sharded["layers"]["layer_0"]["attn"]["wk_enc"]
        assert not wk_enc.sharding.is_fully_replicated
