"""A run's checkpoints: Orbax full checkpoints plus (optionally) the ExCP chain.

Restore order for `checkpoint.resume_step=-1`: the newest readable Orbax checkpoint.
For an explicit step: a full Orbax checkpoint if one exists, else the ExCP chain's
reconstruction of that step. Resuming from an older step discards what came after it
(newer full checkpoints and chain entries), since the run now takes another course.
"""
from __future__ import annotations

import os
from typing import Any

import jax

from kyx import sharding
from kyx.checkpoint import excp_archive
from kyx.checkpoint.manager import Checkpointer
from kyx.errors import CheckpointError, ConfigError
from kyx.logs import get_logger

log = get_logger(__name__)


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

    # ------------------------------------------------------------------ restore
    def restore(self) -> tuple[int, Any, Any] | None:
        """(step, device state, data_state) or None for a fresh run."""
        want = self.cfg.checkpoint.resume_step
        self._check_models()
        target = sharding.with_shardings(self.abstract, self.shardings)
        chain_steps = self.archiver.chain.steps() if self.archiver else []
        if want >= 0 and want not in self.ckpt.steps() and want in chain_steps:
            host, data_state = excp_archive.state_from_chain(self.archiver.chain, want,
                                                             self.abstract)
            host = excp_archive.frozen_from_full(self.ckpt.directory, host, self.abstract)
            state = jax.device_put(host, self.shardings)
            log.info("resumed from ExCP reconstruction of step %d (%s)", want,
                     excp_archive.chain_dir(os.path.dirname(self.ckpt.directory)))
            step = want
        else:
            if want >= 0 and want not in self.ckpt.steps():
                raise CheckpointError(
                    f"no checkpoint for step {want}: full checkpoints {self.ckpt.steps()}, "
                    f"ExCP steps {chain_steps}")
            restored = self.ckpt.restore_latest(target, want)
            if restored is None:
                return None
            step, state, data_state, _ = restored
            log.info("resumed from %s", self.ckpt.step_dir(step))
            if self.archiver and step not in chain_steps:
                self._uncompressed = (step, data_state)
        self._discard_after(step)
        self.saved.add(step)
        return step, state, data_state

    def _check_models(self) -> None:
        """A workdir whose checkpoints hold other models than this run's cannot resume
        (another trainer, or e.g. reference=frozen vs precomputed): say so, instead of
        reporting every checkpoint as corrupted."""
        steps = self.ckpt.steps()
        if not steps:
            return
        try:
            tree = Checkpointer(self.ckpt.directory, read_only=True).state_tree(steps[-1])
        except CheckpointError:
            return  # unreadable: restore_latest reports it and falls back
        stored = sorted(tree["models"]) if "models" in tree else ["<single-model layout>"]
        wanted = sorted(self.abstract.models)
        if stored != wanted:
            workdir = os.path.dirname(self.ckpt.directory)
            raise CheckpointError(
                f"the checkpoints in {self.ckpt.directory} hold models {stored}, this run has "
                f"{wanted} (another trainer, trainer option or kyx version wrote them); use a "
                f"new --workdir, with --config.init_from={workdir} to start from its params")

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
