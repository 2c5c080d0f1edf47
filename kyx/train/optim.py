"""AdamW with warmup + cosine/linear/constant schedules, masked weight decay, clipping;
moments stored in ``state_dtype`` (kyx/train/precision.py)."""
from __future__ import annotations

import jax
import ml_collections
import optax

from kyx.errors import ConfigError
from kyx.train.precision import scale_by_adam_stored

SCHEDULES = ("cosine", "linear", "constant")


def default_config() -> ml_collections.ConfigDict:
    return ml_collections.ConfigDict({
        "lr": 3e-4,
        "min_lr_ratio": 0.1,     # final lr = lr * min_lr_ratio (cosine / linear)
        "warmup_steps": 100,
        "schedule": "cosine",    # "cosine" | "linear" | "constant" (after linear warmup)
        # length the schedule decays over; 0: train.steps. Set it to stop a run early on
        # another run's schedule (e.g. a short continuation from a mid-run checkpoint).
        "schedule_steps": 0,
        "b1": 0.9,
        "b2": 0.95,
        "eps": 1e-8,
        "weight_decay": 0.1,     # not applied to norms and biases (1-D params)
        "clip_norm": 1.0,        # global-norm clip; 0 disables
        "grad_accum": 1,         # micro-batches per optimizer step
        # dtype Adam's moments are stored in: "" (the params' dtype) | float32 | bfloat16;
        # the update itself is computed in float32 (kyx/train/precision.py)
        "state_dtype": "",
    })


def make_schedule(cfg, total_steps: int) -> optax.Schedule:
    """The learning rate per step; decays over ``cfg.schedule_steps`` (else total_steps)."""
    total_steps = int(cfg.get("schedule_steps", 0)) or total_steps
    if total_steps < 0:
        raise ConfigError(f"optim.schedule_steps must be >= 0, got {total_steps}")
    warmup = int(cfg.warmup_steps)
    end = cfg.lr * cfg.min_lr_ratio
    if cfg.schedule == "cosine":
        return optax.warmup_cosine_decay_schedule(
            0.0, cfg.lr, warmup, max(total_steps, warmup + 1), end_value=end)
    if cfg.schedule == "linear":
        return optax.join_schedules([
            optax.linear_schedule(0.0, cfg.lr, warmup),
            optax.linear_schedule(cfg.lr, end, max(total_steps - warmup, 1))], [warmup])
    if cfg.schedule == "constant":
        return optax.join_schedules([
            optax.linear_schedule(0.0, cfg.lr, warmup), optax.constant_schedule(cfg.lr)], [warmup])
    raise ConfigError(f"optim.schedule must be one of {SCHEDULES}, got {cfg.schedule!r}")


def decay_mask(params):
    """Weight decay on matrices only: norms and biases (ndim < 2) are excluded."""
    return jax.tree.map(lambda p: p.ndim >= 2, params)


def make_optimizer(cfg, total_steps: int) -> tuple[optax.GradientTransformation, optax.Schedule]:
    schedule = make_schedule(cfg, total_steps)
    parts = []
    if cfg.clip_norm:
        parts.append(optax.clip_by_global_norm(cfg.clip_norm))
    # optax.adamw's chain with its Adam step replaced (the same state tree as adamw's:
    # checkpoints of earlier runs resume)
    parts.append(optax.chain(
        scale_by_adam_stored(cfg.b1, cfg.b2, cfg.eps, cfg.state_dtype),
        optax.add_decayed_weights(cfg.weight_decay, decay_mask),
        optax.scale_by_learning_rate(schedule)))
    return optax.chain(*parts), schedule
