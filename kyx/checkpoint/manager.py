"""Orbax checkpoints of the train state, the data-iterator state and the resolved config.

Saves are asynchronous (Orbax commits atomically: a save interrupted by SIGKILL leaves
no half-written step behind). Every save also stores digests of its values (item
``digest``, kyx/checkpoint/digest.py) and every read checks them. Restoring walks back
from the newest step: a checkpoint that fails to read or to verify is reported by path
and the previous good one is used.
"""
from __future__ import annotations

import json
import os
from typing import Any

import jax
import ml_collections
import orbax.checkpoint as ocp

from kyx.checkpoint import digest as digest_lib
from kyx.errors import CheckpointError
from kyx.fileio import as_path
from kyx.logs import get_logger

log = get_logger(__name__)


def default_config() -> ml_collections.ConfigDict:
    return ml_collections.ConfigDict({
        "every": 200,            # save every N steps (and at the end, and on SIGTERM/SIGINT)
        "keep": 3,               # keep the newest K checkpoints
        "async_save": True,
        "resume_step": -1,       # -1: newest good checkpoint; N: resume from step N
    })


DEFAULT_MODEL = "policy"


def default_model(names) -> str:
    """The model a params reader takes when none is named: ``policy`` if present, else the
    only model."""
    names = sorted(names)
    if DEFAULT_MODEL in names:
        return DEFAULT_MODEL
    if len(names) == 1:
        return names[0]
    raise CheckpointError(f"the checkpoint holds models {names}; name the one to load")


def _backbone_only(stored, abstract) -> bool:
    """Whether ``abstract`` (a Decoder's params) is read from the ``backbone`` of a stored
    value-head model (a reward model, or a PPO policy with a value head)."""
    return (isinstance(stored, dict) and "backbone" in stored and "value_kernel" in stored
            and isinstance(abstract, dict) and "backbone" not in abstract)


def _stored_dtypes(abstract, stored):
    """``abstract`` (ShapeDtypeStructs with shardings) with each leaf's dtype replaced by
    the one its checkpoint metadata ``stored`` records (leaves it does not record kept)."""
    def leaf(path, a):
        node = stored
        for key in path:
            node = node.get(getattr(key, "key", None)) if isinstance(node, dict) else None
        dtype = getattr(node, "dtype", None)
        if dtype is None or dtype == a.dtype:
            return a
        return jax.ShapeDtypeStruct(a.shape, dtype, sharding=a.sharding)
    return jax.tree_util.tree_map_with_path(leaf, abstract)


class Checkpointer:
    """Thin wrapper over ocp.CheckpointManager with items state / data / config.

    The state item is a TrainState (kyx/train/state.py): ``{"step", "models": {name:
    {"params", "opt_state"}}, "rng"}``. A read-only Checkpointer also reads single parts
    of it (one model's params) and the layout written before kyx kept several models in
    one state (``{"params", "opt_state", ...}``, read as model ``policy``).
    """

    def __init__(self, directory: str, keep: int = 3, async_save: bool = True,
                 read_only: bool = False):
        self.directory = str(as_path(directory))  # a local path or a storage URL
        self.read_only = read_only
        # read-only: the values orbax would otherwise force, with a warning line for each
        writes = (dict(max_to_keep=None, save_interval_steps=0, create=False) if read_only
                  else dict(max_to_keep=keep, create=True))
        options = ocp.CheckpointManagerOptions(
            enable_async_checkpointing=async_save, read_only=read_only, **writes)
        handlers = None
        if read_only:  # partial restores and metadata need the PyTree handler up front
            handlers = {"state": ocp.PyTreeCheckpointHandler(),
                        "data": ocp.JsonCheckpointHandler(),
                        "config": ocp.JsonCheckpointHandler(),
                        digest_lib.ITEM: ocp.JsonCheckpointHandler()}
        self.manager = ocp.CheckpointManager(
            self.directory, options=options, item_names=None if handlers else (
                "state", "data", "config", digest_lib.ITEM), item_handlers=handlers)

    def steps(self) -> list[int]:
        return sorted(self.manager.all_steps())

    def save(self, step: int, state, data_state: Any, config: dict, force: bool = False) -> bool:
        data_state = data_state if data_state is not None else {}
        args = ocp.args.Composite(**{
            "state": ocp.args.StandardSave(state),
            "data": ocp.args.JsonSave(data_state),
            "config": ocp.args.JsonSave(config),
            digest_lib.ITEM: ocp.args.JsonSave(digest_lib.record(state, data_state, config))})
        return self.manager.save(step, args=args, force=force)

    def wait(self) -> None:
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.wait_until_finished()
        self.manager.close()

    def restore(self, step: int, abstract_state) -> tuple[Any, Any, dict]:
        """Restore one step onto the shardings carried by `abstract_state`, verified
        against the digests saved with it."""
        state, data, config, _ = self.restore_unverified(step, abstract_state, False)
        return state, data, config

    def restore_unverified(self, step: int, abstract_state, background: bool = True
                           ) -> tuple[Any, Any, dict, digest_lib.Verification]:
        """``restore`` whose digest check runs in a background thread (``background``):
        the caller must ``wait()`` on the returned Verification before trusting (or
        donating) the state."""
        stored = digest_lib.read(self.step_dir(step))
        try:
            state_args = (ocp.args.PyTreeRestore(
                item=abstract_state,
                restore_args=ocp.checkpoint_utils.construct_restore_args(abstract_state))
                if self.read_only else ocp.args.StandardRestore(abstract_state))
            out = self.manager.restore(step, args=ocp.args.Composite(
                state=state_args, data=ocp.args.JsonRestore(), config=ocp.args.JsonRestore()))
        except Exception as e:  # orbax raises many types for unreadable data
            raise CheckpointError(
                f"checkpoint step {step} at {self.step_dir(step)} is unreadable or corrupted: "
                f"{type(e).__name__}: {str(e)[:300]}") from e
        check = digest_lib.Verification(stored, out, self.step_dir(step), background)
        return out["state"], out["data"], out["config"], check

    def model_names(self, step: int) -> list[str]:
        """Models stored at ``step`` (read-only Checkpointers)."""
        tree = self.state_tree(step)
        return sorted(tree["models"]) if "models" in tree else [DEFAULT_MODEL]

    def state_tree(self, step: int) -> dict:
        """The metadata tree of the state saved at ``step`` (read-only Checkpointers)."""
        try:
            tree = self.manager.item_metadata(step)["state"]
        except Exception as e:
            raise CheckpointError(f"cannot read the layout of checkpoint step {step} at "
                                  f"{self.step_dir(step)}: {type(e).__name__}: "
                                  f"{str(e)[:300]}") from e
        if tree is None:
            raise CheckpointError(f"checkpoint step {step} at {self.step_dir(step)} has no "
                                  "readable state metadata")
        return tree

    def restore_params(self, step: int, abstract_params, name: str | None = None) -> Any:
        """Restore one model's params (for ``init_from`` / ``kyx.load``); ``name`` None:
        ``default_model`` of what the checkpoint holds. Decoder params asked of a
        value-head model (``backbone`` + ``value_kernel``) come from its backbone. They
        are read in the dtypes they were saved in (so that their digests verify) and
        returned in ``abstract_params``' dtypes (e.g. a float32 run's weights for a
        bfloat16 model)."""
        wanted = abstract_params
        tree = self.state_tree(step)
        if "models" in tree:
            name = name or default_model(tree["models"])
            if name not in tree["models"]:
                raise CheckpointError(f"checkpoint step {step} at {self.step_dir(step)} has no "
                                      f"model {name!r}; it has {sorted(tree['models'])}")
            stored = tree["models"][name]["params"]
            sub = _backbone_only(stored, abstract_params)
            abstract_params = _stored_dtypes(abstract_params,
                                             stored["backbone"] if sub else stored)
            target = {"models": {name: {"params": {"backbone": abstract_params} if sub
                                        else abstract_params}}}
        else:  # the single-model layout of earlier kyx versions
            sub = False
            abstract_params = _stored_dtypes(abstract_params, tree.get("params", {}))
            target = {"params": abstract_params}
        try:
            out = self.manager.restore(step, args=ocp.args.Composite(
                state=ocp.args.PyTreeRestore(
                    item=target, restore_args=ocp.checkpoint_utils.construct_restore_args(target),
                    partial_restore=True)))
        except Exception as e:
            raise CheckpointError(
                f"cannot read params from checkpoint step {step} at {self.step_dir(step)}: "
                f"{type(e).__name__}: {str(e)[:300]}") from e
        state = out["state"]
        stored = digest_lib.read(self.step_dir(step))
        if stored is not None:
            digest_lib.verify_arrays(stored, state, self.step_dir(step))
        params = state["models"][name]["params"] if "models" in state else state["params"]
        params = params["backbone"] if sub else params
        return jax.tree.map(lambda x, a: x if x.dtype == a.dtype else x.astype(a.dtype),
                            params, wanted)

    def save_params(self, step: int, params, config: dict, name: str = DEFAULT_MODEL) -> None:
        """A params-only checkpoint (converted or upcycled models; read by ``init_from``)."""
        self.save(step, {"models": {name: {"params": params}}}, {}, config, force=True)

    def restore_latest(self, abstract_state, step: int = -1, skip=(), background: bool = False):
        """Newest readable checkpoint (or exactly `step`), ignoring the steps in ``skip``
        (found damaged earlier); None when there is none.

        Returns (step, state, data_state, config, Verification). A checkpoint that fails
        to read (or, unless the check runs in the ``background``, to verify) is reported by
        path and skipped in favour of the previous one.
        """
        stored = self.steps()
        steps = [s for s in stored if s not in skip]
        if step >= 0:
            if step not in steps:
                raise CheckpointError(
                    f"no readable checkpoint for step {step} in {self.directory}; "
                    f"available: {steps}")
            return (step, *self.restore_unverified(step, abstract_state, background))
        for s in reversed(steps):
            try:
                return (s, *self.restore_unverified(s, abstract_state, background))
            except CheckpointError as e:
                log.warning("%s; falling back to the previous checkpoint", e)
        if stored:
            raise CheckpointError(f"no readable checkpoint in {self.directory} (tried {stored})")
        return None

    def step_dir(self, step: int) -> str:
        return os.path.join(self.directory, str(step))


def read_config(directory: str, step: int) -> dict:
    """The resolved config stored next to checkpoint `step`."""
    return json.loads((as_path(directory) / str(step) / "config" / "metadata").read_text())
