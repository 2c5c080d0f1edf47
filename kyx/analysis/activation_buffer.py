"""An on-disk, checksummed buffer of model activations at one site, read as i.i.d. batches.

Layout of a buffer directory::

    meta.json                    {"d", "site", "model_workdir", "step", "splits": {split:
                                  {"rows", "shards": [file, ...]}}, ...}   (+ .sha256)
    train_00000.npy ...          float32 [rows, d] shards (+ .sha256 sidecars)
    val_00000.npy ...

Every file has a SHA-256 sidecar (kyx/fileio.py) checked when the buffer is opened, so a
flipped byte is an error, not a silently wrong SAE. ``meta.json`` is written last: a
harvest killed halfway leaves no ``meta.json`` and is redone, never half-read.
``ActivationBuffer.batches`` draws rows as a seeded permutation per epoch over all
shards (state: epoch and row index, restored exactly), so batches are i.i.d. although
the rows were harvested in document order.
"""
from __future__ import annotations

import functools
import io
import json
import os
from typing import Any

import numpy as np

from kyx.errors import DataError, IntegrityError
from kyx.fileio import atomic_write, read_checked

META = "meta.json"
SPLITS = ("train", "val")


def _npy_bytes(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(array), allow_pickle=False)
    return buf.getvalue()


class BufferWriter:
    """Streams rows into a buffer directory: shards are written as they fill (memory holds
    at most one shard per split), ``meta.json`` only by ``finish``."""

    def __init__(self, path: str, d: int, rows_per_shard: int = 65536):
        self.path, self.d, self.rows_per_shard = path, int(d), int(rows_per_shard)
        os.makedirs(path, exist_ok=True)
        if exists(path):
            os.unlink(os.path.join(path, META))  # rewriting: invalid until the new meta lands
        self._pending = {split: [] for split in SPLITS}
        self._files = {split: [] for split in SPLITS}
        self._rows = dict.fromkeys(SPLITS, 0)

    def add(self, split: str, rows_nd: np.ndarray) -> None:
        rows_nd = np.asarray(rows_nd, np.float32)
        if rows_nd.ndim != 2 or rows_nd.shape[1] != self.d:
            raise DataError(f"activation buffer {self.path}: {split} rows of shape "
                            f"{rows_nd.shape}, expected [rows, {self.d}]")
        self._pending[split].append(rows_nd)
        self._rows[split] += len(rows_nd)
        while sum(map(len, self._pending[split])) >= self.rows_per_shard:
            rows = np.concatenate(self._pending[split])
            self._write(split, rows[:self.rows_per_shard])
            self._pending[split] = [rows[self.rows_per_shard:]]

    def _write(self, split: str, rows_nd: np.ndarray) -> None:
        name = f"{split}_{len(self._files[split]):05d}.npy"
        atomic_write(os.path.join(self.path, name), _npy_bytes(rows_nd), durable=False,
                     checksum=True)
        self._files[split].append(name)

    def finish(self, meta: dict) -> "ActivationBuffer":
        for split in SPLITS:
            rest = [r for r in self._pending[split] if len(r)]
            if rest:
                self._write(split, np.concatenate(rest))
            self._pending[split] = []
        if not self._rows["train"]:
            raise DataError(f"activation buffer {self.path}: no train rows were added")
        splits = {split: {"rows": self._rows[split], "shards": self._files[split]}
                  for split in SPLITS if self._rows[split]}
        full = {**meta, "d": self.d, "splits": splits}
        atomic_write(os.path.join(self.path, META), json.dumps(full, indent=1, sort_keys=True),
                     checksum=True)
        return ActivationBuffer(self.path)


def write_buffer(path: str, x_nd: np.ndarray, meta: dict, rows_per_shard: int = 65536,
                 val_nd: np.ndarray | None = None) -> "ActivationBuffer":
    """Write ``x_nd`` (the train split) and optionally ``val_nd`` as a buffer at ``path``
    with ``meta`` (e.g. site, model_workdir, step) recorded; returns it opened."""
    x_nd = np.asarray(x_nd, np.float32)
    if x_nd.ndim != 2 or not len(x_nd):
        raise DataError(f"activation buffer {path}: expected a non-empty [rows, d] array, "
                        f"got shape {x_nd.shape}")
    writer = BufferWriter(path, x_nd.shape[1], rows_per_shard)
    writer.add("train", x_nd)
    if val_nd is not None:
        writer.add("val", val_nd)
    return writer.finish(meta)


def exists(path: str) -> bool:
    """Whether a complete buffer (its meta.json) is at ``path``."""
    return os.path.exists(os.path.join(path, META))


class ActivationBuffer:
    """A buffer written by ``write_buffer`` / ``harvest``; checksums verified on open."""

    def __init__(self, path: str):
        self.path = path
        if not exists(path):
            raise DataError(f"no activation buffer at {path} (no {META}): harvest one first, "
                            f"or point sae.buffer at a complete buffer")
        try:
            self.meta: dict[str, Any] = json.loads(read_checked(os.path.join(path, META)))
            self._splits = {split: [self._load(f) for f in info["shards"]]
                            for split, info in self.meta["splits"].items()}
        except (IntegrityError, OSError, ValueError, KeyError) as e:
            raise DataError(f"activation buffer {path} is unreadable ({e}); delete the "
                            f"directory and harvest it again") from e
        self.d = int(self.meta["d"])
        self.num_rows = int(self.meta["splits"]["train"]["rows"])

    def _load(self, name: str) -> np.ndarray:
        return np.load(io.BytesIO(read_checked(os.path.join(self.path, name))),
                       allow_pickle=False)

    def rows(self, split: str = "train") -> int:
        return int(self.meta["splits"][self._split(split)]["rows"])

    def _split(self, split: str) -> str:
        if split not in self._splits:
            raise DataError(f"activation buffer {self.path} has no {split!r} split (it has "
                            f"{', '.join(self._splits)})")
        return split

    def take(self, index_n: np.ndarray, split: str = "train") -> np.ndarray:
        """Rows ``index_n`` (global row numbers of the split) as float32 [n, d]."""
        shards = self._splits[self._split(split)]
        bounds = np.cumsum([0] + [len(s) for s in shards])
        which = np.searchsorted(bounds, index_n, "right") - 1
        out = np.empty((len(index_n), self.d), np.float32)
        for s in np.unique(which):
            sel = which == s
            out[sel] = shards[s][index_n[sel] - bounds[s]]
        return out

    def sample(self, n: int, seed: int, split: str = "train") -> np.ndarray:
        """``n`` distinct rows (all of them if fewer), drawn with ``seed``: float32 [n, d]."""
        total = self.rows(split)
        index = np.random.default_rng([seed, 7]).permutation(total)[:n]
        return self.take(np.sort(index), split)

    def batches(self, batch_size: int, seed: int, split: str = "train") -> "BufferBatches":
        """Endless i.i.d. batches ``{"x_nd": float32 [batch_size, d]}`` with exact resume."""
        return BufferBatches(self, batch_size, seed, self._split(split))


@functools.lru_cache(maxsize=2)
def _order(seed: int, epoch: int, rows: int) -> np.ndarray:
    return np.random.default_rng([seed, epoch]).permutation(rows)


class BufferBatches:
    """Epoch ``e`` visits every row once in the order ``permutation(seed, e)``; batches run
    on across epoch ends. ``get_state`` / ``set_state``: two integers."""

    def __init__(self, buffer: ActivationBuffer, batch_size: int, seed: int, split: str):
        self.buffer, self.batch_size, self.seed, self.split = buffer, batch_size, seed, split
        self.total = buffer.rows(split)
        if self.total < batch_size:
            raise DataError(f"activation buffer {buffer.path} holds {self.total} {split} rows, "
                            f"fewer than one batch of {batch_size}; harvest more tokens or "
                            f"lower the batch size")
        self.row = 0

    def __iter__(self):
        return self

    def __next__(self) -> dict[str, np.ndarray]:
        epoch_n, j_n = np.divmod(np.arange(self.row, self.row + self.batch_size), self.total)
        index = np.empty(self.batch_size, np.int64)
        for epoch in np.unique(epoch_n):  # one or two epochs per batch
            sel = epoch_n == epoch
            index[sel] = _order(self.seed, int(epoch), self.total)[j_n[sel]]
        self.row += self.batch_size
        return {"x_nd": self.buffer.take(index, self.split)}

    def get_state(self) -> dict[str, Any]:
        epoch, index = divmod(self.row, self.total)
        return {"epoch": epoch, "index": index, "rows": self.total, "seed": self.seed,
                "split": self.split}

    def set_state(self, state: dict[str, Any]) -> None:
        if int(state.get("rows", -1)) != self.total or state.get("split") != self.split:
            raise DataError(f"the checkpoint's data state {state} is not of the activation "
                            f"buffer {self.buffer.path} ({self.total} {self.split} rows): the "
                            f"buffer changed since it was saved")
        self.row = int(state["epoch"]) * self.total + int(state["index"])

    def close(self) -> None:
        pass
