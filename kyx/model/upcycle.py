"""Warm start by expanding experts (HunYuan's 1 -> E curriculum; sparse upcycling).

A trained dense decoder becomes a MoE decoder: every dense FFN of a layer that becomes
MoE is copied into all E experts (optionally with seeded symmetry-breaking noise), a fresh
router is added, and every other parameter (embeddings, attention, norms, head, the FFNs
of layers that stay dense) is copied unchanged.

With zero noise and gates renormalised over the top k (``moe_norm_topk``), every routed
token gets sum_j g_j E(x) = E(x): the MoE model computes the dense function as long as no
token is dropped (logits agree to float32 rounding, ~1e-7: the batched expert matmuls
round differently from the dense one). A zero router gives gates of exactly 1/k but ties
send every token to experts 0..k-1, which overflow at once under ``capacity`` dispatch;
so the default router is random (std = ``init_std``), which spreads the load from the
first step. Use ``--router-std 0`` only with ``dropless`` or a capacity factor >= E / k.

The optimizer state is not carried over (`init_from` starts a fresh one): rewarm the
learning rate (a short warmup to a peak no higher than the dense run's peak).

The workdir-to-workdir command (kyx/commands/upcycle.py):

    kyx upcycle --workdir DENSE --out MOE --num-experts 8 [--top-k 2] [--every 1]
                [--first-dense 0] [--noise 0.01] [--noise-type multiplicative|additive]
                [--router-std STD] [--dispatch capacity|dropless] [--capacity-factor F]
                [--seed 0] [--step N]
"""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from kyx.errors import ConfigError
from kyx.model.config import ModelConfig

NOISE_TYPES = ("multiplicative", "additive")
EXPERT_WEIGHTS = ("wi_gate", "wi_up", "wo")


def moe_config(dense: ModelConfig, num_experts: int, top_k: int = 2, every: int = 1,
               first_dense: int = 0, **moe_fields) -> ModelConfig:
    """The MoE ModelConfig that `dense`'s params upcycle into (expert width = FFN width)."""
    if dense.is_moe:
        raise ConfigError(f"the source model is already MoE (moe_num_experts="
                          f"{dense.moe_num_experts}); upcycling needs a dense model")
    if num_experts < 1 or not 1 <= top_k <= num_experts:
        raise ConfigError(f"need num_experts >= top_k >= 1, got num_experts={num_experts}, "
                          f"top_k={top_k}")
    unknown = set(moe_fields) - {f.name for f in dataclasses.fields(ModelConfig)}
    if unknown:
        raise ConfigError(f"unknown model fields {sorted(unknown)}")
    fields = {"moe_ffn_dim": 0, "moe_shared_experts": 0, **moe_fields}
    fields.update(moe_num_experts=num_experts, moe_top_k=top_k, moe_every=every,
                  moe_first_dense=first_dense)
    cfg = dataclasses.replace(dense, **fields).validate()
    if cfg.moe_shared_experts or cfg.expert_dim != dense.hidden_dim:
        raise ConfigError("upcycling copies the dense FFN into the routed experts: it needs "
                          "moe_shared_experts=0 and moe_ffn_dim = the dense FFN width")
    if not cfg.moe_norm_topk:
        raise ConfigError("upcycling needs moe_norm_topk=True (otherwise the copied experts "
                          "are scaled by the sum of the k chosen router probabilities)")
    return cfg


def upcycle_params(dense_params, dense: ModelConfig, moe: ModelConfig, key: jax.Array,
                   noise: float = 0.0, noise_type: str = "multiplicative",
                   router_std: float | None = None):
    """MoE params for config `moe` from the params of dense config `dense`.

    Expert e of MoE layer l gets the dense FFN of layer l, perturbed by ``noise`` S:
    multiplicative ``w * (1 + S * n)`` or additive ``w + S * std(w) * n``, n ~ N(0, 1)
    drawn independently per layer, weight and expert from `key`. The router kernel is
    N(0, router_std^2) (``None``: ``moe.init_std``; 0: zeros, uniform routing). Every
    param is returned in ``moe.param_dtype``.
    """
    if noise_type not in NOISE_TYPES:
        raise ConfigError(f"noise_type must be one of {NOISE_TYPES}, got {noise_type!r}")
    if noise < 0 or (router_std is not None and router_std < 0):
        raise ConfigError(f"noise and router_std must be >= 0, got {noise}, {router_std}")
    if "layers" not in dense_params:
        raise ConfigError("the source params have no 'layers' scan: not a dense kyx decoder")
    std = moe.init_std if router_std is None else router_std
    k_dense, k_step, layers = moe.moe_first_dense, moe.moe_every, dense_params["layers"]
    per_layer = [jax.tree.map(lambda a, i=i: a[i], layers) for i in range(dense.num_layers)]
    stack = lambda trees: jax.tree.map(lambda *a: jnp.stack(a), *trees)
    out = {name: value for name, value in dense_params.items() if name != "layers"}
    if k_dense:
        out["dense_layers"] = stack(per_layer[:k_dense])
    blocks = [per_layer[i:i + k_step] for i in range(k_dense, dense.num_layers, k_step)]
    group = {f"dense_{j}": stack([b[j] for b in blocks]) for j in range(k_step - 1)}
    sparse = []
    for s, block in enumerate(blocks):
        layer = dict(block[-1])
        ffn = layer.pop("mlp")
        layer["moe"] = _expert_layer(ffn, moe, jax.random.fold_in(key, s), noise, noise_type,
                                     std)
        sparse.append(layer)
    group["sparse"] = stack(sparse)
    out["moe_layers"] = group
    # the new router and experts are computed in float32; stored as the MoE model stores
    return jax.tree.map(lambda x: jnp.asarray(x, moe.storage_dtype), out)


def _expert_layer(ffn, cfg: ModelConfig, key, noise, noise_type, router_std):
    e = cfg.moe_num_experts
    d = ffn["wi_gate"].shape[0]
    if router_std > 0:
        router = router_std * jax.random.normal(jax.random.fold_in(key, len(EXPERT_WEIGHTS)),
                                                (d, e), jnp.float32)
    else:
        router = jnp.zeros((d, e), jnp.float32)
    layer = {"router": {"kernel": router}}
    for n, name in enumerate(EXPERT_WEIGHTS):
        w = jnp.asarray(ffn[name], jnp.float32)
        w_e = jnp.broadcast_to(w, (e, *w.shape))
        if noise > 0:
            eps = jax.random.normal(jax.random.fold_in(key, n), w_e.shape, jnp.float32)
            w_e = w_e * (1.0 + noise * eps) if noise_type == "multiplicative" else (
                w_e + noise * jnp.std(w) * eps)
        layer[name] = w_e
    return layer


def check_tree(params, reference) -> None:
    """Raise unless `params` has exactly the structure and shapes of `reference`."""
    got = {jax.tree_util.keystr(p): x.shape for p, x in jax.tree_util.tree_leaves_with_path(params)}
    want = {jax.tree_util.keystr(p): x.shape
            for p, x in jax.tree_util.tree_leaves_with_path(reference)}
    if got != want:
        diff = sorted(set(got.items()) ^ set(want.items()))[:6]
        raise ConfigError(f"upcycled params do not match the MoE model; differences: {diff}")
