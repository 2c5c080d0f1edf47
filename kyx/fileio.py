"""Atomic file writes (readers see the old file or the new one, never a partial one) and
files checked against a SHA-256 sidecar (``<file>.sha256``, ``sha256sum -c`` format)."""
from __future__ import annotations

import hashlib
import os
import tempfile

from kyx.errors import IntegrityError

DIGEST_SUFFIX = ".sha256"


def atomic_write(path: str | os.PathLike, data: bytes | str, durable: bool = True,
                 checksum: bool = False) -> str:
    """Write ``data`` to ``path`` through a temporary file in the same directory.

    The temporary file is fsynced and renamed over ``path`` (with ``durable``, the
    directory is fsynced too, so the rename survives a power cut). Concurrent writers of
    the same content are safe: each renames its own complete file. With ``checksum``, the
    SHA-256 sidecar that ``read_checked`` verifies is written first. The file gets the
    usual permissions (0666 minus the umask), not mkstemp's owner-only 0600.
    """
    path = os.fspath(path)
    directory = os.path.dirname(path) or "."
    os.makedirs(directory, exist_ok=True)
    raw = data.encode("utf-8") if isinstance(data, str) else data
    if checksum:
        line = f"{hashlib.sha256(raw).hexdigest()}  {os.path.basename(path)}\n"
        atomic_write(path + DIGEST_SUFFIX, line, durable)
    elif os.path.exists(path + DIGEST_SUFFIX):  # it would describe the old content
        os.unlink(path + DIGEST_SUFFIX)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{os.path.basename(path)}.",
                               suffix=".tmp")
    try:
        os.fchmod(fd, 0o666 & ~_UMASK)
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


def _read_umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


_UMASK = _read_umask()  # once, at import: os.umask is process-wide and threads may write


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


def read_checked(path: str | os.PathLike) -> bytes:
    """The bytes of ``path``, verified against its ``.sha256`` sidecar when it has one."""
    path = os.fspath(path)
    with open(path, "rb") as f:
        raw = f.read()
    sidecar = path + DIGEST_SUFFIX
    if os.path.exists(sidecar):
        with open(sidecar) as f:
            recorded = f.read().split()[:1]
        actual = hashlib.sha256(raw).hexdigest()
        if recorded != [actual]:
            raise IntegrityError(
                f"{path} is damaged: its SHA-256 {actual[:16]}... differs from the one recorded "
                f"when it was written ({sidecar}: {(recorded or ['<empty>'])[0][:16]}...). "
                f"Restore the file (e.g. from its source run); if it was replaced on purpose, "
                f"delete {sidecar}")
    return raw


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` runs on this host (unknowable cases count as alive, so a
    file owned by someone else's process is never taken for a dead writer's leftover)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError, ValueError):
        return True
    return True
