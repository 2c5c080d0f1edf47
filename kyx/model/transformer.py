"""Decoder-only Transformer: embed -> scan(pre-RMSNorm blocks) -> RMSNorm -> head.

Used through pure `init` / `apply`. Inputs are packed rows: `tokens`, `segment_ids`
(0 = padding, documents numbered from 1) and `positions` (restarting at 0 per document).
`apply` returns ``(logits_btv, aux)``; ``aux`` holds the final hidden states, the MoE
auxiliary loss and metrics (``moe_loss`` is 0.0 and ``moe_metrics`` empty for dense
models) and, when a cache is passed, the updated KV cache.
"""
from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec as P

from kyx import axes as ax
from kyx.model.config import ModelConfig
from kyx.model.layers import Embed, OutputHead, RMSNorm, SwiGLU
from kyx.model.mixers import CACHE_AXES, MIXERS  # noqa: F401 (CACHE_AXES re-exported)
from kyx.model.moe import PROBE_COLLECTION, MoE
from kyx.model.quant import dequantize_params
from kyx.sharding import constrain


class Block(nn.Module):
    """One pre-norm layer: x + Attn(RMSNorm(x)), then x + FFN(RMSNorm(x)).

    The FFN is a SwiGLU (``mlp``) or, with ``sparse``, a mixture of experts (``moe``);
    the attention (``attn``) is the layer of attention kind ``kind`` (kyx/model/mixers.py).
    Scan interface: carry = (x_btd, prev_probs | None), xs = (cache | None, reuse | None);
    returns (carry, (new_cache, moe_stats | None)).
    """
    cfg: ModelConfig
    sparse: bool = False
    kind: str = "softmax"

    @nn.compact
    def __call__(self, carry, xs, segment_ids_bt, positions_bt, router_in_btd):
        cfg, dtype, pdtype = self.cfg, self.cfg.compute_dtype, self.cfg.storage_dtype
        x_btd, prev_probs = carry
        cache, reuse = xs
        h = RMSNorm(cfg.norm_eps, dtype, pdtype, name="attn_norm")(x_btd)
        attn = MIXERS.get(self.kind)(cfg, name="attn")
        out, new_cache, probs = attn(h, segment_ids_bt, positions_bt, cache,
                                     prev_probs=prev_probs, reuse=reuse)
        x_btd = x_btd + out
        h = RMSNorm(cfg.norm_eps, dtype, pdtype, name="mlp_norm")(x_btd)
        stats = None
        if self.sparse:
            router_in = h if router_in_btd is None else router_in_btd
            y, stats = MoE(cfg, name="moe")(h, router_in, segment_ids_bt > 0)
        else:
            y = SwiGLU(cfg.hidden_dim, cfg.init_std, dtype, pdtype, name="mlp")(h)
        x_btd = constrain(x_btd + y, ax.BTD)
        return (x_btd, probs), (new_cache, stats)


class SuperBlock(nn.Module):
    """``moe_every`` consecutive layers: ``moe_every - 1`` dense blocks, then one MoE block.

    Scanned as one unit so that every scan step has identical parameter structure; its
    per-step cache and reuse flags carry a leading axis of length ``moe_every``.
    """
    cfg: ModelConfig

    @nn.compact
    def __call__(self, carry, xs, segment_ids_bt, positions_bt, router_in_btd):
        cache, reuse = xs
        n = self.cfg.moe_every
        block = _maybe_remat(Block, self.cfg)
        caches = []
        for i in range(n):
            xs_i = jax.tree.map(lambda a: a[i], (cache, reuse))
            last = i == n - 1
            layer = block(self.cfg, sparse=last, name="sparse" if last else f"dense_{i}")
            carry, (c, stats) = layer(carry, xs_i, segment_ids_bt, positions_bt, router_in_btd)
            caches.append(c)
        new_cache = None if cache is None else jax.tree.map(lambda *a: jnp.stack(a), *caches)
        return carry, (new_cache, stats)


class PatternBlock(nn.Module):
    """One period of a mixed attention pattern (``model.attention``, e.g. "pla,swa"): the
    Blocks ``layer_0 .. layer_{n-1}`` of its n kinds. Scanned as one unit (num_layers / n
    steps); its per-step cache is ``{"layer_i": that kind's cache}`` (kinds differ in
    cache structure, so they cannot share one stacked axis)."""
    cfg: ModelConfig

    @nn.compact
    def __call__(self, carry, xs, segment_ids_bt, positions_bt, router_in_btd):
        cache, _ = xs        # no attention reuse with mixed kinds (config validation)
        block = _maybe_remat(Block, self.cfg)
        caches = {}
        for i, kind in enumerate(self.cfg.attention_pattern):
            name = f"layer_{i}"
            c = None if cache is None else cache[name]
            layer = block(self.cfg, kind=kind, name=name)
            carry, (caches[name], _) = layer(carry, (c, None), segment_ids_bt, positions_bt,
                                             router_in_btd)
        return carry, (None if cache is None else caches, None)


def remat_policy(name: str):
    return {
        "full": jax.checkpoint_policies.nothing_saveable,
        "dots": jax.checkpoint_policies.checkpoint_dots,
        "dots_no_batch": jax.checkpoint_policies.checkpoint_dots_with_no_batch_dims,
    }[name]


def _maybe_remat(block, cfg: ModelConfig):
    if cfg.remat == "none":
        return block
    return nn.remat(block, prevent_cse=False, policy=remat_policy(cfg.remat))


def dequantizing(module_cls):
    """``module_cls`` reading its params through ``quant.dequantize_params``: int8 weights
    (kyx/model/quant.py) become float32 where the module uses them (inside the layer scan:
    one layer's weights at a time), float params pass through untouched."""
    # mutable=True: otherwise flax hides the params from the module whenever another
    # collection is mutable (capture_intermediates, probes)
    return nn.map_variables(module_cls, "params", trans_in_fn=dequantize_params,
                            mutable=True)


def _scan(block, cfg: ModelConfig, length: int, name: str, **fields):
    return nn.scan(
        dequantizing(block),
        variable_axes={"params": 0, PROBE_COLLECTION: 0, "perturbations": 0,
                       "intermediates": 0},
        split_rngs={"params": True, "jitter": True},
        in_axes=(0, nn.broadcast, nn.broadcast, nn.broadcast),
        length=length,
        unroll=max(1, min(cfg.scan_unroll, length)),
        metadata_params={nn.PARTITION_NAME: ax.LAYERS},
    )(cfg, name=name, **fields)


class Decoder(nn.Module):
    """Dense: ``layers`` = scan over ``num_layers`` Blocks (parameters stacked on `layers`)
    of the one attention kind of ``model.attention``; with a pattern of n > 1 kinds,
    ``layers`` = scan over ``num_layers / n`` PatternBlocks (``layers/layer_i/...``).

    MoE (``moe_num_experts > 0``): ``dense_layers`` = scan over the ``moe_first_dense``
    prefix, then ``moe_layers`` = scan over SuperBlocks of ``moe_every`` layers whose last
    layer is MoE. ``aux["moe_loss"]`` is the weighted load-balance + z-loss summed over MoE
    layers (0.0 when dense) and ``aux["moe_metrics"]`` holds per-MoE-layer statistics
    stacked on a leading axis in the order of ``cfg.moe_layer_ids``.

    Training-only randomness comes from flax rng streams passed to ``apply``: ``'reuse'``
    (attention-weight reuse, one Bernoulli draw per layer, layer 0 never reuses) and
    ``'jitter'`` (router jitter). Without them the forward is deterministic (inference).
    """
    cfg: ModelConfig

    def setup(self):
        cfg = self.cfg
        dtype, pdtype = cfg.compute_dtype, cfg.storage_dtype
        self.embed = dequantizing(Embed)(cfg.vocab_size, cfg.d_model, cfg.init_std, dtype,
                                         pdtype)
        pattern = cfg.attention_pattern
        if len(pattern) > 1:
            self.layers = _scan(PatternBlock, cfg, cfg.num_layers // len(pattern), "layers")
        elif not cfg.is_moe:
            self.layers = _scan(_maybe_remat(Block, cfg), cfg, cfg.num_layers, "layers",
                                kind=pattern[0])
        else:
            if cfg.moe_first_dense:
                self.dense_layers = _scan(_maybe_remat(Block, cfg), cfg, cfg.moe_first_dense,
                                          "dense_layers")
            self.moe_layers = _scan(SuperBlock, cfg, self.num_super_blocks, "moe_layers")
        self.final_norm = RMSNorm(cfg.norm_eps, dtype, pdtype)
        if not cfg.tie_embeddings:
            self.head = dequantizing(OutputHead)(cfg.vocab_size, cfg.init_std, cfg.norm_head,
                                                 dtype, pdtype)

    @property
    def num_super_blocks(self) -> int:
        return (self.cfg.num_layers - self.cfg.moe_first_dense) // self.cfg.moe_every

    def __call__(self, tokens_bt: jax.Array, segment_ids_bt: jax.Array | None = None,
                 positions_bt: jax.Array | None = None, cache: dict | None = None):
        cfg = self.cfg
        if segment_ids_bt is None:
            segment_ids_bt = jnp.ones_like(tokens_bt)
        if positions_bt is None:
            positions_bt = jnp.broadcast_to(jnp.arange(tokens_bt.shape[1]), tokens_bt.shape)
        x_btd = self.embed(tokens_bt)
        router_in = x_btd if cfg.is_moe and cfg.moe_router_input == "embedding" else None
        carry = (x_btd, None)
        reuse_l = None
        if cfg.attn_reuse_prob > 0 and cache is None and self.has_rng("reuse"):
            carry, reuse_l = (x_btd, self._zero_probs(tokens_bt.shape)), self._reuse_flags()
        args = (segment_ids_bt, positions_bt, router_in)
        aux = {}
        if not cfg.is_moe:
            (x_btd, _), (new_cache, _) = self.layers(carry, (cache, reuse_l), *args)
            aux["moe_loss"], aux["moe_metrics"] = jnp.zeros((), jnp.float32), {}
        else:
            k, n, s = cfg.moe_first_dense, cfg.moe_every, self.num_super_blocks
            head, tail = _split_layers((cache, reuse_l), k, s, n)
            caches = []
            if k:
                carry, (c, _) = self.dense_layers(carry, head, *args)
                caches.append(c)
            (x_btd, _), (c, stats) = self.moe_layers(carry, tail, *args)
            caches.append(None if c is None else jax.tree.map(
                lambda a: a.reshape(s * n, *a.shape[2:]), c))
            new_cache = None if cache is None else jax.tree.map(
                lambda *a: jnp.concatenate(a), *caches)
            aux["moe_loss"] = jnp.sum(stats.pop("loss"))
            aux["moe_metrics"] = stats
        logits_btv, aux["hidden_btd"] = self.unembed(x_btd)
        if cache is not None:
            aux["cache"] = new_cache
        return logits_btv, aux

    def unembed(self, x_btd: jax.Array) -> tuple[jax.Array, jax.Array]:
        """(logits_btv, hidden_btd) of the last block's residual stream: final RMSNorm, then
        the head (or the tied embedding). Also used by kyx/analysis/sites.py."""
        hidden_btd = self.final_norm(x_btd)
        if self.cfg.tie_embeddings:
            return self.embed.attend(hidden_btd), hidden_btd
        return self.head(hidden_btd), hidden_btd

    def _reuse_flags(self) -> jax.Array:
        """One Bernoulli(p) draw per layer from the 'reuse' stream; layer 0 never reuses.
        The key is replicated, so every device takes the same decision."""
        flags_l = jax.random.bernoulli(self.make_rng("reuse"), self.cfg.attn_reuse_prob,
                                       (self.cfg.num_layers,))
        return flags_l.at[0].set(False)

    def _zero_probs(self, shape_bt) -> jax.Array:
        cfg = self.cfg
        b, t = shape_bt
        shape = (b, cfg.kv_heads, cfg.num_heads // cfg.kv_heads, t, t)
        return jnp.zeros(shape, cfg.compute_dtype)


def _split_layers(tree, k: int, s: int, n: int):
    """Per-layer arrays [L, ...] -> (first k layers, [s, n, ...] for the super-blocks)."""
    head = jax.tree.map(lambda a: a[:k], tree)
    tail = jax.tree.map(lambda a: a[k:].reshape(s, n, *a.shape[1:]), tree)
    return head, tail


def init_cache(cfg: ModelConfig, batch: int, max_len: int, dtype: Any = None) -> dict:
    """The zero decoding cache. One attention kind: that kind's cache stacked over the
    layers (softmax: KV cache [layers, batch, max_len, kv_heads, head_dim] for `k` and `v`;
    pla / linear: the state `s` [layers, batch, heads, P, head_dim], `z` [.., P]); a
    pattern of n kinds: ``{"layer_i": kind i's cache over num_layers / n layers}``."""
    dtype = dtype or cfg.compute_dtype
    pattern = cfg.attention_pattern
    caches = {f"layer_{i}": MIXERS.get(kind).cache(cfg, cfg.num_layers // len(pattern), batch,
                                                   max_len, dtype)
              for i, kind in enumerate(pattern)}
    return caches["layer_0"] if len(pattern) == 1 else caches


def cache_axes(cfg: ModelConfig) -> dict:
    """Logical axes of ``init_cache``'s arrays as PartitionSpecs (same tree), e.g. for
    ``sharding.tree_shardings(cache_axes(cfg), abstract_cache, mesh, rules)``."""
    pattern = cfg.attention_pattern
    axes = {f"layer_{i}": {name: P(*names) for name, names in MIXERS.get(kind).cache_axes.items()}
            for i, kind in enumerate(pattern)}
    return axes["layer_0"] if len(pattern) == 1 else axes
