"""Lexical Unit Decoding (KwaiYii; Sun et al., LREC-COLING 2024; ALGORITHMS.md §5).

A step is one forward pass over ``[last token, PH x (k-1)]`` at positions ``t .. t+k-1``
(PH = the tokenizer's input-only placeholder ``<|ph|>``): position ``t`` predicts ``t+1``
as autoregressive decoding does and is always accepted; placeholder position ``t+i``
predicts ``t+i+1`` from the prefix alone. The longest leading run of positions whose
maximum probability is >= ``alpha`` is accepted (repetition control cuts a parallel token
equal to the one before it); the rest is dropped and predicted again at the next step.
``alpha >= 1`` accepts position 1 only, which is greedy AR decoding.

KV cache (the paper leaves this open; kyx's choice): the interior tokens of an accepted
unit keep the placeholder's cache entries, exactly as the reconfigured training data has
placeholder inputs inside units (``mine_units`` below, kyx/train/lud.py), and the unit's
last token is fed at the next step at its own position. So every step is one forward of
fixed width ``k`` and the cache after a step is the cache of a run that fed only the
accepted structure. Rollback of rejected positions ``t+j .. t+k-1`` is the row's frontier
moving to ``t+j``: a query at position ``p`` sees slots ``<= p`` only
(attention.cache_mask), and the next step writes ``k`` slots from ``t+j``, overwriting
every rejected one before any query can see it (tests/model/test_lud.py checks the cache
against a run that never saw them).

Everything runs in one jit (a while loop; per-row frontiers and acceptance lengths), with
no host round trip per token; ``alpha`` is a traced argument, so one compilation serves an
alpha sweep. ``mine_units`` is the same loop teacher-forced over known
sequences: it accepts a parallel position only if it predicts the true token with
confidence >= ``alpha``, and returns which inputs become placeholders.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from kyx.model.sampling import sample_logits
from kyx.model.transformer import Decoder, init_cache


DEFAULTS = {"k": 4, "alpha": 0.9}  # positions per step; acceptance confidence


def leading_run(ok_bk: jax.Array) -> jax.Array:
    """[B] length of the leading run of True in each row, position 0 counted as True."""
    ok_bk = ok_bk.at[:, 0].set(True)
    return jnp.sum(jnp.cumprod(ok_bk.astype(jnp.int32), axis=1), axis=1)


def parallel_ok(conf_bk: jax.Array, tok_bk: jax.Array, alpha,
                repetition_control: bool) -> jax.Array:
    """[B, k] whether each position may be accepted after the ones before it: max
    probability >= alpha (never for alpha >= 1) and, with repetition control, a parallel
    token that differs from its predecessor. Position 0 is decided by the caller."""
    ok_bk = (conf_bk >= alpha) & (alpha < 1.0)
    if repetition_control:
        repeat_bk = jnp.concatenate(
            [jnp.zeros_like(tok_bk[:, :1], bool), tok_bk[:, 1:] == tok_bk[:, :-1]], axis=1)
        ok_bk = ok_bk & ~repeat_bk
    return ok_bk


def _step_inputs(last_b, pos_b, k: int, ph_id: int):
    """Tokens, segment ids and positions of one step: the last token, then k-1 placeholders."""
    b = last_b.shape[0]
    tokens_bk = jnp.concatenate([last_b[:, None], jnp.full((b, k - 1), ph_id, jnp.int32)], 1)
    positions_bk = pos_b[:, None] + jnp.arange(k, dtype=jnp.int32)[None]
    return tokens_bk, jnp.ones((b, k), jnp.int32), positions_bk


def _write_rows(buf_bn, new_bk, start_b):
    """buf[b, start_b : start_b + k] = new[b] for every row."""
    return jax.vmap(lambda r, n, s: jax.lax.dynamic_update_slice(r, n, (s,)))(
        buf_bn, new_bk.astype(buf_bn.dtype), start_b)


def _prefill(model, params, tokens_bp, batch_width: int):
    """Cache for the padded prompts (slots past a row's length are never visible before
    they are overwritten)."""
    model.cfg.require_softmax("Lexical Unit Decoding (its rollback rewrites KV-cache slots)")
    b, p = tokens_bp.shape
    cache = init_cache(model.cfg, b, batch_width)
    positions_bp = jnp.broadcast_to(jnp.arange(p, dtype=jnp.int32), (b, p))
    _, aux = model.apply({"params": params}, tokens_bp, jnp.ones((b, p), jnp.int32),
                         positions_bp, cache=cache)
    return aux["cache"]


@functools.partial(jax.jit, static_argnames=(
    "model", "max_new_tokens", "k", "ph_id", "temperature", "top_k", "top_p",
    "eos_id", "repetition_control", "return_cache"))
def lud_generate_padded(model: Decoder, params, tokens_bp: jax.Array, lengths_b: jax.Array,
                        rng: jax.Array, *, max_new_tokens: int, k: int, ph_id: int,
                        alpha: float, temperature: float = 0.0, top_k: int = 0,
                        top_p: float = 1.0, eos_id: int | None = None,
                        repetition_control: bool = True, return_cache: bool = False,
                        active_b: jax.Array | None = None) -> dict:
    """LUD from right-padded prompts. Returns ``tokens`` [B, N] (``eos_id`` or 0 after a
    row stops), ``lengths`` [B] (tokens before EOS), ``forwards`` [B] (decoding forward
    passes the row was active for; tokens per forward = lengths / forwards when no EOS)
    and ``accepted`` [k] (how many steps accepted 1..k tokens, summed over rows); with
    ``return_cache`` also the final ``cache`` and each row's ``frontier`` (the position its
    next input goes to; slots below it are the visible ones).

    Position 1 is sampled as ``generate`` samples (temperature 0 = greedy); parallel
    positions take the argmax and are accepted only when position 1 took its argmax too,
    so a sampled off-mode token never carries a continuation predicted for another one.
    Rows with ``active_b`` False (batch padding) are finished from the start."""
    b, p = tokens_bp.shape
    n = max_new_tokens
    cache = _prefill(model, params, tokens_bp, p + n + k)
    fill = 0 if eos_id is None else eos_id
    last_b = jnp.take_along_axis(tokens_bp, (lengths_b - 1)[:, None], axis=1)[:, 0]
    state = dict(i=jnp.int32(0), cache=cache, last=last_b.astype(jnp.int32),
                 pos=(lengths_b - 1).astype(jnp.int32), n=jnp.zeros((b,), jnp.int32),
                 done=jnp.zeros((b,), bool) if active_b is None else ~active_b,
                 out=jnp.full((b, n + k), fill, jnp.int32),
                 forwards=jnp.zeros((b,), jnp.int32), accepted=jnp.zeros((k,), jnp.int32))

    def cond(s):
        return (s["i"] < n) & ~jnp.all(s["done"])

    def body(s):
        tokens_bk, segs_bk, positions_bk = _step_inputs(s["last"], s["pos"], k, ph_id)
        logits_bkv, aux = model.apply({"params": params}, tokens_bk, segs_bk, positions_bk,
                                      cache=s["cache"])
        logits_bkv = logits_bkv.astype(jnp.float32)
        greedy_bk = jnp.argmax(logits_bkv, axis=-1).astype(jnp.int32)
        conf_bk = jnp.max(jax.nn.softmax(logits_bkv, axis=-1), axis=-1)
        first_b = sample_logits(logits_bkv[:, 0], jax.random.fold_in(rng, s["i"]),
                                temperature, top_k, top_p)
        tok_bk = greedy_bk.at[:, 0].set(first_b)
        ok_bk = parallel_ok(conf_bk, tok_bk, alpha, repetition_control)
        ok_bk = ok_bk & (first_b == greedy_bk[:, 0])[:, None]
        if eos_id is not None:  # nothing after an end of sequence
            after_eos_bk = jnp.cumsum((tok_bk == eos_id).astype(jnp.int32), axis=1) > 0
            ok_bk = ok_bk & ~jnp.concatenate(
                [jnp.zeros((b, 1), bool), after_eos_bk[:, :-1]], axis=1)
        live_b = ~s["done"]
        j_b = jnp.minimum(leading_run(ok_bk), n - s["n"]) * live_b
        last_accepted_b = jnp.take_along_axis(tok_bk, jnp.maximum(j_b - 1, 0)[:, None], 1)[:, 0]
        # EOS can only be the last accepted token (nothing after it is ok)
        stop_b = (live_b & (last_accepted_b == eos_id) if eos_id is not None
                  else jnp.zeros_like(live_b))
        out = _write_rows(s["out"], jnp.where(live_b[:, None], tok_bk, fill), s["n"])
        new_n = s["n"] + j_b
        last = jnp.where(live_b, last_accepted_b, s["last"])
        hist_k = jnp.sum(jax.nn.one_hot(j_b - 1, k, dtype=jnp.int32) * live_b[:, None], 0)
        return dict(i=s["i"] + 1, cache=aux["cache"], last=last, pos=s["pos"] + j_b,
                    n=new_n, done=s["done"] | stop_b | (new_n >= n), out=out,
                    forwards=s["forwards"] + live_b, accepted=s["accepted"] + hist_k)

    s = jax.lax.while_loop(cond, body, state)
    # tokens before the first EOS; everything from it on (and past n) is the fill token
    out_bn = s["out"][:, :n]
    if eos_id is not None:
        seen_bn = jnp.cumsum((out_bn == eos_id).astype(jnp.int32), axis=1) > 0
        lengths = jnp.minimum(jnp.sum(~seen_bn, axis=1), s["n"])
    else:
        lengths = s["n"]
    keep_bn = jnp.arange(n)[None] < lengths[:, None]
    result = {"tokens": jnp.where(keep_bn, out_bn, fill), "lengths": lengths.astype(jnp.int32),
              "forwards": s["forwards"], "accepted": s["accepted"]}
    if return_cache:
        result.update(cache=s["cache"], frontier=s["pos"])
    return result


@functools.partial(jax.jit, static_argnames=("model", "k", "ph_id", "repetition_control"))
def mine_units(model: Decoder, params, tokens_bt: jax.Array, learn_bt: jax.Array, *, k: int,
               ph_id: int, alpha: float, repetition_control: bool = True) -> dict:
    """Lexical units of known sequences (teacher-forced LUD).

    ``tokens_bt`` are the inputs, ``learn_bt`` marks the positions whose next token is
    learned (the SFT loss mask over targets ``tokens[t+1]``). From the first learned
    position on, each step feeds the frontier's true token plus k-1 placeholders and
    accepts the leading run of positions that predict the true next token, are learned,
    and have confidence >= alpha (position 1 always). Returns ``placeholder`` [B, T] (bool:
    inputs inside a unit, to be replaced by PH when the example is reconfigured), ``units``
    [B] and ``unit_tokens`` [B] (tokens covered by multi-token units)."""
    b, t = tokens_bt.shape
    tokens_bt = tokens_bt.astype(jnp.int32)
    learn_bt = learn_bt.astype(bool)
    idx_t = jnp.arange(t, dtype=jnp.int32)
    start_b = jnp.min(jnp.where(learn_bt, idx_t[None], t), axis=1)
    end_b = jnp.max(jnp.where(learn_bt, idx_t[None] + 1, 0), axis=1)   # one past the last
    cache = _prefill(model, params, tokens_bt, t + k)
    # the true next token and "learned" for every position, padded by k for the window reads
    next_bt = jnp.concatenate([tokens_bt[:, 1:], jnp.zeros((b, k + 1), jnp.int32)], axis=1)
    learn_pad = jnp.concatenate([learn_bt, jnp.zeros((b, k), bool)], axis=1)
    take = jax.vmap(lambda row, s: jax.lax.dynamic_slice(row, (s,), (k,)))
    state = dict(cache=cache, pos=jnp.minimum(start_b, t - 1),
                 ph=jnp.zeros((b, t + k), bool), units=jnp.zeros((b,), jnp.int32),
                 unit_tokens=jnp.zeros((b,), jnp.int32))

    def cond(s):
        return jnp.any(s["pos"] < end_b)

    def body(s):
        active_b = s["pos"] < end_b
        last_b = jnp.take_along_axis(tokens_bt, jnp.minimum(s["pos"], t - 1)[:, None], 1)[:, 0]
        tokens_bk, segs_bk, positions_bk = _step_inputs(last_b, s["pos"], k, ph_id)
        logits_bkv, aux = model.apply({"params": params}, tokens_bk, segs_bk, positions_bk,
                                      cache=s["cache"])
        logits_bkv = logits_bkv.astype(jnp.float32)
        pred_bk = jnp.argmax(logits_bkv, axis=-1).astype(jnp.int32)
        conf_bk = jnp.max(jax.nn.softmax(logits_bkv, axis=-1), axis=-1)
        true_bk = take(next_bt, s["pos"])
        ok_bk = (parallel_ok(conf_bk, true_bk, alpha, repetition_control)
                 & (pred_bk == true_bk) & take(learn_pad, s["pos"]))
        j_b = leading_run(ok_bk) * active_b
        # inputs pos+1 .. pos+j-1 (the unit's interior) become placeholders
        offs_k = jnp.arange(k, dtype=jnp.int32)[None]
        interior_bk = (offs_k >= 1) & (offs_k < j_b[:, None])
        ph = s["ph"] | _scatter_rows(interior_bk, s["pos"][:, None] + offs_k, t + k)
        return dict(cache=aux["cache"], pos=s["pos"] + j_b, ph=ph,
                    units=s["units"] + (j_b > 1), unit_tokens=s["unit_tokens"]
                    + jnp.where(j_b > 1, j_b, 0))

    s = jax.lax.while_loop(cond, body, state)
    return {"placeholder": s["ph"][:, :t], "units": s["units"], "unit_tokens": s["unit_tokens"]}


def _scatter_rows(values_bk: jax.Array, index_bk: jax.Array, width: int) -> jax.Array:
    """[B, width] bool with values_bk[b, i] placed at index_bk[b, i] (False elsewhere)."""
    onehot_bkw = jax.nn.one_hot(index_bk, width, dtype=jnp.int32) * values_bk[..., None]
    return jnp.sum(onehot_bkw, axis=1) > 0
