"""Mixture-of-experts FFN: float32 top-k softmax router, stacked SwiGLU experts, two
dispatch paths, optional shared experts and word-embedding routing (docs/moe.md).

* Router: logits = r W_r in float32 with r the router input (the hidden state, or with
  ``moe_router_input="embedding"`` the token's input embedding). With
  ``moe_router_jitter = eps > 0`` and a ``'jitter'`` rng stream, r is multiplied by
  U(1 - eps, 1 + eps) noise (training only; without the rng the router is deterministic).
  Gates g_tk are the top-k softmax probabilities, renormalised to sum 1 when
  ``moe_norm_topk``.
* ``capacity`` dispatch: a group is one batch row (T tokens); each expert takes at most
  C = min(T, ceil(k * T * capacity_factor / E)) tokens per group. Priority: every token's
  first choice (in token order) before any second choice, and so on; tokens over capacity
  are dropped for that expert (their residual passes unchanged). One-hot dispatch /
  combine einsums; under the ``ep`` preset the expert dimension of the dispatched tokens
  is on the ``expert`` mesh axis.
* ``dropless`` dispatch: all (token, choice) pairs sorted by expert and run with
  ``jax.lax.ragged_dot``; nothing is dropped (the sort is global over the batch, so this
  path gathers tokens instead of using expert parallelism).
* Padding tokens (segment 0) are never dispatched and take no capacity.
* Shared experts: ``moe_shared_experts`` always-on SwiGLUs of width ``expert_dim``,
  implemented as one SwiGLU of width n * expert_dim (the same function).
"""
from __future__ import annotations

import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from kyx import axes as ax
from kyx.model.config import ModelConfig
from kyx.model.layers import SwiGLU, param_with_axes
from kyx.objectives import moe as moe_obj
from kyx.sharding import constrain

PROBE_COLLECTION = "moe_probe"
EXPERT_ACT = (ax.ACT_EXP_BATCH, ax.ACT_EXP, None, ax.ACT_EMBED)


class Router(nn.Module):
    """Float32 router logits [B, T, E], with optional multiplicative input jitter."""
    num_experts: int
    init_std: float
    jitter: float = 0.0
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, r_btd: jax.Array) -> jax.Array:
        w_de = param_with_axes(self, "kernel", nn.initializers.normal(self.init_std),
                               (r_btd.shape[-1], self.num_experts), (ax.EMBED, None))
        r = r_btd.astype(jnp.float32)
        if self.jitter > 0 and self.has_rng("jitter"):
            r = r * jax.random.uniform(self.make_rng("jitter"), r.shape, jnp.float32,
                                       1.0 - self.jitter, 1.0 + self.jitter)
        logits_bte = jnp.einsum("btd,de->bte", r, w_de.astype(jnp.float32),
                                precision=jax.lax.Precision.HIGHEST)
        return constrain(logits_bte, (ax.ACT_BATCH, ax.ACT_LENGTH, None))


def top_k_indices(probs_bte, k: int):
    """Indices of the k largest probabilities (ties: lower index first), by k rounds of
    argmax; unlike lax.top_k this partitions along the batch without an all-gather."""
    picks = []
    p = probs_bte
    for _ in range(k):
        i_bt = jnp.argmax(p, axis=-1)
        picks.append(i_bt)
        p = jnp.where(jax.nn.one_hot(i_bt, p.shape[-1], dtype=bool), -jnp.inf, p)
    return constrain(jnp.stack(picks, axis=-1).astype(jnp.int32),
                     (ax.ACT_BATCH, ax.ACT_LENGTH, None))


def topk_gates(logits_bte, expert_idx_btk, normalize: bool):
    """Combine gates g_tk: softmax probabilities of the chosen experts (float32)."""
    probs_bte = jax.nn.softmax(logits_bte.astype(jnp.float32), axis=-1)
    g_btk = jnp.take_along_axis(probs_bte, expert_idx_btk, axis=-1)
    if normalize:
        g_btk = g_btk / jnp.sum(g_btk, axis=-1, keepdims=True)
    return g_btk


def capacity(cfg: ModelConfig, group_size: int) -> int:
    c = math.ceil(cfg.moe_top_k * group_size * cfg.moe_capacity_factor / cfg.moe_num_experts)
    return max(1, min(group_size, c))


def capacity_slots(expert_idx_btk, valid_bt, num_experts: int, cap: int):
    """Buffer slot of every (token, choice) pair and whether it fits.

    Priority within a group (row): choice j of every token before choice j + 1, tokens in
    index order. Returns (slot_btk int32, keep_btk bool)."""
    b, t, k = expert_idx_btk.shape
    onehot_btke = jax.nn.one_hot(expert_idx_btk, num_experts, dtype=jnp.int32)
    onehot_btke = onehot_btke * valid_bt.astype(jnp.int32)[:, :, None, None]
    priority_bne = jnp.swapaxes(onehot_btke, 1, 2).reshape(b, k * t, num_experts)
    before_bne = jnp.cumsum(priority_bne, axis=1) - priority_bne
    before_btke = jnp.swapaxes(before_bne.reshape(b, k, t, num_experts), 1, 2)
    slot_btk = jnp.sum(before_btke * onehot_btke, axis=-1)
    keep_btk = (slot_btk < cap) & valid_bt[:, :, None]
    return slot_btk, keep_btk


class MoE(nn.Module):
    """Sparse FFN. ``__call__(x_btd, router_in_btd, valid_bt) -> (y_btd, stats)``."""
    cfg: ModelConfig

    @property
    def param_dtype(self):
        return self.cfg.storage_dtype

    @nn.compact
    def __call__(self, x_btd: jax.Array, router_in_btd: jax.Array, valid_bt: jax.Array):
        cfg, dtype = self.cfg, self.cfg.compute_dtype
        e, k, d, f = cfg.moe_num_experts, cfg.moe_top_k, x_btd.shape[-1], cfg.expert_dim
        logits_bte = Router(e, cfg.init_std, cfg.moe_router_jitter, cfg.storage_dtype,
                            name="router")(router_in_btd)
        logits_bte = self.perturb("router_logits", logits_bte)  # d loss / d logits, on request
        probs_bte = jax.nn.softmax(logits_bte, axis=-1)
        idx_btk = top_k_indices(probs_bte, k)
        init = nn.initializers.normal(cfg.init_std)
        w = {
            "gate": param_with_axes(self, "wi_gate", init, (e, d, f), (ax.EXP, ax.EMBED, ax.MLP)),
            "up": param_with_axes(self, "wi_up", init, (e, d, f), (ax.EXP, ax.EMBED, ax.MLP)),
            "down": param_with_axes(self, "wo", init, (e, f, d), (ax.EXP, ax.MLP, ax.EMBED)),
        }
        w = {n: a.astype(dtype) for n, a in w.items()}
        x = x_btd.astype(dtype)
        if cfg.moe_dispatch == "capacity":
            routed_btk, combine_fn, payload, consts = _capacity_path(cfg, x, idx_btk, valid_bt, w)
        else:
            routed_btk, combine_fn, payload, consts = _dropless_path(cfg, x, idx_btk, valid_bt, w)
        consts = {**consts, "expert_idx_btk": idx_btk, "routed_btk": routed_btk}
        if cfg.moe_route_error_weight:
            probe_2e = self._probe(e)
            combine = moe_obj.combine_with_route_error(
                combine_fn, float(cfg.moe_route_error_kappa), float(cfg.moe_route_error_weight))
            y_btd = combine(logits_bte, payload, consts, probe_2e)
        else:
            y_btd = combine_fn(logits_bte, payload, consts)[0]
        if cfg.moe_shared_experts:
            y_btd = y_btd + SwiGLU(cfg.moe_shared_experts * f, cfg.init_std, dtype,
                                   cfg.storage_dtype, name="shared")(x_btd)
        y_btd = constrain(y_btd.astype(dtype), ax.BTD)
        return y_btd, self._stats(logits_bte, probs_bte, idx_btk, routed_btk, valid_bt)

    def _probe(self, e: int) -> jax.Array:
        """Zero [2, E] input whose gradient carries [flagged_e, routed_e] (docs/moe.md)."""
        if self.is_initializing() or self.has_variable(PROBE_COLLECTION, "route_error"):
            return self.variable(PROBE_COLLECTION, "route_error", jnp.zeros, (2, e),
                                 jnp.float32).value
        return jnp.zeros((2, e), jnp.float32)

    def _stats(self, logits_bte, probs_bte, idx_btk, routed_btk, valid_bt):
        cfg = self.cfg
        mask_bt = valid_bt.astype(jnp.float32)
        lb = moe_obj.load_balance_loss(probs_bte, idx_btk, mask_bt)
        z = moe_obj.router_z_loss(logits_bte, mask_bt)
        pairs = jnp.maximum(jnp.sum(mask_bt) * cfg.moe_top_k, 1.0)
        return {
            "load": moe_obj.expert_load(idx_btk, mask_bt, cfg.moe_num_experts),
            "dropped_frac": 1.0 - jnp.sum(routed_btk.astype(jnp.float32)) / pairs,
            "router_entropy": moe_obj.router_entropy(probs_bte, mask_bt),
            "lb_loss": lb,
            "z_loss": z,
            "loss": cfg.moe_aux_loss_weight * lb + cfg.moe_z_loss_weight * z,
        }


def _experts_dense(x_becd, w: dict[str, Any]):
    """Per-expert SwiGLU on dispatched buffers [B, E, C, d]."""
    gate = jnp.einsum("becd,edf->becf", x_becd, w["gate"])
    up = jnp.einsum("becd,edf->becf", x_becd, w["up"])
    h_becf = constrain(nn.silu(gate) * up, (ax.ACT_EXP_BATCH, ax.ACT_EXP, None, ax.ACT_MLP))
    return constrain(jnp.einsum("becf,efd->becd", h_becf, w["down"]), EXPERT_ACT)


def _capacity_path(cfg: ModelConfig, x_btd, idx_btk, valid_bt, w):
    e, t = cfg.moe_num_experts, x_btd.shape[1]
    cap = capacity(cfg, t)
    slot_btk, keep_btk = capacity_slots(idx_btk, valid_bt, e, cap)
    expert_btke = jax.nn.one_hot(idx_btk, e, dtype=x_btd.dtype)
    slot_btkc = jax.nn.one_hot(slot_btk, cap, dtype=x_btd.dtype) * keep_btk[..., None]
    dispatch_btec = jnp.einsum("btke,btkc->btec", expert_btke, slot_btkc)
    x_becd = constrain(jnp.einsum("btec,btd->becd", dispatch_btec, x_btd), EXPERT_ACT)
    out_becd = _experts_dense(x_becd, w)

    def combine_fn(logits_bte, out_becd, consts):
        g_btk = topk_gates(logits_bte, consts["expert_idx_btk"], cfg.moe_norm_topk)
        g_btk = g_btk * consts["routed_btk"]
        combine_btec = jnp.einsum("btk,btke,btkc->btec", g_btk.astype(out_becd.dtype),
                                  consts["expert_btke"], consts["slot_btkc"])
        return jnp.einsum("btec,becd->btd", combine_btec, out_becd), g_btk

    return keep_btk, combine_fn, out_becd, {"expert_btke": expert_btke, "slot_btkc": slot_btkc}


def _dropless_path(cfg: ModelConfig, x_btd, idx_btk, valid_bt, w):
    b, t, k = idx_btk.shape
    e, d = cfg.moe_num_experts, x_btd.shape[-1]
    idx_n = idx_btk.reshape(-1)
    order_n = jnp.argsort(idx_n, stable=True)
    token_n = order_n // k
    group_sizes_e = jnp.bincount(idx_n, length=e).astype(jnp.int32)
    x_nd = jnp.take(x_btd.reshape(b * t, d), token_n, axis=0)
    gate = jax.lax.ragged_dot(x_nd, w["gate"], group_sizes_e)
    up = jax.lax.ragged_dot(x_nd, w["up"], group_sizes_e)
    out_nd = jax.lax.ragged_dot(nn.silu(gate) * up, w["down"], group_sizes_e)
    out_btkd = jnp.zeros_like(out_nd).at[order_n].set(out_nd).reshape(b, t, k, d)
    routed_btk = jnp.broadcast_to(valid_bt[:, :, None], (b, t, k))

    def combine_fn(logits_bte, out_btkd, consts):
        g_btk = topk_gates(logits_bte, consts["expert_idx_btk"], cfg.moe_norm_topk)
        g_btk = g_btk * consts["routed_btk"]
        return jnp.einsum("btk,btkd->btd", g_btk.astype(out_btkd.dtype), out_btkd), g_btk

    return routed_btk, combine_fn, out_btkd, {}


def zero_probes(model: nn.Module, tokens_bt: jax.Array | None = None):
    """The zero ``moe_probe`` collection of a Decoder ({} when routing-error is off)."""
    tokens_bt = jnp.zeros((1, 8), jnp.int32) if tokens_bt is None else tokens_bt
    shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), tokens_bt))
    probes = shapes.get(PROBE_COLLECTION, {})
    return jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), nn.unbox(probes))
