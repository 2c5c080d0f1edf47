"""Attention kinds in the Decoder (model.attention): pla, linear, swa and a pla,swa hybrid.

Recurrent-state decoding equals repeated full forward passes; sliding-window kernels equal
a numpy loop; config mistakes are ConfigErrors; the cache follows the pattern."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jax.sharding import PartitionSpec as P

from kyx import sharding
from kyx.errors import ConfigError
from kyx.model import Decoder, ModelConfig
from kyx.model.attention_kernels import KERNELS
from kyx.model.decode import generate_padded, pad_prompts
from kyx.model.transformer import cache_axes, init_cache

M = 8   # prefix length; prompts below are at least this long


def _config(attention, **kw):
    base = dict(vocab_size=128, d_model=64, num_layers=2, num_heads=4, ffn_dim=128,
                init_std=0.1, attention=attention, pla_prefix_len=M, pla_chunk=8,
                attention_window=6, pla_feature_dim=8)
    return ModelConfig(**{**base, **kw}).validate()


@pytest.mark.parametrize("attention", ["pla", "linear", "pla,swa"])
def test_recurrent_decoding_equals_repeated_full_forward(attention):
    """Greedy tokens = argmax of a full forward over the growing sequence, and each step's
    logits = that forward's logits at the position (prompts of 9 and 12 >= M tokens,
    padded to 16: prefill crosses blocks of 8)."""
    model = Decoder(_config(attention))
    params = nn.unbox(jax.jit(model.init)(jax.random.key(0), jnp.ones((1, 8), jnp.int32))[
        "params"])
    prompts = [list(range(3, 12)), [int(x) for x in np.random.default_rng(0).integers(
        1, 128, 12)]]
    tokens, lengths, _ = pad_prompts(prompts)
    n = 6
    out = generate_padded(model, params, jnp.asarray(tokens), jnp.asarray(lengths),
                          jax.random.key(1), max_new_tokens=n, temperature=0.0,
                          return_logits=True)
    width = 12 + n
    forward = jax.jit(lambda t, s: model.apply({"params": params}, t, s)[0])
    for i, p in enumerate(prompts):
        seq = p + np.asarray(out["tokens"][i]).tolist()
        for step in range(n):
            length = len(p) + step          # the sequence the step-th token is drawn after
            row = np.zeros((1, width), np.int32)
            row[0, :length] = seq[:length]
            seg = (np.arange(width) < length)[None].astype(np.int32)
            logits = np.asarray(forward(jnp.asarray(row), jnp.asarray(seg))[0, length - 1])
            np.testing.assert_allclose(np.asarray(out["logits"][i, step]), logits,
                                       atol=1e-4, rtol=1e-4)
            assert int(np.argmax(logits)) == seq[length]


def test_cache_structure_follows_the_pattern():
    cfg = _config("pla,swa", num_layers=4)
    cache = init_cache(cfg, 2, 32)
    p = 1 + 8 + 64
    assert jax.tree.map(jnp.shape, cache) == {
        "layer_0": {"s": (2, 2, 4, p, 16), "z": (2, 2, 4, p)},
        "layer_1": {"k": (2, 2, 32, 4, 16), "v": (2, 2, 32, 4, 16)}}
    assert cache["layer_0"]["s"].dtype == jnp.float32
    # the logical axes shard the cache: batch over data x fsdp, the state's heads and the
    # KV heads over tensor
    mesh = sharding.make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
    abstract = jax.eval_shape(lambda: init_cache(cfg, 4, 32))
    sh = sharding.tree_shardings(cache_axes(cfg), abstract, mesh, sharding.get_rules("fsdp_tp"))
    batch = ("data", "fsdp")
    assert sh["layer_0"]["s"].spec == P(None, batch, "tensor", None, None)
    assert sh["layer_0"]["z"].spec == P(None, batch, "tensor", None)
    assert sh["layer_1"]["k"].spec == P(None, batch, None, "tensor", None)
    softmax = ModelConfig(vocab_size=128, d_model=64, num_layers=2, num_heads=4)
    assert jax.tree.map(jnp.shape, init_cache(softmax, 1, 8)) == {
        "k": (2, 1, 8, 4, 16), "v": (2, 1, 8, 4, 16)}


# ----------------------------------------------------------------------------- swa

def _swa_reference(q, k, v, seg, pos, window):
    """softmax over keys j <= i of i's document with pos_i - pos_j < window, float64."""
    q, k, v = (np.asarray(a, np.float64) for a in (q, k, v))
    b, t, h, d = q.shape
    out = np.zeros_like(q)
    for bi in range(b):
        for hi in range(h):
            for i in range(t):
                keys = [j for j in range(i + 1) if seg[bi, j] == seg[bi, i]
                        and pos[bi, i] - pos[bi, j] < window]
                s = np.array([q[bi, i, hi] @ k[bi, j, hi] for j in keys]) / np.sqrt(d)
                w = np.exp(s - s.max())
                out[bi, i, hi] = (w / w.sum()) @ v[bi, keys, hi]
    return out


@pytest.mark.parametrize("impl,chunks", [("dense", 1), ("chunked", 3), ("jax", 1)])
def test_sliding_window_kernels_equal_numpy_loop(impl, chunks):
    ks = jax.random.split(jax.random.key(0), 3)
    q, k, v = (jax.random.normal(x, (2, 20, 2, 8)) for x in ks)
    seg = np.array([[1] * 11 + [2] * 6 + [0] * 3, [1] * 20], np.int32)
    pos = np.stack([np.r_[np.arange(11), np.arange(6), np.arange(3)], np.arange(20)])
    kernel = jax.jit(lambda *a: KERNELS.get(impl)(*a, None, chunks, window=4))
    out = kernel(q, k, v, jnp.asarray(seg), jnp.asarray(pos.astype(np.int32)))
    np.testing.assert_allclose(np.asarray(out), _swa_reference(q, k, v, seg, pos, 4),
                               atol=1e-5, rtol=1e-5)


def test_window_covering_the_sequence_equals_softmax():
    tokens = jax.random.randint(jax.random.key(0), (2, 24), 0, 128)
    softmax = Decoder(_config("softmax"))
    params = jax.jit(softmax.init)(jax.random.key(1), tokens)["params"]
    logits = jax.jit(lambda window: [Decoder(_config(a, attention_window=w)).apply(
        {"params": params}, tokens)[0] for a, w in
        (("softmax", 0), ("swa", 24), ("swa", 4))])
    want, got, narrow = logits(0)
    np.testing.assert_allclose(got, want, atol=1e-6, rtol=1e-6)
    assert np.abs(np.asarray(narrow - want)).max() > 1e-3


# ----------------------------------------------------------------------------- config

@pytest.mark.parametrize("overrides,match", [
    (dict(attention="pla,sofmax"), "unknown model.attention 'sofmax'.*softmax"),
    (dict(attention="pla,swa", num_layers=3), "multiple of the 2 kinds"),
    (dict(attention="swa", attention_window=0), "attention_window >= 1"),
    (dict(attention="pla", pla_prefix_len=0), "pla_prefix_len >= 1"),
    (dict(attention="pla", moe_num_experts=4), "not supported yet"),
    (dict(attention="swa", attn_reuse_prob=0.5), "not supported yet"),
])
def test_config_errors(overrides, match):
    with pytest.raises(ConfigError, match=match):
        _config(**{"attention": "pla", **overrides})


def test_repeated_kind_is_one_kind_and_softmax_tree_is_unchanged():
    cfg = _config("pla,pla")
    assert cfg.attention_pattern == ("pla",) and cfg.layer_kinds == ("pla", "pla")
    assert _config("pla,swa", num_layers=4).layer_kinds == ("pla", "swa", "pla", "swa")
    tokens = jnp.ones((1, 8), jnp.int32)
    tree = lambda c: jax.tree.map(jnp.shape, nn.unbox(jax.eval_shape(  # noqa: E731
        Decoder(c).init, jax.random.key(0), tokens)["params"]))
    layers = tree(_config("softmax"))["layers"]
    assert sorted(layers["attn"]) == ["wk", "wo", "wq", "wv"]
    assert sorted(tree(_config("pla"))["layers"]["attn"]) == [
        "wk", "wk_enc", "wo", "wq", "wv", "wv_enc"]
    assert sorted(tree(_config("pla,swa"))["layers"]) == ["layer_0", "layer_1"]


def test_softmax_only_features_refuse_other_kinds(tmp_path):
    """LUD (KV-cache rollback) and Hugging Face conversion need softmax in every layer."""
    from kyx.interop import hf, hf_layouts
    from kyx.model.lud import lud_generate_padded

    cfg = _config("pla,swa")
    model = Decoder(cfg)
    with pytest.raises(ConfigError, match="Lexical Unit Decoding.*not supported there yet"):
        lud_generate_padded(model, {}, jnp.ones((1, 4), jnp.int32), jnp.asarray([4]),
                            jax.random.key(0), max_new_tokens=2, k=2, ph_id=1, alpha=0.5)
    with pytest.raises(ConfigError, match="Hugging Face"):
        hf.save_params({}, cfg, "llama", str(tmp_path / "out"))
    with pytest.raises(ConfigError, match="Hugging Face"):
        hf_layouts.leaves(cfg, "llama")
    assert not (tmp_path / "out").exists()
