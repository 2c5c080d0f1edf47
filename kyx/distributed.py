"""Multi-host start-up: `jax.distributed.initialize()` when a cluster launched us.

Detected launchers: an explicit JAX coordinator (JAX_COORDINATOR_ADDRESS), Cloud TPU pod
slices (TPU_WORKER_HOSTNAMES with more than one host, or MEGASCALE_* multislice), SLURM
jobs with more than one task, and Open MPI (OMPI_COMM_WORLD_SIZE > 1). Otherwise kyx runs
as a single process. Must run before any other JAX call. With only JAX_COORDINATOR_ADDRESS
set, also set JAX_NUM_PROCESSES and JAX_PROCESS_ID on every host.

Who writes what in a run of several processes on one shared workdir: every process takes
part in Orbax's checkpoint saves (each writes the shards it holds) and reads what it
restores; the run's own files (config.json, tokenizer files, metrics, TensorBoard, plots,
console output, the workdir lock, the ExCP chain, exports) are written by the one process
for which ``is_writer()`` holds, process 0. Every such gate in kyx asks ``is_writer``.
"""
from __future__ import annotations

import os

import jax

from kyx.logs import get_logger

log = get_logger(__name__)

_started = False


def cluster_detected(env=os.environ) -> bool:
    if env.get("JAX_COORDINATOR_ADDRESS"):
        return True
    if len([h for h in env.get("TPU_WORKER_HOSTNAMES", "").split(",") if h]) > 1:
        return True
    if env.get("MEGASCALE_COORDINATOR_ADDRESS"):
        return True
    if int(env.get("SLURM_NTASKS", "1") or 1) > 1 and env.get("SLURM_JOB_ID"):
        return True
    return int(env.get("OMPI_COMM_WORLD_SIZE", "1") or 1) > 1


def is_writer() -> bool:
    """Whether this process writes the run's own files (process 0; True when alone)."""
    return jax.process_index() == 0


def barrier(name: str) -> None:
    """Wait until every process of the run reaches ``barrier(name)`` (nothing to wait for
    in a single-process run); e.g. readers finish before the writer changes a file."""
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(name)


def maybe_initialize() -> None:
    """Initialise the JAX distributed runtime once, if this process is part of a cluster."""
    global _started
    if _started or not cluster_detected():
        return
    kwargs = {}
    if os.environ.get("JAX_NUM_PROCESSES") and os.environ.get("JAX_PROCESS_ID"):
        # explicit launch without a scheduler: JAX reads only the coordinator address itself
        kwargs = {"num_processes": int(os.environ["JAX_NUM_PROCESSES"]),
                  "process_id": int(os.environ["JAX_PROCESS_ID"])}
    jax.distributed.initialize(**kwargs)
    _started = True
    log.info("jax.distributed: process %d of %d, %d local / %d global devices",
             jax.process_index(), jax.process_count(), jax.local_device_count(),
             jax.device_count())
