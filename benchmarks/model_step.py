"""Forward+backward throughput of the decoder on this machine, with CPU MFU.

Prints one JSON line per model size: tokens/s, achieved FLOP/s (matmul FLOPs, causal
attention halved; kyx/model/flops.py) and the dense matmul FLOP/s measured in the same
process, whose ratio is the MFU (benchmarks/step_timing.py).

    python benchmarks/model_step.py [--sizes tiny,small] [--steps 10]
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
    parser.add_argument("--sizes", default="tiny,small")
    parser.add_argument("--steps", type=int, default=10)
    args = parser.parse_args()
    peak = metrics.matmul_peak_flops()
    for size in args.sizes.split(","):
        row = time_grad_step(f"pretrain.py:{size}", [], args.steps, peak)
        print(json.dumps({"bench": "model_step", "size": size, **row}), flush=True)


if __name__ == "__main__":
    main()
