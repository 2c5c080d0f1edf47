"""A run's checkpoints: Orbax full checkpoints plus (optionally) the ExCP chain.

Restore order for `checkpoint.resume_step=-1`: the newest readable Orbax checkpoint,
else (none exists or none reads) the newest readable step of the ExCP chain. For an
explicit step: its full Orbax checkpoint, else the chain's reconstruction of it.
Resuming from an older step discards what came after it (newer full checkpoints and
chain entries), since the run now takes another course.

A chain that cannot be continued (unreadable or edited manifest, or a damaged link that
the next residual would build on, checked at resume) or `checkpoint.excp.restart_chain`
sets the chain aside with a warning and starts a fresh one at the resume step.
"""
from __future__ import annotations

import os
from typing import Any

import jax
import numpy as np

from kyx import sharding
from kyx.checkpoint import compat, excp_archive
from kyx.checkpoint.manager import Checkpointer, read_config
from kyx.distributed import barrier
from kyx.errors import CheckpointError, ConfigError
from kyx.logs import get_logger

log = get_logger(__name__)


class DamagedRestore(CheckpointError):
    """The digest check of a restored full checkpoint (run in the background) failed."""

    def __init__(self, step: int, error: CheckpointError):
        super().__init__(str(error))
        self.step = step


class RunCheckpoints:
    def __init__(self, workdir: str, cfg, abstract_state, state_shardings):
        self.cfg = cfg
        self.abstract, self.shardings = abstract_state, state_shardings
        excp_cfg = cfg.checkpoint.get("excp")
        self.excp_enabled = bool(excp_cfg and excp_cfg.enabled)
        keep = cfg.checkpoint.keep
        if self.excp_enabled:
            if excp_cfg.keep_full < 2:
                raise ConfigError("checkpoint.excp.keep_full must be >= 2: the newest full "
                                  "checkpoint is still being written while the previous one "
                                  "is compressed")
            keep = excp_cfg.keep_full
        directory = os.path.join(workdir, "checkpoints")
        self.ckpt = Checkpointer(directory, keep, cfg.checkpoint.async_save)
        self.archiver = (excp_archive.Archiver(workdir, excp_cfg, abstract_state, directory)
                         if self.excp_enabled else None)
        self.saved: set[int] = set()
        self._uncompressed: tuple[int, Any] | None = None  # saved, not yet handed to ExCP
        self._pending = None  # a restore awaiting confirm(): (step, data, host, check)

    # ------------------------------------------------------------------ restore
    def restore(self, background: bool = False, skip=()) -> tuple[int, Any, Any] | None:
        """(step, device state, data_state) or None for a fresh run; full checkpoints in
        ``skip`` (found damaged by an earlier attempt) are passed over.

        With ``background``, a full checkpoint's digest check runs in a thread and the
        restore is only settled (newer steps discarded, the ExCP chain continued) by
        ``confirm()``, which the caller must call before the first step.
        """
        want = self.cfg.checkpoint.resume_step
        self._check_models()
        restored = self._restore_full(want, skip, background)
        if restored is None and self.archiver:
            restored = self._restore_chain(want)
        if restored is None:
            self._pending = None
            return None
        step, state, data_state, host, check = restored
        self._pending = (step, data_state, host, check)
        if not background:
            self.confirm()
        return step, state, data_state

    def confirm(self) -> None:
        """Wait for the restored step's digest check (DamagedRestore if it failed: the
        caller restores again with that step in ``skip``), then settle the restore."""
        if self._pending is None:
            return
        step, data_state, host, check = self._pending
        self._pending = None
        if check is not None:
            try:
                check.wait()
            except CheckpointError as e:
                raise DamagedRestore(step, e) from e
        if host is None:
            log.info("resumed from %s", self.ckpt.step_dir(step))
        barrier("kyx-restored")  # every process has read what it resumes from before
        self._discard_after(step)  # process 0 deletes newer steps / truncates the chain
        if self.archiver:
            self._continue_chain(step, data_state, host)
        self.saved.add(step)

    @property
    def pending_check(self) -> bool:
        """Whether a background digest check is still to be waited for."""
        return (self._pending is not None and self._pending[3] is not None
                and self._pending[3].in_background)

    def _restore_full(self, want: int, skip=(), background: bool = False):
        """(step, state, data_state, None, Verification) from a full checkpoint; None when
        there is none (or it failed and the chain can stand in)."""
        full = [s for s in self.ckpt.steps() if s not in skip]
        chain_steps = self.archiver.steps() if self.archiver else []
        damaged = self.archiver.damaged if self.archiver else None
        if want >= 0 and want not in full:
            if want in chain_steps:
                return None
            raise CheckpointError(
                f"no checkpoint for step {want}: full checkpoints {full}, ExCP steps "
                f"{chain_steps}" + (f" (the ExCP chain is unusable: {damaged})" if damaged
                                    else ""))
        try:
            restored = self.ckpt.restore_latest(
                sharding.with_shardings(self.abstract, self.shardings), want, skip, background)
        except CheckpointError as e:
            if not [s for s in chain_steps if want < 0 or s == want]:
                if damaged:
                    raise CheckpointError(f"{e}; the ExCP chain cannot stand in: {damaged}") from e
                raise
            log.warning("%s; trying the ExCP chain", e)
            return None
        if restored is None:
            return None
        step, state, data_state, _, check = restored
        return step, state, data_state, None, check

    def _restore_chain(self, want: int):
        """(step, state, data_state, host state) reconstructed from the ExCP chain: step
        `want`, else its newest readable step; None when the chain is empty."""
        archiver = self.archiver
        if archiver.damaged is not None:
            raise CheckpointError(
                f"no readable full checkpoint to resume from, and {archiver.damaged}; move "
                f"{archiver.root} aside to start this run from scratch")
        steps = [want] if want >= 0 else list(reversed(archiver.steps()))
        for i, step in enumerate(steps):
            try:
                host, data_state = excp_archive.state_from_chain(archiver.chain, step,
                                                                 self.abstract)
                host = excp_archive.frozen_from_full(self.ckpt.directory, host, self.abstract)
            except CheckpointError as e:
                if i + 1 == len(steps):
                    raise CheckpointError(f"no readable full checkpoint or ExCP step to resume "
                                          f"from (ExCP steps tried: {steps}): {e}") from e
                log.warning("%s; falling back to the previous ExCP step", e)
                continue
            log.info("resumed from ExCP reconstruction of step %d (%s)", step, archiver.root)
            return step, jax.device_put(host, self.shardings), data_state, host, None
        return None

    def _continue_chain(self, step: int, data_state: Any, host) -> None:
        """After resuming at `step` (from the chain when `host` is its host state): keep
        appending to the chain if it is sound, else set it aside and start a fresh one."""
        archiver, reason = self.archiver, None
        if self.cfg.checkpoint.excp.get("restart_chain", False):
            reason = "checkpoint.excp.restart_chain is set"
        elif archiver.damaged is not None:
            reason = str(archiver.damaged)
        elif host is None:  # the link the next residual builds on, read now, not saves later
            try:
                archiver.chain.verify_newest()
            except CheckpointError as e:
                reason = str(e)
        if reason is not None:
            archiver.restart(reason, step)
            if host is not None:  # no full checkpoint of it: compress the state itself
                archiver.submit_state(jax.tree.map(np.array, host), data_state)
        if host is None and reason is None:  # saved, but killed before it was compressed
            tip = max(archiver.steps(), default=-1)
            for s in self.ckpt.steps():
                if tip < s < step:
                    archiver.submit_left_over(s)
        if host is None and step not in archiver.steps():
            self._uncompressed = (step, data_state)

    def _check_models(self) -> None:
        """A workdir whose checkpoints hold other models than this run's cannot resume
        (another trainer, or e.g. reference=frozen vs precomputed): say so, instead of
        reporting every checkpoint as corrupted."""
        steps = self.ckpt.steps()
        if not steps:
            return
        try:
            tree = Checkpointer(self.ckpt.directory, read_only=True).state_tree(steps[-1])
            stored_config = read_config(self.ckpt.directory, steps[-1])
        except (CheckpointError, OSError, ValueError):
            return  # unreadable: restore_latest reports it and falls back
        stored = sorted(tree["models"]) if "models" in tree else ["<single-model layout>"]
        wanted = sorted(self.abstract.models)
        if stored != wanted:
            workdir = os.path.dirname(self.ckpt.directory)
            raise CheckpointError(
                f"the checkpoints in {self.ckpt.directory} hold models {stored}, this run has "
                f"{wanted} (another trainer, trainer option or kyx version wrote them); use a "
                f"new --workdir, with --config.init_from={workdir} to start from its params")
        # a changed architecture: name the config keys instead of "corrupted" x N
        compat.check_resumable(self.ckpt.directory, tree, self.abstract, stored_config,
                               self.cfg.to_dict())

    def _discard_after(self, step: int) -> None:
        newer = [s for s in self.ckpt.steps() if s > step]
        for s in newer:
            self.ckpt.manager.delete(s)
        if newer:
            log.info("discarded full checkpoints %s newer than the resume step %d", newer, step)
        if self.archiver:
            self.archiver.rewind(step)

    # ------------------------------------------------------------------ save
    def save(self, step: int, state, data_state: Any, force: bool = False) -> None:
        if step in self.saved:  # e.g. a preemption right after a periodic save
            return
        if self.archiver:
            # compressions must finish before Orbax may delete their source checkpoint
            self.archiver.wait()
        self.ckpt.save(step, state, data_state, self.cfg.to_dict(), force=force)
        self.saved.add(step)
        if self.archiver:
            # Orbax finishes the previous async save before starting this one
            if self._uncompressed is not None:
                self.archiver.submit(*self._uncompressed)
            self._uncompressed = (step, data_state)

    def wait(self) -> None:
        self.ckpt.wait()

    def close(self) -> None:
        self.ckpt.wait()
        if self.archiver:
            if self._uncompressed is not None:
                self.archiver.submit(*self._uncompressed)
                self._uncompressed = None
            self.archiver.close()
            for s in self.archiver.stats:
                log.info("ExCP step %d: %.2f MiB, ratio %.1fx, %.0f MB/s", s["step"],
                         s["bytes"] / 2**20, s["ratio"], s["mb_per_s"])
        self.ckpt.close()
