"""One writer per workdir: an exclusive lock held for as long as a run writes into it.

Two ``kyx train`` on one workdir would otherwise both exit 0 while the second replaces
the first's checkpoints and metrics. The lock is ``flock`` on ``<workdir>/.kyx.lock``:
the kernel (or the NFS server) drops it when its process dies, even by SIGKILL, so a
stale lock cannot block a resume. Filesystems without ``flock`` (some FUSE mounts) get
an exclusive-create lock file instead, taken over when its owner on this host is gone.
The file records who holds it (host, pid, command, start time) for the error message.
Only process 0 of a multi-host run locks (``kyx.distributed.is_writer``): its hosts share
one workdir by design. A workdir on an object store (``gs://``) has no flock: it gets a
lease instead (kyx/checkpoint/remote_lock.py).
"""
from __future__ import annotations

import errno
import fcntl
import json
import os
import socket
import time

from kyx.checkpoint import remote_lock
from kyx.errors import KyxError, WorkdirBusy
from kyx.fileio import as_path, is_local, pid_alive

LOCK_NAME = ".kyx.lock"
FALLBACK_NAME = ".kyx.lock.excl"


def _owner(command: str) -> dict:
    return {"host": socket.gethostname(), "pid": os.getpid(), "command": command,
            "started": time.strftime("%Y-%m-%d %H:%M:%S")}


def _describe(path: str) -> str:
    try:
        with open(path) as f:
            o = json.load(f)
        return (f"`kyx {o.get('command', '?')}` pid {o.get('pid')} on {o.get('host')}, "
                f"since {o.get('started')}")
    except (OSError, ValueError):
        return "another process"


class WorkdirLock:
    """``with WorkdirLock(workdir, "train"):`` or ``acquire()`` / ``release()``."""

    def __init__(self, workdir: str, command: str):
        self.workdir, self.command = workdir, command
        self._fd: int | None = None
        self._fallback: str | None = None
        self._remote: remote_lock.Lease | None = None
        self._dir = ""  # the local workdir, absolute (set by acquire)

    def acquire(self) -> WorkdirLock:
        root = as_path(self.workdir)  # a KyxError for an unusable URL, before any write
        if not is_local(root):
            self._remote = remote_lock.Lease(root / LOCK_NAME, _owner(self.command),
                                             self.workdir).acquire()
            return self
        self._dir = os.fspath(root)
        try:
            os.makedirs(self._dir, exist_ok=True)
            path = os.path.join(self._dir, LOCK_NAME)
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:
            raise KyxError(f"cannot write to the workdir {self.workdir!r}: {e.strerror}; "
                           "choose a writable --workdir") from e
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise WorkdirBusy(
                f"the workdir {self.workdir!r} is in use by {_describe(path)}: two runs on "
                "one workdir would overwrite each other's checkpoints and metrics. Wait for "
                "it to finish, stop it, or choose another --workdir") from None
        except OSError as e:
            os.close(fd)
            if e.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS):
                raise
            self._acquire_fallback()
            return self
        os.ftruncate(fd, 0)
        os.write(fd, json.dumps(_owner(self.command)).encode())
        self._fd = fd
        return self

    def _acquire_fallback(self) -> None:
        path = os.path.join(self._dir, FALLBACK_NAME)
        for _ in range(2):
            try:
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            except FileExistsError:
                try:
                    with open(path) as f:
                        owner = json.load(f)
                except (OSError, ValueError):
                    owner = {}
                if owner.get("host") == socket.gethostname() and not pid_alive(owner.get("pid", 0)):
                    os.unlink(path)  # its run died without releasing it
                    continue
                raise WorkdirBusy(
                    f"the workdir {self.workdir!r} is in use by {_describe(path)} (lock file "
                    f"{path}; this filesystem has no flock). Wait for it, or delete the file "
                    "if that run is gone") from None
            with os.fdopen(fd, "w") as f:
                json.dump(_owner(self.command), f)
            self._fallback = path
            return

    def release(self) -> None:
        if self._remote is not None:
            self._remote.release()
            self._remote = None
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None
        if self._fallback is not None:
            try:
                os.unlink(self._fallback)
            except FileNotFoundError:
                pass
            self._fallback = None

    def __enter__(self) -> WorkdirLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()
