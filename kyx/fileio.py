"""File I/O under one path layer: a workdir is a local path or a storage URL, and every
file kyx writes into it goes through ``as_path`` (an ``etils.epath.Path``, the path type
Orbax uses too).

Local paths get atomic writes (temporary file, fsync, rename) and SHA-256 sidecars
(``<file>.sha256``, ``sha256sum -c`` format) checked by ``read_checked``.
A URL of a registered scheme (``SCHEMES``; ``gs://`` today) is written with one upload
per file: an object store creates an object whole when its upload completes, so readers
see the old object or the new one, as with a rename. Object stores have no appends, no
fsync and no flock: see docs/architecture.md ("Workdirs on object stores").
"""
from __future__ import annotations

import dataclasses
import hashlib
import importlib.util
import os
import tempfile

from etils import epath

from kyx.errors import IntegrityError, KyxError

DIGEST_SUFFIX = ".sha256"


# ----------------------------------------------------------------------------- paths
@dataclasses.dataclass(frozen=True)
class Scheme:
    """A storage URL scheme a workdir may use: the module its epath backend needs and the
    pip command installing it, or why kyx cannot keep a workdir there."""
    name: str
    module: str = ""        # imported by the fsspec backend etils.epath uses for the scheme
    install: str = ""       # shown when ``module`` is missing
    unsupported: str = ""   # non-empty: a workdir cannot live there, and why


SCHEMES: dict[str, Scheme] = {}


def register_scheme(scheme: Scheme) -> Scheme:
    """Make ``<scheme.name>://`` URLs valid workdir paths (or name why they are not)."""
    SCHEMES[scheme.name] = scheme
    return scheme


_NO_ORBAX = ("Orbax writes checkpoint arrays (TensorStore) to local paths and gs:// only; "
             "mount the bucket (e.g. {mount}) and pass the mount point as a local path")
register_scheme(Scheme("gs", "gcsfs", "pip install 'kyx[gcs]'"))
register_scheme(Scheme("s3", unsupported=_NO_ORBAX.format(mount="mountpoint-s3 or s3fs-fuse")))
register_scheme(Scheme("az", unsupported=_NO_ORBAX.format(mount="blobfuse2")))


def as_path(path: str | os.PathLike) -> epath.Path:
    """The epath of a workdir (or a file in one): local paths made absolute, URLs of a
    registered scheme whose backend is installed; any other URL is a KyxError naming what
    to do (never a local folder named ``gs:``)."""
    text = os.fspath(path)
    scheme, sep, _ = text.partition("://")
    if not sep or "/" in scheme:
        return epath.Path(os.path.abspath(os.path.expanduser(text)))
    entry = SCHEMES.get(scheme)
    if entry is None:
        known = ", ".join(f"{s}://" for s, e in SCHEMES.items() if not e.unsupported)
        raise KyxError(f"{text!r}: unknown storage scheme {scheme}://. A workdir is a local "
                       f"path or a {known} URL")
    if entry.unsupported:
        raise KyxError(f"{text!r}: a kyx workdir cannot live on {scheme}://: "
                       f"{entry.unsupported}")
    if importlib.util.find_spec(entry.module) is None:
        raise KyxError(f"{text!r}: {scheme}:// paths need the {entry.module} package, which "
                       f"is not installed: {entry.install}")
    return epath.Path(text)


def is_local(path: str | os.PathLike) -> bool:
    """Whether ``path`` is on the local filesystem (no ``scheme://``)."""
    scheme, sep, _ = os.fspath(path).partition("://")
    return not sep or "/" in scheme


def storage_errors() -> tuple[type[BaseException], ...]:
    """Exceptions a storage backend raises for a failed read or write (permission,
    credentials, missing bucket): OSError, plus gcsfs's HttpError when it is installed."""
    errors: tuple[type[BaseException], ...] = (OSError,)
    if importlib.util.find_spec("gcsfs") is not None:
        from gcsfs.retry import HttpError
        errors += (HttpError,)
    return errors


def atomic_write(path: str | os.PathLike, data: bytes | str, durable: bool = True,
                 checksum: bool = False) -> str:
    """Write ``data`` to ``path`` through a temporary file in the same directory.

    The temporary file is fsynced and renamed over ``path`` (with ``durable``, the
    directory is fsynced too, so the rename survives a power cut). Concurrent writers of
    the same content are safe: each renames its own complete file. With ``checksum``, the
    SHA-256 sidecar that ``read_checked`` verifies is written first. The file gets the
    usual permissions (0666 minus the umask), not mkstemp's owner-only 0600. A remote
    ``path`` is one upload (atomic on an object store; nothing to fsync). Returns ``path``.
    """
    raw = data.encode("utf-8") if isinstance(data, str) else data
    if not is_local(path):
        return _upload(as_path(path), raw, checksum)
    path = os.fspath(path)
    directory = os.path.dirname(path) or "."
    os.makedirs(directory, exist_ok=True)
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


def _upload(path: epath.Path, raw: bytes, checksum: bool) -> str:
    sidecar = path.parent / (path.name + DIGEST_SUFFIX)
    if checksum:
        sidecar.write_text(f"{hashlib.sha256(raw).hexdigest()}  {path.name}\n")
    elif sidecar.exists():  # it would describe the old content
        sidecar.unlink()
    path.write_bytes(raw)
    return str(path)


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
    """The bytes of ``path`` (local or remote), verified against its ``.sha256`` sidecar
    when it has one."""
    p = as_path(path)
    raw = p.read_bytes()
    sidecar = p.parent / (p.name + DIGEST_SUFFIX)
    if sidecar.exists():
        recorded = sidecar.read_text().split()[:1]
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
