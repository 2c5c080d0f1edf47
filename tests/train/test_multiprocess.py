"""Two processes on one shared workdir: exactly one writes the run's own files.

A true two-process run on this machine: `jax.distributed` over 127.0.0.1 (the
JAX_COORDINATOR_ADDRESS / JAX_NUM_PROCESSES / JAX_PROCESS_ID launch kyx/distributed.py
detects), two simulated CPU devices per process, one data-parallel mesh over all four.
Each process runs `kyx train` under a wrapper that records every file it opens for
writing (builtins.open, os.open, os.replace / os.rename) inside the workdir; Orbax's array
shards are written by TensorStore (C++), so the wrapper does not see them and the test
finds process 1's shard files on disk instead.
"""
import json
import os
import socket
import subprocess
import sys

import pytest

from kyx import config as config_lib
from kyx.train import pretrain

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PRETRAIN = os.path.join(ROOT, "configs", "pretrain.py")

RECORDER = r'''
import builtins, json, os, sys

log_path, workdir, argv = sys.argv[1], os.path.realpath(sys.argv[2]), sys.argv[3:]
writes = []


def record(path, how):
    try:
        p = os.path.realpath(os.fspath(path))
    except TypeError:  # a file descriptor
        return
    if p == workdir or p.startswith(workdir + os.sep):
        writes.append([how, os.path.relpath(p, workdir)])


real_open, real_os_open, real_replace, real_rename = builtins.open, os.open, os.replace, os.rename


def open_(file, mode="r", *a, **k):
    if any(c in mode for c in "wax+"):
        record(file, "open")
    return real_open(file, mode, *a, **k)


def os_open(path, flags, *a, **k):
    if flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT):
        record(path, "os.open")
    return real_os_open(path, flags, *a, **k)


def replace(src, dst, *a, **k):
    record(dst, "replace")
    return real_replace(src, dst, *a, **k)


def rename(src, dst, *a, **k):
    record(dst, "rename")
    return real_rename(src, dst, *a, **k)


builtins.open, os.open, os.replace, os.rename = open_, os_open, replace, rename
from kyx.cli import main  # noqa: E402

code = main(argv)
import jax  # noqa: E402

with real_open(log_path, "w") as f:
    json.dump({"process": jax.process_index(), "processes": jax.process_count(),
               "writes": writes}, f)
sys.exit(code)
'''


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow  # two JAX processes start, compile and train together (~30 s on 2 cores)
def test_two_processes_one_workdir_exactly_one_writer(fast_overrides, tmp_path):
    overrides = fast_overrides + ["train.steps=4", "checkpoint.every=2",
                                  "checkpoint.excp.enabled=true"]
    pretrain.build(config_lib.load(PRETRAIN + ":tiny", overrides))  # data + tokenizer cached
    workdir = tmp_path / "run"
    script = tmp_path / "recorder.py"
    script.write_text(RECORDER)
    argv = ["train", "--config", PRETRAIN + ":tiny", "--workdir", str(workdir)]
    argv += [f"--config.{o}" for o in overrides]
    port = _free_port()
    procs = []
    for i in range(2):
        env = {**os.environ, "PYTHONPATH": ROOT, "JAX_PLATFORMS": "cpu",
               "XLA_FLAGS": "--xla_force_host_platform_device_count=2",
               "JAX_COORDINATOR_ADDRESS": f"127.0.0.1:{port}", "JAX_NUM_PROCESSES": "2",
               "JAX_PROCESS_ID": str(i)}
        procs.append(subprocess.Popen(
            [sys.executable, str(script), str(tmp_path / f"writes{i}.json"), str(workdir)]
            + argv, env=env, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            text=True))
    try:
        outs = [p.communicate(timeout=240)[0] for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    for p, out in zip(procs, outs):
        assert p.returncode == 0, out[-4000:]
    logs = [json.loads((tmp_path / f"writes{i}.json").read_text()) for i in range(2)]
    assert [(log["process"], log["processes"]) for log in logs] == [(0, 2), (1, 2)]

    def own_files(log):  # everything but Orbax's checkpoints, which all processes write
        return {path for _, path in log["writes"] if not path.startswith("checkpoints")}

    first, second = own_files(logs[0]), own_files(logs[1])
    assert second == set(), f"process 1 wrote {sorted(second)}"
    for name in ("config.json", "config.json.sha256", "tokenizer.model", "metrics.jsonl",
                 ".kyx.lock", "excp/manifest.json", "loss_curve.png"):
        assert name in first, (name, sorted(first))
    assert any(path.startswith("tb/events.out.tfevents") for path in first)
    # both processes wrote their shards of every checkpoint (OCDBT: one tree per process)
    for step in (2, 4):
        state = workdir / "checkpoints" / str(step) / "state"
        assert sorted(p.name for p in state.glob("ocdbt.process_*")) == [
            "ocdbt.process_0", "ocdbt.process_1"], sorted(os.listdir(state))
    rows = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "train/loss" in r] == [1, 2, 3, 4]  # once each
    manifest = json.loads((workdir / "excp" / "manifest.json").read_text())
    assert [e["step"] for e in manifest["steps"]] == [2, 4]
    assert "done:" in outs[0] and "done:" not in outs[1]
    assert "step 4/4" in outs[0] and "step 4/4" not in outs[1]
