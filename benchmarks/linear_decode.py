"""Decoding memory and speed of the recurrent attention kinds vs the softmax KV cache.

For each attention kind (``--kinds``, model.attention patterns) and each context length
(``--contexts``), builds a randomly initialised model of the same width, prefills a batch
of ``--batch`` prompts of that length and greedily decodes ``--tokens`` tokens with the
model's cached decode step. Prints one JSON line per (kind, context):

* ``cache_bytes_per_row`` (and ``_layer``): bytes of the decoding cache (init_cache: softmax's K/V grows with the
  context, the PLA / linear state does not), per row and per layer;
* ``prefill_s``: wall time of a 1-token ``generate_padded`` (prefill + one step);
* ``decode_tokens_per_s``: tokens / s of ``--tokens`` greedy cached decode steps run from
  the prefilled cache in one jitted loop (the per-token cost without the prefill, whose
  run-to-run spread at long contexts exceeds the decode loop's time); best of
  ``--repeats`` after a compile.

PLA's prefix is the whole prompt (M = context), as in JRT-RNN inference.

    python benchmarks/linear_decode.py [--contexts 512,2048,8192] [--kinds softmax,linear,pla]
"""
import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from kyx.model.config import ModelConfig  # noqa: E402
from kyx.model.decode import generate_padded  # noqa: E402
from kyx.model.transformer import Decoder, init_cache  # noqa: E402


def model_for(kind: str, context: int, tokens: int, args) -> Decoder:
    cfg = ModelConfig(vocab_size=args.vocab, d_model=args.d_model, num_layers=args.layers,
                      num_heads=args.heads, max_seq_len=context + tokens, attention=kind,
                      pla_prefix_len=context, attention_window=args.window).validate()
    return Decoder(cfg)


def best_time(fn, repeats: int) -> float:
    jax.block_until_ready(fn())               # compile and warm up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - t0)
    return min(times)


def decode_loop(model, n: int):
    """jit: ``n`` greedy cached decode steps from a prefilled cache (the decode loop of
    kyx.model.decode without the prefill, so its time is the per-token cost alone)."""
    def run(params, cache, tok_b, pos_b):
        def body(_, carry):
            cache, tok_b, pos_b = carry
            logits_b1v, aux = model.apply({"params": params}, tok_b[:, None],
                                          jnp.ones_like(tok_b)[:, None], pos_b[:, None],
                                          cache=cache)
            return aux["cache"], jnp.argmax(logits_b1v[:, 0], -1).astype(tok_b.dtype), pos_b + 1
        return jax.lax.fori_loop(0, n, body, (cache, tok_b, pos_b))[1]
    return jax.jit(run)


def measure(kind: str, context: int, args) -> dict:
    model = model_for(kind, context, args.tokens, args)
    rng = np.random.default_rng(0)
    prompts = rng.integers(1, args.vocab, (args.batch, context)).astype(np.int32)
    params = model.init(jax.random.key(0), prompts[:, :8])["params"]
    lengths = np.full((args.batch,), context, np.int32)
    prefill_s = best_time(lambda: generate_padded(model, params, prompts, lengths,
                                                  jax.random.key(1), max_new_tokens=1,
                                                  temperature=0.0)["tokens"], args.repeats)
    cache = init_cache(model.cfg, args.batch, context + args.tokens)
    positions = np.broadcast_to(np.arange(context, dtype=np.int32), prompts.shape)
    _, aux = jax.jit(lambda p, c: model.apply({"params": p}, prompts, np.ones_like(prompts),
                                              positions, cache=c))(params, cache)
    tok_b, pos_b = jnp.asarray(prompts[:, -1]), jnp.full((args.batch,), context, jnp.int32)
    loop = decode_loop(model, args.tokens)
    decode_s = best_time(lambda: loop(params, aux["cache"], tok_b, pos_b), args.repeats)
    row_cache = init_cache(model.cfg, 1, context + args.tokens)
    cache_bytes = sum(x.nbytes for x in jax.tree.leaves(row_cache))
    return {"kind": kind, "context": context, "batch": args.batch, "tokens": args.tokens,
            "cache_bytes_per_row": cache_bytes,
            "cache_bytes_per_row_layer": cache_bytes // args.layers,
            "prefill_s": round(prefill_s, 4),
            "decode_tokens_per_s": round(args.batch * args.tokens / decode_s, 1)}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--kinds", default="softmax,linear,pla")
    p.add_argument("--contexts", default="512,2048,8192")
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--tokens", type=int, default=129)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--d-model", dest="d_model", type=int, default=128)
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--vocab", type=int, default=512)
    p.add_argument("--window", type=int, default=256, help="swa window, if 'swa' is a kind")
    args = p.parse_args(argv)
    for context in (int(c) for c in args.contexts.split(",")):
        for kind in args.kinds.split(";" if ";" in args.kinds else ","):
            print(json.dumps(measure(kind, context, args)), flush=True)


if __name__ == "__main__":
    main()
