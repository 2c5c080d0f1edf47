"""Atomic file writes: readers see the old file or the new one, never a partial one."""
from __future__ import annotations

import os
import tempfile


def atomic_write(path: str | os.PathLike, data: bytes | str, durable: bool = True) -> str:
    """Write ``data`` to ``path`` through a temporary file in the same directory.

    The temporary file is fsynced and renamed over ``path`` (with ``durable``, the
    directory is fsynced too, so the rename survives a power cut). Concurrent writers of
    the same content are safe: each renames its own complete file. Returns the path.
    """
    path = os.fspath(path)
    directory = os.path.dirname(path) or "."
    os.makedirs(directory, exist_ok=True)
    raw = data.encode("utf-8") if isinstance(data, str) else data
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{os.path.basename(path)}.",
                               suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(raw)
            f.flush()
            os.fsync(f.fileno())
        commit(tmp, path, durable)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def commit(tmp: str, path: str, durable: bool = True) -> None:
    """Rename a fully written (and fsynced) temporary file over ``path``."""
    os.replace(tmp, path)
    if durable:
        _fsync_dir(os.path.dirname(path) or ".")


def _fsync_dir(directory: str) -> None:
    try:  # not every filesystem supports fsync on a directory
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError:
        pass
