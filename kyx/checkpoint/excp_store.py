"""ExCP on-disk chain format: step files of checksummed coder frames, plus a JSON manifest.

Step file:  MAGIC | blob 0 | blob 1 | ... | footer JSON | u64 footer length (LE) | MAGIC
Each blob is one coder frame (zstd / lzma / none) whose blake2b-128 digest, offset and
length are in the footer; the footer's own digest is in the manifest, whose own digest
(over every other field) is its ``digest`` field. Files and the manifest are written to
``<name>.tmp<PID>``, fsynced and renamed (atomic on POSIX); a killed writer's leftovers
are removed by ``remove_leftovers``. In a chain on an object store (``gs://``) each file
is one upload of the finished bytes (an object appears whole or not at all), so there is
nothing temporary to leave behind.
"""
from __future__ import annotations

import hashlib
import io
import json
import lzma
import os
import re
import struct

import numpy as np
import zstandard

from kyx.errors import CheckpointError
from kyx.fileio import as_path, commit, is_local, pid_alive
from kyx.logs import get_logger

log = get_logger(__name__)

MAGIC = b"KYXEXCP\x01"
MANIFEST = "manifest.json"
VERSION = 2          # 2: the manifest carries its own digest
CODERS = ("zstd", "lzma", "none")
_TAIL = struct.Struct("<Q8s")
_TMP = re.compile(r"\.tmp(\d+)$")


def digest(data: bytes) -> str:
    return hashlib.blake2b(data, digest_size=16).hexdigest()


def compress(raw: bytes, coder: str, level: int | None = None) -> bytes:
    if coder == "zstd":
        return zstandard.ZstdCompressor(level=3 if level is None else level).compress(raw)
    if coder == "lzma":
        return lzma.compress(raw, preset=6 if level is None else level)
    if coder == "none":
        return bytes(raw)
    raise ValueError(f"coder must be one of {CODERS}, got {coder!r}")


def decompress(data: bytes, coder: str) -> bytes:
    if coder == "zstd":
        return zstandard.ZstdDecompressor().decompress(data)
    if coder == "lzma":
        return lzma.decompress(data)
    if coder == "none":
        return data
    raise ValueError(f"unknown coder {coder!r}")


def shuffle32(x: np.ndarray) -> bytes:
    """Bytes of a 4-byte-per-entry array grouped by byte plane (helps the coder on floats)."""
    return np.ascontiguousarray(x).view(np.uint8).reshape(-1, 4).T.tobytes()


def unshuffle32(raw: bytes, dtype) -> np.ndarray:
    planes = np.frombuffer(raw, np.uint8).reshape(4, -1)
    return planes.T.copy(order="C").view(dtype).reshape(-1)


def _tmp_name(path: str) -> str:
    return f"{path}.tmp{os.getpid()}"


def _write_durably(path: str, data: bytes) -> None:
    if not is_local(path):
        as_path(path).write_bytes(data)
        return
    tmp = _tmp_name(path)
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        commit(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def manifest_digest(manifest: dict) -> str:
    """Digest of every manifest field but ``digest`` (canonical JSON)."""
    body = {k: v for k, v in manifest.items() if k != "digest"}
    return digest(json.dumps(body, sort_keys=True, separators=(",", ":")).encode())


def write_manifest(root: str, manifest: dict) -> None:
    body = {k: v for k, v in manifest.items() if k != "digest"}
    text = json.dumps({**body, "digest": manifest_digest(body)}, indent=1, sort_keys=True)
    if is_local(root):  # a chain opened but not yet written has no directory
        os.makedirs(root, exist_ok=True)
    _write_durably(os.path.join(root, MANIFEST), text.encode())


def read_manifest(root: str) -> dict | None:
    """The verified manifest of a chain directory (None if it has none); a truncated,
    edited or corrupted manifest is a CheckpointError."""
    path = as_path(root) / MANIFEST
    if not path.exists():
        return None
    try:
        manifest = json.loads(path.read_bytes())
    except (OSError, ValueError) as e:
        raise CheckpointError(f"ExCP manifest {path} is unreadable (truncated or "
                              f"corrupted): {e}") from e
    if not isinstance(manifest, dict) or manifest.get("format") != "kyx-excp":
        raise CheckpointError(f"ExCP manifest {path} is not a kyx ExCP manifest (corrupted)")
    version, stored = manifest.get("version"), manifest.pop("digest", None)
    if not isinstance(version, int) or version > VERSION:
        raise CheckpointError(f"ExCP manifest {path} has format version {version!r}; this "
                              f"kyx reads versions 1 to {VERSION} (upgrade kyx)")
    if stored is None and version >= 2:
        raise CheckpointError(f"ExCP manifest {path} has no checksum (edited or corrupted)")
    if stored is None:
        log.warning("ExCP manifest %s predates manifest checksums (version 1): its fields "
                    "are not verified", path)
    elif stored != manifest_digest(manifest):
        raise CheckpointError(f"ExCP manifest {path}: checksum mismatch (the file was edited "
                              "or corrupted); its steps cannot be trusted")
    return manifest


def remove_leftovers(root: str) -> list[str]:
    """Delete ``*.tmp<PID>`` files of writers that no longer run on this host (a save
    killed mid-write); returns their names. Files of running writers are kept. Call it
    from the chain's one writer only (``kyx.distributed.is_writer``): the PID of another
    host's writer means nothing here."""
    if not is_local(root):
        return []
    try:
        names = os.listdir(root)
    except OSError:
        return []
    removed = []
    for name in sorted(names):
        m = _TMP.search(name)
        if m and not pid_alive(int(m.group(1))):
            try:
                os.remove(os.path.join(root, name))
            except FileNotFoundError:
                continue
            removed.append(name)
    return removed


class StepWriter:
    """Streams compressed blobs into a temporary step file; `finish` commits it. For a
    remote chain the file is built in memory (compressed blobs, far smaller than the host
    state being compressed) and uploaded whole by `finish`."""

    def __init__(self, path: str, coder: str, level: int | None):
        self.path, self.coder, self.level = path, coder, level
        self.tmp = _tmp_name(path) if is_local(path) else None
        self.f = open(self.tmp, "wb") if self.tmp else io.BytesIO()
        self.f.write(MAGIC)
        self.offset = len(MAGIC)

    def add(self, raw: bytes) -> dict:
        """Compress and append one blob; returns its {off, len, hash} footer entry."""
        data = compress(raw, self.coder, self.level)
        self.f.write(data)
        entry = {"off": self.offset, "len": len(data), "hash": digest(data)}
        self.offset += len(data)
        return entry

    def finish(self, footer: dict) -> tuple[int, str]:
        """Write the footer, fsync and rename; returns (file bytes, footer digest)."""
        body = json.dumps(footer, separators=(",", ":"), sort_keys=True).encode()
        self.f.write(body)
        self.f.write(_TAIL.pack(len(body), MAGIC))
        if self.tmp is None:
            as_path(self.path).write_bytes(self.f.getvalue())
            self.f.close()
            return self.offset + len(body) + _TAIL.size, digest(body)
        self.f.flush()
        os.fsync(self.f.fileno())
        self.f.close()
        commit(self.tmp, self.path)
        return self.offset + len(body) + _TAIL.size, digest(body)

    def abort(self) -> None:
        self.f.close()
        if self.tmp is not None and os.path.exists(self.tmp):
            os.remove(self.tmp)


class StepReader:
    """Reads and verifies one step file; every failure is a CheckpointError naming `label`."""

    def __init__(self, path: str, label: str, footer_hash: str | None = None):
        self.path, self.label = path, label
        if not as_path(path).exists():
            raise CheckpointError(f"ExCP {label}: file {path} is missing (broken chain link)")
        self.f = as_path(path).open("rb")
        try:
            self.footer = self._read_footer(footer_hash)
        except BaseException:
            self.f.close()
            raise
        self.coder = self.footer.get("coder", "zstd")

    def _read_footer(self, footer_hash: str | None) -> dict:
        where = f"ExCP {self.label}: {self.path}"
        try:
            size = self.f.seek(0, os.SEEK_END)
            if size < len(MAGIC) + _TAIL.size:
                raise ValueError(f"only {size} bytes")
            self.f.seek(size - _TAIL.size)
            n, magic = _TAIL.unpack(self.f.read(_TAIL.size))
            if magic != MAGIC or n > size - _TAIL.size - len(MAGIC):
                raise ValueError("bad trailer")
            self.f.seek(size - _TAIL.size - n)
            body = self.f.read(n)
            self.f.seek(0)
            if self.f.read(len(MAGIC)) != MAGIC:
                raise ValueError("bad header magic")
        except (OSError, ValueError, struct.error) as e:
            raise CheckpointError(f"{where} is truncated or corrupted ({e})") from e
        if footer_hash is not None and digest(body) != footer_hash:
            raise CheckpointError(f"{where} footer checksum mismatch (corrupted)")
        try:
            return json.loads(body)
        except ValueError as e:
            raise CheckpointError(f"{where} footer is not valid JSON") from e

    def blob(self, entry: dict, what: str) -> bytes:
        """Decompressed bytes of one blob after checking its digest."""
        try:
            self.f.seek(entry["off"])
            data = self.f.read(entry["len"])
        except OSError as e:
            raise CheckpointError(f"ExCP {self.label}, {what}: cannot read {self.path}: {e}") from e
        if len(data) != entry["len"] or digest(data) != entry["hash"]:
            raise CheckpointError(
                f"ExCP {self.label}, {what}: blob checksum mismatch in {self.path} (corrupted)")
        try:
            return decompress(data, self.coder)
        except Exception as e:  # zstd / lzma raise their own error types
            raise CheckpointError(
                f"ExCP {self.label}, {what}: cannot decompress blob in {self.path}: {e}") from e

    def close(self) -> None:
        self.f.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
