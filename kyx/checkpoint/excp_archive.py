"""ExCP inside training: compress every saved checkpoint into `<workdir>/excp/`, off the
critical path, and turn any compressed step back into a train state.

The archiver reads a checkpoint back from disk after Orbax has committed it, in one
background thread, so the training step never waits for k-means. Each chain entry keeps
what ExCP itself does not (the step, RNG, optimizer counters, data-iterator state) in its
`meta`, so a reconstructed step resumes like a full checkpoint.
"""
from __future__ import annotations

import concurrent.futures
import os
from typing import Any

import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp

from kyx.checkpoint.excp import ExcpChain, ExcpOptions
from kyx.checkpoint.excp_optax import find_adam_state, flat_to_tree, flatten_adam, unflatten_adam
from kyx.errors import CheckpointError


def default_config() -> ml_collections.ConfigDict:
    return ml_collections.ConfigDict({
        "enabled": False,
        "alpha": 5e-5,           # weight-residual pruning strength
        "beta": 2.0,             # momentum pruning: keep |m| > beta * mean|m|
        "bits": 4,               # k-means codes per value (2^bits - 1 centroids + exact zero)
        "coder": "zstd",         # zstd | lzma
        "keep_full": 2,          # full Orbax checkpoints kept next to the chain
    })


def options_from_config(cfg) -> ExcpOptions:
    return ExcpOptions(alpha=cfg.alpha, beta=cfg.beta, bits=cfg.bits, coder=cfg.coder)


def chain_dir(workdir: str) -> str:
    return os.path.join(workdir, "excp")


def read_state_numpy(step_dir: str, abstract_state):
    """A committed Orbax checkpoint's train state as host numpy arrays."""
    restore_args = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray),
                                abstract_state)
    try:
        return ocp.PyTreeCheckpointer().restore(
            os.path.join(step_dir, "state"),
            args=ocp.args.PyTreeRestore(item=abstract_state, restore_args=restore_args))
    except Exception as e:
        raise CheckpointError(f"cannot read checkpoint {step_dir} for ExCP: {e}") from e


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


def append_state(chain: ExcpChain, state, data_state: Any) -> dict:
    """Compress one host train state (numpy leaves) into the chain; returns its stats."""
    w, m, v = flatten_adam(state.params, state.opt_state)
    meta = {"train_step": int(np.asarray(state.step)), "rng": np.asarray(state.rng).tolist(),
            "opt_scalars": _scalar_leaves(state.opt_state), "data_state": data_state}
    return chain.append(int(np.asarray(state.step)), w, m, v, meta=meta)


def state_from_chain(chain: ExcpChain, step: int, abstract_state):
    """(host TrainState, data_state) for `step`, shaped like `abstract_state`."""
    w, m, v = chain.reconstruct(step)
    meta = chain.meta(step)
    host = jax.tree.map(lambda a: np.zeros(a.shape, a.dtype), abstract_state)
    params = flat_to_tree(host.params, w)
    opt_state = _set_scalar_leaves(unflatten_adam(host.opt_state, m, v), meta["opt_scalars"])
    state = host.replace(step=np.asarray(meta["train_step"], np.int32), params=params,
                         opt_state=opt_state, rng=np.asarray(meta["rng"], np.uint32))
    return state, meta.get("data_state")


class Archiver:
    """Compress committed checkpoints in one background thread, in step order."""

    def __init__(self, workdir: str, cfg, abstract_state, ckpt_dir: str):
        self.chain = ExcpChain(chain_dir(workdir), options_from_config(cfg))
        self.abstract = abstract_state
        self.ckpt_dir = ckpt_dir
        self.pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="excp")
        self.futures: list[concurrent.futures.Future] = []
        self.stats: list[dict] = []

    def rewind(self, step: int) -> None:
        """Resuming from `step`: later chain entries describe a future that is discarded."""
        dropped = self.chain.truncate(step)
        if dropped:
            print(f"ExCP: dropped compressed steps {dropped} newer than resume step {step}",
                  flush=True)

    def submit(self, step: int, data_state: Any) -> None:
        """Queue a committed Orbax step (call after Orbax finished writing it)."""
        if self.chain.steps() and step <= self.chain.steps()[-1]:
            return
        self.futures.append(self.pool.submit(self._compress, step, data_state))

    def _compress(self, step: int, data_state: Any) -> dict:
        state = read_state_numpy(os.path.join(self.ckpt_dir, str(step)), self.abstract)
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
