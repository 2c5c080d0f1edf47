"""Prefix linear attention ("pla") and causal linear attention ("linear") as a layer.

The math is kyx/model/linear_attention.py. Projections: q and k to ``[H, F]`` (F =
``model.pla_feature_dim``, the Taylor map's input), v to ``[H, head_dim]``; "pla" adds the
encoder projections ``wk_enc [H, F]`` and ``wv_enc [H, head_dim]`` read over the prefix
(tokens at position < ``model.pla_prefix_len`` of their document); no GQA and no
position encoding (order comes from causality). phi and the state are float32 whatever
``model.dtype`` is; the output is cast back.

Training (no cache): packed rows, the state restarting at every document, padding
(segment 0) adding nothing. Cached decoding: the cache is the recurrent state
``{"s": [B, H, P, D], "z": [B, H, P]}`` of the row's one document (rows are single
prompts, right-padded with segment 0), constant in the context length. A cached call
over T new tokens (the prompt in prefill, one token per decode step) reads the state
as carried in, computes its outputs as training does, and adds every new token's causal
key, and its encoder key when it lies in the prefix, to the state. Decoding therefore
equals the full forward pass whenever the prompt covers the M-token prefix (a prompt
shorter than M: tokens decoded inside the prefix cannot see later prefix keys; every
token from position M on still sees the whole prefix).
"""
from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from kyx import axes as ax
from kyx.model import linear_attention as la
from kyx.model.attention import project_out
from kyx.model.layers import param_with_axes
from kyx.sharding import constrain


class LinearAttention(nn.Module):
    num_heads: int
    head_dim: int
    feature_dim: int = 16
    prefix_len: int = 0            # M; used only with `encoder`
    encoder: bool = True           # True: PLA (k_enc / v_enc), False: causal linear attention
    chunk: int = 64
    init_std: float = 0.02
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x_btd: jax.Array, segment_ids_bt: jax.Array, positions_bt: jax.Array,
                 cache: dict | None = None, prev_probs=None, reuse=None):
        """``(out_btd, new_cache, None)``: Attention's interface (no attention reuse)."""
        if prev_probs is not None:
            raise ValueError("attention-weight reuse needs softmax attention")
        d = x_btd.shape[-1]
        h, f, hd = self.num_heads, self.feature_dim, self.head_dim
        init = nn.initializers.normal(self.init_std)
        w = lambda name, out: param_with_axes(  # noqa: E731
            self, name, init, (d, h, out), (ax.EMBED, ax.HEADS, ax.HEAD_DIM))
        wq, wk, wv = w("wq", f), w("wk", f), w("wv", hd)
        if self.encoder:
            wk_enc, wv_enc = w("wk_enc", f), w("wv_enc", hd)
        wo = param_with_axes(self, "wo", init, (h, hd, d), (ax.HEADS, ax.HEAD_DIM, ax.EMBED))
        x = x_btd.astype(self.dtype)

        def project(w_dhk):
            y_bthk = jnp.einsum("btd,dhk->bthk", x, w_dhk.astype(self.dtype))
            return constrain(y_bthk, la.FEATURE_AXES).astype(jnp.float32)

        def features(x_bthf):
            return constrain(la.taylor_features(x_bthf), la.FEATURE_AXES)

        valid_bt = segment_ids_bt > 0
        phi_q_bthp = features(project(wq))
        phi_k_bthp = features(project(wk)) * valid_bt[:, :, None, None]
        v_bthd = project(wv)
        if cache is None:
            segs_bt, state, state_seg_b = segment_ids_bt, None, None
        else:   # one document per row: the cached state belongs to its valid tokens
            segs_bt = valid_bt.astype(jnp.int32)
            state, state_seg_b = (cache["s"], cache["z"]), jnp.ones(x.shape[:1], jnp.int32)
        encoder = None
        if self.encoder:
            prefix_bt = valid_bt & (positions_bt < self.prefix_len)
            phi_ke_bthp = features(project(wk_enc)) * prefix_bt[:, :, None, None]
            ve_bthd = project(wv_enc)
            encoder = (phi_ke_bthp, ve_bthd)
        y_bthd = la.attend(phi_q_bthp, phi_k_bthp, v_bthd, segs_bt, self.chunk, encoder,
                           state, state_seg_b)
        out_btd = project_out(y_bthd, wo, self.dtype)
        if cache is None:
            return out_btd, None, None
        s_bhpd, z_bhp = la.key_state(phi_k_bthp, v_bthd, valid_bt)
        if self.encoder:
            se_bhpd, ze_bhp = la.key_state(phi_ke_bthp, ve_bthd, prefix_bt)
            s_bhpd, z_bhp = s_bhpd + se_bhpd, z_bhp + ze_bhp
        new_cache = {"s": constrain(cache["s"] + s_bhpd, la.STATE_AXES),
                     "z": constrain(cache["z"] + z_bhp, la.STATE_AXES[:3])}
        return out_btd, new_cache, None
