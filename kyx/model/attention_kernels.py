"""Softmax attention kernels: the shared math and the training-path implementations.

``model.attention_impl`` picks how the full-sequence (training / scoring) forward computes
softmax(Q K^T / sqrt(d) + bias) V under the causal document mask (key j visible to query
i when j <= i and both are in the same document):

* ``chunked`` (default): queries in ``model.attention_chunks`` blocks; block i only
  meets the keys up to its last query, so the masked upper triangle is mostly never
  computed: about (n + 1) / 2n of the dense work (62.5% at the default 4 blocks), in the
  forward and the backward pass. On the 2-core CPU of docs/benchmarks.md this halved the
  attention core's forward+backward time at the `small` size (1045 -> 502 ms for one
  layer's shapes, 8 blocks) and cut the whole step 6.14 -> 4.9 s.
* ``dense``: one [T, T] score matrix per head (the reference; also the cached-decoding
  and attention-reuse paths, which need whole probability matrices).
* ``jax``: ``jax.nn.dot_product_attention`` with the mask and bias, so that JAX can pick
  cuDNN's fused attention on GPUs (XLA elsewhere).

All three agree to float rounding (tests/model/test_attention_kernels.py). In ``dense``
and ``chunked`` the scores and the softmax are float32 whatever the compute dtype (``jax``
computes them as JAX's kernel does); queries are scaled by 1/sqrt(d) before the product
(T / d times fewer multiplications than scaling the T x T scores).
"""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

from kyx.registry import Registry

NEG_INF = -1e30  # finite so fully masked rows (padding) give uniform, not NaN, weights

KERNELS = Registry("model.attention_impl")


# ----------------------------------------------------------------------------- masks, bias

def document_mask(segment_ids_bt: jax.Array, positions_bt: jax.Array | None = None,
                  window: int = 0) -> jax.Array:
    """[B, 1, T, T] boolean: causal within the row and within the same document (and, with
    ``window`` > 0, key position > query position - window: sliding-window attention)."""
    return document_mask_block(segment_ids_bt, 0, segment_ids_bt.shape[1], positions_bt,
                               window)


def document_mask_block(segment_ids_bt: jax.Array, start: int, stop: int,
                        positions_bt: jax.Array | None = None, window: int = 0) -> jax.Array:
    """[B, 1, stop - start, stop] boolean: queries start..stop-1 against keys 0..stop-1."""
    causal_ts = np.arange(start, stop)[:, None] >= np.arange(stop)[None, :]
    same_bts = segment_ids_bt[:, start:stop, None] == segment_ids_bt[:, None, :stop]
    mask_bts = causal_ts[None] & same_bts
    if window:
        mask_bts = mask_bts & window_mask(positions_bt[:, start:stop], positions_bt[:, :stop],
                                          window)
    return mask_bts[:, None]


def window_mask(q_pos_bt: jax.Array, kv_pos_bs: jax.Array, window: int) -> jax.Array:
    """[B, T, S] boolean: query position - key position < ``window`` (sliding window)."""
    return q_pos_bt[:, :, None] - kv_pos_bs[:, None, :] < window


def alibi_slopes(num_heads: int) -> np.ndarray:
    """ALiBi head slopes (Press et al.): geometric 2^(-8i/n); non-powers of two interleave."""
    def power_of_two(n):
        start = 2.0 ** (-8.0 / n)
        return [start ** (i + 1) for i in range(n)]
    closest = 2 ** int(math.floor(math.log2(num_heads)))
    slopes = power_of_two(closest)
    if closest < num_heads:
        slopes += power_of_two(2 * closest)[0::2][: num_heads - closest]
    return np.asarray(slopes, dtype=np.float32)


def alibi_bias(slopes_h: np.ndarray | None, q_pos_bt: jax.Array, kv_pos_bs: jax.Array):
    """[B, H, T, S] ALiBi bias slope_h * (key position - query position), or None."""
    if slopes_h is None:
        return None
    rel_bts = (kv_pos_bs[:, None, :] - q_pos_bt[:, :, None]).astype(jnp.float32)
    return jnp.asarray(slopes_h)[None, :, None, None] * rel_bts[:, None]


# ----------------------------------------------------------------------------- shared math

def attention_probs(q_bthd, k_bskd, mask_b1ts, bias_bhts=None):
    """Softmax(QK^T / sqrt(d) + bias) in float32, grouped as [B, kv_heads, group, T, S]."""
    b, t, h, d = q_bthd.shape
    kv = k_bskd.shape[2]
    g = h // kv
    q_btkgd = (q_bthd * np.asarray(1.0 / np.sqrt(d), q_bthd.dtype)).reshape(b, t, kv, g, d)
    scores = jnp.einsum("btkgd,bskd->bkgts", q_btkgd, k_bskd,
                        preferred_element_type=jnp.float32)
    if bias_bhts is not None:
        scores = scores + bias_bhts.reshape(b, kv, g, t, -1)
    scores = jnp.where(mask_b1ts[:, :, None], scores, NEG_INF)
    return jax.nn.softmax(scores, axis=-1)


def attend_values(probs_bkgts, v_bskd):
    """Weighted sum of values: [B, kv, g, T, S] x [B, S, kv, D] -> [B, T, kv * g, D]."""
    b, kv, g, t, _ = probs_bkgts.shape
    out_btkgd = jnp.einsum("bkgts,bskd->btkgd", probs_bkgts.astype(v_bskd.dtype), v_bskd)
    return out_btkgd.reshape(b, t, kv * g, v_bskd.shape[-1])


def dot_product_attention(q_bthd, k_bskd, v_bskd, mask_b1ts, bias_bhts=None):
    """Softmax attention with grouped KV heads; scores and softmax in float32."""
    return attend_values(attention_probs(q_bthd, k_bskd, mask_b1ts, bias_bhts), v_bskd)


# ----------------------------------------------------------------------------- kernels
# kernel(q_bthd, k_bthd, v_bthd, segment_ids_bt, positions_bt, slopes_h | None, chunks,
#        window=0) -> out_bthd, for the full-sequence forward (keys = the same T tokens as
# the queries); window > 0 adds the sliding-window condition pos_i - pos_j < window.

@KERNELS.register("dense")
def dense_attention(q_bthd, k_btkd, v_btkd, segment_ids_bt, positions_bt, slopes_h, chunks,
                    window=0):
    del chunks
    return dot_product_attention(q_bthd, k_btkd, v_btkd,
                                 document_mask(segment_ids_bt, positions_bt, window),
                                 alibi_bias(slopes_h, positions_bt, positions_bt))


@KERNELS.register("chunked")
def chunked_attention(q_bthd, k_btkd, v_btkd, segment_ids_bt, positions_bt, slopes_h, chunks,
                      window=0):
    """Query blocks of ceil(T / chunks) rows, each against the keys up to its last row."""
    t = q_bthd.shape[1]
    size = -(-t // max(1, chunks))
    outs = []
    for start in range(0, t, size):
        stop = min(start + size, t)
        mask = document_mask_block(segment_ids_bt, start, stop, positions_bt, window)
        bias = alibi_bias(slopes_h, positions_bt[:, start:stop], positions_bt[:, :stop])
        outs.append(dot_product_attention(q_bthd[:, start:stop], k_btkd[:, :stop],
                                          v_btkd[:, :stop], mask, bias))
    return outs[0] if len(outs) == 1 else jnp.concatenate(outs, axis=1)


@KERNELS.register("jax")
def jax_attention(q_bthd, k_btkd, v_btkd, segment_ids_bt, positions_bt, slopes_h, chunks,
                  window=0):
    """``jax.nn.dot_product_attention`` (cuDNN on GPUs when eligible, XLA elsewhere)."""
    del chunks
    bias = alibi_bias(slopes_h, positions_bt, positions_bt)
    out = jax.nn.dot_product_attention(q_bthd, k_btkd, v_btkd, bias=bias,
                                       mask=document_mask(segment_ids_bt, positions_bt, window))
    return out.astype(v_btkd.dtype)
