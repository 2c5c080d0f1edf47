"""Multi-head attention with MHA / GQA / MQA, RoPE or ALiBi, document masks and a KV cache.

Two masking modes (the softmax math lives in kyx/model/attention_kernels.py):
* training / full forward: key j is visible to query i when j <= i (index in the row)
  and both tokens belong to the same document (`segment_ids`), so packed documents
  never attend to each other; computed by the kernel `impl` names (``chunked`` by
  default: query blocks that skip most of the masked upper triangle);
* cached decoding: keys live in cache slots indexed by position; a query at position p
  sees slots 0..p of its own row (one sequence per row).

``window`` > 0 makes it sliding-window attention (model.attention kind "swa"): key j is
also required to satisfy pos_i - pos_j < window. Decoding keeps the full KV cache and
masks it (a ring buffer of ``window`` slots would save memory; not done yet).

Attention-weight reuse (HunYuan, docs/moe.md): given the previous layer's probabilities
and a traced boolean, a layer either computes its own softmax(QK^T) or takes the previous
one (``lax.cond``, so QK^T is really skipped) and applies its own V and O to it.
"""
from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from kyx import axes as ax
from kyx.model.attention_kernels import (KERNELS, alibi_bias, alibi_slopes, attend_values,
                                         attention_probs, document_mask, dot_product_attention,
                                         window_mask)
from kyx.model.layers import param_with_axes
from kyx.sharding import constrain


# ----------------------------------------------------------------------------- positions

def rope_frequencies(head_dim: int, theta: float, scaling: str = "", factor: float = 1.0,
                     low_freq_factor: float = 1.0, high_freq_factor: float = 4.0,
                     original_max_len: int = 8192) -> np.ndarray:
    """Inverse frequencies theta^(-2i/d), i < d/2 (LLaMA convention), optionally scaled.

    "linear" divides every frequency by `factor` (position interpolation). "llama3" keeps
    high frequencies (wavelength < original_max_len / high_freq_factor), divides low ones
    (wavelength > original_max_len / low_freq_factor) by `factor`, and interpolates
    smoothly in between (Llama 3.1).
    """
    inv = 1.0 / (theta ** (np.arange(0, head_dim, 2, dtype=np.float64) / head_dim))
    if scaling == "linear":
        return inv / factor
    if scaling == "llama3":
        wavelen = 2 * np.pi / inv
        low_wavelen = original_max_len / low_freq_factor
        high_wavelen = original_max_len / high_freq_factor
        smooth = (original_max_len / wavelen - low_freq_factor) / (high_freq_factor - low_freq_factor)
        scaled = np.where(wavelen > low_wavelen, inv / factor, inv)
        medium = (wavelen >= high_wavelen) & (wavelen <= low_wavelen)
        return np.where(medium, (1 - smooth) * inv / factor + smooth * inv, scaled)
    return inv


def apply_rope(x_bthd: jax.Array, positions_bt: jax.Array, inv_freq: np.ndarray) -> jax.Array:
    """Rotary embedding, half-split ("rotate_half") layout as in LLaMA / HF transformers."""
    angles_btf = positions_bt[..., None].astype(jnp.float32) * jnp.asarray(inv_freq, jnp.float32)
    cos = jnp.cos(angles_btf)[:, :, None, :]
    sin = jnp.sin(angles_btf)[:, :, None, :]
    x = x_bthd.astype(jnp.float32)
    x1, x2 = jnp.split(x, 2, axis=-1)
    out = jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
    return out.astype(x_bthd.dtype)


# ----------------------------------------------------------------------------- masks

def cache_mask(q_positions_bt: jax.Array, cache_len: int, window: int = 0) -> jax.Array:
    """[B, 1, T, S] boolean: a query at position p sees cache slots 0..p (with ``window``
    > 0 only slots p - window + 1 .. p: sliding-window attention)."""
    slots_s = jnp.arange(cache_len)
    mask_bts = slots_s[None, None, :] <= q_positions_bt[:, :, None]
    if window:
        mask_bts = mask_bts & window_mask(q_positions_bt, slots_s[None], window)
    return mask_bts[:, None]


def write_cache(cache_bskd: jax.Array, new_btkd: jax.Array, start_b: jax.Array) -> jax.Array:
    """Write T new entries per row at slots start_b .. start_b + T - 1."""
    def one(c_skd, n_tkd, s):
        return jax.lax.dynamic_update_slice(c_skd, n_tkd.astype(c_skd.dtype), (s, 0, 0))
    return jax.vmap(one)(cache_bskd, new_btkd, start_b)


# ----------------------------------------------------------------------------- module

class Attention(nn.Module):
    num_heads: int
    num_kv_heads: int
    head_dim: int
    position: str = "rope"
    rope: tuple = (10000.0,)       # ModelConfig.rope: (theta, scaling, factor, low, high, orig)
    init_std: float = 0.02
    dtype: Any = jnp.float32
    qkv_bias: bool = False
    impl: str = "chunked"          # training-path kernel (kyx/model/attention_kernels.py)
    chunks: int = 4                # query blocks of the "chunked" kernel
    param_dtype: Any = jnp.float32    # storage dtype of wq/wk/wv/wo (and biases)
    window: int = 0                # > 0: sliding-window attention over that many positions

    @nn.compact
    def __call__(self, x_btd: jax.Array, segment_ids_bt: jax.Array, positions_bt: jax.Array,
                 cache: dict | None = None, prev_probs: jax.Array | None = None,
                 reuse: jax.Array | None = None):
        """Returns ``(out_btd, new_cache, probs_bkgts)``.

        ``new_cache`` is None without a cache. ``probs`` is None unless ``prev_probs`` is
        given (attention-weight reuse; training only, no cache): then it holds the
        probabilities this layer used (its own, or ``prev_probs`` when the scalar ``reuse``
        is true), for the next layer."""
        d = x_btd.shape[-1]
        h, k, hd = self.num_heads, self.num_kv_heads, self.head_dim
        init = nn.initializers.normal(self.init_std)
        wq = param_with_axes(self, "wq", init, (d, h, hd), (ax.EMBED, ax.HEADS, ax.HEAD_DIM))
        wk = param_with_axes(self, "wk", init, (d, k, hd), (ax.EMBED, ax.KV_HEADS, ax.HEAD_DIM))
        wv = param_with_axes(self, "wv", init, (d, k, hd), (ax.EMBED, ax.KV_HEADS, ax.HEAD_DIM))
        wo = param_with_axes(self, "wo", init, (h, hd, d), (ax.HEADS, ax.HEAD_DIM, ax.EMBED))
        zeros = nn.initializers.zeros
        if self.qkv_bias:
            bq = param_with_axes(self, "bq", zeros, (h, hd), (ax.HEADS, ax.HEAD_DIM))
            bk = param_with_axes(self, "bk", zeros, (k, hd), (ax.KV_HEADS, ax.HEAD_DIM))
            bv = param_with_axes(self, "bv", zeros, (k, hd), (ax.KV_HEADS, ax.HEAD_DIM))
        x = x_btd.astype(self.dtype)
        v_btkd = jnp.einsum("btd,dhk->bthk", x, wv.astype(self.dtype))
        if self.qkv_bias:
            v_btkd = v_btkd + bv.astype(self.dtype)
        v_btkd = constrain(v_btkd, (ax.ACT_BATCH, ax.ACT_LENGTH, ax.ACT_KV_HEADS, None))

        def project_qk():
            q_bthd = jnp.einsum("btd,dhk->bthk", x, wq.astype(self.dtype))
            k_btkd = jnp.einsum("btd,dhk->bthk", x, wk.astype(self.dtype))
            if self.qkv_bias:
                q_bthd = q_bthd + bq.astype(self.dtype)
                k_btkd = k_btkd + bk.astype(self.dtype)
            q_bthd = constrain(q_bthd, (ax.ACT_BATCH, ax.ACT_LENGTH, ax.ACT_HEADS, None))
            k_btkd = constrain(k_btkd, (ax.ACT_BATCH, ax.ACT_LENGTH, ax.ACT_KV_HEADS, None))
            if self.position == "rope":
                inv_freq = rope_frequencies(hd, *self.rope)
                q_bthd = apply_rope(q_bthd, positions_bt, inv_freq)
                k_btkd = apply_rope(k_btkd, positions_bt, inv_freq)
            return q_bthd, k_btkd

        slopes_h = alibi_slopes(h) if self.position == "alibi" else None

        def bias(kv_pos_bs):
            return alibi_bias(slopes_h, positions_bt, kv_pos_bs)

        if prev_probs is not None:
            if cache is not None or self.window:
                raise ValueError("attention reuse is a training-time feature of full softmax "
                                 "attention; not with a cache or a window")

            def own_probs():
                q_bthd, k_btkd = project_qk()
                return attention_probs(q_bthd, k_btkd.astype(self.dtype),
                                       document_mask(segment_ids_bt), bias(positions_bt),
                                       ).astype(prev_probs.dtype)
            probs = jax.lax.cond(reuse, lambda: prev_probs, own_probs)
            out_bthd = attend_values(probs, v_btkd.astype(self.dtype))
            return self._out(out_bthd, wo), None, probs

        q_bthd, k_btkd = project_qk()
        if cache is None:
            out_bthd = KERNELS.get(self.impl)(q_bthd, k_btkd, v_btkd, segment_ids_bt,
                                              positions_bt, slopes_h, self.chunks,
                                              window=self.window)
            return self._out(out_bthd, wo), None, None
        start_b = positions_bt[:, 0]
        keys = write_cache(cache["k"], k_btkd, start_b)
        values = write_cache(cache["v"], v_btkd, start_b)
        s = keys.shape[1]
        kv_pos_bs = jnp.broadcast_to(jnp.arange(s)[None], (keys.shape[0], s))
        out_bthd = dot_product_attention(q_bthd, keys.astype(self.dtype),
                                         values.astype(self.dtype),
                                         cache_mask(positions_bt, s, self.window),
                                         bias(kv_pos_bs))
        return self._out(out_bthd, wo), {"k": keys, "v": values}, None

    def _out(self, out_bthd, wo):
        return project_out(out_bthd, wo, self.dtype)


def project_out(out_bthd: jax.Array, wo_hkd: jax.Array, dtype: Any) -> jax.Array:
    """Heads back to the model width: [B, T, H, D] x wo [H, D, d] -> [B, T, d]."""
    out_bthd = constrain(out_bthd.astype(dtype), (ax.ACT_BATCH, ax.ACT_LENGTH, ax.ACT_HEADS, None))
    out_btd = jnp.einsum("bthk,hkd->btd", out_bthd, wo_hkd.astype(dtype))
    return constrain(out_btd, ax.BTD)
