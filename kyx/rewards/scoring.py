"""Batched, sharded scoring of token sequences with a frozen model (reward model, judge).

Sequences are right-padded into fixed ``[batch_size, width]`` blocks (width rounded up to
a multiple of 64, so a run compiles a handful of shapes) and scored by one jitted
function with the params' shardings; rows beyond the real ones are padding and dropped.
"""
from __future__ import annotations

from typing import Callable, Sequence

import jax
import numpy as np

from kyx import axes as ax
from kyx import sharding


class SequenceScorer:
    """``scorer(seqs) -> float32 [N]`` for token-id sequences, ``score_fn(params, tokens_bt,
    segment_ids_bt) -> [B]`` jitted on ``mesh``."""

    def __init__(self, score_fn: Callable, params, mesh, rules, batch_size: int, pad_id: int):
        self.params, self.batch_size, self.pad_id = params, batch_size, pad_id
        self.mesh = mesh or sharding.single_device_mesh()
        self.rules = sharding.get_rules(rules or "dp")
        div = sharding.batch_divisor(self.mesh, self.rules)
        self.batch_size = -(-batch_size // div) * div  # a multiple of the batch shards
        self.batch_sh = sharding.named_sharding(ax.BT, self.mesh, self.rules)
        p_sh = jax.tree.map(lambda x: x.sharding, params)
        self._fn = jax.jit(score_fn, in_shardings=(p_sh, self.batch_sh, self.batch_sh))

    def __call__(self, seqs: Sequence[Sequence[int]]) -> np.ndarray:
        out = np.zeros(len(seqs), np.float32)
        for start in range(0, len(seqs), self.batch_size):
            chunk = seqs[start:start + self.batch_size]
            width = -(-max(len(s) for s in chunk) // 64) * 64
            tokens = np.full((self.batch_size, width), self.pad_id, np.int32)
            segs = np.zeros((self.batch_size, width), np.int32)
            for i, s in enumerate(chunk):
                tokens[i, :len(s)], segs[i, :len(s)] = s, 1
            with sharding.use_mesh(self.mesh, self.rules):
                values = self._fn(self.params, jax.device_put(tokens, self.batch_sh),
                                  jax.device_put(segs, self.batch_sh))
            out[start:start + len(chunk)] = np.asarray(jax.device_get(values))[:len(chunk)]
        return out


def left_cut(ids: Sequence[int], max_len: int, keep_first: int = 1) -> list[int]:
    """``ids`` cut to ``max_len`` from the left, keeping the first ``keep_first`` (BOS)."""
    ids = list(ids)
    if len(ids) <= max_len:
        return ids
    return ids[:keep_first] + ids[len(ids) - (max_len - keep_first):]
