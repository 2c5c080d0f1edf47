"""Training rows as a seeded global permutation of fixed-length windows of a token cache.

The cache's token stream (documents as BOS + ids + EOS, back to back) is cut into
``num_windows = tokens // seq_len`` windows ``[w * seq_len, (w + 1) * seq_len)`` (the last
partial window is dropped). Epoch ``e`` visits every window once, in the order
``window_order(seed, e, num_windows, strata)``; global row ``r`` is window
``order(r // num_windows)[r % num_windows]`` (through the difficulty ranking below when
stratified), and global batch ``k`` is rows
``[k * B, (k + 1) * B)`` (batches run on across epoch ends). Process ``p`` of ``n``
reads only rows ``[p * B / n, (p + 1) * B / n)`` of each global batch, so the stream does
not depend on the number of processes and its state is two integers (epoch, index of the
next row in the epoch).

Rows follow the packing convention of kyx/data/pipeline.py: ``segment_ids`` 1, 2, ...
per document piece in the row, ``positions`` restarting at 0 per piece, no target across
a document boundary or for the row's last token. A window that starts mid-document
begins with a continuation piece (segment 1, positions from 0, first token not BOS),
exactly like a document that the packing pipeline continues into the next row.

``strata = 1`` (``data.sampling = "iid"``): a uniform permutation. ``strata = S > 1``
(``"stratified"``, S = the global batch size): the windows, ranked by ``unigram_surprise``
(the mean -log frequency of their tokens in the cache's own counts: a model-free proxy of
how hard they are, correlated 0.76 with a trained `tiny` model's per-window loss), fall
into S strata of consecutive ranks; each stratum is permuted on its own, and the epoch
lists the strata's first windows, then their second windows, ..., always in one per-epoch
order of the strata. Any S consecutive rows among an epoch's first
``S * (num_windows // S)`` hold one window of every stratum, so a batch (S rows, wherever
it starts) is a stratified sample of the corpus instead of a simple random one: the part
of the batch-loss variance between easy and hard windows (boilerplate, code, escaped byte
tables) is gone, every window is still seen once per epoch and the gradient is unbiased
over an epoch. Only the batches that hold an epoch's last ``num_windows % S`` rows or
straddle its end are not. (Strata of neighbouring windows in stream order would not help:
the corpus's record order is a hash shuffle.)
"""
from __future__ import annotations

import functools
from typing import Any

import numpy as np

from kyx.data.encode import next_token_targets
from kyx.data.token_cache import TokenCache
from kyx.errors import DataError


@functools.lru_cache(maxsize=2)
def window_order(seed: int, epoch: int, num_windows: int, strata: int = 1) -> np.ndarray:
    """The order of ``epoch``: a permutation of ``range(num_windows)`` drawn from (seed,
    epoch) alone, uniform (``strata`` 1) or interleaving ``strata`` contiguous blocks of
    positions (module docstring; the iterator maps positions to windows by difficulty)."""
    rng = np.random.default_rng([seed, epoch])
    if strata <= 1:
        return rng.permutation(num_windows)
    stratum = np.arange(num_windows) * strata // num_windows    # sorted, sizes differ by <= 1
    by_stratum = np.lexsort((rng.random(num_windows), stratum))  # random order inside each
    first = np.searchsorted(stratum, np.arange(strata))          # stratum's first window
    rank = np.empty(num_windows, np.int64)
    rank[by_stratum] = np.arange(num_windows) - first[stratum[by_stratum]]
    slot = rng.permutation(strata)                               # the strata's order per level
    return np.lexsort((slot[stratum], rank))


def unigram_surprise(cache: TokenCache, seq_len: int, num_windows: int,
                     chunk_windows: int = 1 << 15) -> np.ndarray:
    """float64 [num_windows]: each window's mean ``-log(count(token) / tokens)`` under the
    cache's own token counts (two chunked passes over the windows' tokens)."""
    counts = np.zeros(0, np.int64)
    for lo in range(0, num_windows, chunk_windows):
        n = min(chunk_windows, num_windows - lo)
        c = np.bincount(cache.read(lo * seq_len, n * seq_len))
        if c.size > counts.size:
            counts = np.pad(counts, (0, c.size - counts.size))
        counts[:c.size] += c
    nll = np.log(counts.sum()) - np.log(np.maximum(counts, 1))
    key = np.empty(num_windows)
    for lo in range(0, num_windows, chunk_windows):
        n = min(chunk_windows, num_windows - lo)
        key[lo:lo + n] = nll[cache.read(lo * seq_len, n * seq_len).reshape(n, seq_len)].mean(1)
    return key


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
    """Batches of windows in ``window_order``; ``get_state`` / ``set_state`` give exact resume."""

    def __init__(self, cache: TokenCache, seq_len: int, batch_size: int, seed: int, *,
                 pad_id: int, num_epochs: int = 0, process_index: int = 0,
                 process_count: int = 1, corpus_stats: dict | None = None, strata: int = 1):
        self.cache, self.seq_len, self.batch_size, self.seed = cache, seq_len, batch_size, seed
        self.pad_id, self.num_epochs, self.strata = pad_id, num_epochs, max(1, int(strata))
        self.num_windows = cache.num_tokens // seq_len
        if self.num_windows < batch_size:
            raise DataError(f"The token cache {cache.directory} holds {cache.num_tokens} tokens, "
                            f"{self.num_windows} windows of {seq_len}: fewer than one batch of "
                            f"{batch_size}; use a larger corpus or smaller data.seq_len / "
                            f"data.batch_size.")
        local = batch_size // process_count
        self.local_rows = (process_index * local, (process_index + 1) * local)
        # window of each stratified position: windows sorted by difficulty (stable: ties in
        # stream order, so every process and every restart derives the same ranking)
        self.ranking = (np.argsort(unigram_surprise(cache, seq_len, self.num_windows),
                                   kind="stable") if self.strata > 1 else None)
        self._corpus_stats = dict(corpus_stats or {})
        self.row = 0  # next global row

    def __iter__(self):
        return self

    def window(self, row: int) -> int:
        """The window index of global row ``row``."""
        epoch, index = divmod(row, self.num_windows)
        position = int(window_order(self.seed, epoch, self.num_windows, self.strata)[index])
        return position if self.ranking is None else int(self.ranking[position])

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

    @property
    def sampling(self) -> str:
        return "iid" if self.strata == 1 else "stratified"

    def get_state(self) -> dict[str, Any]:
        epoch, index = divmod(self.row, self.num_windows)
        state = {"sampling": self.sampling, "epoch": epoch, "index": index,
                 "num_windows": self.num_windows, "seed": self.seed}
        return state if self.strata == 1 else {**state, "strata": self.strata}

    def set_state(self, state: dict[str, Any]) -> None:
        saved = state.get("sampling")
        if saved != self.sampling and saved in ("iid", "stratified"):
            raise DataError(
                f"The checkpoint's data state is of data.sampling={saved!r} rows, this run "
                f"makes {self.sampling!r} rows (the default changed to 'stratified'?); resume "
                f"it with --config.data.sampling={saved}.")
        if (saved != self.sampling or state.get("num_windows") != self.num_windows
                or state.get("strata", 1) != self.strata):
            raise DataError(
                f"The checkpoint's data state {state} is not of this data ({self.sampling} "
                f"windows, {self.num_windows} of {self.seq_len} tokens"
                + (f", {self.strata} strata" if self.strata > 1 else "") + "): data.sampling, "
                "data.seq_len, data.batch_size or the corpus changed since it was saved.")
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
