"""What verifying a checkpoint's digests costs: restore time with and without the check.

Builds the train state of configs/pretrain.py at the given size (params + Adam moments,
fresh init: the cost does not depend on the values), saves it once with kyx's
Checkpointer (which records the digests), then times full restores alternately with
verification and with it switched off (median of --repeats each, after one warm-up of
each kind so compilation is excluded). Also times computing the digests at save time.
With --cold, the page cache is dropped before every restore (needs root; a resume after
a preemption reads from disk), else the files are read from memory (the best case for
restore, the worst for the relative cost of the check). Prints one JSON line per size.

    python benchmarks/checkpoint_verify.py [--sizes tiny,small] [--repeats 5] [--cold] [--resume]
"""
import argparse
import json
import os
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402

from kyx import config as config_lib  # noqa: E402
from kyx import sharding  # noqa: E402
from kyx.checkpoint import digest  # noqa: E402
from kyx.checkpoint.manager import Checkpointer  # noqa: E402
from kyx.train import registry  # noqa: E402
from kyx.train import state as state_lib  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _drop_page_cache() -> None:
    os.sync()
    with open("/proc/sys/vm/drop_caches", "w") as f:
        f.write("3\n")


def _restore(ckpt, target, verify: bool, cold: bool = False) -> float:
    if cold:
        _drop_page_cache()
    read = digest.read
    if not verify:
        digest.read = lambda step_dir: None
    try:
        t0 = time.perf_counter()
        jax.block_until_ready(ckpt.restore(1, target)[0])
        return time.perf_counter() - t0
    finally:
        digest.read = read


def bench(size: str, repeats: int, cold: bool) -> dict:
    cfg = config_lib.load(os.path.join(ROOT, "configs", f"pretrain.py:{size}"),
                          ["train.measure_mfu=false", "mesh.rules=dp"])
    spec = registry.build_step(cfg)
    mesh, rules = sharding.mesh_from_config(cfg.mesh)
    shardings, abstract = state_lib.state_shardings(spec.models, mesh, rules, spec.stats)
    state = state_lib.create(spec.models, mesh, rules, 0, spec.stats)
    target = sharding.with_shardings(abstract, shardings)
    nbytes = sum(x.nbytes for x in jax.tree.leaves(state))
    digest.array_digests(state)  # compile
    t0 = time.perf_counter()
    digest.array_digests(state)
    digest_s = time.perf_counter() - t0
    with tempfile.TemporaryDirectory() as tmp:
        ckpt = Checkpointer(tmp, async_save=False)
        ckpt.save(1, state, {}, cfg.to_dict(), force=True)
        ckpt.wait()
        del state
        _restore(ckpt, target, True), _restore(ckpt, target, False)  # warm-up both paths
        timed = {True: [], False: []}
        for _ in range(repeats):
            for verify in (False, True):
                timed[verify].append(_restore(ckpt, target, verify, cold))
        ckpt.close()
    plain, checked = statistics.median(timed[False]), statistics.median(timed[True])
    return {"size": size, "state_mb": round(nbytes / 1e6, 1), "repeats": repeats,
            "page_cache": "dropped" if cold else "warm",
            "restore_s": round(plain, 3), "restore_verified_s": round(checked, 3),
            "verify_overhead_pct": round(100 * (checked - plain) / plain, 2),
            "digest_s": round(digest_s, 4),
            "digest_gb_per_s": round(nbytes / 1e9 / digest_s, 2)}


def bench_resume(size: str, repeats: int) -> dict:
    """What the check adds to a resumed run's start: ``Run`` set-up + ``settle_restore``
    (restore, the check in the background while the step compiles, the wait for it),
    timed with the check and with it switched off; ``wait_s`` is the time the start
    blocks on the check after compiling (its whole remaining cost). Round 0 (``first_*``)
    is a start that compiles the step, as every new process does; later rounds reuse
    the in-process compilation cache (the shortest set-up to hide the check behind)."""
    from kyx.train import loop

    cfg = config_lib.load(os.path.join(ROOT, "configs", f"pretrain.py:{size}"),
                          ["train.measure_mfu=false", "mesh.rules=dp", "train.steps=2",
                           "checkpoint.every=1", "train.eval_every=1000", "data.eval_batches=1"])
    timed, waits = {True: [], False: []}, []
    wait = digest.Verification.wait

    def timed_wait(self):
        t0 = time.perf_counter()
        try:
            wait(self)
        finally:
            waits.append(time.perf_counter() - t0)

    with tempfile.TemporaryDirectory() as workdir:
        cfg.train.steps = 1
        loop.run(registry.build(cfg), workdir)  # one step and its checkpoint
        cfg.train.steps = 2  # a second step to compile
        trainer = registry.build(cfg)
        read = digest.read
        digest.Verification.wait = timed_wait
        try:
            for i in range(repeats + 1):  # round 0: a fresh process's start (compiles)
                for verify in ((True, False) if i == 0 else (False, True)):
                    if not verify:
                        digest.read = lambda step_dir: None
                    t0 = time.perf_counter()
                    r = loop.Run(trainer, workdir)
                    r.settle_restore()
                    jax.block_until_ready(r.state)
                    elapsed = time.perf_counter() - t0
                    r.close()
                    digest.read = read
                    if i:
                        timed[verify].append(elapsed)
                    elif verify:
                        first = elapsed
        finally:
            digest.read, digest.Verification.wait = read, wait
    plain, checked = statistics.median(timed[False]), statistics.median(timed[True])
    waited = statistics.median(waits[1:]) if len(waits) > 1 else float("nan")
    return {"size": size, "mode": "resume", "repeats": repeats,
            "first_start_verified_s": round(first, 3), "first_wait_s": round(waits[0], 4),
            "resume_start_s": round(plain, 3), "resume_start_verified_s": round(checked, 3),
            "wait_s": round(waited, 4),
            "difference_pct": round(100 * (checked - plain) / plain, 2)}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", default="tiny,small")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--cold", action="store_true", help="drop the page cache first")
    parser.add_argument("--resume", action="store_true",
                        help="also time a resumed run's start (check overlapped with compiling)")
    args = parser.parse_args()
    for size in args.sizes.split(","):
        print(json.dumps(bench(size, args.repeats, args.cold)), flush=True)
        if args.resume:
            print(json.dumps(bench_resume(size, args.repeats)), flush=True)


if __name__ == "__main__":
    main()
