"""Data pipeline throughput on this machine: one JSON line per (sampling, seq_len, batch_size).

Builds (or reuses) the stdlib corpus, a vocab-4096 tokenizer and the train split's token
cache (its build tokens/s is reported in the first line as ``cache_build_tokens_per_s``,
from the cache manifest of the build that made it), then times the training iterator
after a short warm-up: ``iid`` (windows read from the cache, the default) and ``packed``
(tokenize and pack while training). Tokens counted are all batch slots (training rows
carry no padding).

    python benchmarks/data_throughput.py [--seconds 5] [--read-threads 2] [--workers 0]
                                         [--sampling stratified iid packed] [--no-dedup]

``--tokenizers`` measures the tokenizer kinds instead (one JSON line each): training time
of ``bpe`` and ``scaffold_bpe`` at ``--vocab`` on the first ``--train-mb`` MB of the local
Python sources (stdlib, then site-packages, files in sorted order), SentencePiece's on
``--sp-train-mb``, then encode throughput of all three on the same next ``--encode-mb`` MB
(one call per file; a cold and a warm pass, as the BPE encoders cache words):

    python benchmarks/data_throughput.py --tokenizers [--vocab 32768] [--train-mb 100]
                                         [--sp-train-mb 10] [--encode-mb 10]
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


def python_sources(limit_bytes: int, skip_bytes: int = 0) -> list[str]:
    """Texts of the local .py files (stdlib, then site-packages; sorted walk) from byte
    ``skip_bytes`` on, until ``limit_bytes`` are collected."""
    import sysconfig
    roots = dict.fromkeys([sysconfig.get_paths()["stdlib"], sysconfig.get_paths()["purelib"]])
    out, seen, total = [], 0, 0
    for root in roots:
        for d, dirs, files in os.walk(root):
            dirs[:] = sorted(x for x in dirs if x != "site-packages" or d != root)
            for f in sorted(files):
                if not f.endswith(".py"):
                    continue
                try:
                    with open(os.path.join(d, f), encoding="utf-8") as fh:
                        text = fh.read()
                except (OSError, UnicodeDecodeError):
                    continue
                n = len(text.encode("utf-8", "surrogatepass"))
                seen += n
                if seen <= skip_bytes:
                    continue
                out.append(text)
                total += n
                if total >= limit_bytes:
                    return out
    return out


def _mb(texts) -> float:
    return sum(len(t.encode("utf-8", "surrogatepass")) for t in texts) / 1e6


def encode_row(name: str, tok, texts: list[str]) -> dict:
    size = _mb(texts)
    row = {"kind": name, "vocab_size": tok.vocab_size, "encode_mb": round(size, 1)}
    for label in ("cold", "warm"):
        start = time.perf_counter()
        tokens = sum(len(tok.encode(t)) for t in texts)
        s = time.perf_counter() - start
        row.update({f"{label}_s": round(s, 2), f"{label}_tokens_per_s": round(tokens / s),
                    f"{label}_mb_per_s": round(size / s, 2)})
    row["bytes_per_token"] = round(size * 1e6 / tokens, 3)
    return row


def tokenizer_kinds(args) -> None:
    from kyx.data.bpe import train_bpe
    from kyx.data.tokenizer import train_sentencepiece

    train = python_sources(int(args.train_mb * 1e6))
    held = python_sources(int(args.encode_mb * 1e6), skip_bytes=int(_mb(train) * 1e6))
    toks = {}
    for kind in ("bpe", "scaffold_bpe"):
        start = time.perf_counter()
        toks[kind] = tok = train_bpe(train, vocab_size=args.vocab, scaffold=kind != "bpe",
                                     max_bytes=1 << 40)
        print(json.dumps({"kind": kind, "train_mb": round(_mb(train), 1), "vocab_size":
                          tok.vocab_size, "train_s": round(time.perf_counter() - start, 1),
                          "scaffold_tokens": len(tok.model.scaffold),
                          "cpus": os.cpu_count()}), flush=True)
    sp_train = python_sources(int(args.sp_train_mb * 1e6))
    start = time.perf_counter()
    toks["sentencepiece"] = sp = train_sentencepiece(sp_train, vocab_size=args.vocab,
                                                     max_bytes=1 << 40, num_threads=1)
    print(json.dumps({"kind": "sentencepiece", "train_mb": round(_mb(sp_train), 1),
                      "vocab_size": sp.vocab_size, "threads": 1,
                      "train_s": round(time.perf_counter() - start, 1)}), flush=True)
    toks["bpe_hf_tokenizers"] = _HfBpe(toks["bpe"])   # the exported tokenizer.json (Rust)
    for name, tok in toks.items():
        print(json.dumps(encode_row(name, tok, held)), flush=True)


class _HfBpe:
    """kyx's plain BPE exported to tokenizer.json, encoded by the ``tokenizers`` library."""

    def __init__(self, tok):
        import tokenizers

        from kyx.interop.hf_bpe_export import tokenizer_json
        self._hf = tokenizers.Tokenizer.from_str(tokenizer_json(tok))
        self.vocab_size = tok.vocab_size

    def encode(self, text: str) -> list[int]:
        return self._hf.encode(text, add_special_tokens=False).ids


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data-dir", default="")
    p.add_argument("--seconds", type=float, default=5.0)
    p.add_argument("--read-threads", type=int, default=None)
    p.add_argument("--workers", type=int, default=0)
    p.add_argument("--sampling", nargs="+", default=["stratified", "iid", "packed"])
    p.add_argument("--no-dedup", action="store_true", help="corpus without dedup")
    p.add_argument("--tokenizers", action="store_true",
                   help="train / encode throughput of the tokenizer kinds instead")
    p.add_argument("--vocab", type=int, default=32768)
    p.add_argument("--train-mb", type=float, default=100.0)
    p.add_argument("--sp-train-mb", type=float, default=10.0)
    p.add_argument("--encode-mb", type=float, default=10.0)
    args = p.parse_args()
    if args.tokenizers:
        return tokenizer_kinds(args)
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
