"""The trainer shape: what a trainer module hands the loop, and the helpers that build it.

A trainer module (pretrain.py, sft.py, rm.py, dpo.py ...) has ``default_config()``,
``build_step(cfg) -> StepSpec`` (models, step function and initial running statistics;
no data: used to lower, inspect and restore) and ``build(cfg) -> Trainer``. Most
trainers train one model on one loss::

    def build_step(cfg):
        module = Decoder(ModelConfig.from_config(cfg.model))
        return single_model_step(cfg, module, make_loss_fn(module, cfg.loss))

    def build(cfg):
        return make_trainer(cfg, build_step(cfg), train_iter=..., batch_axes=...)

and its loss uses ``forward_with_aux`` (kyx/train/forward.py). Register the module in
kyx/train/registry.py.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, Iterable, Mapping

from kyx.model.flops import train_flops_per_token
from kyx.train import optim
from kyx.train.state import ModelSpec
from kyx.train.step import make_train_step


@dataclasses.dataclass
class StepSpec:
    """What ``build_step`` returns: everything the train state and the step depend on."""
    models: dict[str, ModelSpec]
    fn: Callable                      # (state, batch, rng) -> (state, metrics); pure
    stats: dict = dataclasses.field(default_factory=dict)  # initial TrainState.stats


@dataclasses.dataclass
class Trainer:
    """Models, data and the pure step of a run; the loop (kyx/train/loop.py) does the rest."""
    config: Any
    models: dict[str, ModelSpec]
    step_fn: Callable                 # (state, batch, rng) -> (state, metrics); pure
    train_iter: Any                   # __next__ -> dict of numpy arrays; get_state / set_state
    batch_axes: dict                  # batch key -> logical axis names
    tokens_per_step: int
    flops_per_token: float
    eval_fn: Callable | None = None   # ({model name: params}, batch) -> dict of sums; pure
    eval_batches: Callable[[], Iterable] | None = None
    summarize_eval: Callable | None = None  # (sums dict of numpy) -> (metrics, artifacts)
    tokenizer: Any = None
    hooks: list = dataclasses.field(default_factory=list)  # extra periodic actions (Hook)
    stats: dict = dataclasses.field(default_factory=dict)  # initial TrainState.stats
    # (state, device prompt batch, rng) -> device batch for step_fn (e.g. PPO's rollouts);
    # the iterator's batches are then laid out with `rollout_axes`
    rollout: Callable | None = None
    rollout_axes: dict | None = None
    batch_rows: int = 0               # rows of a global batch (0: data.batch_size)


def single_model_step(cfg, module, loss_fn, *, name: str = "policy",
                      init: Callable[[], Any] | None = None,
                      frozen: Mapping[str, ModelSpec] | None = None):
    """The StepSpec for training model ``name`` (``module``) on ``loss_fn`` with the
    configured AdamW and schedule. ``frozen``: further models (no optimizer) whose params
    the loss reads from ``ctx.models``."""
    tx, schedule = optim.make_optimizer(cfg.optim, cfg.train.steps)
    models = {name: ModelSpec(module, tx, init), **(frozen or {})}
    return StepSpec(models, make_train_step(module, loss_fn, tx, schedule,
                                            cfg.optim.grad_accum, name))


def make_trainer(cfg, step: StepSpec, *, train_iter, batch_axes,
                 sequences_per_row: float = 1, flops_factor: float = 1.0, eval_fn=None,
                 eval_batches=None, summarize_eval=None, tokenizer=None, hooks=(),
                 rollout=None, rollout_axes=None, batch_rows: int = 0) -> Trainer:
    """The Trainer, with throughput accounting from the config: each step consumes
    ``sequences_per_row * batch_size * seq_len`` tokens; FLOPs per token are those of the
    first trainable model's training step, times ``flops_factor`` (e.g. 4/3 for an extra
    frozen forward)."""
    main = next(spec for spec in step.models.values() if spec.trainable)
    seq_len = cfg.data.seq_len
    return Trainer(
        config=cfg, models=step.models, step_fn=step.fn, train_iter=train_iter,
        batch_axes=batch_axes,
        tokens_per_step=int(sequences_per_row * cfg.data.batch_size * seq_len),
        flops_per_token=train_flops_per_token(main.module.cfg, seq_len) * flops_factor,
        eval_fn=eval_fn, eval_batches=eval_batches, summarize_eval=summarize_eval,
        tokenizer=tokenizer, hooks=list(hooks), stats=dict(step.stats), rollout=rollout,
        rollout_axes=rollout_axes, batch_rows=batch_rows or cfg.data.batch_size)
