"""Activation sites: the layer-by-layer forward equals the decoder's, sites add up, edits act."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from kyx.analysis import sites
from kyx.errors import ConfigError
from kyx.model import config as model_config
from kyx.model.config import ModelConfig
from kyx.model.transformer import Decoder

DENSE = dict(vocab_size=97, d_model=32, num_layers=3, num_heads=4, num_kv_heads=2,
             max_seq_len=16)
VARIANTS = {
    "dense_rope": {},
    "alibi_tied_unrolled": dict(position="alibi", tie_embeddings=True, scan_unroll=3,
                                remat="full"),
    "moe_embedding_routing": dict(num_layers=4, moe_num_experts=4, moe_top_k=2,
                                  moe_first_dense=1, moe_every=3,
                                  moe_router_input="embedding", moe_capacity_factor=4.0,
                                  norm_head=True),
    "pla_swa_hybrid": dict(num_layers=4, attention="pla,swa", pla_prefix_len=3,
                           attention_window=4, pla_chunk=4, pla_feature_dim=4),
}


@functools.lru_cache(maxsize=None)
def _model(variant="dense_rope"):
    """(module, params, packed batch) of a VARIANTS model, built once per test module."""
    cfg = model_config.default_config()
    cfg.update({**DENSE, **VARIANTS[variant]})
    module = Decoder(ModelConfig.from_config(cfg))
    tokens_bt = jax.random.randint(jax.random.PRNGKey(1), (2, 12), 0, cfg.vocab_size)
    params = jax.jit(module.init)(jax.random.PRNGKey(0), tokens_bt)["params"]
    # packed rows: two documents in row 0, padding at the end of row 1
    segment_ids_bt = jnp.asarray([[1] * 5 + [2] * 7, [1] * 9 + [0] * 3])
    positions_bt = jnp.asarray([list(range(5)) + list(range(7)), list(range(9)) + [0] * 3])
    return module, params, (tokens_bt, segment_ids_bt, positions_bt)


@pytest.mark.parametrize("variant", ["alibi_tied_unrolled", "pla_swa_hybrid"])
def test_layerwise_forward_equals_decoder(variant):
    module, params, batch = _model(variant)
    want_btv, _ = jax.jit(module.apply)({"params": params}, *batch)
    got_btv, act = jax.jit(lambda p, b: sites.run(module, p, *b))(params, batch)
    assert act is None
    np.testing.assert_allclose(got_btv, want_btv, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("variant", ["dense_rope", "moe_embedding_routing"])
def test_sites_add_up_to_the_residual_stream(variant):
    """Also: the layer-by-layer logits equal the decoder's (dense and MoE layer slicing)."""
    module, params, batch = _model(variant)
    names = sites.site_names(module.cfg)
    logits, act = jax.jit(lambda p, b: (
        (module.apply({"params": p}, *b)[0], sites.run(module, p, *b)[0]),
        {name: sites.run(module, p, *b, site=sites.parse_site(name, module.cfg))[1]
         for name in names}))(params, batch)
    np.testing.assert_allclose(logits[1], logits[0], atol=1e-5, rtol=1e-5)  # = the decoder
    prev = act["embed"]
    for i in range(module.cfg.num_layers):
        resid = prev + act[f"blocks.{i}.attn_out"] + act[f"blocks.{i}.mlp_out"]
        np.testing.assert_allclose(act[f"blocks.{i}.resid"], resid, atol=1e-5, rtol=1e-5)
        prev = act[f"blocks.{i}.resid"]


def test_identity_edit_changes_nothing_and_zero_edit_acts():
    module, params, batch = _model()
    names = ("embed", "blocks.1.resid", "blocks.0.attn_out", "blocks.2.mlp_out")

    def runs(p, b):
        out = {"clean": sites.run(module, p, *b)}
        for name in names:
            site = sites.parse_site(name, module.cfg)
            out[name] = (sites.run(module, p, *b, site=site, edit=lambda a: a),
                         sites.run(module, p, *b, site=site, edit=jnp.zeros_like))
        return out

    out = jax.jit(runs)(params, batch)
    clean_btv = out["clean"][0]
    for name in names:
        (same_btv, act), (zero_btv, act0) = out[name]
        np.testing.assert_allclose(same_btv, clean_btv, atol=1e-6)
        np.testing.assert_allclose(act0, act, atol=0)  # the reported activation is pre-edit
        assert np.abs(np.asarray(zero_btv - clean_btv)).max() > 1e-3


def test_resid_edit_equals_feeding_the_edited_stream_onwards():
    """Zeroing the last block's MLP output = logits of (resid before it + attention out)."""
    module, params, batch = _model()
    last = module.cfg.num_layers - 1
    site = lambda name: sites.parse_site(name, module.cfg)  # noqa: E731

    def runs(p, b):
        got_btv, _ = sites.run(module, p, *b, site=site(f"blocks.{last}.mlp_out"),
                               edit=jnp.zeros_like)
        prev = sites.run(module, p, *b, site=site(f"blocks.{last - 1}.resid"))[1]
        attn = sites.run(module, p, *b, site=site(f"blocks.{last}.attn_out"))[1]
        want_btv, _ = module.apply({"params": p}, prev + attn,
                                   method=lambda m, x: m.unembed(x))
        return got_btv, want_btv

    got_btv, want_btv = jax.jit(runs)(params, batch)
    np.testing.assert_allclose(got_btv, want_btv, atol=1e-5, rtol=1e-5)


def test_embed_edit_and_jit():
    module, params, batch = _model()
    edit = lambda x: x.at[:, 3].set(0.0)  # noqa: E731
    f = jax.jit(lambda p, b: sites.run(module, p, *b, embed_edit=edit)[0])
    want_btv, _ = jax.jit(lambda p, b: sites.run(module, p, *b, site=sites.Site(-1, "embed"),
                                                 edit=edit))(params, batch)
    np.testing.assert_allclose(f(params, batch), want_btv, atol=1e-6)


@pytest.mark.parametrize("name,message", [
    ("blocks.3.resid", "has 3 layers"), ("blocks.1.resd", "did you mean resid"),
    ("layer1", "sites are embed"),
])
def test_bad_site_names(name, message):
    cfg = ModelConfig.from_config(_cfg())
    with pytest.raises(ConfigError, match=message):
        sites.parse_site(name, cfg)


def _cfg():
    cfg = model_config.default_config()
    cfg.update(DENSE)
    return cfg
