"""Tensor-name and shape mapping between kyx Decoder params and the HF Llama layout.

HF linear weights are [out, in]; kyx keeps [in, ...out] with heads split out, and stacks
layers on a leading axis (nn.scan). HF's q/k rows already use the half-split RoPE layout
that kyx's `apply_rope` implements, so no permutation is needed.
"""
from __future__ import annotations

from typing import Mapping

import numpy as np

from kyx.model.config import ModelConfig


def params_from_llama(sd: Mapping[str, np.ndarray], cfg: ModelConfig) -> dict:
    """kyx params (numpy) from an HF Llama-layout state dict of numpy arrays."""
    d, h, k, hd = cfg.d_model, cfg.num_heads, cfg.kv_heads, cfg.dim_per_head

    def get(name, shape):
        if name not in sd:
            raise KeyError(f"missing tensor {name!r} (expected shape {shape})")
        x = np.asarray(sd[name], np.float32)
        if tuple(x.shape) != tuple(shape):
            raise ValueError(f"tensor {name!r} has shape {tuple(x.shape)}, expected {tuple(shape)}")
        return x

    def layer(i):
        p = f"model.layers.{i}."
        f = cfg.hidden_dim
        return {
            "attn": {
                "wq": get(p + "self_attn.q_proj.weight", (h * hd, d)).T.reshape(d, h, hd),
                "wk": get(p + "self_attn.k_proj.weight", (k * hd, d)).T.reshape(d, k, hd),
                "wv": get(p + "self_attn.v_proj.weight", (k * hd, d)).T.reshape(d, k, hd),
                "wo": get(p + "self_attn.o_proj.weight", (d, h * hd)).T.reshape(h, hd, d),
            },
            "attn_norm": {"scale": get(p + "input_layernorm.weight", (d,))},
            "mlp": {
                "wi_gate": get(p + "mlp.gate_proj.weight", (f, d)).T,
                "wi_up": get(p + "mlp.up_proj.weight", (f, d)).T,
                "wo": get(p + "mlp.down_proj.weight", (d, f)).T,
            },
            "mlp_norm": {"scale": get(p + "post_attention_layernorm.weight", (d,))},
        }

    layers = [layer(i) for i in range(cfg.num_layers)]
    stacked = _stack(layers)
    params = {
        "embed": {"embedding": get("model.embed_tokens.weight", (cfg.vocab_size, d))},
        "layers": stacked,
        "final_norm": {"scale": get("model.norm.weight", (d,))},
    }
    if not cfg.tie_embeddings:
        params["head"] = {"kernel": get("lm_head.weight", (cfg.vocab_size, d))}
    return params


def params_to_llama(params: Mapping, cfg: ModelConfig) -> dict[str, np.ndarray]:
    """HF Llama-layout state dict (numpy) from kyx params."""
    d, h, k, hd = cfg.d_model, cfg.num_heads, cfg.kv_heads, cfg.dim_per_head
    lay = params["layers"]
    sd = {"model.embed_tokens.weight": np.asarray(params["embed"]["embedding"]),
          "model.norm.weight": np.asarray(params["final_norm"]["scale"])}
    for i in range(cfg.num_layers):
        p = f"model.layers.{i}."
        a, m = lay["attn"], lay["mlp"]
        sd[p + "self_attn.q_proj.weight"] = np.asarray(a["wq"][i]).reshape(d, h * hd).T
        sd[p + "self_attn.k_proj.weight"] = np.asarray(a["wk"][i]).reshape(d, k * hd).T
        sd[p + "self_attn.v_proj.weight"] = np.asarray(a["wv"][i]).reshape(d, k * hd).T
        sd[p + "self_attn.o_proj.weight"] = np.asarray(a["wo"][i]).reshape(h * hd, d).T
        sd[p + "mlp.gate_proj.weight"] = np.asarray(m["wi_gate"][i]).T
        sd[p + "mlp.up_proj.weight"] = np.asarray(m["wi_up"][i]).T
        sd[p + "mlp.down_proj.weight"] = np.asarray(m["wo"][i]).T
        sd[p + "input_layernorm.weight"] = np.asarray(lay["attn_norm"]["scale"][i])
        sd[p + "post_attention_layernorm.weight"] = np.asarray(lay["mlp_norm"]["scale"][i])
    if not cfg.tie_embeddings:
        sd["lm_head.weight"] = np.asarray(params["head"]["kernel"])
    return {n: np.ascontiguousarray(x) for n, x in sd.items()}


def _stack(trees: list[dict]) -> dict:
    first = trees[0]
    if isinstance(first, dict):
        return {key: _stack([t[key] for t in trees]) for key in first}
    return np.stack(trees, axis=0)
