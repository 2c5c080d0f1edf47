"""Forward+backward throughput of the MoE `small` preset against the dense model with the
same active parameters (configs/pretrain.py:small), timed like model_step.py
(benchmarks/step_timing.py).

Prints one JSON line per model: dense, MoE with `capacity` dispatch, MoE with `dropless`
dispatch. FLOPs count active parameters only (kyx/model/flops.py), so MoE dispatch work
(one-hot einsums, capacity padding, sorting) shows up as lower MFU.

    python benchmarks/moe_step.py [--size small] [--steps 10]
"""
import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from kyx import metrics  # noqa: E402
from step_timing import time_grad_step  # noqa: E402


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--size", default="small", help="preset of configs/moe.py")
    parser.add_argument("--steps", type=int, default=10)
    args = parser.parse_args()
    peak = metrics.matmul_peak_flops()
    runs = [("dense", f"pretrain.py:{args.size}", []),
            ("moe_capacity", f"moe.py:{args.size}", ["model.moe_dispatch=capacity"]),
            ("moe_dropless", f"moe.py:{args.size}", ["model.moe_dispatch=dropless"])]
    dense_tps = None
    for name, spec, overrides in runs:
        row = {"bench": "moe_step", "model": name,
               **time_grad_step(spec, overrides, args.steps, peak)}
        dense_tps = dense_tps or row["tokens_per_s"]
        row["tokens_per_s_vs_dense"] = row["tokens_per_s"] / dense_tps
        print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
