"""Orbax checkpoints of the train state, the data-iterator state and the resolved config.

Saves are asynchronous (Orbax commits atomically: a save interrupted by SIGKILL leaves
no half-written step behind). Restoring walks back from the newest step: a checkpoint
that fails to read is reported by path and the previous good one is used.
"""
from __future__ import annotations

import json
import logging
import os
from typing import Any

import jax
import ml_collections
import orbax.checkpoint as ocp

from kyx.errors import CheckpointError

log = logging.getLogger(__name__)


def default_config() -> ml_collections.ConfigDict:
    return ml_collections.ConfigDict({
        "every": 200,            # save every N steps (and at the end, and on SIGTERM/SIGINT)
        "keep": 3,               # keep the newest K checkpoints
        "async_save": True,
        "resume_step": -1,       # -1: newest good checkpoint; N: resume from step N
    })


class Checkpointer:
    """Thin wrapper over ocp.CheckpointManager with items state / data / config."""

    def __init__(self, directory: str, keep: int = 3, async_save: bool = True,
                 read_only: bool = False):
        self.directory = os.path.abspath(directory)
        options = ocp.CheckpointManagerOptions(
            max_to_keep=keep, enable_async_checkpointing=async_save, create=not read_only,
            read_only=read_only)
        self.manager = ocp.CheckpointManager(
            self.directory, options=options, item_names=("state", "data", "config"))

    def steps(self) -> list[int]:
        return sorted(self.manager.all_steps())

    def save(self, step: int, state, data_state: Any, config: dict, force: bool = False) -> bool:
        args = ocp.args.Composite(
            state=ocp.args.StandardSave(state),
            data=ocp.args.JsonSave(data_state if data_state is not None else {}),
            config=ocp.args.JsonSave(config))
        return self.manager.save(step, args=args, force=force)

    def wait(self) -> None:
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.wait_until_finished()
        self.manager.close()

    def restore(self, step: int, abstract_state) -> tuple[Any, Any, dict]:
        """Restore one step onto the shardings carried by `abstract_state`."""
        try:
            out = self.manager.restore(step, args=ocp.args.Composite(
                state=ocp.args.StandardRestore(abstract_state),
                data=ocp.args.JsonRestore(), config=ocp.args.JsonRestore()))
        except Exception as e:  # orbax raises many types for unreadable data
            raise CheckpointError(
                f"checkpoint step {step} at {self.step_dir(step)} is unreadable or corrupted: "
                f"{type(e).__name__}: {str(e)[:300]}") from e
        return out["state"], out["data"], out["config"]

    def restore_params(self, step: int, abstract_params) -> Any:
        """Restore only the params subtree (for `init_from`)."""
        try:
            target = {"params": abstract_params}
            out = self.manager.restore(step, args=ocp.args.Composite(
                state=ocp.args.PyTreeRestore(
                    item=target, restore_args=ocp.checkpoint_utils.construct_restore_args(target),
                    partial_restore=True)))
        except Exception as e:
            raise CheckpointError(
                f"cannot read params from checkpoint step {step} at {self.step_dir(step)}: "
                f"{type(e).__name__}: {str(e)[:300]}") from e
        return out["state"]["params"]

    def restore_latest(self, abstract_state, step: int = -1):
        """Newest readable checkpoint (or exactly `step`); None when there is none.

        Returns (step, state, data_state, config). A corrupted newest checkpoint is
        reported by path and skipped in favour of the previous one.
        """
        steps = self.steps()
        if step >= 0:
            if step not in steps:
                raise CheckpointError(
                    f"no checkpoint for step {step} in {self.directory}; available: {steps}")
            return (step, *self.restore(step, abstract_state))
        for s in reversed(steps):
            try:
                return (s, *self.restore(s, abstract_state))
            except CheckpointError as e:
                log.warning("%s; falling back to the previous checkpoint", e)
                print(f"WARNING: {e}; falling back to the previous checkpoint", flush=True)
        if steps:
            raise CheckpointError(f"no readable checkpoint in {self.directory} (tried {steps})")
        return None

    def step_dir(self, step: int) -> str:
        return os.path.join(self.directory, str(step))


def read_config(directory: str, step: int) -> dict:
    """The resolved config stored next to checkpoint `step`."""
    path = os.path.join(directory, str(step), "config", "metadata")
    with open(path) as f:
        return json.load(f)
