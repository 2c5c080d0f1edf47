"""Sparse-autoencoder losses by kind: ``loss(params, x_nd, dead_l, mse_scale, cfg) ->
(loss, metrics)`` (../shared/ALGORITHMS.md §10a).

* ``topk`` (Gao et al. 2024, openai/sparse_autoencoder train.py):
  mse_scale · MSE(x̂, x) + aux_coef · NMSE(W_dec z_aux, x − x̂) with x − x̂ held fixed,
  z_aux = ReLU of the k_aux largest pre-activations among the dead latents, and
  NMSE(a, e) = MSE(a, e) / MSE(mean_n e, e) (their kernels.normalized_mse); the AuxK term
  is 0 while no latent is dead.
* ``relu`` (Anthropic): mean_n ‖x − x̂‖² + λ · mean_n Σ_i f_i ‖W_dec[:, i]‖.

Metrics (scalars): ``l0`` (mean active latents per token), ``nmse`` = Σ‖x̂ − x‖² / Σ‖x‖²,
``explained_variance`` = 1 − Σ‖x̂ − x‖² / Σ‖x − x̄‖² (x̄ the batch mean), the loss terms;
and ``fired_l``, the [L] vector of latents that fired on the batch (the step consumes it
to track dead latents; it is not logged).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from kyx.analysis import sae
from kyx.registry import Registry

LOSSES = Registry("sae.kind")


def reconstruction_metrics(x_nd, xhat_nd, z_nl) -> dict:
    err = jnp.sum((xhat_nd - x_nd) ** 2)
    centred = jnp.sum((x_nd - jnp.mean(x_nd, axis=0)) ** 2)
    return {"l0": jnp.mean(jnp.sum(z_nl > 0, axis=-1).astype(jnp.float32)),
            "nmse": err / jnp.sum(x_nd ** 2),
            "explained_variance": 1.0 - err / centred,
            "fired_l": sae.fired(z_nl)}


def normalized_mse(a_nd, e_nd):
    """MSE(a, e) / MSE(mean_n e, e): 1 for the best constant prediction of e."""
    return jnp.mean((a_nd - e_nd) ** 2) / jnp.mean((e_nd - jnp.mean(e_nd, axis=0)) ** 2)


def aux_k(params, pre_nl, err_nd, dead_l, cfg: sae.SaeConfig):
    """NMSE of the residual ``err_nd`` (constant) reconstructed from the k_aux largest
    pre-activations of the dead latents (decoder only, no bias); 0 with no dead latent."""
    k_aux = min(cfg.k_aux, cfg.n_latents)
    masked_nl = jnp.where(dead_l[None, :], pre_nl, 0.0)
    z_aux_nl = jax.nn.relu(masked_nl) * sae.topk_mask(masked_nl, k_aux)
    nmse = normalized_mse(z_aux_nl @ params["w_dec_ld"], jax.lax.stop_gradient(err_nd))
    return jnp.where(jnp.any(dead_l), nmse, 0.0)


@LOSSES.register("topk")
def topk_loss(params, x_nd, dead_l, mse_scale, cfg: sae.SaeConfig):
    pre_nl, z_nl, xhat_nd = sae.forward(params, x_nd, cfg)
    mse = jnp.mean((xhat_nd - x_nd) ** 2)
    aux = aux_k(params, pre_nl, x_nd - xhat_nd, dead_l, cfg)
    loss = mse_scale * mse + cfg.aux_coef * aux
    return loss, {"loss": loss, "mse": mse, "aux_k": aux,
                  **reconstruction_metrics(x_nd, xhat_nd, z_nl)}


@LOSSES.register("relu")
def relu_loss(params, x_nd, dead_l, mse_scale, cfg: sae.SaeConfig):
    """(``dead_l`` and ``mse_scale`` are unused: the loss of Anthropic's SAE has neither.)"""
    _, f_nl, xhat_nd = sae.forward(params, x_nd, cfg)
    rec = jnp.mean(jnp.sum((x_nd - xhat_nd) ** 2, axis=-1))
    sparsity = jnp.mean(f_nl @ jnp.linalg.norm(params["w_dec_ld"], axis=-1))
    loss = rec + cfg.l1 * sparsity
    return loss, {"loss": loss, "reconstruction": rec, "l1": sparsity,
                  **reconstruction_metrics(x_nd, xhat_nd, f_nl)}


def loss_fn(cfg: sae.SaeConfig):
    """The loss of ``cfg.kind``."""
    return LOSSES.get(cfg.kind).fn
