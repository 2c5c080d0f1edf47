"""Synthetic multi-query associative recall (MQAR, Arora et al. 2023 "Zoology"), with
JRT prompting in token space (Arora et al. 2024, arXiv 2407.05483).

A row is ``n`` key-value pairs (the context), then ``q`` of the keys in random order, each
followed by its value::

    k1 v1 k2 v2 ... kn vn | [k1 v1 ... kn vn]  | qa va qb vb ... | pad ...
    context               | repeat (jrt=True)  | queries         |

Keys and values come from disjoint token ranges (keys ``[FIRST_ID, FIRST_ID + K)``,
values the ids above them); keys of a row are distinct, values are drawn with
replacement (no elimination shortcut). The loss mask is 1 only at the query keys, whose
next-token target is the value: recall accuracy is argmax == target there. ``jrt=True``
repeats the context before the queries, so a causal (or recurrent) model reads every
pair a second time knowing all of them. Rows are fixed-length ``seq_len`` batches in
kyx's layout (kyx/train/pretrain.py BATCH_AXES): one document per row (segment 1), padding
segment 0 at position 0.
"""
from __future__ import annotations

import dataclasses

import numpy as np

from kyx.errors import ConfigError

PAD_ID = 0
MASK_ID = 1     # reserved input-only id (JRT-RNN masked-LM input), never a target
FIRST_ID = 2    # keys start here


@dataclasses.dataclass(frozen=True)
class RecallSpec:
    pairs: int = 32
    queries: int = 16
    vocab_size: int = 256
    seq_len: int = 192
    jrt: bool = False

    @property
    def num_keys(self) -> int:
        return (self.vocab_size - FIRST_ID) // 2

    @property
    def context_len(self) -> int:
        """Tokens before the first query: the pairs, twice with ``jrt``."""
        return 2 * self.pairs * (2 if self.jrt else 1)

    @property
    def length(self) -> int:
        return self.context_len + 2 * self.queries

    def validate(self) -> "RecallSpec":
        if not 1 <= self.queries <= self.pairs:
            raise ConfigError(f"recall: queries={self.queries} must be in 1..pairs={self.pairs}")
        if self.pairs > self.num_keys:
            raise ConfigError(f"recall: {self.pairs} pairs need {self.pairs} distinct keys but "
                              f"vocab_size={self.vocab_size} has {self.num_keys}; raise it")
        if self.length > self.seq_len:
            raise ConfigError(f"recall: a row needs {self.length} tokens (context "
                              f"{self.context_len} + 2 x {self.queries} queries) > seq_len="
                              f"{self.seq_len}; raise seq_len")
        return self


def recall_batch(seed: int, rows: int, spec: RecallSpec) -> dict[str, np.ndarray]:
    """``rows`` rows from ``np.random.default_rng(seed)``: tokens / targets / segment_ids /
    positions (int32) and loss_mask (float32), each [rows, seq_len]. Same seed, same rows."""
    spec.validate()
    rng = np.random.default_rng(seed)
    n, q, k = spec.pairs, spec.queries, spec.num_keys
    keys = np.argsort(rng.random((rows, k)), axis=1)[:, :n] + FIRST_ID          # distinct
    values = rng.integers(0, spec.vocab_size - FIRST_ID - k, (rows, n)) + FIRST_ID + k
    context = np.stack([keys, values], axis=2).reshape(rows, 2 * n)
    pick = np.argsort(rng.random((rows, n)), axis=1)[:, :q]                    # which pairs
    qk = np.take_along_axis(keys, pick, axis=1)
    qv = np.take_along_axis(values, pick, axis=1)
    queries = np.stack([qk, qv], axis=2).reshape(rows, 2 * q)
    body = np.concatenate([context] * (2 if spec.jrt else 1) + [queries], axis=1)
    length = body.shape[1]
    tokens = np.full((rows, spec.seq_len), PAD_ID, np.int32)
    tokens[:, :length] = body
    targets = np.full_like(tokens, PAD_ID)
    targets[:, :-1] = tokens[:, 1:]
    loss_mask = np.zeros(tokens.shape, np.float32)
    loss_mask[:, spec.context_len:length:2] = 1.0   # each query key -> its value
    segment_ids = np.zeros_like(tokens)
    segment_ids[:, :length] = 1
    positions = np.where(segment_ids > 0, np.arange(spec.seq_len, dtype=np.int32), 0)
    return {"tokens": tokens, "targets": targets, "segment_ids": segment_ids,
            "positions": positions.astype(np.int32), "loss_mask": loss_mask}
