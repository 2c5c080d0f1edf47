"""The workdir lock on object stores (kyx/checkpoint/remote_lock.py), on fsspec's
in-memory filesystem: one holder at a time, leases that expire when their run is gone,
heartbeats that notice a takeover, and a read-only bucket as one clear error."""
import json
import socket
import time
import uuid

import fsspec
import pytest

from kyx.checkpoint import remote_lock
from kyx.checkpoint.remote_lock import Lease
from kyx.errors import KyxError, WorkdirBusy


@pytest.fixture
def url():
    return f"memory://kyx-{uuid.uuid4().hex}/run/.kyx.lock"


def _owner(**kw):
    return {"host": socket.gethostname(), "pid": 12345, "command": "train",
            "started": "2026-01-01 00:00:00", **kw}


def _put(url, held):
    fs, key = fsspec.core.url_to_fs(url)
    fs.pipe_file(key, json.dumps(held).encode())


def _get(url):
    fs, key = fsspec.core.url_to_fs(url)
    return json.loads(fs.cat_file(key)) if fs.exists(key) else None


def test_one_holder_at_a_time_and_release_frees_it(url):
    first = Lease(url, _owner(pid=1), "gs://b/run").acquire()
    try:
        assert _get(url)["token"] == first.owner["token"]
        with pytest.raises(WorkdirBusy, match=r"in use by `kyx train` pid \d+ on .*expires"):
            Lease(url, _owner(), "gs://b/run").acquire()
    finally:
        first.release()
    assert _get(url) is None
    Lease(url, _owner(), "gs://b/run").acquire().release()


def test_a_gone_holder_is_taken_over_and_a_live_one_is_not(url, monkeypatch, capsys):
    # a process of this host that no longer runs
    _put(url, {**_owner(pid=2 ** 22 + 7), "token": "dead", "heartbeat": time.time()})
    lease = Lease(url, _owner(), "gs://b/run").acquire()
    assert "its process on this host is gone" in capsys.readouterr().out
    lease.release()
    # another host: alive while its heartbeat is fresh, gone once the lease expired
    _put(url, {**_owner(host="other"), "token": "t", "heartbeat": time.time() - 60})
    with pytest.raises(WorkdirBusy, match="last heartbeat 60 s ago"):
        Lease(url, _owner(), "gs://b/run").acquire()
    monkeypatch.setattr(remote_lock, "EXPIRES_S", 30.0)
    lease = Lease(url, _owner(), "gs://b/run").acquire()
    assert "last heartbeat was 60 s ago" in capsys.readouterr().out
    lease.release()


def test_heartbeats_renew_the_lease_and_notice_a_takeover(url, monkeypatch, capsys):
    monkeypatch.setattr(remote_lock, "HEARTBEAT_S", 0.05)
    lease = Lease(url, _owner(), "gs://b/run").acquire()
    try:
        first = _get(url)["heartbeat"]
        deadline = time.time() + 10
        while _get(url)["heartbeat"] == first and time.time() < deadline:
            time.sleep(0.05)
        assert _get(url)["heartbeat"] > first
        _put(url, {**_owner(host="other"), "token": "thief", "heartbeat": time.time()})
        lease._thread.join(timeout=10)
        assert "was taken over" in capsys.readouterr().out
    finally:
        lease.release()
    assert _get(url)["token"] == "thief"  # release leaves another run's lock alone


def test_a_read_only_bucket_is_one_clear_error(url, monkeypatch):
    lease = Lease(url, _owner(), "gs://b/run")

    def forbidden(*a, **k):  # what gcsfs raises for HTTP 403
        raise OSError("Forbidden: https://storage.googleapis.com/upload/storage/v1/b/b/o")
    monkeypatch.setattr(lease.fs, "open", forbidden)
    with pytest.raises(KyxError, match=r"cannot write to the workdir 'gs://b/run'.*Forbidden"
                                       r".*credentials may write"):
        lease.acquire()
