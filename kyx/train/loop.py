"""The one training loop: set up (or restore) a run, then steps and the hooks that are due.

``run(trainer, workdir)`` = ``Run(trainer, workdir)`` (mesh, shardings, restore or fresh
state, the jitted step) + the plain loop below. Resume order: the workdir's newest good
checkpoint, then each model's ``init`` (``init_from``), then a seeded fresh init. The
step is one jit-compiled call with explicit in/out shardings and a donated state; the
host touches metrics only when a hook asks (``log``, ``eval``). Periodic actions are hooks
(kyx/train/hooks.py). SIGTERM / SIGINT write the pending metrics and a final checkpoint,
then raise ``Preempted`` (``kyx train`` exits 75: rerun the command to resume). A run
holds its workdir's lock (kyx/checkpoint/workdir_lock.py) from set-up to close; it fails
at the end if the final eval loss is not finite, and warns when more than
``train.max_skipped_fraction`` of its steps were skipped as non-finite.
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
from kyx import metrics as metrics_lib
from kyx import sharding
from kyx.checkpoint.workdir_lock import WorkdirLock
from kyx.errors import KyxError, Preempted
from kyx.fileio import atomic_write
from kyx.logs import get_logger
from kyx.train import state as state_lib
from kyx.train.base import Trainer
from kyx.train.checkpointing import RunCheckpoints
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
    r = Run(trainer, workdir)
    try:
        with _Preemption() as preempt, sharding.use_mesh(r.mesh, r.rules):
            for hook in r.hooks:
                if hook.at_start and r.step == 0:
                    hook.fn(r)
            while r.step < r.total:
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


class Run:
    """A run's set-up and everything the loop and its hooks share."""

    def __init__(self, trainer: Trainer, workdir: str):
        cfg = self.cfg = trainer.config
        self.trainer, self.workdir = trainer, workdir
        self.lock = WorkdirLock(workdir, cfg.get("trainer", "train"))
        if jax.process_index() == 0:
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
        restored = self.checkpoints.restore()
        if restored is not None:
            self.step, self.state, data_state = restored
            if data_state:
                trainer.train_iter.set_state(data_state)
        else:
            self.step = 0
            self.state = state_lib.create(trainer.models, self.mesh, self.rules, cfg.train.seed,
                                          trainer.stats)
        config_lib.dump(cfg, os.path.join(workdir, "config.json"))
        proto = getattr(trainer.tokenizer, "model_proto", None)
        if proto is not None:
            atomic_write(os.path.join(workdir, "tokenizer.model"), proto, checksum=True)
        self.skipped, self.start_step = 0.0, self.step  # non-finite steps of this process

        self.batch_shardings = self.shardings_of(trainer.batch_axes)
        self.rollout_shardings = (self.shardings_of(trainer.rollout_axes)
                                  if trainer.rollout is not None else None)
        self.step_fn = jax.jit(trainer.step_fn,
                               in_shardings=(self.shardings, self.batch_shardings, None),
                               out_shardings=(self.shardings, None), donate_argnums=(0,))
        self.eval_fn = None
        if trainer.eval_fn is not None:
            params_sh = {n: m.params for n, m in self.shardings.models.items()}
            self.eval_fn = jax.jit(trainer.eval_fn,
                                   in_shardings=(params_sh, self.batch_shardings))
        self.base_rng = jax.random.wrap_key_data(jax.device_get(self.state.rng))
        self.total = cfg.train.steps
        self.peak_flops = metrics_lib.matmul_peak_flops() if cfg.train.measure_mfu else 0.0
        self.writer = metrics_lib.MetricsWriter(workdir, resume_step=self.step)
        self.bar = metrics_lib.ProgressBar(self.total, initial=self.step)
        self.last: dict = {}
        self._pending: list[tuple[int, dict]] = []   # (step, device metrics) not yet on host
        self._rows: dict[int, dict] = {}             # host rows not yet written
        self._clock, self._tokens, self._untimed = time.perf_counter(), 0, 0.0
        self.hooks = build_hooks(self, trainer.hooks)

    # ------------------------------------------------------------------ step inputs
    def shardings_of(self, axes: dict) -> dict:
        return {k: sharding.named_sharding(v, self.mesh, self.rules) for k, v in axes.items()}

    def global_batch(self, batch: dict, shardings: dict | None = None) -> dict:
        """Process-local numpy rows -> global jax Arrays laid out on the mesh."""
        shardings = shardings or self.batch_shardings
        return {k: jax.make_array_from_process_local_data(shardings[k], np.asarray(v))
                for k, v in batch.items()}

    def next_batch(self) -> dict:
        """The step's batch: the iterator's next one on the mesh or, for a trainer with a
        rollout (RL), the experience it makes from the iterator's prompts with the current
        state and key ``fold_in(step key, ROLLOUT_STREAM)``."""
        raw = next(self.trainer.train_iter)
        if self.trainer.rollout is None:
            return self.global_batch(raw)
        prompts = self.global_batch(raw, self.rollout_shardings)
        return self.trainer.rollout(self.state, prompts,
                                    jax.random.fold_in(self.step_rng(), ROLLOUT_STREAM))

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
        """Write every collected row (metrics.jsonl, TensorBoard, progress bar)."""
        self.collect()
        for s in sorted(self._rows):
            row = self._rows.pop(s)
            self.writer.write(s, row)
            self.skipped += row.get("train/skipped", 0.0)
            self.last = row
            self._check_finite(s, row)
        self.bar.update(self.step, self.last.get("train/loss", float("nan")),
                        self.last.get("perf/tokens_per_s"), self.last.get("perf/mfu"))

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
        if artifacts:
            with open(os.path.join(self.workdir, "eval_stats.jsonl"), "a") as f:
                f.write(json.dumps({"step": self.step, **artifacts}) + "\n")
        return metrics

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
            self.writer.close()
            self.bar.close()
            self.lock.release()
