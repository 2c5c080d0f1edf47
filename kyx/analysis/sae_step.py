"""One SAE training update as pure pieces, shared by the ``sae`` trainer (kyx/analysis/sae_trainer.py,
which adds the loop's non-finite guard and L2 metrics) and the synthetic-dictionary test:

    (loss, metrics), grads = loss_and_grads(params, x_nd, since_l, mse_scale, cfg)
    updates, opt_state = tx.update(grads, opt_state, params)   # tx = optimizer(...)
    params = optax.apply_updates(params, updates)
    params, since_l, metrics = after_update(params, since_l, metrics, tokens, cfg)

``optimizer`` chains the decoder-gradient projection in front of any optax optimizer;
``after_update`` renormalises the decoder rows and advances the dead-latent counters
(tokens since each latent last fired).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from kyx.analysis import sae, sae_losses


def optimizer(tx: optax.GradientTransformation) -> optax.GradientTransformation:
    """``tx`` fed gradients whose decoder component along each decoder row is removed."""
    return optax.chain(sae.decoder_grad_projection(), tx)


def loss_and_grads(params, x_nd, since_l, mse_scale, cfg: sae.SaeConfig):
    """((loss, metrics), grads) of the kind's loss; the AuxK dead mask comes from the
    counters before this batch."""
    loss = sae_losses.loss_fn(cfg)
    dead_l = sae.dead(since_l, cfg)
    return jax.value_and_grad(lambda p: loss(p, x_nd, dead_l, mse_scale, cfg),
                              has_aux=True)(params)


def after_update(params, since_l, metrics: dict, tokens: int, cfg: sae.SaeConfig):
    """(params with unit decoder rows, advanced counters, scalar metrics + dead_fraction).
    ``metrics["fired_l"]`` (the latents that fired on the batch) is consumed here."""
    metrics = dict(metrics)
    since_l = sae.tokens_since_fired(since_l, metrics.pop("fired_l"), tokens)
    metrics["dead_fraction"] = jnp.mean(sae.dead(since_l, cfg).astype(jnp.float32))
    return sae.normalize_decoder(params), since_l, metrics
