"""Defaults shared by every trainer config: train loop, metrics, mesh, checkpointing."""
from __future__ import annotations

import ml_collections

from kyx.checkpoint import excp_archive, manager
from kyx.train import optim


def train_config() -> ml_collections.ConfigDict:
    return ml_collections.ConfigDict({
        "steps": 1000,
        "seed": 0,
        "log_every": 10,
        "eval_every": 200,
        "eval_at_start": False,   # also evaluate the initial params (a step-0 row)
        "nan_policy": "skip",     # "skip": drop the update and go on; "stop": save and raise
        "max_skipped_fraction": 0.1,  # warn loudly when more of the run's steps were skipped
        "measure_mfu": True,      # measure this machine's matmul peak once at start
        "profile_steps": "",      # "10:15": jax.profiler trace of steps 10..14 into <workdir>/tb
    })


def metrics_config() -> ml_collections.ConfigDict:
    """Where per-step metrics go (kyx/telemetry/sinks.py names the sinks); process 0 only."""
    return ml_collections.ConfigDict({
        "sinks": ("jsonl", "tensorboard", "console"),
        "wandb": {                # a non-empty project turns W&B on (pip install 'kyx[wandb]')
            "project": "",
            "entity": "",
            "name": "",           # "": the workdir's name
            "mode": "",           # online | offline | disabled; "": $WANDB_MODE, else online
            "tags": (),
        },
    })


def mesh_config() -> ml_collections.ConfigDict:
    return ml_collections.ConfigDict({
        "data": -1, "fsdp": 1, "tensor": 1, "expert": 1,
        "rules": "fsdp",          # dp | fsdp | fsdp_tp (see kyx/sharding.py)
    })


def checkpoint_config() -> ml_collections.ConfigDict:
    cfg = manager.default_config()
    cfg.excp = excp_archive.default_config()
    return cfg


def base_config() -> ml_collections.ConfigDict:
    """Sections every trainer has; the trainer config adds model / data / loss."""
    return ml_collections.ConfigDict({
        "trainer": "pretrain",
        "init_from": "",
        "train": train_config(),
        "metrics": metrics_config(),
        "optim": optim.default_config(),
        "mesh": mesh_config(),
        "checkpoint": checkpoint_config(),
    })
