"""The one training loop every trainer uses.

Resume order: the workdir's newest good checkpoint, then `init_from` (params only),
then fresh initialisation. Each step is one jit-compiled call with explicit in/out
shardings and a donated state; the host only touches metrics every `log_every` steps.
SIGTERM / SIGINT trigger a final checkpoint before exiting.
"""
from __future__ import annotations

import dataclasses
import json
import os
import signal
import time
from typing import Any, Callable, Iterable

import jax
import jax.numpy as jnp
import numpy as np

from kyx import config as config_lib
from kyx import metrics as metrics_lib
from kyx import sharding
from kyx.errors import KyxError
from kyx.train import state as state_lib
from kyx.train.checkpointing import RunCheckpoints


@dataclasses.dataclass
class Trainer:
    """What a trainer module hands the loop; only `step_fn` and data differ per trainer."""
    config: Any
    model: Any
    tx: Any
    step_fn: Callable            # (state, batch, rng) -> (state, metrics); pure
    train_iter: Any              # __next__ -> dict of numpy arrays; get_state / set_state
    batch_axes: dict             # batch key -> logical axis names
    tokens_per_step: int
    flops_per_token: float
    eval_fn: Callable | None = None        # (params, batch) -> dict of sums; pure
    eval_batches: Callable[[], Iterable] | None = None
    summarize_eval: Callable | None = None  # (sums dict of numpy) -> (metrics, artifacts)
    tokenizer: Any = None
    init_params: Callable | None = None     # () -> params to adopt instead of fresh init
    extra: Any = None                       # extra state pytree (e.g. reference params)
    extra_shardings: Any = None


class NonFiniteLoss(KyxError, RuntimeError):
    """The loss or gradient became NaN/Inf and train.nan_policy is 'stop'."""


class _Preemption:
    """Record SIGTERM/SIGINT so the loop can checkpoint and exit cleanly."""

    def __init__(self):
        self.signal = None
        self._old = {}

    def __enter__(self):
        for sig in (signal.SIGTERM, signal.SIGINT):
            try:
                self._old[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not in the main thread (e.g. notebooks' executors)
                pass
        return self

    def _handle(self, signum, frame):
        self.signal = signum

    def __exit__(self, *exc):
        for sig, old in self._old.items():
            signal.signal(sig, old)


def _global_batch(batch: dict, shardings: dict) -> dict:
    """Process-local numpy rows -> global jax Arrays laid out on the mesh."""
    return {k: jax.make_array_from_process_local_data(shardings[k], np.asarray(v))
            for k, v in batch.items()}


def run(trainer: Trainer, workdir: str) -> dict:
    """Train until `train.steps`; returns the last logged metrics."""
    cfg = trainer.config
    os.makedirs(workdir, exist_ok=True)
    rules = sharding.get_rules(cfg.mesh.rules)
    mesh = sharding.make_mesh({a: cfg.mesh[a] for a in sharding.MESH_AXES})
    sharding.check_batch(cfg.data.batch_size, mesh, rules)
    state_sh, abstract = state_lib.state_shardings(
        trainer.model, trainer.tx, mesh, rules, trainer.extra_shardings,
        jax.eval_shape(lambda: trainer.extra) if trainer.extra is not None else None)
    if jax.process_count() == 1 or "fsdp" in cfg.mesh.rules:
        sharding.check_replication(state_sh.params, abstract.params, mesh, cfg.mesh.rules)

    ckpt = RunCheckpoints(workdir, cfg, abstract, state_sh)
    restored = ckpt.restore()
    if restored is not None:
        start, state, data_state = restored
        if data_state:
            trainer.train_iter.set_state(data_state)
    else:
        start = 0
        params = trainer.init_params() if trainer.init_params else None
        state, _ = state_lib.create(trainer.model, trainer.tx, mesh, rules, cfg.train.seed,
                                    params=params, extra=trainer.extra,
                                    extra_shardings=trainer.extra_shardings)
    config_lib.dump(cfg, os.path.join(workdir, "config.json"))
    if trainer.tokenizer is not None and hasattr(trainer.tokenizer, "model_proto"):
        _write_atomic(os.path.join(workdir, "tokenizer.model"), trainer.tokenizer.model_proto)

    batch_sh = {k: sharding.named_sharding(v, mesh, rules) for k, v in trainer.batch_axes.items()}
    step_fn = jax.jit(trainer.step_fn, in_shardings=(state_sh, batch_sh, None),
                      out_shardings=(state_sh, None), donate_argnums=(0,))
    eval_fn = None
    if trainer.eval_fn is not None:
        eval_fn = jax.jit(trainer.eval_fn, in_shardings=(state_sh.params, batch_sh))
    base_rng = jax.random.wrap_key_data(jax.device_get(state.rng))

    total = cfg.train.steps
    peak = metrics_lib.matmul_peak_flops() if cfg.train.measure_mfu else 0.0
    writer = metrics_lib.MetricsWriter(workdir, resume_step=start)
    bar = metrics_lib.ProgressBar(total, initial=start)
    last: dict = {}
    pending: list = []
    t0, tok0 = time.perf_counter(), 0
    step = start

    def save(step, force=False):
        ckpt.save(step, state, trainer.train_iter.get_state(), force=force)

    with _Preemption() as preempt, sharding.use_mesh(mesh, rules):
        while step < total:
            batch = _global_batch(next(trainer.train_iter), batch_sh)
            state, m = step_fn(state, batch, jax.random.fold_in(base_rng, step))
            step += 1
            pending.append(m)
            tok0 += trainer.tokens_per_step
            is_eval = eval_fn is not None and (step % cfg.train.eval_every == 0 or step == total)
            if step % cfg.train.log_every == 0 or step == total or preempt.signal or is_eval:
                rows = jax.device_get(pending)
                pending = []
                tps = tok0 / max(time.perf_counter() - t0, 1e-9)
                evals = _evaluate(trainer, eval_fn, state.params, batch_sh, step,
                                  workdir) if is_eval else {}
                for i, row in enumerate(rows):
                    s = step - len(rows) + i + 1
                    out = {f"train/{k}": float(np.asarray(v)) for k, v in row.items()}
                    if s == step:
                        out["perf/tokens_per_s"] = tps
                        if peak:
                            out["perf/mfu"] = tps * trainer.flops_per_token / peak
                        out.update(evals)
                    writer.write(s, out)
                    last = out
                    if out["train/skipped"] and cfg.train.nan_policy == "stop":
                        save(step, force=True)
                        ckpt.wait()
                        raise NonFiniteLoss(
                            f"non-finite loss/gradient at step {s} (train/loss="
                            f"{out['train/loss']}); the update was not applied and the state "
                            f"was checkpointed. Lower optim.lr, enable optim.clip_norm, or set "
                            f"train.nan_policy='skip' to skip such steps.")
                bar.update(step, last.get("train/loss", float("nan")), tps,
                           last.get("perf/mfu", 0.0))
                t0, tok0 = time.perf_counter(), 0
            if step % cfg.checkpoint.every == 0 or step == total:
                save(step)
            if preempt.signal:
                save(step, force=True)
                print(f"received signal {preempt.signal}: saved step {step}, exiting", flush=True)
                break
    ckpt.close()
    writer.close()
    bar.close()
    if step == total:
        metrics_lib.plot_loss_curve(workdir)
    return last


def _write_atomic(path: str, data: bytes) -> None:
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


def _evaluate(trainer, eval_fn, params, batch_sh, step, workdir) -> dict:
    """Run the eval pass; metrics are returned, array statistics appended to a jsonl."""
    sums = None
    for batch in trainer.eval_batches():
        out = eval_fn(params, _global_batch(batch, batch_sh))
        sums = out if sums is None else jax.tree.map(jnp.add, sums, out)
    if sums is None:
        return {}
    metrics, artifacts = trainer.summarize_eval(jax.device_get(sums))
    if artifacts:
        with open(os.path.join(workdir, "eval_stats.jsonl"), "a") as f:
            f.write(json.dumps({"step": step, **artifacts}) + "\n")
    return metrics
