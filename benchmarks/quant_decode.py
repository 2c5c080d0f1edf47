"""Row-wise int8 weight-only decode vs float32 on a trained workdir (kyx/model/quant.py).

Prints JSON lines:

* ``weights``: stored parameter bytes, float32 vs int8 + scales (all parameters, and the
  quantised matmul weights alone);
* ``logits``: max |logit error| of the int8 model over every position and vocabulary
  entry of teacher-forced sequences (the prompts + the float32 greedy continuations),
  next to the float32 logits' spread, and the top-1 agreement at those positions;
* ``greedy``: greedy decoding of ``--prompts`` prompts x ``--tokens`` tokens (no EOS stop)
  from both models: the fraction of generated tokens equal position by position, the
  fraction of prompts whose continuations are identical and the mean length of the
  common prefix; decode wall time of each (compiled; best of 3 calls);
* ``memory``: XLA's memory analysis of the compiled decode program of each (arguments,
  temporaries, outputs), showing whether dequantised float32 weights are materialised.

Prompts are the first ``def name(`` of standard-library modules (the embedded corpus's
text), so they are in-distribution for the shipped presets.

    python benchmarks/quant_decode.py --workdir runs/small [--prompts 16 --tokens 32]
"""
import argparse
import json
import os
import re
import sys
import sysconfig
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

import kyx  # noqa: E402
from kyx.model.decode import generate_padded, pad_prompts  # noqa: E402
from kyx.model.quant import Int8Rows, weight_bytes  # noqa: E402


def stdlib_prompts(n: int) -> list[str]:
    """The first ``def name(`` line start of each of the first n stdlib modules that has one."""
    src = sysconfig.get_paths()["stdlib"]
    out = []
    for name in sorted(os.listdir(src)):
        if not name.endswith(".py"):
            continue
        with open(os.path.join(src, name), encoding="utf-8", errors="replace") as f:
            m = re.search(r"^def \w+\(", f.read(), re.M)
        if m:
            out.append(m.group(0))
        if len(out) == n:
            return out
    return out


def _quantized_bytes(params, f32: bool) -> int:
    leaves = jax.tree.leaves(params, is_leaf=lambda x: isinstance(x, Int8Rows))
    picked = [x for x in leaves if isinstance(x, Int8Rows)]
    return sum(x.q.size * (4 if f32 else 1) + (0 if f32 else x.scale.nbytes) for x in picked)


def _memory(model, params, tokens, lengths, tokens_out):
    compiled = generate_padded.lower(
        model.model, params, tokens, lengths, jax.random.key(0), max_new_tokens=tokens_out,
        temperature=0.0).compile()
    m = compiled.memory_analysis()
    return {k: getattr(m, k + "_in_bytes", None) for k in ("argument_size", "temp_size",
                                                           "output_size")}


def _greedy(model, ids, tokens_out, repeats=3):
    """(greedy ids [prompts, tokens], best wall time of ``repeats`` compiled calls)."""
    run = lambda: model.generate_ids(ids, None, max_tokens=tokens_out, temperature=0.0,  # noqa
                                     batch_size=len(ids))
    out = run()  # compile
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        run()
        times.append(time.perf_counter() - t0)
    return np.asarray(out), min(times)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--workdir", required=True)
    parser.add_argument("--prompts", type=int, default=16)
    parser.add_argument("--tokens", type=int, default=32)
    a = parser.parse_args()
    f32 = kyx.load(a.workdir)
    q = kyx.load(a.workdir, quantize="int8")
    base = {"workdir": a.workdir, "step": int(kyx.checkpoint.workdir.checkpoint_steps(
        a.workdir)[-1]), "d_model": f32.model.cfg.d_model, "layers": f32.model.cfg.num_layers}
    print(json.dumps({"bench": "quant_decode", "what": "weights", **base,
                      "all_f32_mb": weight_bytes(f32.params) / 1e6,
                      "all_int8_mb": weight_bytes(q.params) / 1e6,
                      "matmul_f32_mb": _quantized_bytes(q.params, True) / 1e6,
                      "matmul_int8_with_scales_mb": _quantized_bytes(q.params, False) / 1e6}),
          flush=True)

    texts = stdlib_prompts(a.prompts)
    ids, _ = f32.prompt_ids(texts)
    ref, ref_s = _greedy(f32, ids, a.tokens)
    got, got_s = _greedy(q, ids, a.tokens)
    same = ref == got
    prefix = np.where(same.all(1), a.tokens, np.argmin(same, axis=1))
    print(json.dumps({"bench": "quant_decode", "what": "greedy", **base, "prompts": len(ids),
                      "tokens": a.tokens, "token_agreement": float(same.mean()),
                      "identical_rows": float(same.all(1).mean()),
                      "mean_common_prefix": float(prefix.mean()),
                      "f32_decode_s": ref_s, "int8_decode_s": got_s}), flush=True)

    seqs = [p + r.tolist() for p, r in zip(ids, ref)]
    tokens, lengths, _ = pad_prompts(seqs)
    lf, lq = f32.logits(tokens), q.logits(tokens)
    valid = np.arange(tokens.shape[1])[None] < lengths[:, None]
    err = np.abs(lq - lf).max(-1)[valid]
    print(json.dumps({"bench": "quant_decode", "what": "logits", **base,
                      "positions": int(valid.sum()), "max_abs_logit_error": float(err.max()),
                      "mean_max_abs_logit_error": float(err.mean()),
                      "f32_logit_std": float(lf[valid].std()),
                      "f32_logit_range": float(np.ptp(lf[valid], -1).mean()),
                      "top1_agreement": float((lf.argmax(-1) == lq.argmax(-1))[valid].mean())}),
          flush=True)

    ptoks, plens, _ = pad_prompts(ids)
    args = (jnp.asarray(ptoks), jnp.asarray(plens), a.tokens)
    print(json.dumps({"bench": "quant_decode", "what": "memory", **base,
                      "f32": _memory(f32, f32.params, *args),
                      "int8": _memory(q, q.params, *args)}), flush=True)


if __name__ == "__main__":
    main()
