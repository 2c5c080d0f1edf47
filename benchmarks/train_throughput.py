"""End-to-end training throughput (data + step + metrics) for the tiny and small presets.

Runs the real `kyx train` loop on the embedded corpus in a subprocess per size and prints
one JSON line each: steady-state tokens/s (first log window, which includes compilation,
excluded), MFU against the matmul peak measured in the same process, and peak RSS.

    python benchmarks/train_throughput.py [--sizes tiny,small] [--steps 60]
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

CHILD = r"""
import json, resource, sys
from kyx import config as config_lib
from kyx.metrics import read_metrics
from kyx.train import loop, registry
size, steps, workdir, log_every = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4])
cfg = config_lib.load(f"{sys.argv[5]}/configs/pretrain.py:{size}",
                      [f"train.steps={steps}", f"train.log_every={log_every}",
                       f"train.eval_every={10 * steps}", f"checkpoint.every={10 * steps}"])
loop.run(registry.build(cfg), workdir)
rows = [r for r in read_metrics(workdir) if "perf/tokens_per_s" in r][1:]  # drop compile window
tps = sum(r["perf/tokens_per_s"] for r in rows) / len(rows)
mfu = sum(r["perf/mfu"] for r in rows) / len(rows)
print(json.dumps({"bench": "train_throughput", "size": size, "steps": steps,
                  "batch": cfg.data.batch_size, "seq_len": cfg.data.seq_len,
                  "tokens_per_s": tps, "mfu": mfu,
                  "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", default="tiny,small")
    parser.add_argument("--steps", type=int, default=60)
    args = parser.parse_args()
    for size in args.sizes.split(","):
        steps = args.steps if size == "tiny" else max(args.steps // 3, 12)
        log_every = max(steps // 6, 1)
        with tempfile.TemporaryDirectory() as workdir:
            out = subprocess.run(
                [sys.executable, "-c", CHILD, size, str(steps), workdir, str(log_every), ROOT],
                capture_output=True, text=True, env={**os.environ, "PYTHONPATH": ROOT})
        lines = [l for l in out.stdout.splitlines() if l.startswith("{")]
        if out.returncode or not lines:
            print(out.stdout[-2000:], out.stderr[-4000:], file=sys.stderr)
            raise SystemExit(f"benchmark for {size} failed")
        print(lines[-1], flush=True)


if __name__ == "__main__":
    main()
