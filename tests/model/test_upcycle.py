"""Sparse upcycling: dense -> MoE params and workdirs (kyx/model/upcycle.py)."""
import json
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import kyx
from kyx import config as config_lib
from kyx.cli import main as cli_main
from kyx.errors import ConfigError
from kyx.metrics import read_metrics
from kyx.model import Decoder, ModelConfig
from kyx.model.params import abstract_params
from kyx.model.upcycle import moe_config, upcycle_params

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DENSE = ModelConfig(vocab_size=97, d_model=32, num_layers=5, num_heads=4, num_kv_heads=2,
                    ffn_dim=64)
# Float32 rounding floor: the dense model's own logits differ by ~1e-7 between batch
# sizes or jit / eager (different matmul kernels); the batched expert matmul is another.
ROUNDING = 1e-6


@pytest.fixture(scope="module")
def dense_setup():
    params = nn.unbox(Decoder(DENSE).init(jax.random.key(1), jnp.zeros((1, 8), jnp.int32))
                      ["params"])
    tokens = jax.random.randint(jax.random.key(2), (3, 24), 0, DENSE.vocab_size)
    logits, _ = Decoder(DENSE).apply({"params": params}, tokens)
    return params, tokens, np.asarray(logits)


@pytest.mark.parametrize("layout,dispatch,router_std", [
    ((1, 0), "capacity", 0.0), ((2, 1), "dropless", 0.0),
    ((2, 1), "capacity", None), ((1, 0), "dropless", None)])
def test_zero_noise_upcycle_equals_dense(dense_setup, layout, dispatch, router_std):
    params, tokens, ref = dense_setup
    every, first = layout
    e, k = 8, 2
    # capacity factor E / k makes C = T: nothing can drop, even if all tokens pick one expert
    moe = moe_config(DENSE, e, k, every, first, moe_dispatch=dispatch, moe_capacity_factor=e / k)
    up = upcycle_params(params, DENSE, moe, jax.random.key(0), noise=0.0, router_std=router_std)
    logits, aux = Decoder(moe).apply({"params": up}, tokens)
    np.testing.assert_allclose(np.asarray(logits), ref, rtol=0, atol=ROUNDING)
    assert np.all(np.asarray(aux["moe_metrics"]["dropped_frac"]) == 0.0)
    load = np.asarray(aux["moe_metrics"]["load"])
    if router_std == 0.0:  # uniform router: ties go to experts 0..k-1
        np.testing.assert_array_equal(load, np.tile([0.5, 0.5] + [0.0] * 6, (len(load), 1)))
    else:
        assert np.all(np.sum(load > 0, axis=-1) > k)
    # the copied layers and the untouched parameters
    layer = lambda i: jax.tree.map(lambda a: a[i], params["layers"])
    np.testing.assert_array_equal(up["embed"]["embedding"], params["embed"]["embedding"])
    sparse = jax.tree.map(lambda a: a[0], up["moe_layers"]["sparse"])
    src = layer(first + every - 1)
    for name in ("wi_gate", "wi_up", "wo"):
        np.testing.assert_array_equal(sparse["moe"][name], np.broadcast_to(
            src["mlp"][name], (e, *src["mlp"][name].shape)))
    np.testing.assert_array_equal(sparse["attn"]["wq"], src["attn"]["wq"])


def test_zero_router_under_default_capacity_overflows(dense_setup):
    """Why the default router is random: a zero router sends every token to experts 0..k-1,
    which overflow under capacity dispatch (documented pitfall)."""
    params, tokens, ref = dense_setup
    moe = moe_config(DENSE, 8, 2, moe_dispatch="capacity", moe_capacity_factor=1.25)
    up = upcycle_params(params, DENSE, moe, jax.random.key(0), router_std=0.0)
    logits, aux = Decoder(moe).apply({"params": up}, tokens)
    assert np.min(np.asarray(aux["moe_metrics"]["dropped_frac"])) > 0.5
    assert np.max(np.abs(np.asarray(logits) - ref)) > 1e-3


@pytest.mark.parametrize("noise_type", ["multiplicative", "additive"])
def test_noise_is_seeded_relative_and_per_expert(dense_setup, noise_type):
    params, _, _ = dense_setup
    moe = moe_config(DENSE, 4, 2)
    s = 0.05
    up = upcycle_params(params, DENSE, moe, jax.random.key(3), s, noise_type)
    again = upcycle_params(params, DENSE, moe, jax.random.key(3), s, noise_type)
    other = upcycle_params(params, DENSE, moe, jax.random.key(4), s, noise_type)
    w = np.asarray(params["layers"]["mlp"]["wi_up"][0])
    w_e = np.asarray(up["moe_layers"]["sparse"]["moe"]["wi_up"][0])
    np.testing.assert_array_equal(w_e, again["moe_layers"]["sparse"]["moe"]["wi_up"][0])
    assert not np.array_equal(w_e, other["moe_layers"]["sparse"]["moe"]["wi_up"][0])
    rel = (w_e - w) / w if noise_type == "multiplicative" else (w_e - w) / w.std()
    assert abs(rel.std() / s - 1) < 0.05
    assert all(not np.allclose(w_e[0], w_e[i]) for i in range(1, 4))
    # noise never touches non-expert parameters; the random router has std init_std
    np.testing.assert_array_equal(up["moe_layers"]["sparse"]["attn"]["wq"],
                                  params["layers"]["attn"]["wq"])
    router = np.asarray(up["moe_layers"]["sparse"]["moe"]["router"]["kernel"])
    assert abs(router.std() / DENSE.init_std - 1) < 0.2


def test_structure_matches_a_fresh_moe_model(dense_setup):
    params, _, _ = dense_setup
    moe = moe_config(DENSE, 4, 1, every=2, first_dense=1)
    up = upcycle_params(params, DENSE, moe, jax.random.key(0), 0.01)
    want = abstract_params(Decoder(moe))[0]
    assert jax.tree.structure(up) == jax.tree.structure(want)
    assert [x.shape for x in jax.tree.leaves(up)] == [x.shape for x in jax.tree.leaves(want)]


def test_clear_errors():
    with pytest.raises(ConfigError, match="already MoE"):
        moe_config(moe_config(DENSE, 4, 2), 8, 2)
    with pytest.raises(ConfigError, match="num_experts >= top_k"):
        moe_config(DENSE, 2, 4)
    with pytest.raises(ConfigError, match="multiple of moe_every"):
        moe_config(DENSE, 4, 2, every=2)
    with pytest.raises(ConfigError, match="moe_norm_topk"):
        moe_config(DENSE, 4, 2, moe_norm_topk=False)
    with pytest.raises(ConfigError, match="shared"):
        moe_config(DENSE, 4, 2, moe_shared_experts=1)


@pytest.mark.slow
def test_cli_upcycle_load_and_train(fast_overrides, tmp_path, capsys):
    dense_dir, moe_dir, run_dir = tmp_path / "dense", tmp_path / "moe", tmp_path / "run"
    assert cli_main(["train", "--config", os.path.join(ROOT, "configs", "pretrain.py:tiny"),
                     "--workdir", str(dense_dir), "--config.train.steps=3",
                     *[f"--config.{o}" for o in fast_overrides]]) == 0
    assert cli_main(["upcycle", "--workdir", str(dense_dir), "--out", str(moe_dir),
                     "--num-experts", "8", "--top-k", "2", "--noise", "0",
                     "--dispatch", "dropless"]) == 0
    assert "rewarm" in capsys.readouterr().out
    assert os.path.exists(moe_dir / "tokenizer.model")
    saved = json.loads((moe_dir / "config.json").read_text())
    assert saved["model"]["moe_num_experts"] == 8 and saved["upcycle"]["source_step"] == 3
    dense, moe = kyx.load(str(dense_dir)), kyx.load(str(moe_dir))
    tokens = np.arange(1, 30)[None] % 384
    np.testing.assert_allclose(moe.logits(tokens), dense.logits(tokens), rtol=0, atol=ROUNDING)
    # an MoE workdir cannot be upcycled again; the error names the problem
    assert cli_main(["upcycle", "--workdir", str(moe_dir), "--out", str(tmp_path / "x"),
                     "--num-experts", "8"]) == 2
    assert "already MoE" in capsys.readouterr().err
    assert cli_main(["train", "--config", os.path.join(ROOT, "configs", "moe.py:tiny"),
                     "--workdir", str(run_dir), f"--config.init_from={moe_dir}",
                     "--config.train.steps=2", "--config.model.moe_dispatch=dropless",
                     *[f"--config.{o}" for o in fast_overrides]]) == 0
    rows = [r for r in read_metrics(run_dir) if "train/loss" in r]
    assert [r["step"] for r in rows] == [1, 2] and np.isfinite(rows[-1]["train/loss"])
    assert config_lib.load_json(run_dir / "config.json").init_from == str(moe_dir)
