"""A kyx model as the set function of AND-OR interactions: v(x_T) for all 2^n player subsets.

Players are n token positions of one input (a context ending just before a target
token); x_T keeps the embeddings of the players in T and replaces the others' by a
baseline embedding (BASELINES: the pad/eos token's embedding, zeros, or the mean
embedding of the vocabulary). v(x_T) is the log-odds of the target,
z_y − logsumexp_{j≠y} z_j, at the last context position (the one predicting it).

All 2^n masked inputs are evaluated by ONE jitted call: the masks are split into chunks
of ``chunk`` rows (``lax.map`` over chunks, so memory holds one chunk's activations), each
chunk a batch sharded over the mesh's batch axes; the masked forward is
``kyx.analysis.sites.run`` with an ``embed_edit`` that swaps the players' rows.
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from kyx import axes as ax
from kyx import sharding
from kyx.analysis import interactions_math as im
from kyx.analysis import sites
from kyx.errors import KyxError
from kyx.registry import Registry


@dataclasses.dataclass(frozen=True)
class Sample:
    """One input: ``tokens_t`` / ``positions_t`` [L] the context, ``target`` the next
    token, ``players`` the n context positions (indices into tokens_t) that are masked."""
    tokens_t: np.ndarray
    positions_t: np.ndarray
    target: int
    players: tuple[int, ...]


def nearest_players(eligible_t: Sequence[bool], n: int) -> tuple[int, ...]:
    """The n eligible positions nearest before the target (the context's last n eligible
    ones), in increasing order; KyxError when the context has fewer than n."""
    idx = [i for i, ok in enumerate(eligible_t) if ok]
    if len(idx) < n:
        raise KyxError(f"the context has {len(idx)} eligible player tokens, fewer than "
                       f"--players {n}")
    return tuple(idx[-n:])


# ---------------------------------------------------------------- baselines
EmbedFn = Callable[[jax.Array], jax.Array]  # ids [k] -> embeddings [k, d]
BASELINES = Registry("interaction baseline")


@BASELINES.register("eos", doc="the embedding of the pad / end-of-sequence token")
def _eos(embed: EmbedFn, vocab_size: int, special_id: int) -> jax.Array:
    return embed(jnp.asarray([special_id]))[0]


@BASELINES.register("zeros", doc="the zero vector")
def _zeros(embed: EmbedFn, vocab_size: int, special_id: int) -> jax.Array:
    return jnp.zeros_like(embed(jnp.asarray([0]))[0])


@BASELINES.register("mean", doc="the mean embedding over the vocabulary")
def _mean(embed: EmbedFn, vocab_size: int, special_id: int) -> jax.Array:
    return embed(jnp.arange(vocab_size)).mean(axis=0)


def baseline_embedding(module, params, name: str, special_id: int) -> jax.Array:
    """[d] the baseline ``name`` (a BASELINES entry) of this model's embeddings."""
    embed = lambda ids: module.apply({"params": params}, ids[None],  # noqa: E731
                                     method=lambda m, t: m.embed(t))[0]
    return BASELINES.get(name)(embed, module.cfg.vocab_size, special_id)


# ------------------------------------------------------------------ values
def log_odds(logits_bv: jax.Array, target) -> jax.Array:
    """[B] z_y − logsumexp_{j≠y} z_j in float32."""
    z = logits_bv.astype(jnp.float32)
    others = jnp.where(jnp.arange(z.shape[-1]) == target, -jnp.inf, z)
    return z[:, target] - jax.nn.logsumexp(others, axis=-1)


def replace_masks(n: int, players: Sequence[int], length: int) -> np.ndarray:
    """[2^n, L] bool: row T is True at the players NOT in T (their embeddings replaced)."""
    out = np.zeros((1 << n, length), bool)
    out[:, list(players)] = ~im.player_masks(n)
    return out


@functools.partial(jax.jit, static_argnums=(0,))
def _values(module, params, tokens_t, positions_t, target, replace_kcl, baseline_d):
    """[K*C] v of every row of the chunked masks ``replace_kcl`` [K, C, L]."""
    def chunk(replace_cl):
        c = replace_cl.shape[0]
        tokens_bt = jnp.broadcast_to(tokens_t, (c, tokens_t.shape[0]))
        positions_bt = jnp.broadcast_to(positions_t, (c, positions_t.shape[0]))
        edit = lambda x_btd: jnp.where(replace_cl[..., None],  # noqa: E731
                                       baseline_d.astype(x_btd.dtype), x_btd)
        logits_btv, _ = sites.run(module, params, tokens_bt, None, positions_bt,
                                  embed_edit=edit)
        return log_odds(logits_btv[:, -1], target)

    return jax.lax.map(chunk, replace_kcl).reshape(-1)


def masked_values(module, params, sample: Sample, baseline_d, *, mesh=None, rules="dp",
                  chunk: int = 256) -> np.ndarray:
    """[2^n] float64 v(x_T) of every player subset T (bitmask order, interactions_math)."""
    n = len(sample.players)
    if n > im.MAX_PLAYERS:
        raise KyxError(f"{n} players means 2^{n} forward passes; at most {im.MAX_PLAYERS}")
    mesh = mesh or sharding.single_device_mesh()
    rules = sharding.get_rules(rules)
    size = 1 << n
    c = min(size, max(chunk, sharding.batch_divisor(mesh, rules)))
    replace = replace_masks(n, sample.players, len(sample.tokens_t))
    replace = replace.reshape(size // c, c, -1)
    everywhere = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
    put = lambda x: jax.device_put(x, everywhere)  # noqa: E731
    with sharding.use_mesh(mesh, rules):
        spec = sharding.named_sharding((None, *ax.BT), mesh, rules, replace.shape)
        out = _values(module, params, put(np.asarray(sample.tokens_t, np.int32)),
                      put(np.asarray(sample.positions_t, np.int32)), int(sample.target),
                      jax.device_put(replace, spec), put(baseline_d))
    return np.asarray(jax.device_get(out), np.float64)
