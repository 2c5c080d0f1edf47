"""The generic optimizer step: gradient accumulation, NaN/Inf guard, clipping, update.

`make_train_step(loss_fn, tx, ...)` turns a pure ``loss_fn(params, batch, rng) ->
(loss, metrics)`` into a pure ``step(state, batch, rng) -> (state, metrics)`` that every
trainer shares. With ``uses_extra=True`` the loss is ``loss_fn(params, batch, rng, extra)``
and receives ``state.extra`` (e.g. DPO's frozen reference; never differentiated).
A non-finite loss or gradient leaves params and optimizer state unchanged (the step
counter still advances, so data order and schedule stay aligned) and reports
``skipped = 1``; the loop decides whether that stops the run.
"""
from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
import optax

from kyx.train.state import TrainState


def split_microbatches(batch, n: int):
    """[B, ...] -> [n, B/n, ...], micro-batch i = rows i, i+n, ... so every data shard
    contributes equally to each micro-batch (no cross-device reshuffle)."""
    def one(x):
        if x.shape[0] % n:
            raise ValueError(f"batch of {x.shape[0]} rows does not split into {n} micro-batches")
        return jnp.swapaxes(x.reshape(x.shape[0] // n, n, *x.shape[1:]), 0, 1)
    return jax.tree.map(one, batch)


def make_train_step(loss_fn: Callable, tx: optax.GradientTransformation,
                    schedule: optax.Schedule | None = None, grad_accum: int = 1,
                    grad_fn: Callable | None = None, uses_extra: bool = False):
    """`grad_fn(params, batch, rng) -> ((loss, metrics), grads)` replaces the default
    value_and_grad of `loss_fn` (e.g. to also differentiate MoE routing probes).
    `uses_extra`: `loss_fn(params, batch, rng, extra)` gets `state.extra` (not differentiated)."""
    base_grad_fn = grad_fn or jax.value_and_grad(loss_fn, has_aux=True)

    def step(state: TrainState, batch, rng):
        grad_fn = base_grad_fn
        if uses_extra:
            extra = jax.lax.stop_gradient(state.extra)
            grad_fn = jax.value_and_grad(lambda p, b, r: loss_fn(p, b, r, extra), has_aux=True)
        if grad_accum == 1:
            (loss, metrics), grads = grad_fn(state.params, batch, rng)
        else:
            micro = split_microbatches(batch, grad_accum)

            def body(carry, xs):
                mb, i = xs
                (l, m), g = grad_fn(state.params, mb, jax.random.fold_in(rng, i))
                acc = jax.tree.map(jnp.add, carry, (l, m, g))
                return acc, None

            zeros = jax.tree.map(jnp.zeros_like, jax.eval_shape(
                lambda: grad_fn(state.params, jax.tree.map(lambda x: x[0], micro), rng)))
            zeros = (zeros[0][0], zeros[0][1], zeros[1])
            (loss, metrics, grads), _ = jax.lax.scan(body, zeros, (micro, jnp.arange(grad_accum)))
            loss, metrics, grads = jax.tree.map(lambda x: x / grad_accum, (loss, metrics, grads))
        grad_norm = optax.global_norm(grads)
        finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
        updates, new_opt = tx.update(grads, state.opt_state, state.params)
        new_params = optax.apply_updates(state.params, updates)
        keep = lambda new, old: jax.tree.map(lambda a, b: jnp.where(finite, a, b), new, old)
        new_state = state.replace(step=state.step + 1, params=keep(new_params, state.params),
                                  opt_state=keep(new_opt, state.opt_state))
        out = {**metrics, "loss": loss, "grad_norm": grad_norm,
               "skipped": (~finite).astype(jnp.float32)}
        if schedule is not None:
            out["lr"] = schedule(state.step)
        return new_state, out

    return step
