"""Harsanyi AND and OR interactions of a set function over n players (pure array math).

A set function is an array ``v_m`` of length ``2**n`` indexed by bitmask: entry ``T``
holds v(x_T), the output on the input that keeps the players whose bits are set in ``T``
(player ``j`` is bit ``j``) and masks the others. Entry 0 is the empty set, entry
``2**n - 1`` the full set N; the complement N\\T of index ``T`` is ``2**n - 1 - T``, i.e.
the array reversed.

Transforms (Zhang, Ren et al. arXiv 2405.10262; ../shared/ALGORITHMS.md §10b):

- AND: I_and(S) = Σ_{T⊆S} (-1)^{|S|-|T|} v_and(x_T)  (the Möbius transform of v_and);
- OR:  I_or(S) = -Σ_{T⊆S} (-1)^{|S|-|T|} v_or(x_{N\\T}) for S ≠ ∅, and I_or(∅) = v_or(x_∅);
- universal matching: v(x_T) = I_and(∅) + I_or(∅) + Σ_{∅≠S⊆T} I_and(S) + Σ_{S∩T≠∅} I_or(S),
  where I_and(∅) + I_or(∅) = v(x_∅) when v = v_and + v_or.

Both transforms use the fast subset (Möbius) transform: n butterfly passes over the
``(2,) * n`` view of the array, O(n 2^n) work and memory, never a 2^n x 2^n matrix.
Written with ``jax.numpy`` so the same code runs inside the jitted, differentiated fit
(interactions_fit.py) and on numpy inputs.
"""
from __future__ import annotations

import jax.numpy as jnp
import numpy as np

MAX_PLAYERS = 20  # 2^20 masked forwards is already far beyond what the method is for


def num_players(v_m) -> int:
    """n of a set function of length 2^n (ValueError otherwise)."""
    size = int(v_m.shape[-1])
    n = size.bit_length() - 1
    if size < 1 or 1 << n != size:
        raise ValueError(f"a set function over n players has 2^n entries; got {size}")
    return n


def player_masks(n: int) -> np.ndarray:
    """[2^n, n] bool: row T says which players subset T keeps (bit j = player j)."""
    idx = np.arange(1 << n)
    return ((idx[:, None] >> np.arange(n)[None, :]) & 1).astype(bool)


def orders(n: int) -> np.ndarray:
    """[2^n] int: |S| of every subset index S."""
    return player_masks(n).sum(axis=1)


def _butterfly(x_m, n: int, combine):
    """Apply ``combine(lo, hi) -> new hi`` along every bit of the subset index."""
    x = x_m.reshape(x_m.shape[:-1] + (2,) * n)
    lead = x_m.ndim - 1
    for axis in range(lead, lead + n):
        lo = jnp.take(x, 0, axis=axis)
        hi = jnp.take(x, 1, axis=axis)
        x = jnp.stack([lo, combine(lo, hi)], axis=axis)
    return x.reshape(x_m.shape)


def mobius(v_m):
    """Möbius transform m(S) = Σ_{T⊆S} (-1)^{|S|-|T|} v(T) over the last axis."""
    return _butterfly(jnp.asarray(v_m), num_players(v_m), lambda lo, hi: hi - lo)


def zeta(m_m):
    """Inverse of ``mobius``: v(T) = Σ_{S⊆T} m(S) over the last axis."""
    return _butterfly(jnp.asarray(m_m), num_players(m_m), lambda lo, hi: hi + lo)


def and_interactions(v_and_m):
    """I_and(S) for every subset S of the players: the Möbius transform of v_and."""
    return mobius(v_and_m)


def or_interactions(v_or_m):
    """I_or(S) = -Σ_{T⊆S} (-1)^{|S|-|T|} v_or(x_{N\\T}) for S ≠ ∅, I_or(∅) = v_or(x_∅)."""
    v_or_m = jnp.asarray(v_or_m)
    out = -mobius(v_or_m[..., ::-1])  # entry T of the reversed array is v_or(x_{N\T})
    return out.at[..., 0].set(v_or_m[..., 0])


def and_or_interactions(v_m, gamma_m=0.0, q_m=0.0):
    """(I_and, I_or) of v split as v_and = ½(v+q)+γ, v_or = ½(v+q)-γ (γ = q = 0: even split)."""
    half = 0.5 * (jnp.asarray(v_m) + q_m)
    return and_interactions(half + gamma_m), or_interactions(half - gamma_m)


def reconstruct(i_and_m, i_or_m):
    """v(x_T) for every T from the interactions, by universal matching:
    Σ_{S⊆T} I_and(S) + I_or(∅) + Σ_{S∩T≠∅, S≠∅} I_or(S)."""
    i_and_m, i_or_m = jnp.asarray(i_and_m), jnp.asarray(i_or_m)
    from_and = zeta(i_and_m)
    or_rest = i_or_m.at[..., 0].set(0.0)
    # Σ over S ≠ ∅ meeting T = (Σ over all S ≠ ∅) - (Σ over S ≠ ∅ inside N\T)
    inside_complement = zeta(or_rest)[..., ::-1]
    from_or = i_or_m[..., :1] + or_rest.sum(axis=-1, keepdims=True) - inside_complement
    return from_and + from_or


def universal_matching_error(v_m, i_and_m, i_or_m) -> float:
    """max_T |v(x_T) - the universal-matching sum of the interactions at T|."""
    return float(jnp.max(jnp.abs(jnp.asarray(v_m) - reconstruct(i_and_m, i_or_m))))
