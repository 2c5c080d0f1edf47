"""Hugging Face checkpoint layouts: config.json mapping and per-tensor name/shape rules.

Supported: Llama 1/2/3 (GQA, rope_theta, Llama-3 / linear rope scaling), Mistral, Qwen2
(biases on q/k/v) and Baichuan 2 (fused `W_pack` qkv, NormHead output, RoPE for 7B,
ALiBi for 13B). HF linear weights are [out, in]; kyx keeps [in, ...out] with heads split
and layers stacked on a leading axis.
"""
from __future__ import annotations

import dataclasses
from typing import Callable

import numpy as np

from kyx.errors import ConfigError
from kyx.model.config import ModelConfig

LLAMA_LIKE = {"llama": "LlamaForCausalLM", "mistral": "MistralForCausalLM",
              "qwen2": "Qwen2ForCausalLM"}
LAYOUTS = (*LLAMA_LIKE, "baichuan")


# ----------------------------------------------------------------------------- config

def _rope(hf: dict) -> tuple[float, dict]:
    """(theta, scaling dict) from either transformers-5 `rope_parameters` or older keys."""
    params = dict(hf.get("rope_parameters") or {})
    scaling = dict(hf.get("rope_scaling") or {})
    theta = float(params.get("rope_theta", hf.get("rope_theta", 10000.0)))
    merged = {**scaling, **params}
    kind = merged.get("rope_type", merged.get("type", "default")) or "default"
    return theta, {**merged, "rope_type": kind}


def layout_of(hf: dict) -> str:
    kind = hf.get("model_type", "")
    if kind in LLAMA_LIKE or kind == "baichuan":
        return kind
    arch = (hf.get("architectures") or [""])[0]
    if arch.startswith("Baichuan"):
        return "baichuan"
    raise ConfigError(f"unsupported Hugging Face model_type {kind!r} (architectures {arch!r}); "
                      f"kyx imports {', '.join(LAYOUTS)}")


def model_config_from_hf(hf: dict) -> tuple[ModelConfig, str]:
    """kyx ModelConfig (and layout name) for an HF config.json dict."""
    layout = layout_of(hf)
    d, heads = hf["hidden_size"], hf["num_attention_heads"]
    kw = dict(vocab_size=hf["vocab_size"], d_model=d, num_layers=hf["num_hidden_layers"],
              num_heads=heads, num_kv_heads=hf.get("num_key_value_heads") or heads,
              head_dim=hf.get("head_dim") or d // heads, ffn_dim=hf["intermediate_size"],
              norm_eps=float(hf.get("rms_norm_eps", 1e-6)),
              tie_embeddings=bool(hf.get("tie_word_embeddings", False)))
    if layout == "baichuan":
        # 7B has RoPE and max_position_embeddings; 13B has ALiBi and model_max_length only
        alibi = "max_position_embeddings" not in hf
        kw.update(position="alibi" if alibi else "rope", norm_head=True,
                  max_seq_len=int(hf.get("model_max_length", hf.get("max_position_embeddings", 4096))),
                  tie_embeddings=False)
        if not alibi:
            kw["rope_theta"] = _rope(hf)[0]
    else:
        theta, scaling = _rope(hf)
        kw.update(rope_theta=theta, max_seq_len=int(hf.get("max_position_embeddings", 2048)),
                  qkv_bias=layout == "qwen2" or bool(hf.get("attention_bias", False)))
        if hf.get("mlp_bias"):
            raise ConfigError("mlp_bias=True is not supported by kyx's SwiGLU")
        kind = scaling["rope_type"]
        if kind == "llama3":
            kw.update(rope_scaling="llama3", rope_scaling_factor=float(scaling["factor"]),
                      rope_low_freq_factor=float(scaling["low_freq_factor"]),
                      rope_high_freq_factor=float(scaling["high_freq_factor"]),
                      rope_original_max_len=int(scaling["original_max_position_embeddings"]))
        elif kind == "linear":
            kw.update(rope_scaling="linear", rope_scaling_factor=float(scaling["factor"]))
        elif kind != "default":
            raise ConfigError(f"rope scaling type {kind!r} is not supported (default, linear, llama3)")
        if layout in ("mistral", "qwen2") and hf.get("sliding_window") and (
                layout == "mistral" or hf.get("use_sliding_window")):
            if hf["sliding_window"] < kw["max_seq_len"]:
                raise ConfigError(f"sliding-window attention ({hf['sliding_window']}) is not "
                                  "supported; kyx attends to the full context")
    return ModelConfig(**kw).validate(), layout


def hf_config_from_model(cfg: ModelConfig, layout: str, bos_id=None, eos_id=None) -> dict:
    """config.json that transformers (or Baichuan's remote code) loads for these params."""
    cfg.require_softmax("Hugging Face export")
    base = {"vocab_size": cfg.vocab_size, "hidden_size": cfg.d_model,
            "intermediate_size": cfg.hidden_dim, "num_hidden_layers": cfg.num_layers,
            "num_attention_heads": cfg.num_heads, "rms_norm_eps": cfg.norm_eps,
            "hidden_act": "silu", "torch_dtype": "float32", "bos_token_id": bos_id,
            "eos_token_id": eos_id, "tie_word_embeddings": cfg.tie_embeddings}
    if layout == "baichuan":
        base.update(model_type="baichuan", architectures=["BaichuanForCausalLM"])
        if cfg.position == "rope":
            base["max_position_embeddings"] = cfg.max_seq_len
        else:
            base["model_max_length"] = cfg.max_seq_len
        return base
    if layout not in LLAMA_LIKE:
        raise ConfigError(f"unknown layout {layout!r}; choose one of {LAYOUTS}")
    if cfg.position != "rope" or cfg.norm_head:
        raise ConfigError(f"layout {layout!r} needs RoPE and no NormHead; use layout 'baichuan'")
    rope = {"rope_theta": cfg.rope_theta, "rope_type": cfg.rope_scaling or "default"}
    if cfg.rope_scaling:
        rope["factor"] = cfg.rope_scaling_factor
    if cfg.rope_scaling == "llama3":
        rope.update(low_freq_factor=cfg.rope_low_freq_factor,
                    high_freq_factor=cfg.rope_high_freq_factor,
                    original_max_position_embeddings=cfg.rope_original_max_len)
    base.update(model_type=layout, architectures=[LLAMA_LIKE[layout]],
                num_key_value_heads=cfg.kv_heads, head_dim=cfg.dim_per_head,
                max_position_embeddings=cfg.max_seq_len, rope_theta=cfg.rope_theta,
                rope_parameters=rope, attention_bias=cfg.qkv_bias and layout == "llama",
                mlp_bias=False)
    if layout == "llama" and cfg.qkv_bias:
        raise ConfigError("Llama's attention_bias also adds an o_proj bias; export q/k/v "
                          "biases with layout 'qwen2'")
    if layout in ("mistral", "qwen2"):
        base.update(sliding_window=None, use_sliding_window=False)
    return base


# ----------------------------------------------------------------------------- tensors

@dataclasses.dataclass(frozen=True)
class Leaf:
    """How one kyx parameter is read: `names(i)` for layer i (or a fixed name), and a
    function from the HF array to the kyx array (per layer for stacked leaves)."""
    names: Callable[[int], str] | str
    to_kyx: Callable[[np.ndarray], np.ndarray]
    hf_shape: tuple[int, ...]
    stacked: bool = True


def leaves(cfg: ModelConfig, layout: str) -> dict[tuple[str, ...], Leaf]:
    """kyx param path -> Leaf, for import."""
    cfg.require_softmax("Hugging Face conversion")
    d, h, k, hd, f = cfg.d_model, cfg.num_heads, cfg.kv_heads, cfg.dim_per_head, cfg.hidden_dim
    p = "model.layers.{}."
    out: dict[tuple[str, ...], Leaf] = {
        ("embed", "embedding"): Leaf("model.embed_tokens.weight", lambda x: x,
                                     (cfg.vocab_size, d), stacked=False),
        ("final_norm", "scale"): Leaf("model.norm.weight", lambda x: x, (d,), stacked=False),
        ("layers", "attn_norm", "scale"): Leaf((p + "input_layernorm.weight").format,
                                               lambda x: x, (d,)),
        ("layers", "mlp_norm", "scale"): Leaf((p + "post_attention_layernorm.weight").format,
                                              lambda x: x, (d,)),
        ("layers", "mlp", "wi_gate"): Leaf((p + "mlp.gate_proj.weight").format, lambda x: x.T, (f, d)),
        ("layers", "mlp", "wi_up"): Leaf((p + "mlp.up_proj.weight").format, lambda x: x.T, (f, d)),
        ("layers", "mlp", "wo"): Leaf((p + "mlp.down_proj.weight").format, lambda x: x.T, (d, f)),
        ("layers", "attn", "wo"): Leaf((p + "self_attn.o_proj.weight").format,
                                       lambda x: x.T.reshape(h, hd, d), (d, h * hd)),
    }
    if not cfg.tie_embeddings:
        out[("head", "kernel")] = Leaf("lm_head.weight", lambda x: x, (cfg.vocab_size, d),
                                       stacked=False)
    if layout == "baichuan":
        pack = (p + "self_attn.W_pack.weight").format
        for j, name in enumerate(("wq", "wk", "wv")):
            out[("layers", "attn", name)] = Leaf(
                pack, lambda x, j=j: x[j * h * hd:(j + 1) * h * hd].T.reshape(d, h, hd),
                (3 * h * hd, d))
        return out
    for name, proj, heads in (("wq", "q_proj", h), ("wk", "k_proj", k), ("wv", "v_proj", k)):
        out[("layers", "attn", name)] = Leaf(
            (p + f"self_attn.{proj}.weight").format,
            lambda x, heads=heads: x.T.reshape(d, heads, hd), (heads * hd, d))
        if cfg.qkv_bias:
            out[("layers", "attn", "b" + name[1])] = Leaf(
                (p + f"self_attn.{proj}.bias").format,
                lambda x, heads=heads: x.reshape(heads, hd), (heads * hd,))
    return out


# HF tensors an import may skip: known-harmless extras that kyx recomputes from config.json.
# Every other tensor in the files must be read into a kyx param, or the import fails
# (kyx/interop/hf_files.py check_names). Add a pattern here only for a buffer that is a
# pure function of config.json; anything carrying trained values must be mapped instead.
IGNORED_TENSORS = (
    # RoPE inverse frequencies, saved by older transformers (Llama 1/2, Baichuan 2 7B)
    r"(model\.layers\.\d+\.self_attn\.|model\.)rotary_emb\.inv_freq",
)


def needed_names(cfg: ModelConfig, layout: str) -> set[str]:
    """Every HF tensor name the import of `cfg` reads."""
    out = set()
    for leaf in leaves(cfg, layout).values():
        out.update([leaf.names(i) for i in range(cfg.num_layers)] if leaf.stacked else [leaf.names])
    return out


def tied_copies(cfg: ModelConfig) -> dict[str, str]:
    """HF tensor -> the tensor it must equal (unused by kyx): a tied head saved with the
    embedding, as `model.state_dict()` and some conversion scripts do."""
    return {"lm_head.weight": "model.embed_tokens.weight"} if cfg.tie_embeddings else {}


def export_tensors(cfg: ModelConfig, layout: str, get: Callable[[tuple, int | None], np.ndarray]):
    """Yield (hf_name, array) one tensor at a time; `get(path, layer)` reads a kyx leaf."""
    d, h, k, hd = cfg.d_model, cfg.num_heads, cfg.kv_heads, cfg.dim_per_head
    yield "model.embed_tokens.weight", get(("embed", "embedding"), None)
    for i in range(cfg.num_layers):
        p = f"model.layers.{i}."
        attn = lambda n: get(("layers", "attn", n), i)  # noqa: E731
        wq = attn("wq").reshape(d, h * hd).T
        wk = attn("wk").reshape(d, k * hd).T
        wv = attn("wv").reshape(d, k * hd).T
        if layout == "baichuan":
            yield p + "self_attn.W_pack.weight", np.concatenate([wq, wk, wv], axis=0)
        else:
            yield p + "self_attn.q_proj.weight", wq
            yield p + "self_attn.k_proj.weight", wk
            yield p + "self_attn.v_proj.weight", wv
            if cfg.qkv_bias:
                yield p + "self_attn.q_proj.bias", attn("bq").reshape(h * hd)
                yield p + "self_attn.k_proj.bias", attn("bk").reshape(k * hd)
                yield p + "self_attn.v_proj.bias", attn("bv").reshape(k * hd)
        yield p + "self_attn.o_proj.weight", attn("wo").reshape(h * hd, d).T
        yield p + "mlp.gate_proj.weight", get(("layers", "mlp", "wi_gate"), i).T
        yield p + "mlp.up_proj.weight", get(("layers", "mlp", "wi_up"), i).T
        yield p + "mlp.down_proj.weight", get(("layers", "mlp", "wo"), i).T
        yield p + "input_layernorm.weight", get(("layers", "attn_norm", "scale"), i)
        yield p + "post_attention_layernorm.weight", get(("layers", "mlp_norm", "scale"), i)
    yield "model.norm.weight", get(("final_norm", "scale"), None)
    if not cfg.tie_embeddings:
        yield "lm_head.weight", get(("head", "kernel"), None)
