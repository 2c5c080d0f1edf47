"""MoE objectives: Switch load balancing (top-k form), ST-MoE router z-loss, router
statistics, kyx's routing-error loss, and the helper that turns a Decoder's aux into
(loss, metrics). Pure functions of arrays; everything in float32; every mean runs over
real tokens (``mask_bt > 0``) and, under jit, over the whole sharded batch.

Routing-error detection and loss are **kyx's own formulation** (docs/moe.md; no public
method exists for KwaiYii's "MoE routing-error adaptive detection"). They live in a
``jax.custom_vjp`` around the combine step: the forward is the plain combine; the backward
computes, per routed (token, expert) pair, the pressure a_te = g_te * ||c_t|| (g_te the
combine gate, c_t the cotangent reaching the MoE output), flags pairs with
a_te > mu_e + kappa * sigma_e (mean / std over the pairs routed to expert e in the batch),
and adds d L_re / d router_logits with L_re = weight * mean_flagged[-log(1 - p_te)] to the
router-logits cotangent. The flag counts leave the backward pass as the cotangent of a
zero "probe" input (see `flagged_metrics`).
"""
from __future__ import annotations

from typing import Callable, Mapping

import jax
import jax.numpy as jnp


def _masked_mean(x_bt, mask_bt):
    return jnp.sum(x_bt * mask_bt) / jnp.maximum(jnp.sum(mask_bt), 1.0)


# ----------------------------------------------------------------------------- statistics

def expert_load(expert_idx_btk, mask_bt, num_experts: int):
    """f_e: share of the k * T routed assignments (before capacity) given to expert e.

    Sums to 1 over experts (0 everywhere when there are no real tokens)."""
    onehot_btke = jax.nn.one_hot(expert_idx_btk, num_experts, dtype=jnp.float32)
    counts_e = jnp.einsum("btke,bt->e", onehot_btke, mask_bt.astype(jnp.float32))
    return counts_e / jnp.maximum(jnp.sum(counts_e), 1.0)


def load_balance_loss(probs_bte, expert_idx_btk, mask_bt):
    """Switch load-balancing loss in top-k form: E * sum_e f_e * P_e.

    f_e = `expert_load` (all top-k assignments, normalised by k * T so sum_e f_e = 1) and
    P_e = mean router probability of expert e. Under uniform routing f_e = P_e = 1/E and
    the loss equals 1, its minimum (HF Mixtral normalises f by T only, giving k instead).
    """
    num_experts = probs_bte.shape[-1]
    mask = mask_bt.astype(jnp.float32)
    f_e = jax.lax.stop_gradient(expert_load(expert_idx_btk, mask, num_experts))
    p_e = jnp.einsum("bte,bt->e", probs_bte.astype(jnp.float32), mask)
    p_e = p_e / jnp.maximum(jnp.sum(mask), 1.0)
    return num_experts * jnp.sum(f_e * p_e)


def router_z_loss(logits_bte, mask_bt):
    """ST-MoE router z-loss: mean over tokens of logsumexp(router_logits)^2."""
    lse_bt = jax.nn.logsumexp(logits_bte.astype(jnp.float32), axis=-1)
    return _masked_mean(jnp.square(lse_bt), mask_bt.astype(jnp.float32))


def router_entropy(probs_bte, mask_bt):
    """Mean entropy (nats) of the router distribution over real tokens."""
    p = probs_bte.astype(jnp.float32)
    h_bt = -jnp.sum(p * jnp.log(jnp.maximum(p, 1e-30)), axis=-1)
    return _masked_mean(h_bt, mask_bt.astype(jnp.float32))


# ----------------------------------------------------------------------------- routing error

def route_error_flags(pressure_btk, expert_idx_btk, routed_btk, num_experts: int, kappa: float):
    """Flag routed pairs with pressure > mu_e + kappa * sigma_e (population std over the
    pairs routed to expert e). Returns (flags_btk bool, stats_2e = [flagged_e, routed_e])."""
    m_btke = jax.nn.one_hot(expert_idx_btk, num_experts, dtype=jnp.float32)
    m_btke = m_btke * routed_btk.astype(jnp.float32)[..., None]
    a_btk1 = pressure_btk.astype(jnp.float32)[..., None]
    n_e = jnp.sum(m_btke, axis=(0, 1, 2))
    mu_e = jnp.sum(m_btke * a_btk1, axis=(0, 1, 2)) / jnp.maximum(n_e, 1.0)
    var_e = jnp.sum(m_btke * jnp.square(a_btk1 - mu_e), axis=(0, 1, 2)) / jnp.maximum(n_e, 1.0)
    threshold_e = mu_e + kappa * jnp.sqrt(var_e)   # kappa = inf: inf, or nan when sigma = 0
    above_btke = (a_btk1 > threshold_e).astype(jnp.float32)
    above_btk = jnp.sum(m_btke * above_btke, axis=-1)
    flags_btk = routed_btk & (above_btk > 0)
    flagged_e = jnp.einsum("btke,btk->e", m_btke, flags_btk.astype(jnp.float32))
    return flags_btk, jnp.stack([flagged_e, n_e])


def route_error_loss(logits_bte, expert_idx_btk, flags_btk, weight: float):
    """L_re = weight * mean over flagged pairs of -log(1 - p_te), p = softmax(logits).

    log(1 - p_e) is computed stably as logsumexp_{j != e} z_j - logsumexp_j z_j."""
    z_bte = logits_bte.astype(jnp.float32)
    num_experts = z_bte.shape[-1]
    lse_bt1 = jax.nn.logsumexp(z_bte, axis=-1, keepdims=True)
    onehot_btke = jax.nn.one_hot(expert_idx_btk, num_experts, dtype=bool)
    z_btke = jnp.where(onehot_btke, -jnp.inf, z_bte[:, :, None, :])
    log_rest_btk = jax.nn.logsumexp(z_btke, axis=-1) - lse_bt1
    f = flags_btk.astype(jnp.float32)
    return weight * jnp.sum(-log_rest_btk * f) / jnp.maximum(jnp.sum(f), 1.0)


def combine_with_route_error(combine_fn: Callable, kappa: float, weight: float):
    """Wrap ``combine_fn(logits_bte, payload, consts) -> (y_btd, gates_btk)`` so that its
    backward also applies the routing-error loss.

    Returns ``f(logits_bte, payload, consts, probe_2e) -> y_btd``. ``consts`` must hold
    ``expert_idx_btk`` and ``routed_btk`` (bool: real and not dropped); it gets no
    gradient. ``probe_2e`` is a zero input whose cotangent is [flagged_e, routed_e].
    """
    @jax.custom_vjp
    def f(logits_bte, payload, consts, probe_2e):
        return combine_fn(logits_bte, payload, consts)[0]

    def fwd(logits_bte, payload, consts, probe_2e):
        y_btd, vjp_fn, gates_btk = jax.vjp(lambda z, p: combine_fn(z, p, consts),
                                           logits_bte, payload, has_aux=True)
        return y_btd, (vjp_fn, gates_btk, logits_bte, consts)

    def bwd(res, c_btd):
        vjp_fn, gates_btk, logits_bte, consts = res
        d_logits, d_payload = vjp_fn(c_btd)
        c_norm_bt = jnp.sqrt(jnp.sum(jnp.square(c_btd.astype(jnp.float32)), axis=-1))
        pressure_btk = jax.lax.stop_gradient(gates_btk).astype(jnp.float32) * c_norm_bt[..., None]
        idx_btk, routed_btk = consts["expert_idx_btk"], consts["routed_btk"]
        flags_btk, stats_2e = route_error_flags(pressure_btk, idx_btk, routed_btk,
                                                logits_bte.shape[-1], kappa)
        d_re = jax.grad(route_error_loss)(logits_bte, idx_btk, flags_btk, weight)
        return d_logits + d_re.astype(d_logits.dtype), d_payload, None, stats_2e

    f.defvjp(fwd, bwd)
    return f


# ----------------------------------------------------------------------------- train-step helpers

def moe_loss_and_metrics(aux: Mapping, layer_ids, probe_grads=None):
    """(aux["moe_loss"], {"moe/layer{i}/...": scalar}) from a Decoder's aux.

    ``layer_ids`` is ``ModelConfig.moe_layer_ids``. Per layer: ``load_max`` (largest expert
    share f_e; 1/E is balanced), ``load_min``, ``dropped_frac``, ``router_entropy``,
    ``lb_loss``, ``z_loss`` and, given ``probe_grads``, ``flagged_frac``.
    """
    loss = aux.get("moe_loss", jnp.zeros((), jnp.float32))
    metrics = {}
    if not layer_ids:
        return loss, metrics
    m = aux["moe_metrics"]
    for n, layer in enumerate(layer_ids):
        p = f"moe/layer{layer}/"
        metrics[p + "load_max"] = jnp.max(m["load"][n])
        metrics[p + "load_min"] = jnp.min(m["load"][n])
        for key in ("dropped_frac", "router_entropy", "lb_loss", "z_loss"):
            metrics[p + key] = m[key][n]
    if probe_grads is not None:
        metrics.update(flagged_metrics(probe_grads, layer_ids))
    metrics["moe/loss"] = loss
    return loss, metrics


def flagged_metrics(probe_grads, layer_ids):
    """{"moe/layer{i}/flagged_frac"}: flagged / routed pairs, from the gradient of the
    loss with respect to the zero ``moe_probe`` collection (see docs/moe.md)."""
    if not probe_grads:
        return {}
    (stats_l2e,) = jax.tree.leaves(probe_grads)  # moe_layers/.../route_error: [S, 2, E]
    out = {}
    for n, layer in enumerate(layer_ids):
        flagged, routed = jnp.sum(stats_l2e[n, 0]), jnp.sum(stats_l2e[n, 1])
        out[f"moe/layer{layer}/flagged_frac"] = flagged / jnp.maximum(routed, 1.0)
    return out

