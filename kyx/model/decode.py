"""Autoregressive generation: one prefill pass, then KV-cached decode steps in a while loop.

Prompts of different lengths are right-padded into one batch; each row keeps its own
position counter, so its cache slots are its positions (see attention.cache_mask).
Generation stops per row at EOS and for the batch when every row is done or
``max_new_tokens`` is reached. Everything runs inside one jit with no host syncs.
"""
from __future__ import annotations

import functools
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from kyx.model.transformer import Decoder, init_cache

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


def pad_prompts(prompts: Sequence[Sequence[int]], pad_id: int = 0, multiple: int = 16):
    """Right-pad token lists to a shared length (rounded up to limit recompiles)."""
    if not prompts or any(len(p) == 0 for p in prompts):
        raise ValueError("every prompt needs at least one token (e.g. BOS)")
    longest = max(len(p) for p in prompts)
    width = -(-longest // multiple) * multiple
    tokens = np.full((len(prompts), width), pad_id, np.int32)
    for i, p in enumerate(prompts):
        tokens[i, : len(p)] = p
    return tokens, np.asarray([len(p) for p in prompts], np.int32)


def sampling_logps(logits_bv: jax.Array, tokens_b: jax.Array, temperature: float) -> jax.Array:
    """log softmax(logits / T)[token]: the policy's log-prob of a sampled token at sampling
    temperature T (top-k / top-p truncation is a sampling device, not part of the policy;
    T = 0, greedy, counts as 1)."""
    scaled = logits_bv.astype(jnp.float32) / (temperature or 1.0)
    logp_bv = jax.nn.log_softmax(scaled, axis=-1)
    return jnp.take_along_axis(logp_bv, tokens_b[:, None], axis=-1)[:, 0]


@functools.partial(jax.jit, static_argnames=(
    "model", "max_new_tokens", "temperature", "top_k", "top_p", "eos_id", "return_logits",
    "return_logprobs"))
def generate_padded(model: Decoder, params, tokens_bp: jax.Array, lengths_b: jax.Array,
                    rng: jax.Array, *, max_new_tokens: int, temperature: float = 1.0,
                    top_k: int = 0, top_p: float = 1.0, eos_id: int | None = None,
                    return_logits: bool = False, return_logprobs: bool = False):
    """Generate from right-padded prompts. Returns dict with `tokens` [B, N] (padded with
    `eos_id` or 0 after stopping), `lengths` [B] (tokens before EOS) and optionally
    `logits` [B, N, V] (the distribution each generated token was drawn from) and
    `logprobs` [B, N] (``sampling_logps`` of each generated token, 0 after stopping)."""
    b, p = tokens_bp.shape
    cfg = model.cfg
    cache = init_cache(cfg, b, p + max_new_tokens)
    positions_bp = jnp.broadcast_to(jnp.arange(p, dtype=jnp.int32), (b, p))
    segments_bp = (positions_bp < lengths_b[:, None]).astype(jnp.int32)
    logits_bpv, aux = model.apply({"params": params}, tokens_bp, segments_bp, positions_bp,
                                  cache=cache)
    last_bv = jnp.take_along_axis(logits_bpv, (lengths_b - 1)[:, None, None], axis=1)[:, 0]
    fill = 0 if eos_id is None else eos_id
    out_bn = jnp.full((b, max_new_tokens), fill, jnp.int32)
    out_logits = (jnp.zeros((b, max_new_tokens, cfg.vocab_size), jnp.float32)
                  if return_logits else None)
    out_logp = jnp.zeros((b, max_new_tokens), jnp.float32) if return_logprobs else None

    def pick(i, logits_bv, rng, done_b, out_bn, recorded):
        out_logits, out_logp = recorded
        tok_b = sample_logits(logits_bv, jax.random.fold_in(rng, i), temperature, top_k, top_p)
        tok_b = jnp.where(done_b, fill, tok_b)
        out_bn = out_bn.at[:, i].set(tok_b)
        if out_logits is not None:
            out_logits = out_logits.at[:, i].set(logits_bv.astype(jnp.float32))
        if out_logp is not None:
            logp_b = sampling_logps(logits_bv, tok_b, temperature)
            out_logp = out_logp.at[:, i].set(jnp.where(done_b, 0.0, logp_b))
        finished = (tok_b == eos_id) if eos_id is not None else jnp.zeros_like(done_b)
        return tok_b, done_b | finished, out_bn, (out_logits, out_logp)

    done_b = jnp.zeros((b,), bool)
    lengths_out = jnp.zeros((b,), jnp.int32)
    tok_b, new_done, out_bn, recorded = pick(0, last_bv, rng, done_b, out_bn,
                                             (out_logits, out_logp))
    lengths_out = lengths_out + (~new_done).astype(jnp.int32)
    state = (1, aux["cache"], tok_b, lengths_b, new_done, out_bn, recorded, lengths_out)

    def cond(state):
        i, _, _, _, done_b, *_ = state
        return (i < max_new_tokens) & ~jnp.all(done_b)

    def body(state):
        i, cache, tok_b, pos_b, done_b, out_bn, recorded, lengths_out = state
        logits_b1v, aux = model.apply({"params": params}, tok_b[:, None],
                                      jnp.ones((b, 1), jnp.int32), pos_b[:, None], cache=cache)
        tok_b, new_done, out_bn, recorded = pick(i, logits_b1v[:, 0], rng, done_b, out_bn,
                                                 recorded)
        lengths_out = lengths_out + (~new_done).astype(jnp.int32)
        return (i + 1, aux["cache"], tok_b, pos_b + 1, new_done, out_bn, recorded, lengths_out)

    state = jax.lax.while_loop(cond, body, state)
    result = {"tokens": state[5], "lengths": state[7]}
    if return_logits:
        result["logits"] = state[6][0]
    if return_logprobs:
        result["logprobs"] = state[6][1]
    return result


def generate(model: Decoder, params, prompts: Sequence[Sequence[int]], rng: jax.Array, *,
             max_new_tokens: int = 64, temperature: float = 1.0, top_k: int = 0,
             top_p: float = 1.0, eos_id: int | None = None, pad_id: int = 0) -> list[list[int]]:
    """Generate continuations for token-id prompts; returns one list of new ids per prompt."""
    tokens, lengths = pad_prompts(prompts, pad_id)
    out = generate_padded(model, params, jnp.asarray(tokens), jnp.asarray(lengths), rng,
                          max_new_tokens=max_new_tokens, temperature=float(temperature),
                          top_k=int(top_k), top_p=float(top_p), eos_id=eos_id)
    toks, lens = np.asarray(out["tokens"]), np.asarray(out["lengths"])
    return [toks[i, : lens[i]].tolist() for i in range(len(prompts))]
