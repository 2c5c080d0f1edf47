"""Prefix linear attention (PLA, JRT-RNN; Arora et al. 2024, arXiv 2407.05483): the math.

Causal linear attention with the 2nd-order Taylor feature map of exp,

    phi(x) = [1, x / d**0.25, vec(x ⊗ x) / (sqrt(2) * sqrt(d))],   phi(q).phi(k) ≈ exp(q.k / sqrt(d)),

(feature dim d = 16 gives 1 + 16 + 256 = 273 features per head), plus an *encoder* term
over the first M prefix tokens, read by every position (non-causal inside the prefix):

    y_i = phi(q_i)^T [S_enc + sum_{j<=i} phi(k_j) v_j^T] / (phi(q_i)^T [z_enc + sum_{j<=i} phi(k_j)] + eps)

with S_enc = sum_{j<M} phi(k^e_j) v^e_j^T and z_enc = sum_{j<M} phi(k^e_j). Everything is
additive, so PLA is causal linear attention whose state starts at (S_enc, z_enc) instead
of zero: the same recurrence serves training (``chunked``: blocks of ``chunk`` queries do
their intra-block part as a masked matmul and carry the state across blocks) and decoding
(``step``: one token updates the state; memory is constant in the context length).

Shapes: queries/keys ``[B, T, H, F]`` (F = feature dim), values ``[B, T, H, D]``; the
state is ``S [B, H, P, D]`` and ``z [B, H, P]`` with P = 1 + F + F². Rows are single
sequences (no document packing: a state cannot restart mid-row without a scan per token).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

EPS = 1e-6


def num_features(feature_dim: int) -> int:
    """P = 1 + F + F^2: the state's feature count per head (273 at F = 16)."""
    return 1 + feature_dim + feature_dim * feature_dim


def taylor_features(x_f: jax.Array) -> jax.Array:
    """phi(x) over the last axis: [..., F] -> [..., 1 + F + F^2], in x's dtype."""
    f = x_f.shape[-1]
    ones = jnp.ones(x_f.shape[:-1] + (1,), x_f.dtype)
    outer = (x_f[..., :, None] * x_f[..., None, :]).reshape(*x_f.shape[:-1], f * f)
    return jnp.concatenate([ones, x_f / f ** 0.25, outer / (2 ** 0.5 * f ** 0.5)], axis=-1)


def prefix_state(k_enc_bthf: jax.Array, v_enc_bthd: jax.Array, prefix_mask_bt: jax.Array
                 ) -> tuple[jax.Array, jax.Array]:
    """(S_enc [B, H, P, D], z_enc [B, H, P]) over the positions where ``prefix_mask_bt``
    is true (the first M tokens; per row, so left-padded prompts keep their pads out)."""
    phi_bthp = taylor_features(k_enc_bthf) * prefix_mask_bt[:, :, None, None]
    s = jnp.einsum("bthp,bthd->bhpd", phi_bthp, v_enc_bthd.astype(phi_bthp.dtype))
    return s, jnp.sum(phi_bthp, axis=1)


def zero_state(batch: int, heads: int, feature_dim: int, head_dim: int, dtype=jnp.float32):
    p = num_features(feature_dim)
    return jnp.zeros((batch, heads, p, head_dim), dtype), jnp.zeros((batch, heads, p), dtype)


def chunked(q_bthf: jax.Array, k_bthf: jax.Array, v_bthd: jax.Array, state, chunk: int = 64,
            eps: float = EPS) -> tuple[jax.Array, tuple[jax.Array, jax.Array]]:
    """(y_bthd, final state): causal linear attention from ``state`` (e.g. prefix_state's,
    or zero_state's for plain linear attention) over T tokens in blocks of ``chunk``
    (T is padded up to a multiple of ``chunk``; padded keys add nothing)."""
    b, t, h, _ = q_bthf.shape
    n = -(-t // chunk)
    pad = n * chunk - t
    keep_t = jnp.arange(n * chunk) < t
    pad_to = lambda a: jnp.pad(a, ((0, 0), (0, pad), (0, 0), (0, 0)))  # noqa: E731
    phi_q = taylor_features(pad_to(q_bthf))
    phi_k = taylor_features(pad_to(k_bthf)) * keep_t[None, :, None, None]
    v = pad_to(v_bthd).astype(phi_q.dtype)
    blocks = lambda a: jnp.moveaxis(a.reshape(b, n, chunk, *a.shape[2:]), 1, 0)  # noqa: E731
    causal_cc = jnp.tril(jnp.ones((chunk, chunk), bool))

    def block(carry, xs):
        s_bhpd, z_bhp = carry
        pq, pk, vv = xs                                     # [B, C, H, P|D]
        a_bhcc = jnp.einsum("bihp,bjhp->bhij", pq, pk) * causal_cc
        num = jnp.einsum("bihp,bhpd->bihd", pq, s_bhpd) + jnp.einsum("bhij,bjhd->bihd", a_bhcc, vv)
        den = jnp.einsum("bihp,bhp->bih", pq, z_bhp) + jnp.einsum("bhij->bih", a_bhcc)
        s_bhpd = s_bhpd + jnp.einsum("bjhp,bjhd->bhpd", pk, vv)
        z_bhp = z_bhp + jnp.sum(pk, axis=1)
        return (s_bhpd, z_bhp), num / (den[..., None] + eps)

    state = tuple(x.astype(phi_q.dtype) for x in state)
    final, y = jax.lax.scan(block, state, (blocks(phi_q), blocks(phi_k), blocks(v)))
    y_bthd = jnp.moveaxis(y, 0, 1).reshape(b, n * chunk, h, -1)[:, :t]
    return y_bthd.astype(v_bthd.dtype), final


def step(q_bhf: jax.Array, k_bhf: jax.Array, v_bhd: jax.Array, state, eps: float = EPS):
    """One decoding token: (y_bhd, new state); the state absorbs the token first, so the
    output equals ``chunked``'s at that position."""
    s_bhpd, z_bhp = state
    phi_q, phi_k = taylor_features(q_bhf), taylor_features(k_bhf)
    s_bhpd = s_bhpd + phi_k[..., :, None] * v_bhd[..., None, :].astype(phi_k.dtype)
    z_bhp = z_bhp + phi_k
    num = jnp.einsum("bhp,bhpd->bhd", phi_q, s_bhpd)
    den = jnp.einsum("bhp,bhp->bh", phi_q, z_bhp)
    return (num / (den[..., None] + eps)).astype(v_bhd.dtype), (s_bhpd, z_bhp)
