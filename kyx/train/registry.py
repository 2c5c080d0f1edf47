"""Build the trainer a config names (``config.trainer``, registered in
kyx/train/trainers.py): adopt the ``init_from`` source's architecture, validate the whole
config, then let the trainer module set up data, models and the step."""
from __future__ import annotations

from kyx.train import validation
from kyx.train.trainers import TRAINERS, register, trainer_module  # noqa: F401 (re-exported)


def resolve(cfg):
    """The trainer module of `config.trainer`, after completing `cfg` in place: with
    `init_from`, the source's architecture and tokenizer are adopted
    (kyx.train.init_from.adopt_source); then the whole config is validated
    (kyx/train/validation.py). Reads no data and builds no mesh or model, so
    `kyx train --print-config` runs it alone."""
    from kyx.train.init_from import adopt_source

    module = trainer_module(cfg.trainer)
    adopt_source(cfg)
    validation.validate(cfg)
    return module


def build(cfg):
    """The Trainer for `config.trainer`: ``resolve(cfg)``, then the trainer module sets up
    data, mesh, models and the step."""
    return resolve(cfg).build(cfg)


def build_step(cfg):
    """The StepSpec (models, step function, stats) for `config.trainer`, without data."""
    return trainer_module(cfg.trainer).build_step(cfg)
