"""Map `config.trainer` to the module whose `build(config)` returns a Trainer."""
from __future__ import annotations

import importlib

from kyx.errors import ConfigError

TRAINERS = {"pretrain": "kyx.train.pretrain", "sft": "kyx.train.sft", "rm": "kyx.train.rm",
            "dpo": "kyx.train.dpo"}


def build(cfg):
    """The Trainer for `config.trainer`; with `init_from`, the source's architecture and
    tokenizer are adopted first (kyx.train.init_from.adopt_source)."""
    from kyx.train.init_from import adopt_source

    name = cfg.trainer
    if name not in TRAINERS:
        raise ConfigError(f"unknown trainer {name!r}; available: {sorted(TRAINERS)}")
    adopt_source(cfg)
    return importlib.import_module(TRAINERS[name]).build(cfg)


def build_step(cfg):
    """(model, optimizer, step_fn) for `config.trainer`, without building data."""
    name = cfg.trainer
    if name not in TRAINERS:
        raise ConfigError(f"unknown trainer {name!r}; available: {sorted(TRAINERS)}")
    return importlib.import_module(TRAINERS[name]).build_step(cfg)
