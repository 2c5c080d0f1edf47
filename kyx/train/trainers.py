"""The trainer registry: ``config.trainer`` name -> the module that builds it.

A trainer module defines ``default_config()``, ``build_step(cfg) -> StepSpec``
(no data) and ``build(cfg) -> Trainer`` (kyx/train/base.py). Adding a trainer is a new
module plus one ``register(name, module)`` line below (or in your own code).
"""
from __future__ import annotations

import importlib

from kyx.registry import Registry

TRAINERS = Registry("trainer")  # name -> loader of the trainer module


def register(name: str, module: str) -> None:
    """Make ``config.trainer = name`` build with the module at dotted path ``module``."""
    if name in TRAINERS and TRAINERS.get(name).module == module:
        return
    TRAINERS.register(name, module=module)(lambda: importlib.import_module(module))


register("pretrain", "kyx.train.pretrain")
register("sft", "kyx.train.sft")
register("rm", "kyx.train.rm")
register("dpo", "kyx.train.dpo")
register("ppo", "kyx.train.ppo")
register("lud", "kyx.train.lud")
register("sae", "kyx.analysis.sae_trainer")
register("colbert", "kyx.train.colbert")
register("jrt", "kyx.train.jrt")


def trainer_module(name: str):
    return TRAINERS.get(name).fn()
