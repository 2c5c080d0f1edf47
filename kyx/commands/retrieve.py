"""`kyx retrieve`: top-k documents for a query from a ColBERT workdir (configs/colbert.py).

    kyx retrieve --workdir DIR --query TEXT [--k 10 --nbits 2 --step N]

The documents are the run's held-out documents (the code of the functions mined from the
corpus's validation files, kyx/data/retrieval.py). Their token vectors are indexed with
ColBERTv2 residual compression at ``--nbits`` bits per dimension (1, 2; 0 keeps float32)
in ``DIR/colbert_index/step<N>_nbits<b>.npz``, built on first use and reused after;
documents are ranked by MaxSim with the query (kyx/train/colbert_index.py). Prints one
line per hit: rank, score, the document's first line.
"""
from __future__ import annotations

import argparse
import os

from kyx.errors import ConfigError


def main(argv) -> int:
    parser = argparse.ArgumentParser(prog="kyx retrieve")
    parser.add_argument("--workdir", required=True, help="a colbert training run")
    parser.add_argument("--query", required=True)
    parser.add_argument("--k", type=int, default=10, help="documents to print")
    parser.add_argument("--nbits", type=int, default=2, choices=(0, 1, 2),
                        help="residual bits per dimension (0: uncompressed float32)")
    parser.add_argument("--step", type=int, default=-1, help="checkpoint (default: newest)")
    args = parser.parse_args(argv)
    if args.k < 1:
        raise ConfigError(f"--k must be >= 1, got {args.k}")
    from kyx.checkpoint.workdir import checkpoint_steps
    from kyx.train import colbert_index as ci

    retriever = ci.Retriever.load(args.workdir, args.step)
    step = args.step if args.step >= 0 else checkpoint_steps(args.workdir)[-1]
    path = os.path.join(args.workdir, "colbert_index", f"step{step}_nbits{args.nbits}.npz")
    if os.path.exists(path):
        index = ci.load_index(path)
    else:
        print(f"building the index of the held-out documents -> {path}", flush=True)
        index = ci.build_index(retriever, ci.held_out_pairs(retriever).documents, args.nbits)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        ci.save_index(index, path)
    for rank, (i, score) in enumerate(index.search(retriever.queries([args.query])[0],
                                                   args.k), 1):
        print(f"{rank:3d}  {score:8.3f}  {index.texts[i].splitlines()[0]}")
    return 0
