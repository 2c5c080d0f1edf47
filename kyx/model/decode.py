"""Autoregressive generation: one prefill pass, then KV-cached decode steps in a while loop.

Prompts of different lengths are right-padded into one batch; each row keeps its own
position counter, so its cache slots are its positions (see attention.cache_mask).
Layers of a linear-attention kind (model.attention "pla" / "linear") carry a recurrent
state instead of a KV cache (kyx/model/pla.py); the loop is the same.
Generation stops per row at EOS and for the batch when every row is done or
``max_new_tokens`` is reached. Everything runs inside one jit with no host syncs.

Shapes are bucketed so that a few compiled programs serve any prompts: the prompt width
is the next power of two (at least 16) and ``generate_batches`` pads every batch to the
same row count (docs/generation.md).
"""
from __future__ import annotations

import functools
from typing import Iterator, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from kyx.model.lud import lud_generate_padded
from kyx.model.sampling import NEG_INF, sample_logits  # noqa: F401 (re-exported)
from kyx.model.transformer import Decoder, init_cache

MIN_BUCKET = 16


def length_bucket(length: int, minimum: int = MIN_BUCKET) -> int:
    """The padded prompt width for a longest prompt of ``length`` tokens: the next power of
    two, at least ``minimum``. Prompts of any length then share a handful of compiled
    programs (16, 32, 64, ...) at most twice the prefill work of an exact fit."""
    return max(minimum, 1 << max(int(length) - 1, 0).bit_length())


def pad_prompts(prompts: Sequence[Sequence[int]], pad_id: int = 0, rows: int | None = None,
                min_bucket: int = MIN_BUCKET):
    """Right-pad token lists to their length bucket (``length_bucket``). With ``rows``, the
    batch is padded to that many rows with one-token rows of ``pad_id``, so that every
    batch of a run has one shape. Returns (tokens [rows, width], lengths [rows], active
    [rows]: False on the pad rows, which ``generate_padded`` treats as finished)."""
    if not prompts or any(len(p) == 0 for p in prompts):
        raise ValueError("every prompt needs at least one token (e.g. BOS)")
    n = len(prompts) if rows is None else rows
    if n < len(prompts):
        raise ValueError(f"{len(prompts)} prompts do not fit in a batch of {n} rows")
    width = length_bucket(max(len(p) for p in prompts), min_bucket)
    tokens = np.full((n, width), pad_id, np.int32)
    lengths = np.ones((n,), np.int32)
    for i, p in enumerate(prompts):
        tokens[i, : len(p)] = p
        lengths[i] = len(p)
    return tokens, lengths, np.arange(n) < len(prompts)


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
                    return_logits: bool = False, return_logprobs: bool = False,
                    active_b: jax.Array | None = None):
    """Generate from right-padded prompts. Rows with ``active_b`` False (batch padding) are
    finished from the start, so they never keep the loop running; ``params`` may hold
    int8 weights (kyx/model/quant.py; the model dequantises them per layer). Returns dict
    with `tokens` [B, N] (padded with `eos_id` or 0 after stopping), `lengths` [B] (tokens
    before EOS) and optionally `logits` [B, N, V] (the distribution each generated token
    was drawn from) and `logprobs` [B, N] (``sampling_logps`` of each generated token, 0
    after stopping)."""
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

    done_b = jnp.zeros((b,), bool) if active_b is None else ~active_b
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
             top_p: float = 1.0, eos_id: int | None = None, pad_id: int = 0,
             batch_size: int | None = None, lud: dict | None = None) -> list[list[int]]:
    """Generate continuations for token-id prompts; returns one list of new ids per prompt
    (EOS not included: a list shorter than ``max_new_tokens`` stopped at EOS).

    Without ``batch_size`` all prompts are one batch sampled with ``rng``; with it, the
    batches of ``generate_batches``. ``lud``: decode with Lexical Unit Decoding
    (``{"k", "alpha", "ph_id"}``, kyx/model/lud.py) instead of one token per step."""
    options = dict(max_new_tokens=max_new_tokens, temperature=float(temperature),
                   top_k=int(top_k), top_p=float(top_p), eos_id=eos_id, pad_id=pad_id,
                   lud=lud)
    if batch_size is None:
        return _generate_batch(model, params, prompts, rng, None, **options)
    return [ids for batch in generate_batches(model, params, prompts, rng,
                                              batch_size=batch_size, **options)
            for ids in batch]


def generate_batches(model: Decoder, params, prompts: Sequence[Sequence[int]],
                     rng: jax.Array, *, batch_size: int, start_batch: int = 0,
                     **options) -> Iterator[list[list[int]]]:
    """The new ids of ``prompts`` in batches of exactly ``batch_size`` rows (the last one
    padded, its pad rows dropped), from batch ``start_batch`` on; batch i is sampled with
    ``fold_in(rng, i)``, so a run resumed at batch i continues as the uninterrupted run
    would, and one compiled program per prompt-length bucket serves any number of
    prompts. ``options``: those of ``generate``."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    for i in range(start_batch, -(-len(prompts) // batch_size)):
        chunk = prompts[i * batch_size:(i + 1) * batch_size]
        yield _generate_batch(model, params, chunk, jax.random.fold_in(rng, i), batch_size,
                              **options)


def _generate_batch(model, params, prompts, rng, rows, *, pad_id=0, lud=None, **options):
    """One padded batch; ``lud`` (``{"k", "alpha", "ph_id"}``, optionally
    ``"repetition_control"``) decodes it with Lexical Unit Decoding (kyx/model/lud.py)."""
    tokens, lengths, active = pad_prompts(prompts, pad_id, rows=rows)
    decode = functools.partial(lud_generate_padded, **lud) if lud else generate_padded
    out = decode(model, params, jnp.asarray(tokens), jnp.asarray(lengths), rng,
                 active_b=jnp.asarray(active), **options)
    toks, lens = np.asarray(out["tokens"]), np.asarray(out["lengths"])
    return [toks[j, : lens[j]].tolist() for j in range(len(prompts))]
