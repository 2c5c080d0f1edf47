"""MoE under the `ep` preset on 8 simulated devices equals the 1-device result."""
import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from kyx import sharding
from kyx.model import Decoder, ModelConfig
from kyx.model.moe import PROBE_COLLECTION, zero_probes
from kyx.model.params import param_shardings
from kyx.objectives import lm
from kyx.objectives import moe as moe_obj

CFG = ModelConfig(vocab_size=128, d_model=64, num_layers=2, num_heads=4, num_kv_heads=2,
                  ffn_dim=128, moe_num_experts=8, moe_top_k=2, moe_ffn_dim=64,
                  moe_shared_experts=1, moe_capacity_factor=1.0, moe_router_jitter=0.1,
                  moe_route_error_weight=0.1, attn_reuse_prob=0.5)


def make_moe_loss_fn(model, cfg):
    """LM loss + aux["moe_loss"], with training rngs and the routing-error probe."""
    loss_cfg = lm.default_config().to_dict()

    def loss_fn(params, probes, batch, rng):
        logits, aux = model.apply(
            {"params": params, PROBE_COLLECTION: probes}, batch["tokens"],
            batch["segment_ids"], batch["positions"],
            rngs={"jitter": jax.random.fold_in(rng, 0), "reuse": jax.random.fold_in(rng, 1)})
        loss, metrics = lm.lm_loss(logits, batch["targets"], batch["loss_mask"], loss_cfg)
        moe_loss, moe_metrics = moe_obj.moe_loss_and_metrics(aux, cfg.moe_layer_ids)
        return loss + moe_loss, {**metrics, **moe_metrics}
    return loss_fn


def _random_params(cfg, seed=0):
    """Host parameters of the right shapes (no init compile): norms 1, weights N(0, 0.1)."""
    abstract = nn.unbox(jax.eval_shape(Decoder(cfg).init, jax.random.key(0),
                                       jax.ShapeDtypeStruct((8, 16), jnp.int32))["params"])
    rng = np.random.default_rng(seed)
    return jax.tree_util.tree_map_with_path(
        lambda path, a: np.ones(a.shape, np.float32) if "norm" in jax.tree_util.keystr(path)
        else rng.normal(0.0, 0.1, a.shape).astype(np.float32), abstract)


def _run(cfg, host_params, mesh, preset, batch_np):
    model = Decoder(cfg)
    rules = sharding.get_rules(preset)
    shardings, abstract = param_shardings(model, mesh, rules)
    sharding.check_replication(shardings, abstract, mesh, preset)
    params = jax.device_put(host_params, shardings)
    batch_sh = sharding.named_sharding(("act_batch", "act_length"), mesh, rules)
    batch = jax.device_put(batch_np, batch_sh)
    probes = zero_probes(model)
    fn = jax.value_and_grad(make_moe_loss_fn(model, cfg), argnums=(0, 1), has_aux=True)
    step = jax.jit(fn, in_shardings=(shardings, None, batch_sh, None),
                   out_shardings=((None, None), (shardings, None)))
    with sharding.use_mesh(mesh, rules):
        (loss, metrics), (grads, probe_grads) = step(params, probes, batch, jax.random.key(7))
    metrics.update(moe_obj.flagged_metrics(probe_grads, cfg.moe_layer_ids))
    return float(loss), jax.device_get(metrics), grads


@pytest.mark.parametrize("dispatch,axes", [
    ("capacity", {"data": 2, "expert": 4}),
    pytest.param("dropless", {"fsdp": 2, "expert": 4}, marks=pytest.mark.slow),
])
def test_ep_eight_devices_equal_one_device(dispatch, axes, packed_batch):
    cfg = dataclasses.replace(CFG, moe_dispatch=dispatch)
    params = _random_params(cfg)
    one = sharding.make_mesh({"data": 1}, devices=jax.devices()[:1])
    batch = packed_batch(CFG.vocab_size)
    loss1, m1, g1 = _run(cfg, params, one, "ep", batch)
    loss8, m8, g8 = _run(cfg, params, sharding.make_mesh(axes), "ep", batch)
    np.testing.assert_allclose(loss8, loss1, rtol=1e-5, atol=1e-5)
    assert set(m8) == set(m1) and "moe/layer1/flagged_frac" in m8
    if dispatch == "capacity":
        assert m1["moe/layer0/dropped_frac"] > 0
    for k in m1:
        np.testing.assert_allclose(m8[k], m1[k], rtol=1e-5, atol=1e-5, err_msg=k)
    for a, b in zip(jax.tree.leaves(jax.device_get(g1)), jax.tree.leaves(jax.device_get(g8))):
        np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-5)
    spec = g8["moe_layers"]["sparse"]["moe"]["wi_gate"].sharding.spec
    assert spec[1] == "expert"  # [layers, exp, embed, mlp]: experts really are split
