"""Digests of a checkpoint's values, written with every save and checked on every read.

Orbax does not checksum what it writes: a flipped bit in a checkpoint file loads as a
silently wrong weight. Each save therefore stores, as its own ``digest`` item, two 32-bit
sums of every array's bits, ``A = sum_i w_i (2i + 1)`` and ``S = sum_i w_i`` (mod 2^32,
``w_i`` the i-th word in row-major order; the odd weights make any change of one word
change A; random damage to several words escapes with probability ~2^-64), plus SHA-256
digests of the JSON items. The sums do not depend on how an array is sharded. Arrays in
host memory (CPU devices, numpy) are summed per shard with numpy from marginal sums
(two passes over memory, ~5x faster than XLA:CPU's integer reductions); arrays on
accelerators in one jitted reduction where they live.
"""
from __future__ import annotations

import hashlib
import json
import os
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from kyx import fileio
from kyx.errors import CheckpointError
from kyx.logs import get_logger

log = get_logger(__name__)

FORMAT = 2
ITEM = "digest"  # the Orbax item holding a step's digests
MOD = 2**32
THREADS = min(8, os.cpu_count() or 1)  # host digests: leaves summed in parallel


def path_name(path) -> str:
    """``models/policy/params/embed/embedding``: one spelling for dataclass, dict and
    sequence paths (a partial restore's dict target names leaves as the TrainState)."""
    parts = []
    for key in path:
        for attr in ("name", "key", "idx"):
            if hasattr(key, attr):
                parts.append(str(getattr(key, attr)))
                break
        else:
            parts.append(str(key))
    return "/".join(parts)


def _word_dtype(dtype):
    """The same-width unsigned type to view an array's bits as (None for bool)."""
    dtype = np.dtype(dtype)
    if dtype == np.bool_:
        return None
    if dtype.itemsize in (1, 2, 4):
        return {1: np.uint8, 2: np.uint16, 4: np.uint32}[dtype.itemsize]
    raise CheckpointError(f"cannot digest arrays of dtype {dtype}")


# ----------------------------------------------------------------------------- device path
def _device_words(x: jax.Array) -> jax.Array:
    unsigned = _word_dtype(x.dtype)
    if unsigned is None:
        return x.astype(jnp.uint32)
    w = x if x.dtype == unsigned else jax.lax.bitcast_convert_type(x, unsigned)
    return w.astype(jnp.uint32)


def _device_sums(x: jax.Array) -> jax.Array:
    """[2] uint32 (A, S). The index is built from per-dimension iotas (no reshape), so a
    sharded array is reduced in place: partial sums per shard plus one all-reduce."""
    w = _device_words(x)
    index = jnp.zeros(w.shape, jnp.uint32)
    stride = 1
    for dim in reversed(range(w.ndim)):
        index = index + jax.lax.broadcasted_iota(jnp.uint32, w.shape, dim) * jnp.uint32(
            stride % MOD)
        stride *= w.shape[dim]
    return jnp.stack([jnp.sum(w * (2 * index + 1), dtype=jnp.uint32),
                      jnp.sum(w, dtype=jnp.uint32)])


@jax.jit
def _device_tree_sums(leaves: list) -> jax.Array:
    return jnp.stack([_device_sums(x) for x in leaves])


# ----------------------------------------------------------------------------- host path
def _weighted(m: np.ndarray) -> int:
    """sum_j j * m[j] mod 2^32 (uint64 arithmetic wraps mod 2^64, a multiple of 2^32)."""
    return int((m.astype(np.uint64) * np.arange(m.size, dtype=np.uint64)).sum()) % MOD


BLOCK_BYTES = 1 << 18  # rows summed both ways while they are in cache: one memory pass


def _row_and_column_sums(w2: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Sums along each row and each column of a 2-D uint word array (mod its width)."""
    step = max(1, BLOCK_BYTES // max(1, w2.shape[1] * w2.itemsize))
    rows = np.empty(w2.shape[0], np.uint32)
    cols = np.zeros(w2.shape[1], np.uint32)
    for s in range(0, w2.shape[0], step):
        block = w2[s:s + step]
        block.sum(axis=1, dtype=np.uint32, out=rows[s:s + step])
        cols += block.sum(axis=0, dtype=np.uint32)
    return rows, cols


def _host_block_sums(w: np.ndarray, offsets, strides) -> tuple[int, int]:
    """(A, S) contributions of one block (a shard) of words ``w`` at ``offsets`` of an
    array with row-major ``strides``: 2i+1 = 1 + 2 sum_d (o_d + j_d) s_d, so A needs only
    the total and the marginal sums along each dimension (two passes over ``w``)."""
    if w.size == 0:
        return 0, 0
    base = 1 + 2 * sum(o * s for o, s in zip(offsets, strides))
    if w.ndim == 0:
        total = int(w) % MOD
        return base * total % MOD, total
    with np.errstate(over="ignore"):
        rows, last = _row_and_column_sums(w.reshape(-1, w.shape[-1]))
        rows = rows.reshape(w.shape[:-1])
        total = int(last.sum(dtype=np.uint32))
        a = base * total + 2 * strides[-1] * _weighted(last)
        for d in range(w.ndim - 1):
            others = tuple(k for k in range(w.ndim - 1) if k != d)
            a += 2 * strides[d] * _weighted(rows.sum(axis=others, dtype=np.uint32)
                                            if others else rows)
    return a % MOD, total


def _host_words(x: np.ndarray) -> np.ndarray:
    """The bits of ``x`` as unsigned words of its width (bool: 0 / 1)."""
    unsigned = _word_dtype(x.dtype)
    x = x if x.flags.c_contiguous else x.copy()  # (ascontiguousarray makes 0-d 1-d)
    return x.astype(np.uint8) if unsigned is None else x.view(unsigned)


def _strides(shape) -> list[int]:
    out, stride = [], 1
    for n in reversed(shape):
        out.append(stride)
        stride *= n
    return out[::-1]


def _host_sums(x) -> tuple[int, int]:
    """(A, S) of a numpy array or of a jax Array in host memory, shard by shard (each
    element once: replicas other than the first are skipped)."""
    if isinstance(x, jax.Array):
        blocks = [(np.asarray(s.data), [i.start or 0 for i in s.index])
                  for s in x.addressable_shards if s.replica_id == 0]
    else:
        x = np.asarray(x)
        blocks = [(x, [0] * x.ndim)]
    strides = _strides(x.shape)
    a = s = 0
    for block, offsets in blocks:
        w = _host_words(block)
        if w.dtype != np.uint32:  # narrow words: widen per block, bounded by the block
            w = w.astype(np.uint32)
        da, ds = _host_block_sums(w, offsets, strides)
        a, s = (a + da) % MOD, (s + ds) % MOD
    return a, s


def _on_host(x) -> bool:
    if not isinstance(x, jax.Array):
        return True
    return (jax.process_count() == 1 and x.is_fully_addressable
            and all(d.platform == "cpu" for d in x.sharding.device_set))


def array_digests(tree) -> dict[str, str]:
    """{leaf path: 16 hex digits (A, S)} of every array in ``tree`` (device or host)."""
    flat = jax.tree_util.tree_flatten_with_path(tree)[0]
    names = [path_name(p) for p, _ in flat]
    values = [x if isinstance(x, jax.Array) else np.asarray(x) for _, x in flat]
    sums: dict[int, tuple[int, int]] = {}
    device = [i for i, x in enumerate(values) if not _on_host(x)]
    if device:
        out = np.asarray(jax.device_get(_device_tree_sums([values[i] for i in device])))
        sums.update({i: (int(v[0]), int(v[1])) for i, v in zip(device, out)})
    host = sorted((i for i in range(len(values)) if i not in sums),
                  key=lambda i: -values[i].nbytes)  # largest first: balanced threads
    with ThreadPoolExecutor(min(THREADS, max(1, len(host)))) as pool:  # numpy frees the GIL
        sums.update(zip(host, pool.map(lambda i: _host_sums(values[i]), host)))
    return {n: f"{sums[i][0]:08x}{sums[i][1]:08x}" for i, n in enumerate(names)}


def json_digest(value: Any) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True).encode()).hexdigest()


def record(state, data_state: Any, config: dict) -> dict:
    """The ``digest`` item of one save."""
    return {"format": FORMAT, "arrays": array_digests(state),
            "data": json_digest(data_state), "config": json_digest(config)}


def verify_arrays(stored: dict, tree, where: str) -> None:
    """Raise CheckpointError naming the leaves of ``tree`` whose values differ from the
    digests saved with them (leaves the digest does not list are a layout error)."""
    saved = stored.get("arrays", {})
    actual = array_digests(tree)
    missing = sorted(n for n in actual if n not in saved)
    bad = sorted(n for n, d in actual.items() if n in saved and saved[n] != d)
    if bad or missing:
        detail = (f"values differ from the digest saved with them in {len(bad)} array(s): "
                  f"{', '.join(bad[:5])}{' ...' if len(bad) > 5 else ''}" if bad else
                  f"arrays not covered by its digest: {', '.join(missing[:5])}")
        raise CheckpointError(f"checkpoint {where} is corrupted: {detail}")


def verify_json(stored: dict, name: str, value: Any, where: str) -> None:
    if name in stored and stored[name] != json_digest(value):
        raise CheckpointError(f"checkpoint {where} is corrupted: its {name} item differs "
                              "from the digest saved with it")


def read(step_dir: str) -> dict | None:
    """The digest item of a committed step directory, None for checkpoints written
    before kyx recorded digests. A damaged digest file is itself corruption."""
    path = fileio.as_path(step_dir) / ITEM / "metadata"  # local or a storage URL
    if not path.exists():
        log.warning("checkpoint %s has no digest (written before kyx recorded digests, or "
                    "its %s/ was removed): its values are read unverified", step_dir, ITEM)
        return None
    try:
        stored = json.loads(path.read_text())
        if stored.get("format") != FORMAT or not isinstance(stored.get("arrays"), dict):
            raise ValueError(f"unknown digest format {stored.get('format')!r}")
    except (OSError, ValueError, *fileio.storage_errors()) as e:
        raise CheckpointError(f"checkpoint {step_dir} is corrupted: unreadable digest "
                              f"{path}: {e}") from e
    return stored


def verify_restored(stored: dict, out: dict, where: str) -> None:
    """Check the ``state``, ``data`` and ``config`` items of one restore."""
    verify_arrays(stored, out["state"], where)
    verify_json(stored, "data", out["data"], where)
    verify_json(stored, "config", out["config"], where)


class Verification:
    """The check of one restore, run now or in a background thread.

    A resumed run overlaps the check with compiling its step (kyx/train/loop.py) and
    waits for it before the first step may overwrite the restored arrays; ``wait()``
    raises the CheckpointError of a mismatch.
    """

    def __init__(self, stored: dict | None, out: dict, where: str, background: bool):
        self._future = None
        if stored is None:
            return
        if background:
            pool = ThreadPoolExecutor(1, thread_name_prefix="kyx-verify")
            self._future = pool.submit(verify_restored, stored, out, where)
            pool.shutdown(wait=False)
        else:
            verify_restored(stored, out, where)

    @property
    def in_background(self) -> bool:
        return self._future is not None

    def wait(self) -> None:
        if self._future is not None:
            self._future.result()


def verify_host_state(step_dir: str, tree) -> None:
    """Check a state read from ``step_dir`` outside the Checkpointer (e.g. as numpy for
    ExCP) against the step's digest, when it has one."""
    stored = read(step_dir)
    if stored is not None:
        verify_arrays(stored, tree, step_dir)
