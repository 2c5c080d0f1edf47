"""ExCP inside training: compress every saved checkpoint into `<workdir>/excp/`, off the
critical path, and turn any compressed step back into a train state.

The archiver reads a checkpoint back from disk after Orbax has committed it, in one
background thread, so the training step never waits for k-means. Each chain entry keeps
what ExCP itself does not (the step, RNG, optimizer counters, data-iterator state) in its
`meta`, so a reconstructed step resumes like a full checkpoint.

Every trainable model of the TrainState is compressed (tensor names ``<model>/<param>``);
frozen models (no optimizer state, e.g. DPO's reference) never change, so they are not
put in the chain: a reconstruction takes them from a full Orbax checkpoint of the run
(``keep_full >= 2`` of them always exist).

In a run of several processes every process reads the chain (to resume from it) but only
process 0 (``kyx.distributed.is_writer``) compresses, writes, truncates or sets it aside;
on the others those calls change only what the Archiver holds in memory.
"""
from __future__ import annotations

import concurrent.futures
import json
import os
from typing import Any

import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp

from kyx.checkpoint import digest
from kyx.checkpoint.excp import ExcpChain, ExcpOptions
from kyx.checkpoint.manager import Checkpointer
from kyx.checkpoint.excp_optax import find_adam_state, flat_to_tree, flatten_adam, unflatten_adam
from kyx.distributed import is_writer
from kyx.errors import CheckpointError
from kyx.fileio import as_path
from kyx.logs import get_logger

log = get_logger(__name__)


def default_config() -> ml_collections.ConfigDict:
    return ml_collections.ConfigDict({
        "enabled": False,
        "alpha": 5e-5,           # weight-residual pruning strength
        "beta": 2.0,             # momentum pruning: keep |m| > beta * mean|m|
        "bits": 4,               # k-means codes per value (2^bits - 1 centroids + exact zero)
        "coder": "zstd",         # zstd | lzma
        "max_werr": 0.0,         # > 0: per-tensor pruning keeping ||W - W_hat|| / ||W|| <= this
        "keep_full": 2,          # full Orbax checkpoints kept next to the chain
        "restart_chain": False,  # on resume: set the chain aside, start a fresh one from there
    })


def options_from_config(cfg) -> ExcpOptions:
    return ExcpOptions(alpha=cfg.alpha, beta=cfg.beta, bits=cfg.bits, coder=cfg.coder,
                       max_werr=cfg.get("max_werr", 0.0))  # absent in older workdirs


def chain_dir(workdir: str) -> str:
    return os.path.join(workdir, "excp")


def read_state_numpy(step_dir: str, abstract_state):
    """A committed Orbax checkpoint's train state as host numpy arrays, verified against
    the digests saved with it (kyx/checkpoint/digest.py). Only this process reads (no
    barrier with the others: the ExCP writer reads in its own thread)."""
    restore_args = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray),
                                abstract_state)
    alone = ocp.options.MultiprocessingOptions(primary_host=jax.process_index(),
                                               active_processes={jax.process_index()})
    reader = ocp.Checkpointer(ocp.PyTreeCheckpointHandler(multiprocessing_options=alone),
                              multiprocessing_options=alone)
    try:
        state = reader.restore(
            as_path(step_dir) / "state",     # Orbax wants an absolute path or URL
            args=ocp.args.PyTreeRestore(item=abstract_state, restore_args=restore_args))
    except Exception as e:
        raise CheckpointError(f"cannot read checkpoint {step_dir} for ExCP: {e}") from e
    digest.verify_host_state(step_dir, state)
    return state


def read_data_state(step_dir: str) -> Any:
    """The data-iterator state saved with a committed Orbax checkpoint."""
    path = as_path(step_dir) / "data" / "metadata"
    try:
        value = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise CheckpointError(f"cannot read the data-iterator state {path}: {e}") from e
    stored = digest.read(step_dir)
    if stored is not None:
        digest.verify_json(stored, "data", value, step_dir)
    return value


def _scalar_leaves(opt_state) -> list:
    """Optimizer leaves that are not Adam moments (step counters), in tree order."""
    adam = find_adam_state(opt_state)
    moment_ids = {id(x) for x in jax.tree.leaves((adam.mu, adam.nu))}
    return [np.asarray(x).tolist() for x in jax.tree.leaves(opt_state) if id(x) not in moment_ids]


def _set_scalar_leaves(opt_state, values: list):
    adam = find_adam_state(opt_state)
    moment_ids = {id(x) for x in jax.tree.leaves((adam.mu, adam.nu))}
    leaves, treedef = jax.tree.flatten(opt_state)
    it = iter(values)
    out = [x if id(x) in moment_ids else np.asarray(next(it), dtype=np.asarray(x).dtype)
           for x in leaves]
    return jax.tree.unflatten(treedef, out)


def _prefixed(name: str, flat: dict) -> dict:
    return {f"{name}/{k}": x for k, x in flat.items()}


def _unprefixed(name: str, flat: dict) -> dict:
    head = name + "/"
    return {k[len(head):]: x for k, x in flat.items() if k.startswith(head)}


def append_state(chain: ExcpChain, state, data_state: Any) -> dict:
    """Compress the trainable models of one host train state (numpy leaves) into the
    chain; returns its stats."""
    w, m, v, scalars = {}, {}, {}, {}
    for name in sorted(state.models):
        model = state.models[name]
        if model.opt_state is None:
            continue
        for out, flat in zip((w, m, v), flatten_adam(model.params, model.opt_state)):
            out.update(_prefixed(name, flat))
        scalars[name] = _scalar_leaves(model.opt_state)
    meta = {"train_step": int(np.asarray(state.step)), "rng": np.asarray(state.rng).tolist(),
            "opt_scalars": scalars, "data_state": data_state,
            "stats": {k: np.asarray(x).tolist() for k, x in state.stats.items()}}
    return chain.append(int(np.asarray(state.step)), w, m, v, meta=meta)


def state_from_chain(chain: ExcpChain, step: int, abstract_state):
    """(host TrainState, data_state) for `step`, shaped like `abstract_state`.

    Frozen models are zeros here: fill them with ``frozen_from_full``."""
    w, m, v = chain.reconstruct(step)
    meta = chain.meta(step)
    if abstract_state.stats and "stats" not in meta:
        raise CheckpointError(
            f"ExCP step {step} in {chain.root} lacks the running statistics "
            f"{sorted(abstract_state.stats)} (an earlier kyx wrote it); resume from a full "
            "checkpoint")
    host = jax.tree.map(lambda a: np.zeros(a.shape, a.dtype), abstract_state)
    models = dict(host.models)
    try:
        for name, model in host.models.items():
            if model.opt_state is None:
                continue
            opt_state = unflatten_adam(model.opt_state, _unprefixed(name, m),
                                       _unprefixed(name, v))
            models[name] = model.replace(
                params=flat_to_tree(model.params, _unprefixed(name, w)),
                opt_state=_set_scalar_leaves(opt_state, meta["opt_scalars"][name]))
        stats = {k: np.asarray(meta["stats"][k], x.dtype).reshape(x.shape)
                 for k, x in host.stats.items()} if host.stats else host.stats
    except (KeyError, ValueError, TypeError) as e:
        raise CheckpointError(
            f"ExCP step {step} in {chain.root} does not match this run's models "
            f"{sorted(host.models)} ({type(e).__name__}: {e}); a chain written by another "
            "trainer, model or kyx version cannot be resumed by this one") from e
    state = host.replace(step=np.asarray(meta["train_step"], np.int32), models=models,
                         rng=np.asarray(meta["rng"], np.uint32), stats=stats)
    return state, meta.get("data_state")


def frozen_from_full(ckpt_dir: str, state, abstract_state):
    """``state`` with its frozen models read from the newest readable full checkpoint in
    ``ckpt_dir`` (they are equal in every checkpoint of a run)."""
    frozen = [n for n, m in abstract_state.models.items() if m.opt_state is None]
    if not frozen:
        return state
    ckpt = Checkpointer(ckpt_dir, read_only=True) if as_path(ckpt_dir).is_dir() else None
    errors = []
    for s in reversed(ckpt.steps() if ckpt else []):
        try:
            models = {n: state.models[n].replace(params=ckpt.restore_params(
                s, abstract_state.models[n].params, n)) for n in frozen}
        except CheckpointError as e:
            errors.append(str(e))
            continue
        return state.replace(models={**state.models, **models})
    raise CheckpointError(
        f"the frozen models {frozen} are not in the ExCP chain and no full checkpoint in "
        f"{ckpt_dir} holds them{': ' + errors[-1] if errors else ''}")


def set_aside(root: str) -> str:
    """Rename a chain directory to the first free ``<root>.old<N>``; returns the new path.
    (On an object store a "rename" copies every object, then deletes the originals.)"""
    n = 1
    while as_path(f"{root}.old{n}").exists():
        n += 1
    as_path(root).rename(as_path(f"{root}.old{n}"))
    return f"{root}.old{n}"


class Archiver:
    """Compress committed checkpoints in one background thread, in step order.

    A chain whose manifest cannot be read leaves ``chain`` None and the error in
    ``damaged``; ``restart`` sets it aside and starts an empty chain."""

    def __init__(self, workdir: str, cfg, abstract_state, ckpt_dir: str):
        self.root, self.options = chain_dir(workdir), options_from_config(cfg)
        self.chain: ExcpChain | None = None
        self.damaged: CheckpointError | None = None
        try:
            self.chain = ExcpChain(self.root, self.options)
        except CheckpointError as e:
            self.damaged = e
        self.abstract = abstract_state
        self.ckpt_dir = ckpt_dir
        self.writes = is_writer()  # False: a reader of the chain (another process writes)
        self.pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="excp")
        self.futures: list[concurrent.futures.Future] = []
        self.stats: list[dict] = []

    def steps(self) -> list[int]:
        return self.chain.steps() if self.chain is not None else []

    def restart(self, reason: str, step: int) -> None:
        """Set the current chain directory aside (kept, not deleted) and start an empty
        chain, whose first entry will be `step`."""
        self.wait()
        if not self.writes:
            self.chain, self.damaged = None, None
            return
        aside = set_aside(self.root) if as_path(self.root).exists() else None
        self.chain, self.damaged = ExcpChain(self.root, self.options), None
        log.warning("ExCP: %s; starting a fresh chain in %s at step %d%s", reason, self.root,
                    step, f" (the old one is kept as {aside}; delete it when not needed)"
                    if aside else "")

    def rewind(self, step: int) -> None:
        """Resuming from `step`: later chain entries describe a future that is discarded."""
        if self.chain is None:
            return
        dropped = self.chain.truncate(step, write=self.writes)
        if dropped:
            log.info("ExCP: dropped compressed steps %s newer than resume step %d", dropped, step)

    def submit(self, step: int, data_state: Any) -> None:
        """Queue a committed Orbax step (call after Orbax finished writing it)."""
        if not self.writes or (self.chain.steps() and step <= self.chain.steps()[-1]):
            return
        self.futures.append(self.pool.submit(self._compress, step, data_state))

    def submit_left_over(self, step: int) -> None:
        """Queue a full checkpoint that an interrupted run saved but did not compress; if
        it cannot be read, the chain goes on without it (with a warning)."""
        if self.writes:
            self.futures.append(self.pool.submit(self._compress_left_over, step))

    def _compress_left_over(self, step: int) -> dict | None:
        try:
            return self._compress(step, read_data_state(os.path.join(self.ckpt_dir, str(step))))
        except CheckpointError as e:
            log.warning("ExCP: not compressing checkpoint step %d left by an interrupted run "
                        "(%s); the chain goes on without it", step, e)
            return None

    def submit_state(self, state, data_state: Any) -> None:
        """Queue a host train state (numpy leaves, not modified afterwards) that has no
        full checkpoint, e.g. one reconstructed from an earlier chain."""
        if self.writes:
            self.futures.append(self.pool.submit(self._append, state, data_state))

    def _compress(self, step: int, data_state: Any) -> dict:
        state = read_state_numpy(os.path.join(self.ckpt_dir, str(step)), self.abstract)
        return self._append(state, data_state)

    def _append(self, state, data_state: Any) -> dict:
        stats = append_state(self.chain, state, data_state)
        self.stats.append(stats)
        return stats

    def wait(self) -> None:
        """Block until every queued compression finished (raises the first error)."""
        futures, self.futures = self.futures, []
        for f in futures:
            f.result()

    def close(self) -> None:
        self.wait()
        self.pool.shutdown()
