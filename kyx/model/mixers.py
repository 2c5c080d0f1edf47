"""Attention kinds (``model.attention``) by registration: the layer each kind builds, its
config checks, its decoding cache (structure and logical sharding axes) and its FLOPs.

* ``softmax``: kyx/model/attention.py, full causal softmax attention with a KV cache;
* ``swa``: the same layer with a sliding window of ``model.attention_window`` positions
  (decoding keeps the full KV cache and masks it);
* ``pla``: prefix linear attention (JRT-RNN, kyx/model/pla.py) with a recurrent state;
* ``linear``: causal linear attention with the same Taylor map (PLA without the encoder).

Entry metadata: ``check(cfg)`` raises ConfigError for settings the kind needs;
``cache(cfg, layers, batch, max_len, dtype)`` is the zero cache of ``layers`` stacked
layers and ``cache_axes`` its logical axes (same tree); ``matmul_params(cfg)`` and
``flops(cfg, seq_len)`` count one layer's projection weights and per-token attention
FLOPs beyond them (kyx/model/flops.py).
"""
from __future__ import annotations

import jax.numpy as jnp

from kyx import axes as ax
from kyx.errors import ConfigError
from kyx.model.attention import Attention
from kyx.model.linear_attention import num_features
from kyx.model.pla import LinearAttention
from kyx.registry import Registry

MIXERS = Registry("model.attention", check=None, cache=None, cache_axes=None,
                  matmul_params=None, flops=None)

CACHE_AXES = (ax.LAYERS, ax.ACT_BATCH, None, ax.ACT_KV_HEADS, None)   # softmax k / v
STATE_AXES = (ax.LAYERS, ax.ACT_BATCH, ax.ACT_HEADS, None, None)     # linear s [L,B,H,P,D]


# ----------------------------------------------------------------------------- softmax, swa

def _kv_cache(cfg, layers: int, batch: int, max_len: int, dtype) -> dict:
    shape = (layers, batch, max_len, cfg.kv_heads, cfg.dim_per_head)
    return {"k": jnp.zeros(shape, dtype), "v": jnp.zeros(shape, dtype)}


def _softmax_params(cfg) -> int:
    d, hd = cfg.d_model, cfg.dim_per_head
    return d * hd * (cfg.num_heads + 2 * cfg.kv_heads) + cfg.num_heads * hd * d


def _attention(cfg, name: str, window: int = 0) -> Attention:
    return Attention(cfg.num_heads, cfg.kv_heads, cfg.dim_per_head, cfg.position,
                     cfg.rope, cfg.init_std, cfg.compute_dtype, cfg.qkv_bias,
                     cfg.attention_impl, cfg.attention_chunks,
                     param_dtype=cfg.storage_dtype, window=window, name=name)


def _softmax_flops(cfg, seq_len: int) -> float:
    """QK^T and AV, causal-halved: 2 * 2 * (T / 2) * H * D."""
    return 2.0 * seq_len * cfg.num_heads * cfg.dim_per_head


def _swa_flops(cfg, seq_len: int) -> float:
    """QK^T and AV over the mean visible keys: T / 2 when W >= T, else W - W^2 / 2T."""
    w, t = cfg.attention_window, seq_len
    keys = t / 2 if w >= t else w - w * w / (2 * t)
    return 4.0 * keys * cfg.num_heads * cfg.dim_per_head


def _check_swa(cfg) -> None:
    if cfg.attention_window < 1:
        raise ConfigError("model.attention kind 'swa' needs model.attention_window >= 1 "
                          "(the number of positions a query sees, itself included)")


MIXERS.register("softmax", cache=_kv_cache, cache_axes={"k": CACHE_AXES, "v": CACHE_AXES},
                matmul_params=_softmax_params, flops=_softmax_flops)(_attention)
MIXERS.register("swa", check=_check_swa, cache=_kv_cache,
                cache_axes={"k": CACHE_AXES, "v": CACHE_AXES}, matmul_params=_softmax_params,
                flops=_swa_flops)(lambda cfg, name: _attention(cfg, name, cfg.attention_window))


# ----------------------------------------------------------------------------- pla, linear

def _state_cache(cfg, layers: int, batch: int, max_len: int, dtype) -> dict:
    """The recurrent state, float32 whatever the compute dtype; independent of max_len."""
    del max_len, dtype
    p = num_features(cfg.pla_feature_dim)
    shape = (layers, batch, cfg.num_heads, p)
    return {"s": jnp.zeros(shape + (cfg.dim_per_head,), jnp.float32),
            "z": jnp.zeros(shape, jnp.float32)}


def _linear(cfg, name: str, encoder: bool) -> LinearAttention:
    return LinearAttention(cfg.num_heads, cfg.dim_per_head, cfg.pla_feature_dim,
                           cfg.pla_prefix_len, encoder, cfg.pla_chunk, cfg.init_std,
                           cfg.compute_dtype, cfg.storage_dtype, name=name)


def _linear_params(cfg, encoder: bool) -> int:
    d, h, f, hd = cfg.d_model, cfg.num_heads, cfg.pla_feature_dim, cfg.dim_per_head
    return d * h * (2 * f + hd) + encoder * d * h * (f + hd) + h * hd * d


def _linear_flops(cfg, seq_len: int, scans: int) -> float:
    """Per scan and head: the intra-block scores (P x C) and their values (C x D), the
    state read (P x D) and update (P x D), C = min(pla_chunk, T); the full C x C block is
    computed, so not halved. PLA runs 3 scans (causal, encoder forward and reverse)."""
    p, c = num_features(cfg.pla_feature_dim), min(cfg.pla_chunk, seq_len)
    per_head = 2.0 * (p * c + c * cfg.dim_per_head + 2 * p * cfg.dim_per_head)
    return scans * cfg.num_heads * per_head


def _check_linear(cfg) -> None:
    if cfg.pla_feature_dim < 1 or cfg.pla_chunk < 1:
        raise ConfigError(f"linear attention needs model.pla_feature_dim >= 1 and "
                          f"model.pla_chunk >= 1, got {cfg.pla_feature_dim}, {cfg.pla_chunk}")


def _check_pla(cfg) -> None:
    _check_linear(cfg)
    if cfg.pla_prefix_len < 1:
        raise ConfigError("model.attention kind 'pla' needs model.pla_prefix_len >= 1 (M: "
                          "tokens at position < M of their document are the prefix)")


STATE_CACHE_AXES = {"s": STATE_AXES, "z": STATE_AXES[:4]}
MIXERS.register("pla", check=_check_pla, cache=_state_cache, cache_axes=STATE_CACHE_AXES,
                matmul_params=lambda cfg: _linear_params(cfg, True),
                flops=lambda cfg, t: _linear_flops(cfg, t, 3))(
                    lambda cfg, name: _linear(cfg, name, True))
MIXERS.register("linear", check=_check_linear, cache=_state_cache,
                cache_axes=STATE_CACHE_AXES, matmul_params=lambda cfg: _linear_params(cfg, False),
                flops=lambda cfg, t: _linear_flops(cfg, t, 1))(
                    lambda cfg, name: _linear(cfg, name, False))
