"""`kyx excp compress | restore | stats`: ExCP on an existing workdir.

    kyx excp compress --workdir DIR            compress every full checkpoint not yet in the chain
    kyx excp restore --workdir DIR --step N --out DIR2
                                               write step N as a normal workdir (Orbax checkpoint)
    kyx excp stats --workdir DIR [--json]      compression ratio per checkpoint and tensor group
"""
from __future__ import annotations

import argparse
import json
import os
import shutil

import jax
import orbax.checkpoint as ocp

from kyx import config as config_lib
from kyx import sharding
from kyx.checkpoint import excp_archive
from kyx.checkpoint import workdir as workdir_lib
from kyx.checkpoint.excp import ExcpChain
from kyx.checkpoint.manager import Checkpointer
from kyx.checkpoint.workdir_lock import FALLBACK_NAME, LOCK_NAME
from kyx.errors import CheckpointError, ConfigError
from kyx.train import registry
from kyx.train import state as state_lib


def _abstract_state(workdir: str):
    """(resolved config, abstract TrainState) of a workdir's trainer."""
    cfg = workdir_lib.read_config(workdir)
    step = registry.build_step(cfg)
    _, abstract = state_lib.state_shardings(step.models, sharding.single_device_mesh(),
                                            sharding.get_rules("dp"), step.stats)
    return cfg, abstract


def compress(workdir: str, start: int = 0) -> list[dict]:
    """Append every full checkpoint newer than the chain's newest step (and >= ``start``:
    a chain begun late in a run, whose first entry is that step stored losslessly)."""
    cfg, abstract = _abstract_state(workdir)
    chain = ExcpChain(excp_archive.chain_dir(workdir),
                      excp_archive.options_from_config(cfg.checkpoint.excp))
    ckpt = Checkpointer(os.path.join(workdir, "checkpoints"), read_only=True)
    newest = chain.steps()[-1] if chain.steps() else -1
    out = []
    for step in ckpt.steps():
        if step <= newest or step < start:
            continue
        data = ckpt.manager.restore(step, args=ocp.args.Composite(
            data=ocp.args.JsonRestore()))["data"]
        state = excp_archive.read_state_numpy(ckpt.step_dir(step), abstract)
        out.append(excp_archive.append_state(chain, state, data))
    return out


def recompress(src: str, dst: str, start: int = 0, **options) -> list[dict]:
    """``dst`` = a copy of ``src`` whose full checkpoints (from step ``start`` on) are
    compressed into a new chain with ``checkpoint.excp.<key> = value`` for each option
    (e.g. ``alpha=5e-4``): other ExCP settings compared on one run. ``src`` is not
    touched; returns the steps' stats."""
    chain = os.path.abspath(excp_archive.chain_dir(src))

    def ignore(directory, names):
        return {n for n in names if n in (LOCK_NAME, FALLBACK_NAME)
                or os.path.abspath(os.path.join(directory, n)) == chain}
    shutil.rmtree(dst, ignore_errors=True)     # of an interrupted earlier copy
    shutil.copytree(src, dst, ignore=ignore)
    path = os.path.join(dst, "config.json")
    cfg = config_lib.load_json(path)
    known = set(excp_archive.default_config()) | set(cfg.checkpoint.excp)  # older workdirs
    unknown = sorted(set(options) - known)
    if unknown:
        raise ConfigError(f"unknown checkpoint.excp option(s) {unknown}; known: {sorted(known)}")
    cfg.checkpoint.excp.enabled = True
    for key, value in options.items():
        cfg.checkpoint.excp[key] = value
    config_lib.dump(cfg, path)
    return compress(dst, start)


def restore(workdir: str, step: int, out_dir: str) -> str:
    cfg, abstract = _abstract_state(workdir)
    chain = ExcpChain(excp_archive.chain_dir(workdir))
    if step not in chain.steps():
        raise CheckpointError(f"no ExCP step {step} in {chain.root}; available: {chain.steps()}")
    state, data_state = excp_archive.state_from_chain(chain, step, abstract)
    state = excp_archive.frozen_from_full(os.path.join(workdir, "checkpoints"), state, abstract)
    os.makedirs(out_dir, exist_ok=True)
    for name in ("config.json", "tokenizer.model", "tokenizer.bpe.json"):
        if os.path.exists(os.path.join(workdir, name)):
            shutil.copy(os.path.join(workdir, name), os.path.join(out_dir, name))
    ckpt = Checkpointer(os.path.join(out_dir, "checkpoints"), async_save=False)
    ckpt.save(step, jax.tree.map(jax.numpy.asarray, state), data_state, cfg.to_dict(), force=True)
    ckpt.close()
    return os.path.join(out_dir, "checkpoints", str(step))


def stats(workdir: str) -> list[dict]:
    chain = ExcpChain(excp_archive.chain_dir(workdir))
    if not chain.steps():
        raise CheckpointError(f"no ExCP chain in {chain.root}; run `kyx excp compress` first")
    return [chain.stats()[s] for s in chain.steps()]


def format_stats(rows: list[dict]) -> str:
    lines = [f"{'step':>8} {'MiB':>9} {'ratio':>7}  {'W MiB':>8} {'m MiB':>8} {'v MiB':>8}  "
             f"{'W kept':>7} {'m kept':>7}  base"]
    for r in rows:
        g = r["groups"]
        lines.append(
            f"{r['step']:>8} {r['bytes'] / 2**20:>9.3f} {r['ratio']:>7.1f}  "
            f"{g['w']['bytes'] / 2**20:>8.3f} {g['m']['bytes'] / 2**20:>8.3f} "
            f"{g['v']['bytes'] / 2**20:>8.3f}  {g['w']['kept']:>7.3f} {g['m']['kept']:>7.3f}  "
            f"{r['base']}")
    total = sum(r["bytes"] for r in rows)
    orig = sum(r["orig_bytes"] for r in rows)
    lines.append(f"total {total / 2**20:.2f} MiB for {len(rows)} checkpoints "
                 f"({orig / 2**20:.1f} MiB as fp32 W+m+v): {orig / max(total, 1):.1f}x")
    return "\n".join(lines)


def main(argv) -> int:
    parser = argparse.ArgumentParser(prog="kyx excp", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("action", choices=["compress", "restore", "stats"])
    parser.add_argument("--workdir", required=True)
    parser.add_argument("--step", type=int)
    parser.add_argument("--out")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    if args.action == "compress":
        rows = compress(args.workdir)
        print(f"compressed {len(rows)} checkpoints")
        rows = stats(args.workdir)
    elif args.action == "restore":
        if args.step is None or not args.out:
            parser.error("restore needs --step N and --out DIR")
        print(f"wrote {restore(args.workdir, args.step, args.out)}")
        return 0
    else:
        rows = stats(args.workdir)
    print("\n".join(json.dumps(r) for r in rows) if args.json else format_stats(rows))
    return 0
