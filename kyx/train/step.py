"""Optimizer-step building blocks: gradients (with accumulation and MoE probes), a guarded
update of one model, and the single-model step most trainers use.

A step is pure: ``step(state, batch, rng) -> (state, metrics)`` on the whole TrainState.
``make_train_step`` differentiates one model's ``loss_fn(params, batch, ctx)``; a trainer
with several models or several updates per step (PPO: epochs x minibatches) composes
``compute_grads`` and ``apply_update`` itself, inside one jit, e.g. in a ``lax.scan``.
A non-finite loss or gradient leaves that model's params and optimizer state unchanged
and reports ``skipped = 1``; the loop decides whether that stops the run. Every update
also reports the L2 norms of params, update and gradient (``l2_params``, ``l2_updates``,
``l2_grads``; ``train/l2_params`` in metrics.jsonl, ``train/<model>/l2_params`` with
several trained models).
"""
from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
import optax

from kyx.model.moe import zero_probes
from kyx.objectives import moe as moe_objectives
from kyx.train.forward import LossContext
from kyx.train.precision import at_least_f32, upcast
from kyx.train.state import ModelState, TrainState

LossFn = Callable  # (params, batch, ctx: LossContext) -> (loss, metrics)


def split_microbatches(batch, n: int):
    """[B, ...] -> [n, B/n, ...], micro-batch i = rows i, i+n, ... so every data shard
    contributes equally to each micro-batch (no cross-device reshuffle)."""
    def one(x):
        if x.shape[0] % n:
            raise ValueError(f"batch of {x.shape[0]} rows does not split into {n} micro-batches")
        return jnp.swapaxes(x.reshape(x.shape[0] // n, n, *x.shape[1:]), 0, 1)
    return jax.tree.map(one, batch)


def make_grad_fn(module, loss_fn: LossFn):
    """``grad_fn(params, batch, rng, others) -> ((loss, metrics), grads)``.

    For an MoE module with the routing-error loss on, the gradient is also taken with
    respect to the zero probes, whose cotangent is the flagged-pair counts
    (``moe/layer{i}/flagged_frac`` in the metrics)."""
    probes = zero_probes(module)
    layer_ids = tuple(getattr(module.cfg, "moe_layer_ids", ()))

    def grad_fn(params, batch, rng, others):
        if not probes:
            return jax.value_and_grad(
                lambda p: loss_fn(p, batch, LossContext(rng, None, others)), has_aux=True)(params)
        (loss, metrics), (grads, probe_grads) = jax.value_and_grad(
            lambda p, pr: loss_fn(p, batch, LossContext(rng, pr, others)), argnums=(0, 1),
            has_aux=True)(params, probes)
        return (loss, {**metrics, **moe_objectives.flagged_metrics(probe_grads, layer_ids)}), grads
    return grad_fn


def compute_grads(grad_fn, params, batch, rng, others, grad_accum: int = 1):
    """((loss, metrics), grads), averaged over ``grad_accum`` micro-batches (micro-batch i
    uses ``fold_in(rng, i)``); 16-bit params' gradients are summed in float32."""
    if grad_accum == 1:
        return grad_fn(params, batch, rng, others)
    micro = split_microbatches(batch, grad_accum)

    def body(carry, xs):
        mb, i = xs
        (l, m), g = grad_fn(params, mb, jax.random.fold_in(rng, i), others)
        return jax.tree.map(jnp.add, carry, (l, m, g)), None

    shapes = jax.eval_shape(
        lambda: grad_fn(params, jax.tree.map(lambda x: x[0], micro), rng, others))
    zeros = jax.tree.map(lambda s: jnp.zeros_like(s, at_least_f32(s.dtype)),
                         (shapes[0][0], shapes[0][1], shapes[1]))
    (loss, metrics, grads), _ = jax.lax.scan(body, zeros, (micro, jnp.arange(grad_accum)))
    loss, metrics, grads = jax.tree.map(lambda x: x / grad_accum, (loss, metrics, grads))
    return (loss, metrics), grads


def apply_update(model: ModelState, grads, loss, tx: optax.GradientTransformation
                 ) -> tuple[ModelState, dict]:
    """One optimizer update; skipped (state unchanged) when the loss or gradient is not
    finite. Returns (new model state, metrics): ``skipped`` and the L2 norms (big_vision's
    names) of the gradient (``l2_grads``), of the update applied (``l2_updates``: 0 when
    skipped) and of the params after it (``l2_params``), each one scalar reduction inside
    the jitted step (no host transfer until the loop logs them). Gradients of 16-bit
    params are taken to float32 first (kyx/train/precision.py)."""
    grads = upcast(grads)
    l2_grads = optax.global_norm(grads)
    finite = jnp.isfinite(loss) & jnp.isfinite(l2_grads)
    updates, new_opt = tx.update(grads, model.opt_state, model.params)
    new_params = optax.apply_updates(model.params, updates)
    keep = lambda new, old: jax.tree.map(lambda a, b: jnp.where(finite, a, b), new, old)  # noqa: E731
    new = ModelState(keep(new_params, model.params), keep(new_opt, model.opt_state))
    return new, {"l2_grads": l2_grads,
                 "l2_updates": jnp.where(finite, optax.global_norm(updates), 0.0),
                 "l2_params": optax.global_norm(upcast(new.params)),
                 "skipped": (~finite).astype(jnp.float32)}


def keep_subtree(new, old, key: str, keep: jax.Array):
    """``new`` with every leaf under the dict key ``key`` taken from ``old`` where the traced
    bool ``keep`` holds (params and optimizer moments alike; e.g. a frozen backbone)."""
    def pick(path, n, o):
        inside = any(getattr(k, "key", None) == key for k in path)
        return jnp.where(keep, o, n) if inside else n
    return jax.tree_util.tree_map_with_path(pick, new, old)


def frozen_params(state: TrainState, trained: str) -> dict:
    """Params of every model but ``trained``, with gradients stopped."""
    return {n: jax.lax.stop_gradient(m.params) for n, m in state.models.items() if n != trained}


def make_train_step(module, loss_fn: LossFn, tx: optax.GradientTransformation,
                    schedule: optax.Schedule | None = None, grad_accum: int = 1,
                    name: str = "policy"):
    """``step(state, batch, rng)``: one update of model ``name`` on ``loss_fn``; the other
    models' params reach the loss as ``ctx.models``."""
    grad_fn = make_grad_fn(module, loss_fn)

    def step(state: TrainState, batch, rng):
        model = state.models[name]
        (loss, metrics), grads = compute_grads(grad_fn, model.params, batch, rng,
                                               frozen_params(state, name), grad_accum)
        new_model, update_metrics = apply_update(model, grads, loss, tx)
        out = {**metrics, "loss": loss, **update_metrics}
        if schedule is not None:
            out["lr"] = schedule(state.step)
        return state.replace(step=state.step + 1,
                             models={**state.models, name: new_model}), out
    return step
