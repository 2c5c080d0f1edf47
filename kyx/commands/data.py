"""`kyx data prepare|stats --config FILE[:PRESET] [--config.a.b=v ...]`.

``prepare`` builds what training reads, ahead of training: the corpus (with dedup), the
tokenizer and the train split's token cache (multi-host: process 0 builds, the others
wait for it). ``stats`` prepares the same way and prints one JSON object: documents,
tokens, tokens per byte, dedup and skip counts (for a ``data.mixture``: one object per
source, with its weight).
"""
from __future__ import annotations

import argparse
import json
import time

_STAT_KEYS = ("files_seen", "files_kept", "train_files", "validation_files",
              "skipped_invalid_utf8", "skipped_empty", "dedup_exact", "dedup_near")


def _parse(argv):
    from kyx import config as config_lib

    spec, overrides, rest = config_lib.parse_cli(argv)
    parser = argparse.ArgumentParser(prog="kyx data")
    parser.add_argument("action", choices=("prepare", "stats"))
    args = parser.parse_args(rest)
    if spec is None:
        parser.error("--config PATH[:PRESET] is required (e.g. configs/pretrain.py:tiny)")
    return args.action, config_lib.load(spec, overrides)


def stats(cfg, corpus, tokenizer, cache) -> dict:
    """The numbers `kyx data stats` prints."""
    out = {"corpus": corpus.name, "fingerprint": corpus.fingerprint,
           "vocab_size": tokenizer.vocab_size,
           **{k: corpus.stats[k] for k in _STAT_KEYS if k in corpus.stats},
           "train_documents": cache.info["documents"], "train_tokens": cache.info["tokens"],
           "skipped_while_tokenizing": cache.info["skipped"],
           "cache": cache.directory, "cache_build_tokens_per_s": cache.info["build_tokens_per_s"]}
    src = corpus.source(cfg.train_split)
    sample = min(len(src), 200)  # tokens per byte from the first documents' lengths
    nbytes = sum(len(src[i][corpus.text_feature]) for i in range(sample))
    ntok = int(cache.doc_starts[sample] if sample < len(cache.doc_starts) else cache.num_tokens)
    out["tokens_per_byte"] = round(ntok / max(nbytes, 1), 4)
    return out


def main(argv) -> int:
    from kyx import distributed
    from kyx.data import mixture, pipeline, token_cache

    action, cfg = _parse(argv)
    distributed.maybe_initialize()
    import jax

    start = time.perf_counter()
    corpus, tokenizer = pipeline.prepare(cfg.data)
    sources = ([(k, corpus.configs[k], corpus.corpora[k]) for k in corpus.labels]
               if isinstance(corpus, mixture.Mixture) else [(None, cfg.data, corpus)])
    report = {}
    for label, source_cfg, source in sources:
        cache = token_cache.load(source, source_cfg.train_split, tokenizer, source_cfg.data_dir,
                                 workers=cfg.data.cache_workers,
                                 process_index=jax.process_index())
        if action == "prepare":
            print(f"prepared {cache.directory}: {cache.info['documents']} documents, "
                  f"{cache.info['tokens']} tokens ({time.perf_counter() - start:.1f} s)",
                  flush=True)
        else:
            report[label] = stats(source_cfg, source, tokenizer, cache)
            if label is not None:
                report[label]["weight"] = corpus.weights[label]
    if action == "stats":
        print(json.dumps(report[None] if None in report else report, indent=1), flush=True)
    return 0
