"""Building blocks: RMSNorm, embeddings, SwiGLU MLP and the output head (incl. NormHead).

Every parameter is created with logical axis names (see kyx/sharding.py) in its module's
``param_dtype`` (``model.param_dtype``, float32 by default) and cast to the compute dtype
(``model.dtype``) at use; norms run in float32 whatever their scale is stored in.
"""
from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from kyx import axes as ax
from kyx.model.swiglu import swiglu
from kyx.sharding import constrain


def param_with_axes(module: nn.Module, name: str, init, shape: Sequence[int],
                    axes: Sequence[str]) -> jax.Array:
    """A parameter annotated with logical axis names, stored in ``module.param_dtype``.

    The initial value is drawn in float32 and then rounded, so a 16-bit model starts
    from its float32 twin's weights (same seed) rounded to nearest."""
    dtype = jnp.dtype(module.param_dtype)

    def init_rounded(key, shape_, _dtype):
        return init(key, shape_, jnp.float32).astype(dtype)
    return module.param(name, nn.with_logical_partitioning(init_rounded, tuple(axes)),
                        tuple(shape), dtype)


def linear_head(module: nn.Module, name: str, hidden_btd: jax.Array,
                out_shape: Sequence[int] = (), out_axes: Sequence[str | None] = ()
                ) -> jax.Array:
    """A bias-free float32 projection of final hidden states ``[..., d]`` by the module's
    parameter ``name`` of shape ``[d, *out_shape]`` (normal(``module.cfg.init_std``)):
    the scalar value head of reward models / critics (``out_shape`` ()), ColBERT's token
    projection (``(128,)``). Exact-precision matmul, so TPU/GPU defaults do not round it."""
    h_btd = hidden_btd.astype(jnp.float32)
    w = param_with_axes(module, name, nn.initializers.normal(module.cfg.init_std),
                        (h_btd.shape[-1], *out_shape), (ax.EMBED, *out_axes))
    return jnp.tensordot(h_btd, w.astype(jnp.float32), axes=1,
                         precision=jax.lax.Precision.HIGHEST)


class RMSNorm(nn.Module):
    """Root-mean-square norm (no mean subtraction, no bias), computed in float32."""
    eps: float = 1e-6
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x_btd: jax.Array) -> jax.Array:
        scale_d = param_with_axes(self, "scale", nn.initializers.ones, (x_btd.shape[-1],),
                                  (ax.EMBED,))
        x32 = x_btd.astype(jnp.float32)
        x32 = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + self.eps)
        return (x32 * scale_d.astype(jnp.float32)).astype(self.dtype)


class Embed(nn.Module):
    """Token embedding table [vocab, d]; `attend` reuses it as a tied output head."""
    vocab_size: int
    d_model: int
    init_std: float
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    def setup(self):
        self.embedding = param_with_axes(
            self, "embedding", nn.initializers.normal(self.init_std),
            (self.vocab_size, self.d_model), (ax.VOCAB, ax.EMBED))

    def __call__(self, tokens_bt: jax.Array) -> jax.Array:
        x_btd = jnp.take(self.embedding, tokens_bt, axis=0).astype(self.dtype)
        return constrain(x_btd, ax.BTD)

    def attend(self, x_btd: jax.Array) -> jax.Array:
        w_vd = self.embedding.astype(self.dtype)
        return jnp.einsum("btd,vd->btv", x_btd, w_vd)


class SwiGLU(nn.Module):
    """FFN(x) = W_down (silu(W_gate x) * W_up x) (kyx/model/swiglu.py: hand-written VJP)."""
    hidden_dim: int
    init_std: float
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x_btd: jax.Array) -> jax.Array:
        d = x_btd.shape[-1]
        init = nn.initializers.normal(self.init_std)
        w_gate_df = param_with_axes(self, "wi_gate", init, (d, self.hidden_dim), (ax.EMBED, ax.MLP))
        w_up_df = param_with_axes(self, "wi_up", init, (d, self.hidden_dim), (ax.EMBED, ax.MLP))
        w_down_fd = param_with_axes(self, "wo", init, (self.hidden_dim, d), (ax.MLP, ax.EMBED))
        out_btd = swiglu(x_btd.astype(self.dtype), w_gate_df.astype(self.dtype),
                         w_up_df.astype(self.dtype), w_down_fd.astype(self.dtype))
        return constrain(out_btd, ax.BTD)


class OutputHead(nn.Module):
    """Untied output projection [vocab, d]; with `norm_head`, Baichuan 2's NormHead.

    NormHead divides each vocabulary row by its L2 norm in every forward pass (gradients
    flow through the normalisation), so logit magnitude is bounded by |h|.
    """
    vocab_size: int
    init_std: float
    norm_head: bool = False
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x_btd: jax.Array) -> jax.Array:
        w_vd = param_with_axes(self, "kernel", nn.initializers.normal(self.init_std),
                               (self.vocab_size, x_btd.shape[-1]), (ax.VOCAB, ax.EMBED))
        if self.norm_head:
            w_vd = normalize_rows(w_vd)
        logits_btv = jnp.einsum("btd,vd->btv", x_btd.astype(self.dtype), w_vd.astype(self.dtype))
        return constrain(logits_btv, (ax.ACT_BATCH, ax.ACT_LENGTH, ax.ACT_VOCAB))


def normalize_rows(w_vd: jax.Array, eps: float = 1e-12) -> jax.Array:
    """Row-wise L2 normalisation as torch F.normalize(dim=1): w / max(|w|, eps)."""
    norm_v1 = jnp.sqrt(jnp.sum(jnp.square(w_vd.astype(jnp.float32)), axis=-1, keepdims=True))
    return (w_vd / jnp.maximum(norm_v1, eps)).astype(w_vd.dtype)
