"""i.i.d. training rows: a seeded global permutation of fixed-length windows of a token cache.

The cache's token stream (documents as BOS + ids + EOS, back to back) is cut into
``num_windows = tokens // seq_len`` windows ``[w * seq_len, (w + 1) * seq_len)`` (the last
partial window is dropped). Epoch ``e`` visits every window once, in the order
``window_order(seed, e, num_windows)``; global row ``r`` is window
``order(r // num_windows)[r % num_windows]``, and global batch ``k`` is rows
``[k * B, (k + 1) * B)`` (batches run on across epoch ends). Process ``p`` of ``n``
reads only rows ``[p * B / n, (p + 1) * B / n)`` of each global batch, so the stream does
not depend on the number of processes and its state is two integers (epoch, index of the
next row in the epoch).

Rows follow the packing convention of kyx/data/pipeline.py: ``segment_ids`` 1, 2, ...
per document piece in the row, ``positions`` restarting at 0 per piece, no target across
a document boundary or for the row's last token. A window that starts mid-document
begins with a continuation piece (segment 1, positions from 0, first token not BOS),
exactly like a document that the packing pipeline continues into the next row.
"""
from __future__ import annotations

import functools
from typing import Any

import numpy as np

from kyx.data.encode import next_token_targets
from kyx.data.token_cache import TokenCache
from kyx.errors import DataError


@functools.lru_cache(maxsize=2)
def window_order(seed: int, epoch: int, num_windows: int) -> np.ndarray:
    """The window order of ``epoch``: a permutation drawn from (seed, epoch) alone."""
    return np.random.default_rng([seed, epoch]).permutation(num_windows)


def segments(doc_starts: np.ndarray, start: int, length: int) -> tuple[np.ndarray, np.ndarray]:
    """(segment_ids, positions) of the window ``[start, start + length)`` of a stream whose
    documents begin at the sorted offsets ``doc_starts``."""
    lo = np.searchsorted(doc_starts, start, "right")
    hi = np.searchsorted(doc_starts, start + length, "left")
    inside = doc_starts[lo:hi] - start  # document starts after the window's first token
    begins = np.zeros(length, bool)
    begins[inside] = True
    segment_ids = (1 + np.cumsum(begins)).astype(np.int32)
    idx = np.arange(length)
    positions = idx - np.maximum.accumulate(np.where(begins, idx, 0))
    return segment_ids, positions.astype(np.int32)


class WindowIterator:
    """Batches of i.i.d. windows; ``get_state`` / ``set_state`` give exact resume."""

    def __init__(self, cache: TokenCache, seq_len: int, batch_size: int, seed: int, *,
                 pad_id: int, num_epochs: int = 0, process_index: int = 0,
                 process_count: int = 1, corpus_stats: dict | None = None):
        self.cache, self.seq_len, self.batch_size, self.seed = cache, seq_len, batch_size, seed
        self.pad_id, self.num_epochs = pad_id, num_epochs
        self.num_windows = cache.num_tokens // seq_len
        if self.num_windows < batch_size:
            raise DataError(f"The token cache {cache.directory} holds {cache.num_tokens} tokens, "
                            f"{self.num_windows} windows of {seq_len}: fewer than one batch of "
                            f"{batch_size}; use a larger corpus or smaller data.seq_len / "
                            f"data.batch_size.")
        local = batch_size // process_count
        self.local_rows = (process_index * local, (process_index + 1) * local)
        self._corpus_stats = dict(corpus_stats or {})
        self.row = 0  # next global row

    def __iter__(self):
        return self

    def window(self, row: int) -> int:
        """The window index of global row ``row``."""
        epoch, index = divmod(row, self.num_windows)
        return int(window_order(self.seed, epoch, self.num_windows)[index])

    def rows(self, windows) -> dict[str, np.ndarray]:
        """A batch dict of the given windows (in order)."""
        n, L = len(windows), self.seq_len
        tokens = np.empty((n, L), np.int32)
        segment_ids = np.empty((n, L), np.int32)
        positions = np.empty((n, L), np.int32)
        for i, w in enumerate(windows):
            start = int(w) * L
            tokens[i] = self.cache.read(start, L)
            segment_ids[i], positions[i] = segments(self.cache.doc_starts, start, L)
        targets, loss_mask = next_token_targets(tokens, segment_ids, self.pad_id)
        return {"tokens": tokens, "targets": targets, "segment_ids": segment_ids,
                "positions": positions, "loss_mask": loss_mask}

    def __next__(self) -> dict[str, np.ndarray]:
        end = self.row + self.batch_size
        if self.num_epochs and end > self.num_epochs * self.num_windows:
            raise StopIteration
        a, b = self.local_rows
        batch = self.rows([self.window(r) for r in range(self.row + a, self.row + b)])
        self.row = end
        return batch

    def get_state(self) -> dict[str, Any]:
        epoch, index = divmod(self.row, self.num_windows)
        return {"sampling": "iid", "epoch": epoch, "index": index,
                "num_windows": self.num_windows, "seed": self.seed}

    def set_state(self, state: dict[str, Any]) -> None:
        if state.get("sampling") != "iid" or state.get("num_windows") != self.num_windows:
            raise DataError(
                f"The checkpoint's data state {state} is not of this data (i.i.d. windows, "
                f"{self.num_windows} windows of {self.seq_len} tokens): data.sampling, "
                f"data.seq_len or the corpus changed since it was saved.")
        self.row = int(state["epoch"]) * self.num_windows + int(state["index"])

    def close(self) -> None:
        pass

    @property
    def stats(self) -> dict[str, Any]:
        """{'corpus': build-time stats, 'cache': token-cache totals, 'skipped_while_reading':
        malformed records the cache build skipped, by reason}."""
        info = self.cache.info
        return {"corpus": self._corpus_stats,
                "cache": {k: info[k] for k in ("documents", "tokens", "build_tokens_per_s")},
                "skipped_while_reading": dict(info["skipped"])}
