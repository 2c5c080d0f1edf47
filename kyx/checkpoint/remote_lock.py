"""The workdir lock on an object store (``gs://``): an exclusive create plus a lease.

Object stores have no flock, and nothing drops a lock when its holder dies. So the lock is
the object ``<workdir>/.kyx.lock``, created only if it does not exist (fsspec mode ``xb``:
gcsfs sends ``ifGenerationMatch=0``, so of two runs creating it at once exactly one
succeeds), holding its owner (host, pid, command, start time, a random token) and a
heartbeat time that a background thread renews every ``HEARTBEAT_S`` seconds. A lock whose
heartbeat is older than ``EXPIRES_S`` (its run died without releasing it: SIGKILL, a lost
VM) or whose owner was a process of this host that is gone is taken over with a warning.

Limits, which a local flock does not have: the heartbeat is compared across hosts' clocks
(NTP keeps them well within the lease); a holder stalled for longer than ``EXPIRES_S`` can
be taken over while it still runs (its next heartbeat then logs that the lock was lost);
two runs taking over the same expired lock at the same instant can both succeed, since an
object store cannot delete "only if unchanged" through fsspec.
"""
from __future__ import annotations

import json
import socket
import threading
import time
import uuid

import fsspec

from kyx.errors import KyxError, WorkdirBusy
from kyx.fileio import pid_alive, storage_errors
from kyx.logs import get_logger

log = get_logger(__name__)

HEARTBEAT_S = 30.0   # how often a holder renews its lease
EXPIRES_S = 180.0    # a lease not renewed for this long belongs to a run that is gone


def _stale(held: dict) -> str | None:
    """Why the lock ``held`` can be taken over, or None while its holder may live."""
    if held.get("host") == socket.gethostname() and not pid_alive(int(held.get("pid", 0))):
        return "its process on this host is gone"
    age = time.time() - float(held.get("heartbeat", 0))
    if age > EXPIRES_S:
        return f"its last heartbeat was {age:.0f} s ago (the lease is {EXPIRES_S:.0f} s)"
    return None


def _describe(held: dict) -> str:
    return (f"`kyx {held.get('command', '?')}` pid {held.get('pid')} on {held.get('host')}, "
            f"since {held.get('started')}")


class Lease:
    """``Lease(url, owner, workdir).acquire()`` ... ``release()``; ``url`` is any fsspec
    URL of the lock object (``gs://bucket/run/.kyx.lock``)."""

    def __init__(self, url, owner: dict, workdir: str):
        self.url, self.workdir = str(url), workdir
        self.fs, self.key = fsspec.core.url_to_fs(self.url)
        self.owner = {**owner, "token": uuid.uuid4().hex}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------------ object I/O
    def _read(self) -> dict | None:
        try:
            held = json.loads(self.fs.cat_file(self.key))
        except FileNotFoundError:
            return None
        except ValueError:  # not our JSON: nobody renews it
            return {"heartbeat": 0}
        return held if isinstance(held, dict) else {"heartbeat": 0}

    def _body(self) -> bytes:
        return json.dumps({**self.owner, "heartbeat": time.time()}).encode()

    def _create(self) -> None:
        with self.fs.open(self.key, "xb") as f:
            f.write(self._body())
        self.fs.invalidate_cache()  # listings cached before the create must not hide it

    # ------------------------------------------------------------------ lock
    def acquire(self) -> Lease:
        try:
            for _ in range(3):
                held = self._read()
                if held is not None:
                    why = _stale(held)
                    if why is None:
                        self._busy(held)
                    log.warning("taking over the workdir lock %s of %s: %s", self.url,
                                _describe(held), why)
                    self.fs.rm_file(self.key)
                try:
                    self._create()
                except FileExistsError:  # another run created it since we looked
                    continue
                self._thread = threading.Thread(target=self._renew_loop, daemon=True,
                                                name="kyx-lock-lease")
                self._thread.start()
                return self
        except storage_errors() as e:
            raise KyxError(f"cannot write to the workdir {self.workdir!r} ({self.url}): "
                           f"{type(e).__name__}: {str(e).strip()[:300]}; check that the bucket "
                           "exists and that your credentials may write to it, or choose "
                           "another --workdir") from e
        self._busy(self._read() or {})

    def _busy(self, held: dict):
        age = time.time() - float(held.get("heartbeat", time.time()))
        raise WorkdirBusy(
            f"the workdir {self.workdir!r} is in use by {_describe(held)} (lock {self.url}, "
            f"last heartbeat {age:.0f} s ago): two runs on one workdir would overwrite each "
            "other's checkpoints and metrics. Wait for it to finish, stop it, or choose "
            f"another --workdir; if that run is gone, its lock expires "
            f"{max(EXPIRES_S - age, 0):.0f} s from now (or delete {self.url})")

    def _renew_loop(self) -> None:
        while not self._stop.wait(HEARTBEAT_S):
            try:
                held = self._read()
                if held is None or held.get("token") != self.owner["token"]:
                    log.error("the workdir lock %s was taken over (by %s) while this run "
                              "still holds it: another run may now write into %s", self.url,
                              _describe(held or {}), self.workdir)
                    return
                self.fs.pipe_file(self.key, self._body())
            except storage_errors() as e:  # a network hiccup: try again next time
                log.warning("cannot renew the workdir lock %s: %s", self.url, e)

    def release(self) -> None:
        """Stop renewing and delete the lock object if it is still ours."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        try:
            held = self._read()
            if held is not None and held.get("token") == self.owner["token"]:
                self.fs.rm_file(self.key)
        except storage_errors() as e:
            log.warning("cannot delete the workdir lock %s (%s); it expires %.0f s after "
                        "its last heartbeat", self.url, e, EXPIRES_S)
