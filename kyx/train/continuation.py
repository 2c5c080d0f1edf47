"""Continue a run from one of its checkpoints for a few steps, on its own schedule.

What a checkpoint is worth is how training goes on from it. ExCP's claim (near-lossless
compression) is measured this way: resume from step s once from the full checkpoint and
once from the ExCP reconstruction (the full checkpoint deleted, so only the chain can
supply it), train n more steps with the run's learning-rate schedule (``optim.
schedule_steps`` = the run's length), and compare the final eval losses.

The source workdir is never touched: the continuation trains in a copy that holds the
source's checkpoints, ExCP chain and metrics up to step s only.
"""
from __future__ import annotations

import json
import os
import shutil

from kyx import config as config_lib
from kyx.checkpoint import excp_archive
from kyx.checkpoint.excp import ExcpChain
from kyx.checkpoint.workdir_lock import FALLBACK_NAME, LOCK_NAME
from kyx.errors import CheckpointError, ConfigError
from kyx.metrics import read_metrics

SOURCES = ("full", "excp")


def copy_until(src: str, dst: str, step: int) -> str:
    """``dst`` = ``src`` as it was at ``step``: later full checkpoints, ExCP steps and
    metrics rows dropped, no lock files."""
    ckpts = os.path.join(src, "checkpoints")

    def ignore(directory, names):
        drop = {n for n in names if n in (LOCK_NAME, FALLBACK_NAME)}
        if os.path.abspath(directory) == os.path.abspath(ckpts):
            drop |= {n for n in names if n.isdigit() and int(n) > step}
        return drop
    shutil.rmtree(dst, ignore_errors=True)     # of an interrupted earlier copy
    shutil.copytree(src, dst, ignore=ignore)
    chain_dir = excp_archive.chain_dir(dst)
    if os.path.isdir(chain_dir):
        ExcpChain(chain_dir).truncate(step)
    metrics = os.path.join(dst, "metrics.jsonl")
    if os.path.exists(metrics):
        rows = [r for r in read_metrics(dst) if r.get("step", 0) <= step]
        with open(metrics, "w") as f:
            f.writelines(json.dumps(r) + "\n" for r in rows)
    return dst


def continuation(src: str, dst: str, step: int, steps: int, source: str = "full") -> float:
    """Final eval loss after training ``steps`` more steps from ``src``'s step ``step``,
    read from its full checkpoint (``source='full'``) or its ExCP chain (``'excp'``)."""
    from kyx.train import loop, registry   # the loop imports this package's modules

    if source not in SOURCES:
        raise ConfigError(f"source must be one of {SOURCES}, got {source!r}")
    if steps < 1:
        raise ConfigError(f"a continuation needs steps >= 1, got {steps}")
    full = os.path.join(src, "checkpoints", str(step))
    if source == "full" and not os.path.isdir(full):
        raise CheckpointError(f"{src} has no full checkpoint at step {step}")
    if source == "excp":
        chain_dir = excp_archive.chain_dir(src)
        have = ExcpChain(chain_dir).steps() if os.path.isdir(chain_dir) else []
        if step not in have:
            raise CheckpointError(f"{src} has no ExCP step {step} (chain steps: {have})")
    copy_until(src, dst, step)
    if source == "excp":
        shutil.rmtree(os.path.join(dst, "checkpoints", str(step)), ignore_errors=True)
    cfg = config_lib.load_json(os.path.join(dst, "config.json"))
    cfg.optim.schedule_steps = int(cfg.optim.get("schedule_steps", 0)) or int(cfg.train.steps)
    cfg.train.steps = step + steps
    cfg.train.eval_every = steps
    cfg.checkpoint.resume_step = step
    loop.run(registry.build(cfg), dst)
    evals = [r for r in read_metrics(dst) if "eval/loss" in r and r["step"] > step]
    if not evals:
        raise CheckpointError(f"the continuation in {dst} logged no eval loss after step {step}")
    return float(evals[-1]["eval/loss"])
