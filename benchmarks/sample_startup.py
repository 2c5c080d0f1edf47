"""Where the wall time of a short `kyx sample` goes, with a cold and a warm compilation cache.

Prints JSON lines:

* ``cli``: wall time of ``kyx sample --workdir DIR --prompt ...`` run as a fresh process
  three times: with the persistent cache off, then twice in a row on a new empty cache
  directory (cold, warm);
* ``phases``: the same work in a fresh process, timed phase by phase (import kyx, load +
  verify the checkpoint, trace, lower, XLA compile (or load from the cache), run), cold
  and warm.

    python benchmarks/sample_startup.py --workdir runs/tiny [--max-tokens 32]
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

PHASES = """
import json, sys, time
t0 = time.perf_counter()
import jax, jax.numpy as jnp
import kyx
from kyx.api import load
from kyx.model import decode
kyx.enable_compilation_cache()
t = {"import": time.perf_counter() - t0}
def mark(name, start):
    t[name] = time.perf_counter() - start
    return time.perf_counter()
s = time.perf_counter()
m = load(sys.argv[1]); s = mark("load", s)
ids, eos = m.prompt_ids([sys.argv[2]])
tokens, lengths, active = decode.pad_prompts(ids)
args = (m.model, m.params, jnp.asarray(tokens), jnp.asarray(lengths), jax.random.key(0))
kw = dict(max_new_tokens=int(sys.argv[3]), temperature=0.8, top_k=0, top_p=0.95, eos_id=eos,
          active_b=jnp.asarray(active))
traced = decode.generate_padded.trace(*args, **kw); s = mark("trace", s)
lowered = traced.lower(); s = mark("lower", s)
compiled = lowered.compile(); s = mark("compile", s)
jax.block_until_ready(compiled(*args[1:], active_b=kw["active_b"])); s = mark("run", s)
print(json.dumps({k: round(v, 3) for k, v in t.items()}))
"""


def _env(cache_dir):
    env = {**os.environ, "PYTHONPATH": ROOT}
    if cache_dir is None:
        env["KYX_COMPILATION_CACHE"] = "0"
    else:
        env.update(KYX_COMPILATION_CACHE="1", KYX_COMPILATION_CACHE_DIR=cache_dir)
    return env


def _wall(argv, env) -> float:
    t0 = time.perf_counter()
    subprocess.run(argv, env=env, check=True, capture_output=True)
    return time.perf_counter() - t0


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--workdir", required=True)
    parser.add_argument("--prompt", default="def ")
    parser.add_argument("--max-tokens", type=int, default=32)
    a = parser.parse_args()
    cli = [sys.executable, "-m", "kyx", "sample", "--workdir", a.workdir, "--prompt", a.prompt,
           "--max-tokens", str(a.max_tokens)]
    with tempfile.TemporaryDirectory() as tmp:
        cache = os.path.join(tmp, "cli")
        walls = {"off": _wall(cli, _env(None)), "cold": _wall(cli, _env(cache)),
                 "warm": _wall(cli, _env(cache))}
        print(json.dumps({"bench": "sample_startup", "what": "cli", "workdir": a.workdir,
                          "max_tokens": a.max_tokens, "uptime_load": os.getloadavg()[0],
                          **{f"{k}_s": round(v, 2) for k, v in walls.items()}}), flush=True)
        cache = os.path.join(tmp, "phases")
        for label in ("cold", "warm"):
            out = subprocess.run([sys.executable, "-c", PHASES, a.workdir, a.prompt,
                                  str(a.max_tokens)], env=_env(cache), check=True,
                                 capture_output=True, text=True)
            print(json.dumps({"bench": "sample_startup", "what": "phases", "cache": label,
                              **json.loads(out.stdout.strip().splitlines()[-1])}), flush=True)


if __name__ == "__main__":
    main()
