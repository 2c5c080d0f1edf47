"""Data pipeline throughput on this machine: one JSON line per (sampling, seq_len, batch_size).

Builds (or reuses) the stdlib corpus, a vocab-4096 tokenizer and the train split's token
cache (its build tokens/s is reported in the first line as ``cache_build_tokens_per_s``,
from the cache manifest of the build that made it), then times the training iterator
after a short warm-up: ``iid`` (windows read from the cache, the default) and ``packed``
(tokenize and pack while training). Tokens counted are all batch slots (training rows
carry no padding).

    python benchmarks/data_throughput.py [--seconds 5] [--read-threads 2] [--workers 0]
                                         [--sampling iid packed] [--no-dedup]
"""
import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from kyx import data  # noqa: E402
from kyx.data import token_cache  # noqa: E402

SHAPES = ((128, 16), (512, 8), (2048, 8))


def measure(cfg, corpus, tok, seconds: float) -> dict:
    it = data.make_iterator(cfg, corpus, tok)
    for _ in range(5):  # warm-up: fill prefetch buffers
        next(it)
    n, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        n += 1
        next(it)
    elapsed = time.perf_counter() - start
    if hasattr(it, "close"):
        it.close()
    tokens = n * cfg.seq_len * cfg.batch_size
    return {"seq_len": cfg.seq_len, "batch_size": cfg.batch_size, "batches": n,
            "seconds": round(elapsed, 2), "batches_per_s": round(n / elapsed, 1),
            "tokens_per_s": round(tokens / elapsed)}


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data-dir", default="")
    p.add_argument("--seconds", type=float, default=5.0)
    p.add_argument("--read-threads", type=int, default=None)
    p.add_argument("--workers", type=int, default=0)
    p.add_argument("--sampling", nargs="+", default=["iid", "packed"])
    p.add_argument("--no-dedup", action="store_true", help="corpus without dedup")
    args = p.parse_args()
    cfg = data.default_config()
    cfg.data_dir, cfg.worker_count = args.data_dir, args.workers
    cfg.dedup.exact = cfg.dedup.near = not args.no_dedup
    if args.read_threads is not None:
        cfg.read_threads = args.read_threads
    start = time.perf_counter()
    corpus, tok = data.prepare(cfg)
    cache = token_cache.load(corpus, cfg.train_split, tok, cfg.data_dir, cfg.cache_workers)
    prepare_s = round(time.perf_counter() - start, 2)
    for sampling in args.sampling:
        for seq_len, batch_size in SHAPES:
            cfg.sampling, cfg.seq_len, cfg.batch_size = sampling, seq_len, batch_size
            row = {"sampling": sampling, "corpus": cfg.name, "vocab_size": tok.vocab_size,
                   "read_threads": cfg.read_threads, "workers": cfg.worker_count,
                   "cpus": os.cpu_count(), "prepare_s": prepare_s,
                   "cache_tokens": cache.info["tokens"],
                   "cache_build_tokens_per_s": cache.info["build_tokens_per_s"]}
            row.update(measure(cfg, corpus, tok, args.seconds))
            print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
