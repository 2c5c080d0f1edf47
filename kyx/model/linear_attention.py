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

Packed rows (several documents per row, ``segment_ids`` 0 = padding): ``chunked`` takes
segment ids; a query only meets keys of its own document, and the state carried across
blocks is the state of the document of the previous block's last token (a document that
spans blocks keeps it, a new one starts from zero). The encoder term of a packed row (all
prefix keys of the query's own document, before and after it) is a forward inclusive scan
plus a reverse exclusive one (``encoder_sums``).

Shapes: features ``[B, T, H, P]``, values ``[B, T, H, D]``; the state is ``S [B, H, P, D]``
and ``z [B, H, P]`` with P = 1 + F + F².
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from kyx import axes as ax
from kyx.sharding import constrain

EPS = 1e-6
STATE_AXES = (ax.ACT_BATCH, ax.ACT_HEADS, None, None)   # S [B, H, P, D] (z drops the last)
FEATURE_AXES = (ax.ACT_BATCH, ax.ACT_LENGTH, ax.ACT_HEADS, None)


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
    return key_state(taylor_features(k_enc_bthf), v_enc_bthd, prefix_mask_bt)


def key_state(phi_k_bthp: jax.Array, v_bthd: jax.Array, mask_bt: jax.Array
              ) -> tuple[jax.Array, jax.Array]:
    """(sum_j phi(k_j) v_j^T, sum_j phi(k_j)) over the positions where ``mask_bt`` is true."""
    phi_bthp = phi_k_bthp * mask_bt[:, :, None, None].astype(phi_k_bthp.dtype)
    s = jnp.einsum("bthp,bthd->bhpd", phi_bthp, v_bthd.astype(phi_bthp.dtype))
    return s, jnp.sum(phi_bthp, axis=1)


def zero_state(batch: int, heads: int, feature_dim: int, head_dim: int, dtype=jnp.float32):
    p = num_features(feature_dim)
    return jnp.zeros((batch, heads, p, head_dim), dtype), jnp.zeros((batch, heads, p), dtype)


def chunked(phi_q_bthp: jax.Array, phi_k_bthp: jax.Array, v_bthd: jax.Array,
            segment_ids_bt: jax.Array, chunk: int = 64, state=None, state_segment_b=None,
            strict: bool = False) -> tuple[jax.Array, jax.Array]:
    """Unnormalised causal linear attention over packed documents: ``(num [B, T, H, D],
    den [B, T, H])`` with num_i = sum_j phi(q_i).phi(k_j) v_j and den_i = sum_j
    phi(q_i).phi(k_j) over the keys j <= i (j < i with ``strict``) of i's document
    (equal ``segment_ids``). Keys are taken as given: zero the features of keys that must
    not count (padding) before the call. ``state`` (S, z), if given, is a state carried
    in from before the row; it is read by the queries of segment ``state_segment_b``.

    Blocks of ``chunk`` tokens (T is padded up to a multiple; padded keys are zero): within
    a block a masked [chunk, chunk] product, across blocks the carried state."""
    b, t, h, p = phi_q_bthp.shape
    d = v_bthd.shape[-1]
    chunk = max(1, min(chunk, t))
    n = -(-t // chunk)
    pad = n * chunk - t
    pad_to = lambda a: jnp.pad(a, [(0, 0), (0, pad)] + [(0, 0)] * (a.ndim - 2))  # noqa: E731
    blocks = lambda a: jnp.moveaxis(  # noqa: E731
        pad_to(a).reshape(b, n, chunk, *a.shape[2:]), 1, 0)
    dtype = phi_q_bthp.dtype
    mask_cc = jnp.tril(jnp.ones((chunk, chunk), bool), -1 if strict else 0)
    if state is None:
        state = (jnp.zeros((b, h, p, d), dtype), jnp.zeros((b, h, p), dtype))
        state_segment_b = jnp.full((b,), -1, segment_ids_bt.dtype)

    def block(carry, xs):
        s_bhpd, z_bhp, seg_b = carry
        pq, pk, vv, seg_bc = xs                             # [B, C, H, P|D], [B, C]
        same_bcc = (seg_bc[:, :, None] == seg_bc[:, None, :]) & mask_cc
        a_bhij = jnp.einsum("bihp,bjhp->bhij", pq, pk) * same_bcc[:, None].astype(dtype)
        carried_bc = (seg_bc == seg_b[:, None]).astype(dtype)[:, :, None]
        num = (jnp.einsum("bihp,bhpd->bihd", pq, s_bhpd) * carried_bc[..., None]
               + jnp.einsum("bhij,bjhd->bihd", a_bhij, vv))
        den = jnp.einsum("bihp,bhp->bih", pq, z_bhp) * carried_bc + jnp.einsum("bhij->bih", a_bhij)
        last_b = seg_bc[:, -1]
        keep_b = (last_b == seg_b).astype(dtype)
        in_last_bc = (seg_bc == last_b[:, None]).astype(dtype)
        pk_last = pk * in_last_bc[:, :, None, None]
        s_bhpd = (s_bhpd * keep_b[:, None, None, None]
                  + jnp.einsum("bjhp,bjhd->bhpd", pk_last, vv))
        z_bhp = z_bhp * keep_b[:, None, None] + jnp.sum(pk_last, axis=1)
        s_bhpd = constrain(s_bhpd, STATE_AXES)
        return (s_bhpd, z_bhp, last_b), (num, den)

    carry = (state[0].astype(dtype), state[1].astype(dtype), state_segment_b)
    xs = (blocks(phi_q_bthp), blocks(phi_k_bthp), blocks(v_bthd.astype(dtype)),
          blocks(segment_ids_bt))
    _, (num, den) = jax.lax.scan(block, carry, xs)
    num_bthd = jnp.moveaxis(num, 0, 1).reshape(b, n * chunk, h, d)[:, :t]
    den_bth = jnp.moveaxis(den, 0, 1).reshape(b, n * chunk, h)[:, :t]
    return num_bthd, den_bth


def encoder_sums(phi_q_bthp: jax.Array, phi_k_enc_bthp: jax.Array, v_enc_bthd: jax.Array,
                 segment_ids_bt: jax.Array, chunk: int = 64) -> tuple[jax.Array, jax.Array]:
    """(num, den) of the encoder term: every key of the query's document, before and after
    it (mask the encoder key features to the prefix first). A forward inclusive scan plus
    a reverse exclusive scan (the time axis flipped, strictly-lower intra-block mask)."""
    num_f, den_f = chunked(phi_q_bthp, phi_k_enc_bthp, v_enc_bthd, segment_ids_bt, chunk)
    flip = lambda a: jnp.flip(a, axis=1)  # noqa: E731
    num_r, den_r = chunked(flip(phi_q_bthp), flip(phi_k_enc_bthp), flip(v_enc_bthd),
                           flip(segment_ids_bt), chunk, strict=True)
    return num_f + flip(num_r), den_f + flip(den_r)


def attend(phi_q_bthp: jax.Array, phi_k_bthp: jax.Array, v_bthd: jax.Array,
           segment_ids_bt: jax.Array, chunk: int = 64, encoder=None, state=None,
           state_segment_b=None, eps: float = EPS) -> jax.Array:
    """y [B, T, H, D] of causal linear attention over packed documents, plus, with
    ``encoder = (phi_k_enc, v_enc)`` (key features already zeroed outside the prefix), the
    PLA encoder term; ``state`` / ``state_segment_b`` as in ``chunked``:

        y_i = (num_causal + num_enc) / (den_causal + den_enc + eps)."""
    num_bthd, den_bth = chunked(phi_q_bthp, phi_k_bthp, v_bthd, segment_ids_bt, chunk,
                                state, state_segment_b)
    if encoder is not None:
        num_e, den_e = encoder_sums(phi_q_bthp, *encoder, segment_ids_bt, chunk)
        num_bthd, den_bth = num_bthd + num_e, den_bth + den_e
    return num_bthd / (den_bth[..., None] + eps)


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
