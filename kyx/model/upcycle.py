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

    kyx upcycle --workdir DENSE --out MOE --num-experts 8 [--top-k 2] [--every 1]
                [--first-dense 0] [--noise 0.01] [--noise-type multiplicative|additive]
                [--router-std STD] [--dispatch capacity|dropless] [--capacity-factor F]
                [--seed 0] [--step N]
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import shutil

import jax
import jax.numpy as jnp
import ml_collections

from kyx.errors import CheckpointError, ConfigError
from kyx.model.config import ModelConfig

NOISE_TYPES = ("multiplicative", "additive")
EXPERT_WEIGHTS = ("wi_gate", "wi_up", "wo")
TOKENIZER_FILES = ("tokenizer.model", "tokenizer.json", "tokenizer_config.json",
                   "special_tokens_map.json", "generation_config.json")


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
    N(0, router_std^2) (``None``: ``moe.init_std``; 0: zeros, uniform routing).
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
    return out


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


def _check_tree(params, reference) -> None:
    """Raise unless `params` has exactly the structure and shapes of `reference`."""
    got = {jax.tree_util.keystr(p): x.shape for p, x in jax.tree_util.tree_leaves_with_path(params)}
    want = {jax.tree_util.keystr(p): x.shape
            for p, x in jax.tree_util.tree_leaves_with_path(reference)}
    if got != want:
        diff = sorted(set(got.items()) ^ set(want.items()))[:6]
        raise ConfigError(f"upcycled params do not match the MoE model; differences: {diff}")


def upcycle_workdir(workdir: str, out: str, num_experts: int, top_k: int = 2, every: int = 1,
                    first_dense: int = 0, noise: float = 0.01,
                    noise_type: str = "multiplicative", router_std: float | None = None,
                    seed: int = 0, step: int = -1, **moe_fields) -> str:
    """Write an upcycled MoE workdir `out` (config.json, tokenizer, step-0 checkpoint)."""
    from kyx import config as config_lib
    from kyx import sharding
    from kyx.checkpoint.manager import Checkpointer
    from kyx.model.params import abstract_params
    from kyx.model.transformer import Decoder
    from kyx.train.init_from import load_params

    cfg_path = os.path.join(workdir, "config.json")
    if not os.path.exists(cfg_path):
        raise CheckpointError(f"{workdir!r} is not a kyx workdir (no config.json)")
    if os.path.exists(os.path.join(out, "checkpoints")):
        raise CheckpointError(f"--out {out!r} already holds checkpoints; choose a new directory")
    cfg = config_lib.load_json(cfg_path)
    if "model" not in cfg:
        raise CheckpointError(f"{workdir!r} is not a kyx workdir (config.json has no model "
                              "section); import Hugging Face models with `kyx convert` first")
    dense = ModelConfig.from_config(cfg.model)
    moe = moe_config(dense, num_experts, top_k, every, first_dense, **moe_fields)
    mesh = sharding.make_mesh({"data": 1}, devices=jax.devices()[:1])
    dense_params = load_params(workdir, Decoder(dense), mesh, sharding.get_rules("dp"), step)
    if step < 0:
        step = Checkpointer(os.path.join(workdir, "checkpoints"), read_only=True).steps()[-1]
    params = upcycle_params(dense_params, dense, moe, jax.random.key(seed), noise, noise_type,
                            router_std)
    _check_tree(params, abstract_params(Decoder(moe))[0])
    cfg.model = ml_collections.ConfigDict(dataclasses.asdict(moe))
    cfg.upcycle = ml_collections.ConfigDict({
        "source": os.path.abspath(workdir), "source_step": step, "noise": noise,
        "noise_type": noise_type, "router_std": -1.0 if router_std is None else router_std,
        "seed": seed})
    os.makedirs(out, exist_ok=True)
    config_lib.dump(cfg, os.path.join(out, "config.json"))
    for name in TOKENIZER_FILES:
        if os.path.exists(os.path.join(workdir, name)):
            shutil.copy(os.path.join(workdir, name), os.path.join(out, name))
    ckpt = Checkpointer(os.path.join(out, "checkpoints"), async_save=False)
    ckpt.save(0, {"params": params}, {}, config_lib.to_dict(cfg), force=True)
    ckpt.close()
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="kyx upcycle", description=__doc__.split("\n\n")[0])
    parser.add_argument("--workdir", required=True, help="trained dense kyx workdir")
    parser.add_argument("--out", required=True, help="new MoE workdir")
    parser.add_argument("--num-experts", type=int, required=True)
    parser.add_argument("--top-k", type=int, default=2)
    parser.add_argument("--every", type=int, default=1, help="every N-th layer is MoE")
    parser.add_argument("--first-dense", type=int, default=0, help="first K layers stay dense")
    parser.add_argument("--noise", type=float, default=0.01,
                        help="relative scale S of the expert noise (0: exact copies)")
    parser.add_argument("--noise-type", choices=NOISE_TYPES, default="multiplicative")
    parser.add_argument("--router-std", type=float, default=None,
                        help="router init std (default: model.init_std; 0: zero router)")
    parser.add_argument("--dispatch", choices=("capacity", "dropless"), default="capacity")
    parser.add_argument("--capacity-factor", type=float, default=1.25)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--step", type=int, default=-1, help="source step (default: newest)")
    a = parser.parse_args(argv)
    out = upcycle_workdir(a.workdir, a.out, a.num_experts, a.top_k, a.every, a.first_dense,
                          a.noise, a.noise_type, a.router_std, a.seed, a.step,
                          moe_dispatch=a.dispatch, moe_capacity_factor=a.capacity_factor)
    print(f"wrote {out}: {a.num_experts} experts (top-{a.top_k}) upcycled from {a.workdir}; "
          f"optimizer state starts fresh: rewarm the learning rate", flush=True)
    return 0
