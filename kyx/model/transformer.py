"""Decoder-only Transformer: embed -> scan(pre-RMSNorm blocks) -> RMSNorm -> head.

Used through pure `init` / `apply`. Inputs are packed rows: `tokens`, `segment_ids`
(0 = padding, documents numbered from 1) and `positions` (restarting at 0 per document).
`apply` returns ``(logits_btv, aux)``; ``aux`` holds the final hidden states and, when a
cache is passed, the updated KV cache.
"""
from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from kyx.model.attention import Attention
from kyx.model.config import ModelConfig
from kyx.model.layers import Embed, OutputHead, RMSNorm, SwiGLU
from kyx.sharding import constrain


class Block(nn.Module):
    """One pre-norm layer: x + Attn(RMSNorm(x)), then x + SwiGLU(RMSNorm(x))."""
    cfg: ModelConfig

    @nn.compact
    def __call__(self, x_btd, cache, segment_ids_bt, positions_bt):
        cfg, dtype = self.cfg, self.cfg.compute_dtype
        h = RMSNorm(cfg.norm_eps, dtype, name="attn_norm")(x_btd)
        attn, new_cache = Attention(
            cfg.num_heads, cfg.kv_heads, cfg.dim_per_head, cfg.position, cfg.rope_theta,
            cfg.init_std, dtype, name="attn")(h, segment_ids_bt, positions_bt, cache)
        x_btd = x_btd + attn
        h = RMSNorm(cfg.norm_eps, dtype, name="mlp_norm")(x_btd)
        x_btd = x_btd + SwiGLU(cfg.hidden_dim, cfg.init_std, dtype, name="mlp")(h)
        x_btd = constrain(x_btd, ("act_batch", "act_length", "act_embed"))
        return x_btd, new_cache


def remat_policy(name: str):
    return {
        "full": jax.checkpoint_policies.nothing_saveable,
        "dots": jax.checkpoint_policies.checkpoint_dots,
        "dots_no_batch": jax.checkpoint_policies.checkpoint_dots_with_no_batch_dims,
    }[name]


class Decoder(nn.Module):
    cfg: ModelConfig

    def setup(self):
        cfg = self.cfg
        dtype = cfg.compute_dtype
        self.embed = Embed(cfg.vocab_size, cfg.d_model, cfg.init_std, dtype)
        block = Block
        if cfg.remat != "none":
            block = nn.remat(Block, prevent_cse=False, policy=remat_policy(cfg.remat))
        self.layers = nn.scan(
            block,
            variable_axes={"params": 0},
            split_rngs={"params": True},
            in_axes=(0, nn.broadcast, nn.broadcast),
            length=cfg.num_layers,
            metadata_params={nn.PARTITION_NAME: "layers"},
        )(cfg, name="layers")
        self.final_norm = RMSNorm(cfg.norm_eps, dtype)
        if not cfg.tie_embeddings:
            self.head = OutputHead(cfg.vocab_size, cfg.init_std, cfg.norm_head, dtype)

    def __call__(self, tokens_bt: jax.Array, segment_ids_bt: jax.Array | None = None,
                 positions_bt: jax.Array | None = None, cache: dict | None = None):
        if segment_ids_bt is None:
            segment_ids_bt = jnp.ones_like(tokens_bt)
        if positions_bt is None:
            positions_bt = jnp.broadcast_to(jnp.arange(tokens_bt.shape[1]), tokens_bt.shape)
        x_btd = self.embed(tokens_bt)
        x_btd, new_cache = self.layers(x_btd, cache, segment_ids_bt, positions_bt)
        hidden_btd = self.final_norm(x_btd)
        if self.cfg.tie_embeddings:
            logits_btv = self.embed.attend(hidden_btd)
        else:
            logits_btv = self.head(hidden_btd)
        aux = {"hidden_btd": hidden_btd}
        if cache is not None:
            aux["cache"] = new_cache
        return logits_btv, aux


def init_cache(cfg: ModelConfig, batch: int, max_len: int, dtype: Any = None) -> dict:
    """Zero KV cache [layers, batch, max_len, kv_heads, head_dim] for `k` and `v`."""
    dtype = dtype or cfg.compute_dtype
    shape = (cfg.num_layers, batch, max_len, cfg.kv_heads, cfg.dim_per_head)
    return {"k": jnp.zeros(shape, dtype), "v": jnp.zeros(shape, dtype)}


CACHE_AXES = ("layers", "act_batch", None, "act_kv_heads", None)
