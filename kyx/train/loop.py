"""The one training loop: set up (or restore) a run, then steps and the hooks that are due.

``run(trainer, workdir)`` = ``Run(trainer, workdir)`` (mesh, shardings, restore or fresh
state, the jitted step) + the plain loop below. Resume order: the workdir's newest good
checkpoint, then each model's ``init`` (``init_from``), then a seeded fresh init. The
step is one jit-compiled call with explicit in/out shardings and a donated state; the
host touches metrics only when a hook asks (``log``, ``eval``); they go to the sinks of
``cfg.metrics`` on process 0 (kyx/telemetry/), and ``train.profile_steps`` traces a range of
steps with ``jax.profiler``. Periodic actions are hooks (kyx/train/hooks.py). SIGTERM /
SIGINT write the pending metrics and a final checkpoint, then raise ``Preempted`` (``kyx
train`` exits 75: rerun the command to resume). A run holds its workdir's lock
(kyx/checkpoint/workdir_lock.py) from set-up to close; it fails at the end if the final
eval loss is not finite, and warns when more than ``train.max_skipped_fraction`` of its
steps were skipped as non-finite.
"""
from __future__ import annotations

import contextlib
import json
import os
import signal
import time

import jax
import numpy as np

from kyx import config as config_lib
from kyx import sharding, telemetry
from kyx.checkpoint.workdir_lock import WorkdirLock
from kyx.data import hf_tokenizer
from kyx.distributed import is_writer
from kyx.errors import KyxError, Preempted
from kyx.logs import get_logger
from kyx.train import state as state_lib
from kyx.train.base import Trainer
from kyx.train.checkpointing import DamagedRestore, RunCheckpoints
from kyx.train.evaluation import trainer_eval
from kyx.train.hooks import build_hooks

log = get_logger(__name__)
ROLLOUT_STREAM = 0x524F4C4C  # fold_in index of a step's rollout key ("ROLL")


class NonFiniteLoss(KyxError, RuntimeError):
    """The loss or gradient became NaN/Inf and train.nan_policy is 'stop', or the final
    eval loss is not finite."""


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


def run(trainer: Trainer, workdir: str) -> dict:
    """Train until ``train.steps``; returns the last logged metrics."""
    r = _resumed_run(trainer, workdir)
    try:
        with _Preemption() as preempt, sharding.use_mesh(r.mesh, r.rules):
            for hook in r.hooks:
                if hook.at_start and r.step == 0:
                    hook.fn(r)
            while r.step < r.total:
                with r.profiler.step(r.step):
                    batch = r.next_batch()
                    r.state, metrics = r.step_fn(r.state, batch, r.step_rng())
                r.step += 1
                r.record(metrics)
                for hook in r.hooks:
                    if hook.due(r.step, r.total):
                        hook.fn(r)
                if preempt.signal:
                    r.flush()
                    r.save(force=True)
                    log.info("received signal %s: saved step %d, exiting", preempt.signal,
                             r.step)
                    break
    finally:
        r.close()
    if preempt.signal:
        raise Preempted(
            f"signal {signal.Signals(preempt.signal).name} stopped the run at step {r.step} of "
            f"{r.total}; its checkpoint is saved in {workdir}. Run the same command again to "
            "resume")
    r.check_outcome()
    return r.last


def jit_step(step_fn, state_shardings, batch_shardings: dict):
    """The jitted training step as the loop runs it: ``(state, batch, rng) -> (state,
    metrics)`` with the state's and the batch's shardings in, the state's out, and the
    state donated (updated in place). benchmarks/ lower and compile this same function."""
    return jax.jit(step_fn, in_shardings=(state_shardings, batch_shardings, None),
                   out_shardings=(state_shardings, None), donate_argnums=(0,))


def batch_shardings(axes: dict, mesh, rules) -> dict:
    """{batch key: NamedSharding} of a trainer's ``batch_axes`` (logical names) on ``mesh``."""
    return {k: sharding.named_sharding(v, mesh, rules) for k, v in axes.items()}


def _resumed_run(trainer: Trainer, workdir: str) -> "Run":
    """A set-up Run whose restored checkpoint (if any) has passed its digest check.

    The check of a full checkpoint runs in the background while the step compiles
    (``Run.settle_restore``); a step that fails it is set aside and the set-up repeated
    from the previous checkpoint, as a checkpoint that fails to read already is."""
    damaged: set[int] = set()
    while True:
        r = Run(trainer, workdir, skip_steps=damaged)
        try:
            r.settle_restore()
            return r
        except DamagedRestore as e:
            r.close()
            damaged.add(e.step)
            log.warning("%s; falling back to the previous checkpoint", e)
        except BaseException:
            r.close()
            raise


class _Precompiled:
    """The step compiled ahead of time (``Run.settle_restore``); a call whose argument
    types differ from the compiled ones goes to the jitted function instead."""

    def __init__(self, jitted, compiled):
        self.jitted, self.compiled = jitted, compiled

    def __call__(self, *args):
        if self.compiled is not None:
            try:
                return self.compiled(*args)
            except (TypeError, ValueError):  # raised before execution: other avals/shardings
                self.compiled = None
        return self.jitted(*args)


class Run:
    """A run's set-up and everything the loop and its hooks share."""

    def __init__(self, trainer: Trainer, workdir: str, skip_steps=()):
        cfg = self.cfg = trainer.config
        self.trainer, self.workdir, self.skip_steps = trainer, workdir, set(skip_steps)
        self.lock = WorkdirLock(workdir, cfg.get("trainer", "train"))
        if is_writer():  # the one process writing the run's own files (kyx/distributed.py)
            self.lock.acquire()
        try:
            self._setup(trainer, workdir)
        except BaseException:
            self.lock.release()
            raise

    def _setup(self, trainer: Trainer, workdir: str) -> None:
        cfg = self.cfg
        self.mesh, self.rules = sharding.mesh_from_config(cfg.mesh)
        sharding.check_batch(trainer.batch_rows or cfg.data.batch_size, self.mesh, self.rules)
        self.shardings, self.abstract = state_lib.state_shardings(
            trainer.models, self.mesh, self.rules, trainer.stats)
        if jax.process_count() == 1 or "fsdp" in cfg.mesh.rules:
            for name, sh in self.shardings.models.items():
                sharding.check_replication(sh.params, self.abstract.models[name].params,
                                           self.mesh, cfg.mesh.rules)
        self.checkpoints = RunCheckpoints(workdir, cfg, self.abstract, self.shardings)
        restored = self.checkpoints.restore(background=True, skip=self.skip_steps)
        if restored is not None:
            self.step, self.state, data_state = restored
            if data_state:
                trainer.train_iter.set_state(data_state)
        else:
            self.step = 0
            self.state = state_lib.create(trainer.models, self.mesh, self.rules, cfg.train.seed,
                                          trainer.stats)
        if is_writer():  # local path or storage URL: kyx/fileio.py
            config_lib.dump(cfg, os.path.join(workdir, "config.json"))
            hf_tokenizer.save_tokenizer(trainer.tokenizer, workdir)  # + its chat template
        self.skipped, self.start_step = 0.0, self.step  # non-finite steps of this process

        self.batch_shardings = self.shardings_of(trainer.batch_axes)
        self.rollout_shardings = (self.shardings_of(trainer.rollout_axes)
                                  if trainer.rollout is not None else None)
        self.step_fn = jit_step(trainer.step_fn, self.shardings, self.batch_shardings)
        self._first_batch = None
        self.eval_fn = None
        if trainer.eval_fn is not None:
            params_sh = {n: m.params for n, m in self.shardings.models.items()}
            self.eval_fn = jax.jit(trainer.eval_fn,
                                   in_shardings=(params_sh, self.batch_shardings))
        self.base_rng = jax.random.wrap_key_data(jax.device_get(self.state.rng))
        self.total = cfg.train.steps
        self.peak_flops = telemetry.matmul_peak_flops() if cfg.train.measure_mfu else 0.0
        self.writer = telemetry.open_writer(
            workdir, telemetry.selected(cfg.metrics), resume_step=self.step, total=self.total,
            every=cfg.train.log_every, settings=cfg.metrics, config=config_lib.to_dict(cfg))
        if telemetry.writes_here():  # evaluations after the restored step are redone
            telemetry.trim_rows(f"{workdir}/eval_stats.jsonl", self.step)
        self.profiler = telemetry.StepProfiler(
            cfg.train.profile_steps, workdir, sync=lambda: jax.block_until_ready(self.state),
            enabled=telemetry.writes_here())
        self.last: dict = {}
        self._pending: list[tuple[int, dict]] = []   # (step, device metrics) not yet on host
        self._rows: dict[int, dict] = {}             # host rows not yet written
        self._clock, self._tokens, self._untimed = time.perf_counter(), 0, 0.0
        self.hooks = build_hooks(self, trainer.hooks)

    # ------------------------------------------------------------------ step inputs
    def shardings_of(self, axes: dict) -> dict:
        return batch_shardings(axes, self.mesh, self.rules)

    def global_batch(self, batch: dict, shardings: dict | None = None) -> dict:
        """Process-local numpy rows -> global jax Arrays laid out on the mesh."""
        shardings = shardings or self.batch_shardings
        return {k: jax.make_array_from_process_local_data(shardings[k], np.asarray(v))
                for k, v in batch.items()}

    def next_batch(self) -> dict:
        """The step's batch: the iterator's next one on the mesh or, for a trainer with a
        rollout (RL), the experience it makes from the iterator's prompts with the current
        state and key ``fold_in(step key, ROLLOUT_STREAM)``."""
        if self._first_batch is not None:  # taken for compiling (settle_restore)
            batch, self._first_batch = self._first_batch, None
            return batch
        raw = next(self.trainer.train_iter)
        if self.trainer.rollout is None:
            return self.global_batch(raw)
        prompts = self.global_batch(raw, self.rollout_shardings)
        return self.trainer.rollout(self.state, prompts,
                                    jax.random.fold_in(self.step_rng(), ROLLOUT_STREAM))

    def settle_restore(self) -> None:
        """Compile the step (ahead of time, with the first batch) while the restored
        checkpoint's digests are checked in the background, then wait for the check
        (DamagedRestore if the values are damaged): the first step must not run before,
        since it donates, i.e. overwrites, the state. Rollout trainers compile at their
        first step (their batch comes from generation with the checked state)."""
        if self.trainer.rollout is None and self.step < self.total:
            with sharding.use_mesh(self.mesh, self.rules):
                self._first_batch = self.next_batch()
                self.step_fn = _Precompiled(self.step_fn, self.step_fn.lower(
                    self.state, self._first_batch, self.step_rng()).compile())
        self.checkpoints.confirm()

    def step_rng(self) -> jax.Array:
        """The key of the step about to run: fold_in(seed key, step), so resumes agree."""
        return jax.random.fold_in(self.base_rng, self.step)

    # ------------------------------------------------------------------ metrics
    def record(self, metrics: dict) -> None:
        """Train metrics of the step just taken (device arrays; fetched at the next flush)."""
        self._pending.append((self.step, metrics))
        self._tokens += self.trainer.tokens_per_step

    def add_metrics(self, step: int, metrics: dict) -> None:
        """Host scalars (e.g. ``eval/...``) written in the row of ``step``."""
        self._rows.setdefault(step, {}).update(metrics)

    @contextlib.contextmanager
    def untimed(self):
        """Time spent inside does not count against tokens/s (evaluation, generation)."""
        start = time.perf_counter()
        try:
            yield
        finally:
            self._untimed += time.perf_counter() - start

    def collect(self) -> None:
        """Bring pending train metrics to the host and close the throughput window."""
        if not self._pending:
            return
        values = jax.device_get([m for _, m in self._pending])
        now = time.perf_counter()
        tps = self._tokens / max(now - self._clock - self._untimed, 1e-9)
        for (s, _), row in zip(self._pending, values):
            self._rows.setdefault(s, {}).update(
                {f"train/{k}": float(np.asarray(v)) for k, v in row.items()})
        perf = {"perf/tokens_per_s": tps}
        if self.peak_flops:
            perf["perf/mfu"] = tps * self.trainer.flops_per_token / self.peak_flops
        self._rows[self._pending[-1][0]].update(perf)
        self._pending = []
        self._clock, self._tokens, self._untimed = now, 0, 0.0

    def flush(self) -> None:
        """Write every collected row to the sinks (metrics.jsonl, TensorBoard, console ...)."""
        self.collect()
        for s in sorted(self._rows):
            row = self._rows.pop(s)
            self.writer.write(s, row)
            self.skipped += row.get("train/skipped", 0.0)
            self.last = row
            self._check_finite(s, row)
        self.writer.flush()

    def _check_finite(self, step: int, row: dict) -> None:
        if row.get("train/skipped") and self.cfg.train.nan_policy == "stop":
            self.save(force=True)
            self.checkpoints.wait()
            raise NonFiniteLoss(
                f"non-finite loss/gradient at step {step} (train/loss={row['train/loss']}); "
                f"the update was not applied and the state was checkpointed. Lower optim.lr, "
                f"enable optim.clip_norm, or set train.nan_policy='skip' to skip such steps.")

    # ------------------------------------------------------------------ actions
    def save(self, force: bool = False) -> None:
        self.checkpoints.save(self.step, self.state, self.trainer.train_iter.get_state(),
                              force=force)

    def evaluate(self) -> dict:
        """The eval pass over ``trainer.eval_batches()`` (kyx/train/evaluation.py); array
        statistics are appended to eval_stats.jsonl."""
        params = {n: m.params for n, m in self.state.models.items()}
        metrics, artifacts = trainer_eval(self.trainer, params, self.mesh, self.rules,
                                          self.eval_fn)
        self.record_eval_stats(artifacts)
        return metrics

    def record_eval_stats(self, artifacts: dict, **tags) -> None:
        """Append an evaluation's array statistics (per-position loss sums ...) at this step
        to eval_stats.jsonl, tagged e.g. with ``source=label`` (read by kyx/scaling)."""
        if artifacts and telemetry.writes_here():
            telemetry.append_line(f"{self.workdir}/eval_stats.jsonl",
                                  json.dumps({"step": self.step, **tags, **artifacts}))

    def check_outcome(self) -> None:
        """After the last step: warn when many steps were skipped as non-finite, and fail
        when the final evaluation is not finite (exit 0 would report a broken run as done)."""
        fraction = self.skipped / max(self.step - self.start_step, 1)
        limit = self.cfg.train.get("max_skipped_fraction", 0.1)
        if fraction > limit:
            log.warning("!!! %d of %d steps (%.0f%%) were skipped for a non-finite loss or "
                        "gradient (train.max_skipped_fraction=%g): the run barely trained. "
                        "Lower optim.lr or enable optim.clip_norm.", self.skipped,
                        self.step - self.start_step,
                        100 * fraction, limit)
        final = {k: v for k, v in self.last.items() if k.startswith("eval/") and "loss" in k}
        bad = sorted(k for k, v in final.items() if not np.isfinite(v))
        if bad:
            raise NonFiniteLoss(
                f"the final evaluation is not finite ({', '.join(f'{k}={final[k]}' for k in bad)}) "
                f"after {self.skipped:.0f} skipped steps; the checkpoints in {self.workdir} "
                "hold a broken model. Lower optim.lr or enable optim.clip_norm, and resume "
                "from an earlier step with --config.checkpoint.resume_step=N")

    def close(self) -> None:
        """Finish pending saves and close writers (also after an error: nothing is lost)."""
        try:
            self.checkpoints.close()
        finally:
            self._close_telemetry()
            self.lock.release()

    def _close_telemetry(self) -> None:
        """Stop a profile in progress, then close the metrics sinks (even if it fails)."""
        try:
            self.profiler.close()
        finally:
            self.writer.close()
