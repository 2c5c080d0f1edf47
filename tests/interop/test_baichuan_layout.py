"""Baichuan 2 layout: exact round trip through W_pack / NormHead / ALiBi, and a numpy
forward pass written from Baichuan 2's formulas (transformers does not ship it)."""
import json

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from kyx.interop import hf, hf_layouts
from kyx.model import Decoder, ModelConfig


def _baichuan_forward(sd, cfg, tokens):
    """Reference forward from the Baichuan 2 formulas, on the exported HF tensors."""
    d, h, eps = cfg["hidden_size"], cfg["num_attention_heads"], cfg["rms_norm_eps"]
    hd = d // h
    alibi = "max_position_embeddings" not in cfg

    def rms(x, w):
        return x / np.sqrt(np.mean(x * x, -1, keepdims=True) + eps) * w

    def rope(x, pos):
        inv = 1.0 / (10000.0 ** (np.arange(0, hd, 2) / hd))
        ang = pos[:, None] * inv[None]
        cos, sin = np.cos(np.concatenate([ang, ang], -1)), np.sin(np.concatenate([ang, ang], -1))
        rot = np.concatenate([-x[..., hd // 2:], x[..., : hd // 2]], -1)
        return x * cos[:, None] + rot * sin[:, None]

    t = len(tokens)
    x = sd["model.embed_tokens.weight"][tokens].astype(np.float64)
    pos = np.arange(t, dtype=np.float64)
    n = 2 ** int(np.floor(np.log2(h)))
    base = [2 ** (-8.0 / n * (i + 1)) for i in range(n)]
    slopes = np.array(base + [2 ** (-8.0 / (2 * n) * (i + 1)) for i in range(2 * n)][0::2][: h - n])
    for i in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{i}."
        y = rms(x, sd[p + "input_layernorm.weight"])
        qkv = y @ sd[p + "self_attn.W_pack.weight"].T                # fused projection
        q, k, v = (qkv[:, j * d:(j + 1) * d].reshape(t, h, hd) for j in range(3))
        if not alibi:
            q, k = rope(q, pos), rope(k, pos)
        scores = np.einsum("qhd,khd->hqk", q, k) / np.sqrt(hd)
        if alibi:  # Baichuan adds slope * key_position; softmax makes it relative
            scores = scores + slopes[:, None, None] * pos[None, None, :]
        scores = np.where(np.tril(np.ones((t, t)))[None] > 0, scores, -np.inf)
        w = np.exp(scores - scores.max(-1, keepdims=True))
        w /= w.sum(-1, keepdims=True)
        attn = np.einsum("hqk,khd->qhd", w, v).reshape(t, d)
        x = x + attn @ sd[p + "self_attn.o_proj.weight"].T
        y = rms(x, sd[p + "post_attention_layernorm.weight"])
        gate, up = y @ sd[p + "mlp.gate_proj.weight"].T, y @ sd[p + "mlp.up_proj.weight"].T
        x = x + (gate / (1 + np.exp(-gate)) * up) @ sd[p + "mlp.down_proj.weight"].T
    x = rms(x, sd["model.norm.weight"])
    head = sd["lm_head.weight"]
    head = head / np.linalg.norm(head, axis=1, keepdims=True)     # NormHead
    return x @ head.T


@pytest.mark.parametrize("position,heads", [("rope", 4), ("alibi", 4), ("alibi", 6)],
                         ids=["7b-style-rope", "13b-style-alibi", "alibi-6-heads"])
def test_baichuan_round_trip_and_formulas(position, heads, tmp_path):
    cfg = ModelConfig(vocab_size=80, d_model=8 * heads, num_layers=2, num_heads=heads,
                      ffn_dim=40, position=position, norm_head=True, max_seq_len=64)
    model = Decoder(cfg)
    params = nn.unbox(model.init(jax.random.key(3), jnp.zeros((1, 8), jnp.int32))["params"])
    rng = np.random.default_rng(0)
    params = jax.tree.map(lambda x: jnp.asarray(rng.normal(size=x.shape) * 0.3, jnp.float32),
                          params)
    hf.save_params(params, cfg, "baichuan", str(tmp_path))
    hf_cfg = json.load(open(tmp_path / "config.json"))
    reader = hf.SafetensorsReader(str(tmp_path))
    names = set(reader.names())
    assert "model.layers.0.self_attn.W_pack.weight" in names
    assert not any("q_proj" in n for n in names)
    assert reader.get("model.layers.0.self_attn.W_pack.weight").shape == (3 * cfg.d_model, cfg.d_model)
    back_cfg, layout = hf_layouts.model_config_from_hf(hf_cfg)
    assert layout == "baichuan" and back_cfg.position == position and back_cfg.norm_head
    back = hf.load_params(str(tmp_path), back_cfg, layout)
    for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(back)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    tokens = rng.integers(0, 80, size=12)
    ours, _ = model.apply({"params": params}, jnp.asarray(tokens[None], jnp.int32))
    sd = {n: reader.get(n).astype(np.float64) for n in names}
    ref = _baichuan_forward(sd, hf_cfg, tokens)
    np.testing.assert_allclose(np.asarray(ours[0]), ref, atol=1e-4, rtol=1e-4)
