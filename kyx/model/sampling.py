"""Token sampling from logits: temperature (0 = greedy), top-k and nucleus (top-p).

Shared by autoregressive decoding (kyx/model/decode.py) and Lexical Unit Decoding
(kyx/model/lud.py).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

NEG_INF = -1e30


def sample_logits(logits_bv: jax.Array, rng: jax.Array, temperature: float = 1.0,
                  top_k: int = 0, top_p: float = 1.0) -> jax.Array:
    """Sample token ids; temperature 0 is greedy; top-k and nucleus (top-p) filtering."""
    logits = logits_bv.astype(jnp.float32)
    if temperature == 0.0:
        return jnp.argmax(logits, axis=-1).astype(jnp.int32)
    logits = logits / temperature
    if top_k and top_k < logits.shape[-1]:
        kth_b1 = jax.lax.top_k(logits, top_k)[0][:, -1:]
        logits = jnp.where(logits < kth_b1, NEG_INF, logits)
    if top_p < 1.0:
        sorted_bv = jnp.sort(logits, axis=-1)[:, ::-1]
        probs_bv = jax.nn.softmax(sorted_bv, axis=-1)
        # keep the smallest prefix whose mass reaches top_p (the first token always kept)
        mass_before_bv = jnp.cumsum(probs_bv, axis=-1) - probs_bv
        keep_bv = mass_before_bv < top_p
        cutoff_b1 = jnp.min(jnp.where(keep_bv, sorted_bv, jnp.inf), axis=-1, keepdims=True)
        logits = jnp.where(logits < cutoff_b1, NEG_INF, logits)
    return jax.random.categorical(rng, logits, axis=-1).astype(jnp.int32)
