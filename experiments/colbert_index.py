"""ColBERTv2 residual compression of ColBERT runs' document index: bytes per token vector
and the change in held-out MRR@10 / recall@k (docs/retrieval.md).

    python experiments/colbert_index.py --out runs/colbert_index.md runs/colbert_sweep/maxsim/seed*

For each workdir (a kyx/train/colbert.py run): its held-out documents indexed uncompressed
(float32) and at 2 and 1 bits per dimension (kyx/train/colbert_index.py), every held-out
query ranked against the index; the table gives mean ± std over the workdirs.
"""
from __future__ import annotations

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402

from kyx.train import colbert_index as ci  # noqa: E402

NBITS = (0, 2, 1)
KEYS = ("mrr@10", "recall@1", "recall@10")


def measure(workdir: str) -> dict:
    retriever = ci.Retriever.load(workdir)
    pairs = ci.held_out_pairs(retriever)
    out = {}
    for nbits in NBITS:
        index = ci.build_index(retriever, pairs.documents, nbits)
        out[nbits] = {**ci.held_out_metrics(retriever, index, pairs.queries),
                      "bytes_per_vector": index.nbytes_per_vector(),
                      # + the centroid table and buckets, shared by the index
                      "bytes_per_vector_all": index.nbytes_per_vector() + (
                          0 if index.codec is None else
                          (index.codec.centroids_ck.nbytes + index.codec.cutoffs.nbytes
                           + index.codec.values.nbytes) / index.offsets[-1]),
                      "vectors": int(index.offsets[-1]),
                      "centroids": 0 if index.codec is None else len(index.codec.centroids_ck)}
        print(workdir, nbits, out[nbits], flush=True)
    return out


def table(runs: list[dict]) -> str:
    def cell(vals, fmt="{:.3f}"):
        return f"{fmt.format(np.mean(vals))} ± {fmt.format(np.std(vals, ddof=1))}" \
            if len(vals) > 1 else fmt.format(vals[0])
    lines = ["| index | bytes / token vector | with the centroid table | MRR@10 | recall@1 | "
             "recall@10 | ΔMRR@10 |", "|---|---:|---:|---:|---:|---:|---:|"]
    for nbits in NBITS:
        name = "float32 (uncompressed)" if nbits == 0 else f"{nbits}-bit residuals"
        delta = [r[nbits]["mrr@10"] - r[0]["mrr@10"] for r in runs]
        lines.append(f"| {name} | {runs[0][nbits]['bytes_per_vector']:.0f} | "
                     f"{cell([r[nbits]['bytes_per_vector_all'] for r in runs], '{:.1f}')} | "
                     + " | ".join(cell([r[nbits][k] for r in runs]) for k in KEYS)
                     + f" | {cell(delta, '{:+.3f}')} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="experiments/colbert_index.py")
    parser.add_argument("workdirs", nargs="+")
    parser.add_argument("--out", required=True, help="markdown table (+ .json next to it)")
    args = parser.parse_args(argv)
    runs = [measure(w) for w in args.workdirs]
    text = table(runs)
    with open(args.out, "w") as f:
        f.write(text)
    with open(os.path.splitext(args.out)[0] + ".json", "w") as f:
        json.dump({w: r for w, r in zip(args.workdirs, runs)}, f, indent=1)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
