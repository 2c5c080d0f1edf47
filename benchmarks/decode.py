"""Lexical Unit Decoding vs autoregressive decoding of the same model on the same prompts.

    python benchmarks/decode.py --workdir runs/lud [--before runs/sft] \
        [--alphas 0.3,0.5,0.7,0.9,1.0] [--k 4] [--prompts 64] [--batch 16] [--max-tokens 96]

Prompts are the validation records' prompts in chat format (the SFT data: docstring ->
function body). For each alpha prints one JSON line: tokens per forward pass, wall-clock
tokens/s of LUD and of greedy AR decoding (same batch, both compiled before timing), the
speed-up, the exact-match rate of LUD's output with AR's (whole responses and tokens up to
the first difference), and the "parses as Python" rate of both (kyx/rewards/verifiers.py).
With ``--before`` (the workdir LUD training started from) it also prints the eval loss on
normal validation rows of both models, the quality cost of the LUD training itself.
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

import kyx  # noqa: E402
from kyx.data import preference_corpus, templates  # noqa: E402
from kyx.data.tokenizer import PLACEHOLDER  # noqa: E402
from kyx.metrics import read_metrics  # noqa: E402
from kyx.model.decode import generate_padded, pad_prompts  # noqa: E402
from kyx.model.lud import lud_generate_padded  # noqa: E402
from kyx.rewards.verifiers import parses  # noqa: E402


def validation_prompts(loaded, n: int):
    recs = preference_corpus.load_records(loaded.config.data, "sft", None
                                          if loaded.config.data.records.source != "mined"
                                          else _corpus(loaded.config))
    source = recs.source("validation")
    template = templates.make_template(loaded.tokenizer, loaded.config.data.records.get(
        "chat_template", "auto"))
    texts = [source[i]["prompt"] for i in range(min(n, len(source)))]
    return texts, [template.prompt_ids(prompt=t) for t in texts], template.stop_id


def _corpus(cfg):
    from kyx.data.corpus import load_corpus
    return load_corpus(cfg.data)


def timed(fn, repeats: int):
    out = fn()
    jax.block_until_ready(out)               # compile and warm up
    t0 = time.perf_counter()
    for _ in range(repeats):
        out = fn()
        jax.block_until_ready(out)
    return out, (time.perf_counter() - t0) / repeats


def decode_all(loaded, ids, batch, max_tokens, eos, alpha=None, k=4, repeats=1):
    """Greedy outputs, total wall time, generated tokens and forward passes."""
    outs, seconds, tokens, forwards = [], 0.0, 0, 0
    ph = loaded.tokenizer.special_id(PLACEHOLDER)
    for start in range(0, len(ids), batch):
        toks, lens, active = pad_prompts(ids[start:start + batch], rows=batch)
        args = (loaded.model, loaded.params, jnp.asarray(toks), jnp.asarray(lens),
                jax.random.key(0))
        common = dict(max_new_tokens=max_tokens, temperature=0.0, eos_id=eos,
                      active_b=jnp.asarray(active))
        if alpha is None:
            fn = lambda: generate_padded(*args, **common)  # noqa: E731
        else:
            fn = lambda: lud_generate_padded(*args, k=k, ph_id=ph,  # noqa: E731
                                             alpha=alpha, **common)
        out, sec = timed(fn, repeats)
        n = len(ids[start:start + batch])
        lens_b = np.asarray(out["lengths"])[:n]
        outs += [np.asarray(out["tokens"][i, :lens_b[i]]).tolist() for i in range(n)]
        seconds += sec
        # tokens produced include the end-of-turn token when a row stopped
        produced = np.minimum(lens_b + 1, max_tokens)
        tokens += int(produced.sum())
        forwards += int(np.asarray(out["forwards"])[:n].sum()) if "forwards" in out \
            else int(produced.sum())
    return outs, seconds, tokens, forwards


def eval_loss(workdir: str) -> float | None:
    rows = [r for r in read_metrics(workdir) if "eval/loss" in r]
    return rows[-1]["eval/loss"] if rows else None


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--workdir", required=True, help="a LUD-trained workdir")
    p.add_argument("--before", help="the workdir LUD training started from (eval loss)")
    p.add_argument("--alphas", default="0.3,0.5,0.7,0.9,1.0")
    p.add_argument("--k", type=int, default=4)
    p.add_argument("--prompts", type=int, default=64)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--max-tokens", type=int, default=96)
    p.add_argument("--repeats", type=int, default=1)
    args = p.parse_args()
    loaded = kyx.load(args.workdir)
    texts, ids, eos = validation_prompts(loaded, args.prompts)
    common = dict(batch=args.batch, max_tokens=args.max_tokens, eos=eos, repeats=args.repeats)
    ar, ar_sec, ar_tokens, _ = decode_all(loaded, ids, **common)
    decode = loaded.tokenizer.decode
    ar_parses = float(np.mean([parses(t, decode(o)) for t, o in zip(texts, ar)]))
    base = {"bench": "decode", "workdir": args.workdir, "prompts": len(ids),
            "batch": args.batch, "max_tokens": args.max_tokens, "k": args.k}
    print(json.dumps({**base, "method": "ar", "tokens": ar_tokens,
                      "tokens_per_s": round(ar_tokens / ar_sec, 1), "tokens_per_forward": 1.0,
                      "parses": round(ar_parses, 4)}), flush=True)
    for alpha in [float(a) for a in args.alphas.split(",")]:
        out, sec, tokens, forwards = decode_all(loaded, ids, alpha=alpha, k=args.k, **common)
        same = [a == b for a, b in zip(out, ar)]
        prefix = [next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
                  / max(len(b), 1) for a, b in zip(out, ar)]
        print(json.dumps({
            **base, "method": "lud", "alpha": alpha, "tokens": tokens,
            "tokens_per_forward": round(tokens / max(forwards, 1), 3),
            "tokens_per_s": round(tokens / sec, 1),
            "speedup_vs_ar": round((tokens / sec) / (ar_tokens / ar_sec), 3),
            "exact_match_vs_ar": round(float(np.mean(same)), 4),
            "agreeing_prefix_vs_ar": round(float(np.mean(prefix)), 4),
            "parses": round(float(np.mean([parses(t, decode(o)) for t, o in zip(texts, out)])),
                            4),
            "parses_ar": round(ar_parses, 4)}), flush=True)
    if args.before:
        print(json.dumps({**base, "method": "eval_loss", "before": eval_loss(args.before),
                          "after": eval_loss(args.workdir)}), flush=True)


if __name__ == "__main__":
    main()
