"""ExCP on a real pretraining run: compression ratio, speed, and the cost in eval loss.

Trains `small` (default) on the embedded corpus with a checkpoint every `--every` steps
(ExCP on, all full checkpoints kept for comparison), then prints one JSON line per
checkpoint (compression_ratio = fp32 params + m + v bytes over compressed bytes, compress
and restore MB/s) and one line comparing an M-step continuation from the reconstructed
checkpoint with one from the original (`eval_loss_delta_pct`).

    python benchmarks/excp.py [--size small] [--steps 300] [--every 60] [--continue-steps 30]
"""
import argparse
import json
import os
import shutil
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from kyx import config as config_lib  # noqa: E402
from kyx.checkpoint.excp import ExcpChain  # noqa: E402
from kyx.metrics import read_metrics  # noqa: E402
from kyx.train import loop, registry  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _cfg(size, steps, every, extra=()):
    return config_lib.load(os.path.join(ROOT, "configs", "pretrain.py") + f":{size}", [
        f"train.steps={steps}", f"checkpoint.every={every}", f"train.eval_every={every}",
        "checkpoint.excp.enabled=true", f"checkpoint.excp.keep_full={steps // every + 1}",
        "checkpoint.keep=1000", "train.measure_mfu=false", *extra])


def _final_eval(workdir):
    return [r["eval/loss"] for r in read_metrics(workdir) if "eval/loss" in r][-1]


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--size", default="small")
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--every", type=int, default=60)
    p.add_argument("--continue-steps", type=int, default=30)
    p.add_argument("--workdir", default="")
    args = p.parse_args()
    root = args.workdir or tempfile.mkdtemp(prefix="kyx-excp-")
    base = os.path.join(root, "base")
    loop.run(registry.build(_cfg(args.size, args.steps, args.every)), base)
    chain = ExcpChain(os.path.join(base, "excp"))
    for step in chain.steps():
        s = chain.stats()[step]
        t0 = time.perf_counter()
        ExcpChain(chain.root).reconstruct(step)
        restore_s = time.perf_counter() - t0
        print(json.dumps({
            "bench": "excp", "size": args.size, "step": step, "base": s["base"],
            "compression_ratio": s["ratio"], "compressed_mb": s["bytes"] / 1e6,
            "fp32_w_m_v_mb": s["orig_bytes"] / 1e6, "compress_mb_per_s": s["mb_per_s"],
            "restore_mb_per_s": s["orig_bytes"] / 1e6 / restore_s,
            "kept": {g: v["kept"] for g, v in s["groups"].items()},
            "rel_err": {g: v["rel_err"] for g, v in s["groups"].items()}}), flush=True)
    # continuation: from the newest compressed step that is not the first of the chain
    resume = chain.steps()[-1]
    end = resume + args.continue_steps
    evals = {}
    for kind in ("original", "reconstructed"):
        work = os.path.join(root, kind)
        shutil.copytree(base, work)
        if kind == "reconstructed":  # only the ExCP chain can provide the resume step now
            shutil.rmtree(os.path.join(work, "checkpoints", str(resume)))
        cfg = _cfg(args.size, end, args.every,
                   [f"checkpoint.resume_step={resume}", f"train.eval_every={args.continue_steps}"])
        loop.run(registry.build(cfg), work)
        evals[kind] = _final_eval(work)
    sizes = [chain.stats()[s] for s in chain.steps()]
    print(json.dumps({
        "bench": "excp_continuation", "size": args.size, "resume_step": resume,
        "continue_steps": args.continue_steps, "eval_loss_original": evals["original"],
        "eval_loss_reconstructed": evals["reconstructed"],
        "eval_loss_delta_pct": 100 * (evals["reconstructed"] - evals["original"])
        / evals["original"],
        "chain_ratio_excluding_first": sum(s["orig_bytes"] for s in sizes[1:])
        / max(sum(s["bytes"] for s in sizes[1:]), 1),
        "chain_ratio_total": sum(s["orig_bytes"] for s in sizes) / sum(s["bytes"] for s in sizes),
    }), flush=True)


if __name__ == "__main__":
    main()
