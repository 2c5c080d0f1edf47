"""ExCP on a real pretraining run: compression ratio, speed, and the cost in eval loss.

Trains `small` (default) on the embedded corpus with a checkpoint every `--every` steps
(ExCP on, all full checkpoints kept for comparison), then prints one JSON line per
checkpoint (compression_ratio = fp32 params + m + v bytes over compressed bytes, compress
and restore MB/s) and one line comparing an M-step continuation from the reconstructed
checkpoint with one from the original (`eval_loss_delta_pct`; kyx/train/continuation.py:
both continue on the run's own learning-rate schedule).

`--alphas 5e-4,5e-3` also recompresses the same full checkpoints with other weight-pruning
strengths α (`kyx excp compress` on a copy whose config sets the α) and continues from
each reconstruction: the ratio / eval-loss trade-off, one `excp_alpha` line per α.

    python benchmarks/excp.py [--size small] [--steps 300] [--every 60] [--continue-steps 30]
                              [--alphas 5e-4,5e-3] [--workdir DIR]
"""
import argparse
import json
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from kyx import config as config_lib  # noqa: E402
from kyx.commands import excp as excp_cli  # noqa: E402
from kyx.checkpoint.excp import ExcpChain  # noqa: E402
from kyx.train import loop, registry  # noqa: E402
from kyx.train.continuation import continuation  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _cfg(size, steps, every, extra=()):
    return config_lib.load(os.path.join(ROOT, "configs", "pretrain.py") + f":{size}", [
        f"train.steps={steps}", f"checkpoint.every={every}", f"train.eval_every={every}",
        "checkpoint.excp.enabled=true", f"checkpoint.excp.keep_full={steps // every + 1}",
        "checkpoint.keep=1000", "train.measure_mfu=false", *extra])


def _chain_rows(chain_root, size, extra=None):
    """One JSON-able row per compressed checkpoint (restore timed on a fresh chain)."""
    chain = ExcpChain(chain_root)
    rows = []
    for step in chain.steps():
        s = chain.stats()[step]
        t0 = time.perf_counter()
        ExcpChain(chain.root).reconstruct(step)
        restore_s = time.perf_counter() - t0
        rows.append({
            "bench": "excp", "size": size, **(extra or {}), "step": step, "base": s["base"],
            "compression_ratio": s["ratio"], "compressed_mb": s["bytes"] / 1e6,
            "fp32_w_m_v_mb": s["orig_bytes"] / 1e6, "compress_mb_per_s": s["mb_per_s"],
            "restore_mb_per_s": s["orig_bytes"] / 1e6 / restore_s,
            "kept": {g: v["kept"] for g, v in s["groups"].items()},
            "rel_err": {g: v["rel_err"] for g, v in s["groups"].items()}})
    return rows


def _chain_ratios(chain_root):
    chain = ExcpChain(chain_root)
    sizes = [chain.stats()[s] for s in chain.steps()]
    return {"chain_ratio_excluding_first": sum(s["orig_bytes"] for s in sizes[1:])
            / max(sum(s["bytes"] for s in sizes[1:]), 1),
            "chain_ratio_total": sum(s["orig_bytes"] for s in sizes)
            / sum(s["bytes"] for s in sizes)}


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--size", default="small")
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--every", type=int, default=60)
    p.add_argument("--continue-steps", type=int, default=30)
    p.add_argument("--alphas", default="", help="extra α values to recompress with, e.g. 5e-4")
    p.add_argument("--workdir", default="")
    args = p.parse_args()
    root = args.workdir or tempfile.mkdtemp(prefix="kyx-excp-")
    base = os.path.join(root, "base")
    loop.run(registry.build(_cfg(args.size, args.steps, args.every)), base)
    for row in _chain_rows(os.path.join(base, "excp"), args.size):
        print(json.dumps(row), flush=True)
    # continuation: from the newest compressed step that is not the first of the chain
    resume = ExcpChain(os.path.join(base, "excp")).steps()[-1]
    original = continuation(base, os.path.join(root, "original"), resume, args.continue_steps)
    recon = continuation(base, os.path.join(root, "reconstructed"), resume,
                         args.continue_steps, source="excp")
    print(json.dumps({
        "bench": "excp_continuation", "size": args.size, "resume_step": resume,
        "continue_steps": args.continue_steps, "eval_loss_original": original,
        "eval_loss_reconstructed": recon,
        "eval_loss_delta_pct": 100 * (recon - original) / original,
        **_chain_ratios(os.path.join(base, "excp"))}), flush=True)
    for alpha in [float(a) for a in args.alphas.split(",") if a]:
        work = os.path.join(root, f"alpha_{alpha:g}")
        t0 = time.perf_counter()
        excp_cli.recompress(base, work, alpha=alpha)
        seconds = time.perf_counter() - t0
        for row in _chain_rows(os.path.join(work, "excp"), args.size, {"alpha": alpha}):
            print(json.dumps(row), flush=True)
        loss = continuation(work, work + "_continued", resume, args.continue_steps, "excp")
        print(json.dumps({
            "bench": "excp_alpha", "size": args.size, "alpha": alpha, "resume_step": resume,
            "continue_steps": args.continue_steps, "compress_seconds": seconds,
            "eval_loss_original": original, "eval_loss_reconstructed": loss,
            "eval_loss_delta_pct": 100 * (loss - original) / original,
            **_chain_ratios(os.path.join(work, "excp"))}), flush=True)


if __name__ == "__main__":
    main()
